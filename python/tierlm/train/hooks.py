"""The hooks that stream blocks around autograd: each block's forward is wrapped to
materialise its parameters (prefetching the next blocks) and release them after; saved-tensor
hooks keep parameters by reference (and, if asked, activations in the host tier); gradient
hooks copy each gradient into its unit's flat buffer and submit the unit once it is whole."""

import time

import numpy as np
import torch
import torch.utils.checkpoint

_PARAM = "tierlm-param"
_ACTIVATION = "tierlm-activation"


class Hooks:
    """Installed on the trainer's model by install(), removed by remove(). phase is
    "backward" while trainer.backward runs, else "idle"."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.phase = "idle"
        self._handles = []
        self._wrapped = []  # (block module, its original forward)

    def install(self):
        t = self.trainer
        for u in t.units:
            for p in u.params[: len(u.train)]:
                self._handles.append(
                    p.register_post_accumulate_grad_hook(
                        lambda param, u=u: self._grad_ready(u, param)
                    )
                )
        for u in t.blocks:
            original = u.module.forward
            u.module.forward = self._wrap_forward(u, original)
            self._wrapped.append((u.module, original))

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        for module, original in self._wrapped:
            module.forward = original
        self._wrapped = []

    def _wrap_forward(self, u, original):
        t = self.trainer

        def run(*args, **kwargs):
            backward = self.phase == "backward"
            t.materialize(u, for_backward=backward)
            if backward:
                t.prefetch.backward(u)
            else:
                t.prefetch.forward(u)
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            t.counters.add("compute_fwd", time.perf_counter() - t0)
            return out

        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                out = run(*args, **kwargs)
                if self.phase != "backward":
                    t.binding.release(u)
                return out
            if t.checkpoint_activations:
                out = torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)
            else:
                with torch.autograd.graph.saved_tensors_hooks(self._pack(u), self._unpack):
                    out = run(*args, **kwargs)
            # The last disk block forward is the first backward: keep it rather than read it
            # again at once (its AdamW step releases it).
            if self.phase != "backward" and not (
                t.pipeline_depth and u is t.prefetch.next_disk(None, -1)
            ):
                t.binding.release(u)
            return out

        return forward

    def _pack(self, u):
        t = self.trainer

        def pack(x):
            if t.binding.releasable(u) and u.compute is not None:
                try:
                    same = x.untyped_storage().data_ptr() == u.compute.untyped_storage().data_ptr()
                except RuntimeError:
                    same = False
                if same:  # a parameter: fetched again from its home in backward
                    return (_PARAM, u, x.size(), x.stride(), x.storage_offset())
            if (
                t.offload_activations
                and t.device is not None
                and x.device == t.device
                and x.dtype == torch.float32
            ):
                buf, arr = t.staging.array(x.numel(), np.float32)
                torch.from_numpy(arr).copy_(x.reshape(-1))
                t.counters.add("activations_out", x.numel() * 4)
                return (_ACTIVATION, buf, arr, x.size())
            return x

        return pack

    def _unpack(self, packed):
        t = self.trainer
        if isinstance(packed, tuple) and len(packed) == 5 and packed[0] == _PARAM:
            _, u, size, stride, offset = packed
            t.materialize(u, for_backward=True)
            t.prefetch.backward(u)
            return torch.as_strided(u.compute, size, stride, offset)
        if isinstance(packed, tuple) and len(packed) == 4 and packed[0] == _ACTIVATION:
            _, _buf, arr, size = packed  # the host-tier buffer lives as long as the pack
            return torch.from_numpy(arr).to(t.device, copy=True).view(size)
        return packed

    def _grad_ready(self, u, param):
        if self.phase != "backward":
            return
        t = self.trainer
        if u.g is None:
            t.materialize(u, for_backward=True)
        off = u.offsets[id(param)]
        torch.from_numpy(u.g)[off : off + param.numel()].copy_(param.grad.reshape(-1))
        if t.device is not None:
            t.counters.add("device_out", param.numel() * 4)
        param.grad = None  # torch's buffer goes now; AdamW reads the unit's flat gradient
        u.fired.add(id(param))
        if len(u.fired) == len(u.train):
            t.submit(u)
