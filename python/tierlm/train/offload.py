"""Offloaded fine-tuning: PyTorch does autograd, tierlm owns the memory of parameters and AdamW.

A model made of repeated blocks (a Hugging Face causal LM's decoder layers, or a list you give)
is split into units: one per block plus a root unit (embeddings, final norm, head). Each unit's
fp32 parameters and Adam moments have a home tier, host or disk, chosen under the budget:
when not everything fits, the disk blocks are spread evenly among the host blocks (so their
I/O overlaps the host blocks' compute too) and the budget keeps room for pipeline_depth disk
blocks in flight besides the one computing. A disk-homed block is read into a host-tier
staging buffer just before its forward, released after, read again for its (checkpointed)
recompute in backward; the next disk blocks' params (and in backward their moments) are
prefetched while the current one computes. As soon as a block's gradients are complete its
AdamW step runs on a background thread (fused native kernel, state read and written through
the I/O engine) while autograd continues with the earlier blocks (Fuyou's overlap).

The user's loop stays plain PyTorch::

    trainer = tierlm.train.offload(model, budget={"host": "4GiB"}, disk_dir="/nvme/state",
                                   lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for batch in loader:
        loss = model(**batch).loss
        trainer.backward(loss)      # gradients are consumed (stepped) as backward goes
        trainer.step()              # waits for the last optimizer steps; stats for the step
        trainer.zero_grad()
    trainer.save("ckpt")            # atomic; trainer.resume("ckpt") restores params + Adam

With a compute device (a CUDA model, or device=...) PyTorch computes there: the root unit
stays resident on it, each block's parameters are copied in from their home tier before its
forward and its backward and dropped after, and each gradient is copied back to the host as
autograd finishes it; AdamW still runs on the host copies (the masters).

One trainer.backward per step (no gradient accumulation across micro-batches: each block is
stepped as soon as its gradients are complete). Parameter .grad tensors are not kept after
trainer.backward (each block's gradients go to the
optimizer and are freed). Frozen parameters (requires_grad=False, e.g. a LoRA base) are
streamed read-only and have no optimizer state. With torch.distributed initialised, gradients
are reduced to the rank that owns each unit's optimizer state, which steps it and broadcasts
the new parameters (ZeRO-1/2 style sharding of the offloaded state).
"""

import atexit
import collections
import concurrent.futures
import contextlib
import gc
import os
import threading
import time
import weakref

import numpy as np
import torch
import torch.utils.checkpoint

from tierlm.errors import BudgetError, CorruptError, InvalidArgumentError, UnsupportedError
from tierlm.sizes import format_size, parse_size
from tierlm.tiers import HostTier
from tierlm.train import _disk
from tierlm.train.adamw import adam_step, moments_dtype_of

ALIGN_ELEMS = 16  # each parameter starts on a 64-byte line inside its unit's flat buffer
PAGE_ELEMS = _disk.ALIGN // 4  # unit regions are page-aligned, so disk reads are O_DIRECT-able
CHECKPOINT_FORMAT = "tierlm-train-checkpoint"
CHECKPOINT_VERSION = 1


def _round(n, k):
    return (n + k - 1) // k * k


def _page(nbytes):
    return _round(nbytes, _disk.ALIGN)


def find_blocks(model):
    """The longest nn.ModuleList whose children are all of one class (the decoder layers)."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise InvalidArgumentError(
            "offload: found no nn.ModuleList of repeated blocks in the model; pass "
            "blocks=[...] (the modules to stream one at a time)"
        )
    return list(best[1])


class _Unit:
    """One block (or the root): its parameters laid out in one flat fp32 buffer."""

    def __init__(self, index, name, module, entries):
        self.index = index
        self.name = name
        self.module = module
        self.train = [(n, p) for n, p in entries if p.requires_grad]
        self.frozen = [(n, p) for n, p in entries if not p.requires_grad]
        self.offsets = {}
        pos = 0
        for _, p in self.train:
            self.offsets[id(p)] = pos
            pos = _round(pos + p.numel(), ALIGN_ELEMS)
        self.n_train = _round(pos, PAGE_ELEMS)
        # [a, b) ranges of the flat gradient no trainable parameter covers (alignment padding)
        self.gaps = []
        pos = 0
        for _, p in self.train:
            if self.offsets[id(p)] > pos:
                self.gaps.append((pos, self.offsets[id(p)]))
            pos = self.offsets[id(p)] + p.numel()
        if self.n_train > pos:
            self.gaps.append((pos, self.n_train))
        pos = self.n_train
        for _, p in self.frozen:
            self.offsets[id(p)] = pos
            pos = _round(pos + p.numel(), ALIGN_ELEMS)
        self.n_total = _round(pos, PAGE_ELEMS)
        self.params = [p for _, p in self.train] + [p for _, p in self.frozen]
        self.names = [n for n, _ in self.train] + [n for n, _ in self.frozen]
        self.home = "host"
        self.owner = 0
        self.step = 0
        # Materialised state (numpy views of host-tier buffers).
        self.p = None  # flat fp32 [n_total]
        self.p_buf = None
        self.p_tensor = None  # torch view of p
        # What the parameters are views of while materialised: p_tensor itself, or a copy of
        # it on the compute device.
        self.compute = None
        self.g = None
        self.g_buf = None
        self.m = self.v = None
        self.m_buf = self.v_buf = None
        self.ext_p = self.ext_m = self.ext_v = None
        self.prefetch = None  # (buffer, array, future) of p
        self.mv_prefetch = None  # (m_buf, m, v_buf, v, futures)
        self.fired = set()
        self.submitted = False


def _released(shape, device=None):
    # A stand-in with the parameter's shape that owns no memory (stride 0).
    return torch.zeros((), dtype=torch.float32, device=device).expand(shape)


class StepStats(dict):
    """Per-step counters: bytes per tier, seconds per activity, overlap and tier peaks."""


class OffloadTrainer:
    """Created by tierlm.train.offload(); see the module docstring for the loop.

    Attributes: units (root + one per block), homes() ({unit: "host"|"disk"}), plan (the
    budget plan: minimum, all_host, root, transient_max bytes), host (the HostTier), disk
    (the disk home or None), last_stats (stats of the last step()).
    device: where blocks compute (see offload()). offload_activations: with a compute device
    and checkpoint_activations=False, the float32 tensors autograd saves for backward wait in
    host-tier buffers instead of device memory; computing in place on the host they already
    live there, so the flag changes nothing (with checkpointing the block inputs are the only
    activations kept).
    """

    def __init__(
        self,
        model,
        *,
        budget=None,
        disk_dir=None,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        blocks=None,
        checkpoint_activations=True,
        offload_activations=False,
        moments_dtype="float32",
        io_backend="auto",
        process_group=None,
        pipeline_depth=2,
        device=None,
    ):
        budget = dict(budget or {})
        unknown = set(budget) - {"host", "disk"}
        if unknown:
            raise InvalidArgumentError(
                f"offload: unknown tier(s) {sorted(unknown)} in budget; use 'host' and 'disk'"
            )
        self.model = model
        self.hyper = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.moments_dtype = moments_dtype_of(moments_dtype)
        self.state_itemsize = 2 if self.moments_dtype == torch.bfloat16 else 4
        self.checkpoint_activations = checkpoint_activations
        # With compute on the host (CPU build) activations already live in the host tier.
        self.offload_activations = offload_activations
        self.io_backend = io_backend
        if int(pipeline_depth) < 0:
            raise InvalidArgumentError(f"offload: pipeline_depth {pipeline_depth} is negative")
        self.pipeline_depth = int(pipeline_depth)
        self.disk_dir = disk_dir
        if getattr(getattr(model, "config", None), "use_cache", None):
            model.config.use_cache = False  # a KV cache would be updated twice by recompute

        # Data parallel: unit i's optimizer state lives on rank i % world.
        dist = torch.distributed
        self._dist = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(process_group) if self._dist else 0
        self.world = dist.get_world_size(process_group) if self._dist else 1
        # Gradients are reduced and parameters broadcast as host tensors, so over gloo: the
        # user's group when it is gloo, else (NCCL) a gloo group beside it. The optimizer
        # thread's broadcasts get a group of their own (one thread per group).
        many = self._dist and self.world > 1
        gloo = many and dist.get_backend(process_group) == "gloo"
        self._pg = process_group if not many or gloo else dist.new_group(backend="gloo")
        self._pg_job = dist.new_group(backend="gloo") if many else None

        self.units = self._build_units(model, blocks)
        self.blocks = self.units[1:]
        self.device = _compute_device(self.units, device)
        for u in self.units:
            u.owner = u.index % self.world

        host_budget = budget.get("host")
        self.plan = plan_units(self.units, self.state_itemsize, self.rank)
        if host_budget is None:
            from tierlm.budgets import available_host_bytes

            host_budget = max(self.plan["all_host"], int(available_host_bytes() * 0.75))
        host_budget = parse_size(host_budget, "host budget")
        if host_budget < self.plan["minimum"]:
            raise BudgetError(
                f"offload: host budget {format_size(host_budget)} ({host_budget} bytes) is below "
                f"the minimum this model needs, {format_size(self.plan['minimum'])} "
                f"({self.plan['minimum']} bytes: root unit {format_size(self.plan['root'])} "
                f"resident + the largest block's transient "
                f"{format_size(self.plan['transient_max'])}); raise budget['host'] to at "
                "least that"
            )
        self._place(host_budget)
        self.host = HostTier(host_budget, lock=False)
        self.disk = None
        if any(u.home == "disk" for u in self.units):
            disk_budget = budget.get("disk")
            self.disk = _disk.DiskHome(
                disk_dir,
                None if disk_budget is None else parse_size(disk_budget, "disk budget"),
                backend=io_backend,
            )

        self._executor = concurrent.futures.ThreadPoolExecutor(1, "tierlm-adam")
        self._jobs = collections.deque()
        self._lock = threading.Lock()
        self._phase = "idle"
        self._failed = None
        self._hooks = []
        self._block_index = {id(b.module): b for b in self.blocks}
        self._reset_counters()
        self.last_stats = None
        self._init_homes()
        if self.device is not None:
            _move_buffers(model, self.device)
        self._install()
        _LIVE.add(self)

    # ---------------------------------------------------------------- construction
    def _build_units(self, model, blocks):
        blocks = list(blocks) if blocks is not None else find_blocks(model)
        if not blocks:
            raise InvalidArgumentError("offload: blocks is empty")
        names = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), n)
        seen = set()
        units = []
        block_entries = []
        for block in blocks:
            entries = []
            for p in block.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                entries.append((names.get(id(p), f"?{len(entries)}"), p))
            block_entries.append((block, entries))
        root_entries = []
        for n, p in model.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                root_entries.append((n, p))
        units.append(_Unit(0, "root", model, root_entries))
        for i, (block, entries) in enumerate(block_entries):
            units.append(_Unit(i + 1, f"block{i}", block, entries))
        return units

    def _place(self, host_budget):
        """Homes of the blocks under the budget. All host when everything fits. Otherwise as
        many host blocks as fit beside room for pipeline_depth + 1 disk blocks' transient
        state (the block in backward, the one whose AdamW step and write-back are in flight,
        the next one prefetched), with the disk blocks spread evenly over the model: a
        contiguous run of them would put the whole step's disk traffic behind a fraction of
        its compute. Fewer host blocks when the budget is tight, then a shallower pipeline."""
        isz = self.state_itemsize
        blocks = self.blocks
        for u in blocks:
            u.home = "host"
        if self.plan["all_host"] <= host_budget or not blocks:
            return
        grad_max = max(_page(b.n_train * 4) for b in blocks)
        n = len(blocks)
        for depth in range(self.pipeline_depth, -1, -1):
            for n_disk in range(1, n + 1):
                disk = set(_spread(n_disk, n))
                resident = self.plan["root"] + sum(
                    _unit_host_bytes(b, isz, self.rank)
                    for i, b in enumerate(blocks)
                    if i not in disk
                )
                transient = max(
                    [_unit_transient(blocks[i], isz, self.rank) for i in disk] + [grad_max]
                )
                if resident + (1 + depth) * transient <= host_budget:
                    for i in disk:
                        blocks[i].home = "disk"
                    return
        for u in blocks:  # unreachable above the minimum budget (checked before)
            u.home = "disk"

    def _init_homes(self):
        """Copies every parameter into its home and points the model at it."""
        for u in self.units:
            owner = u.owner == self.rank
            if u.home == "host":
                u.p_buf, u.p = self._host_array(u.n_total, np.float32)
                u.p_tensor = torch.from_numpy(u.p)
                self._fill(u)
                if self._releasable(u):  # copied to the compute device when it runs
                    self._unbind(u)
                else:
                    self._bind(u)
                if owner and u.n_train:
                    u.m_buf, u.m = self._host_array(u.n_train, self._np_state())
                    u.v_buf, u.v = self._host_array(u.n_train, self._np_state())
                    u.m[:] = 0
                    u.v[:] = 0
            else:
                u.ext_p = self.disk.allocate(u.n_total * 4, f"{u.name} parameters")
                buf, arr = self._host_array(u.n_total, np.float32)
                self._fill(u, arr)
                self._wait([_disk.pwrite(u.ext_p, arr)], "write", u.name)
                if owner and u.n_train:
                    nbytes = u.n_train * self.state_itemsize
                    u.ext_m = self.disk.allocate(nbytes, f"{u.name} exp_avg")
                    u.ext_v = self.disk.allocate(nbytes, f"{u.name} exp_avg_sq")
                    zeros = arr.view(np.uint8)[:nbytes]
                    zeros[:] = 0
                    self._wait(
                        [_disk.pwrite(u.ext_m, zeros), _disk.pwrite(u.ext_v, zeros)],
                        "write",
                        u.name,
                    )
                    del zeros
                del buf, arr
                self._unbind(u)

    def _np_state(self):
        return np.uint16 if self.state_itemsize == 2 else np.float32

    def _torch_state(self, arr):
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if self.state_itemsize == 2 else t

    def _fill(self, u, arr=None):
        arr = u.p if arr is None else arr
        arr[:] = 0
        flat = torch.from_numpy(arr)
        for p in u.params:
            off = u.offsets[id(p)]
            flat[off : off + p.numel()].copy_(p.detach().reshape(-1))

    def _bind(self, u):
        """Points each parameter's .data at its slice of the unit's flat buffer: the host-tier
        buffer itself (no copy), or with a compute device a copy made there."""
        flat = u.p_tensor
        if self.device is not None:
            flat = torch.empty(u.n_total, dtype=torch.float32, device=self.device)
            flat.copy_(u.p_tensor)
            self._count("device_in", u.n_total * 4)
        u.compute = flat
        for p in u.params:
            off = u.offsets[id(p)]
            p.data = flat[off : off + p.numel()].view(p.shape)

    def _install(self):
        for u in self.units:
            for p in u.params[: len(u.train)]:
                self._hooks.append(
                    p.register_post_accumulate_grad_hook(
                        lambda param, u=u: self._grad_ready(u, param)
                    )
                )
        for u in self.blocks:
            module = u.module
            original = module.forward
            module.forward = self._wrap_forward(u, original)
            u.original_forward = original

    def state_dict(self):
        """{parameter name: tensor} of every parameter, read from its home (copies)."""
        self._drain()
        out = {}
        for u in self.units:
            p, _, _ = self._unit_arrays(u, state=False)
            flat = torch.from_numpy(p)
            for name, param in zip(u.names, u.params, strict=True):
                off = u.offsets[id(param)]
                out[name] = flat[off : off + param.numel()].view(param.shape).clone()
            p = flat = None  # back to the budget before the next unit
        return out

    def close(self, restore=True):
        """Waits for pending work, unhooks the model and stops the worker.

        restore=True gives every parameter back its own memory (outside the budget), so the
        model is a plain torch module again.
        """
        self._drain()
        self._drop_prefetches()
        if restore:
            values = self.state_dict()
            names = {id(p): n for u in self.units for n, p in zip(u.names, u.params, strict=True)}
            for u in self.units:
                for p in u.params:
                    value = values[names[id(p)]]
                    p.data = value if self.device is None else value.to(self.device)
                u.p = u.p_buf = u.p_tensor = u.compute = None
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for u in self.blocks:
            if hasattr(u, "original_forward"):
                u.module.forward = u.original_forward
        self._executor.shutdown(wait=True)

    # ---------------------------------------------------------------- memory
    def _host_array(self, n, dtype, optional=False, headroom=0):
        """A host-tier buffer and its numpy view. Mandatory requests wait for in-flight
        optimizer steps to free memory; optional ones (prefetches) are skipped unless they fit
        with `headroom` bytes to spare for what must still be allocated before any wait helps.
        """
        nbytes = max(1, n * np.dtype(dtype).itemsize)
        self._reap()
        if optional:
            if self.host.available < _page(nbytes) + headroom:
                return None, None
            try:
                buf = self.host.allocate(nbytes)
            except BudgetError:
                return None, None
        else:
            collected = False
            while True:
                try:
                    buf = self.host.allocate(nbytes)
                    break
                except BudgetError:
                    if self._wait_oldest() or self._drop_prefetches():
                        continue
                    if collected:
                        raise
                    # Buffers may be pinned only by reference cycles (a traceback's frames).
                    gc.collect()
                    collected = True
        arr = buf.numpy(np.dtype(dtype).name if dtype != np.uint16 else "uint16")[:n]
        return buf, arr

    def _wait(self, futures, what, name):
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        return time.perf_counter() - t0

    # ---------------------------------------------------------------- streaming
    def _read_p(self, u, optional=False, headroom=0):
        buf, arr = self._host_array(u.n_total, np.float32, optional=optional, headroom=headroom)
        if buf is None:
            return None
        fut = _disk.pread(u.ext_p, arr)
        self._count("disk_read", u.n_total * 4)
        return buf, arr, fut

    def _materialize(self, u, for_backward):
        if u.home == "disk" and u.p is None:
            staged = u.prefetch
            if staged is None:
                self._count("prefetch_miss", 1)
                if self._phase != "backward":
                    self._count("prefetch_miss_forward", 1)
                staged = self._read_p(u)
            u.prefetch = None
            buf, arr, fut = staged
            waited = self._wait([fut], "read", u.name)
            self._add_time("io_wait", waited)
            self._add_time(
                "io_wait_backward" if self._phase == "backward" else "io_wait_forward", waited
            )
            u.p_buf, u.p = buf, arr
            u.p_tensor = torch.from_numpy(arr)
        if u.compute is None:
            self._bind(u)
        if for_backward and u.n_train and u.g is None:
            # Each parameter's gradient is copied in when autograd finishes it (_grad_ready):
            # cheaper than zeroing the buffer and letting autograd add into it. Only the
            # alignment gaps between parameters are zeroed (AdamW runs over them too).
            u.g_buf, u.g = self._host_array(u.n_train, np.float32)
            for a, b in u.gaps:
                u.g[a:b] = 0

    def _releasable(self, u):
        """Whether u's parameters are materialised only around its forward and backward: a
        disk unit's (its host buffer too), and with a compute device every block's copy there.
        The root unit (embeddings, head: not wrapped) stays materialised."""
        return u.home == "disk" or (self.device is not None and u is not self.units[0])

    def _unbind(self, u):
        """Points u's parameters at stand-ins that own no memory; the compute copy goes."""
        for p in u.params:
            p.data = _released(p.shape, self.device)
        u.compute = None

    def _release(self, u):
        if not self._releasable(u) or u.compute is None:
            return
        self._unbind(u)
        if u.home == "disk":
            u.p = u.p_buf = u.p_tensor = None

    def _prefetch(self, u, headroom=0):
        if u is None or u.home != "disk" or u.p is not None or u.prefetch is not None:
            return
        u.prefetch = self._read_p(u, optional=True, headroom=headroom)

    def _prefetch_backward(self, u):
        """While u is in backward: its moments first (needed for its AdamW step), then the
        next disk block's params and moments if that leaves room for what must come before
        u's step can free memory."""
        self._prefetch_moments(u)
        needs_mv = u.home == "disk" and u.n_train and u.owner == self.rank and u.mv_prefetch is None
        nxt = self._next_disk(u, -1)
        if nxt is None:
            return
        # Room for u's moments and for nxt's gradient, so neither waits on an AdamW step.
        headroom = _page(nxt.n_train * 4)
        if needs_mv:
            headroom += 2 * _page(u.n_train * self.state_itemsize)
        self._prefetch(nxt, headroom=headroom)
        if nxt.prefetch is not None or nxt.p is not None:
            self._prefetch_moments(nxt, headroom=headroom)

    def _prefetch_moments(self, u, headroom=0):
        if (
            u.home != "disk"
            or not u.n_train
            or u.owner != self.rank
            or u.mv_prefetch is not None
            or u.submitted
        ):
            return
        nbytes = _page(u.n_train * self.state_itemsize)
        mb, m = self._host_array(
            u.n_train, self._np_state(), optional=True, headroom=headroom + nbytes
        )
        if mb is None:
            return
        vb, v = self._host_array(u.n_train, self._np_state(), optional=True, headroom=headroom)
        if vb is None:
            return
        futs = [_disk.pread(u.ext_m, m), _disk.pread(u.ext_v, v)]
        self._count("disk_read", 2 * u.n_train * self.state_itemsize)
        u.mv_prefetch = (mb, m, vb, v, futs)

    def _next_disk(self, u, direction):
        """The nearest disk-homed block after u (None: from the start) in the direction compute
        goes (+1 forward, -1 backward), or None."""
        i = (-1 if direction > 0 else len(self.blocks)) if u is None else u.index - 1
        i += direction
        while 0 <= i < len(self.blocks):
            if self.blocks[i].home == "disk":
                return self.blocks[i]
            i += direction
        return None

    def _wrap_forward(self, u, original):
        def run(*args, **kwargs):
            backward = self._phase == "backward"
            self._materialize(u, for_backward=backward)
            if backward:
                self._prefetch_backward(u)
            else:  # the next pipeline_depth disk blocks' params (no gradients yet)
                nxt = u
                for _ in range(max(1, self.pipeline_depth)):
                    nxt = self._next_disk(nxt, +1)
                    if nxt is None:
                        break
                    self._prefetch(nxt)
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            self._add_time("compute_fwd", time.perf_counter() - t0)
            return out

        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                out = run(*args, **kwargs)
                if self._phase != "backward":
                    self._release(u)
                return out
            if self.checkpoint_activations:
                out = torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)
            else:
                with torch.autograd.graph.saved_tensors_hooks(
                    self._pack_hook(u), self._unpack_hook
                ):
                    out = run(*args, **kwargs)
            # The last disk block forward is the first backward: keep it rather than read it
            # again at once (its AdamW step releases it).
            if self._phase != "backward" and not (
                self.pipeline_depth and u is self._next_disk(None, -1)
            ):
                self._release(u)
            return out

        return forward

    def _pack_hook(self, u):
        def pack(t):
            if self._releasable(u) and u.compute is not None:
                try:
                    same = t.untyped_storage().data_ptr() == u.compute.untyped_storage().data_ptr()
                except RuntimeError:
                    same = False
                if same:
                    return ("tierlm-param", u, t.size(), t.stride(), t.storage_offset())
            if (
                self.offload_activations
                and self.device is not None
                and t.device == self.device
                and t.dtype == torch.float32
            ):
                buf, arr = self._host_array(t.numel(), np.float32)
                torch.from_numpy(arr).copy_(t.reshape(-1))
                self._count("activations_out", t.numel() * 4)
                return ("tierlm-activation", buf, arr, t.size())
            return t

        return pack

    def _unpack_hook(self, packed):
        if isinstance(packed, tuple) and len(packed) == 5 and packed[0] == "tierlm-param":
            _, u, size, stride, offset = packed
            self._materialize(u, for_backward=True)
            self._prefetch_backward(u)
            return torch.as_strided(u.compute, size, stride, offset)
        if isinstance(packed, tuple) and len(packed) == 4 and packed[0] == "tierlm-activation":
            _, _buf, arr, size = packed  # the host-tier buffer lives as long as the pack
            return torch.from_numpy(arr).to(self.device, copy=True).view(size)
        return packed

    # ---------------------------------------------------------------- optimizer
    def _grad_ready(self, u, param):
        if self._phase != "backward":
            return
        if u.g is None:
            self._materialize(u, for_backward=True)
        off = u.offsets[id(param)]
        torch.from_numpy(u.g)[off : off + param.numel()].copy_(param.grad.reshape(-1))
        if self.device is not None:
            self._count("device_out", param.numel() * 4)
        param.grad = None  # torch's buffer goes now; AdamW reads the unit's flat gradient
        u.fired.add(id(param))
        if len(u.fired) == len(u.train):
            self._submit(u)

    def _submit(self, u):
        u.submitted = True
        if self._dist and self.world > 1:
            g = torch.from_numpy(u.g)
            t0 = time.perf_counter()
            torch.distributed.reduce(g, dst=u.owner, group=self._pg)
            g.div_(self.world)
            self._add_time("comm", time.perf_counter() - t0)
        owner = u.owner == self.rank
        u.step += 1
        mv = None
        if owner and u.home == "disk" and u.n_train:
            mv = u.mv_prefetch
            u.mv_prefetch = None
            if mv is None:
                mb, m = self._host_array(u.n_train, self._np_state())
                vb, v = self._host_array(u.n_train, self._np_state())
                futs = [_disk.pread(u.ext_m, m), _disk.pread(u.ext_v, v)]
                self._count("disk_read", 2 * u.n_train * self.state_itemsize)
                mv = (mb, m, vb, v, futs)
            u.m_buf, u.m, u.v_buf, u.v = mv[:4]
        fired = None if len(u.fired) == len(u.train) else set(u.fired)
        job = self._executor.submit(self._job, u, u.step, mv[4] if mv else [], fired)
        self._jobs.append((u, job))

    def _job(self, u, step, reads, fired):
        """Background thread: AdamW on the unit, state written back to its home."""
        t0 = time.perf_counter()
        for f in reads:
            f.result()
        t1 = time.perf_counter()
        if u.owner == self.rank and u.n_train:
            m, v = self._torch_state(u.m), self._torch_state(u.v)
            p = u.p_tensor[: u.n_train]
            g = torch.from_numpy(u.g)
            if fired is None:
                adam_step(p, g, m, v, step=step, **self.hyper)
            else:  # some parameters got no gradient: torch skips them, so do we
                for param in u.params[: len(u.train)]:
                    if id(param) in fired:
                        a, b = u.offsets[id(param)], u.offsets[id(param)] + param.numel()
                        adam_step(p[a:b], g[a:b], m[a:b], v[a:b], step=step, **self.hyper)
        m = v = p = g = None  # a traceback kept by the caller must not pin the buffers
        t2 = time.perf_counter()
        if self._pg_job is not None and u.n_train:
            torch.distributed.broadcast(u.p_tensor[: u.n_train], src=u.owner, group=self._pg_job)
        t3 = time.perf_counter()
        writes = []
        if u.home == "disk" and u.n_train:
            writes.append(_disk.pwrite(u.ext_p, u.p.view(np.uint8)[: u.n_train * 4]))
            if u.owner == self.rank:
                writes.append(_disk.pwrite(u.ext_m, u.m))
                writes.append(_disk.pwrite(u.ext_v, u.v))
        for f in writes:
            f.result()
        t4 = time.perf_counter()
        return dict(io=(t1 - t0) + (t4 - t3), optimizer=t2 - t1, comm=t3 - t2)

    def _finish(self, u, result):
        with self._lock:
            self._counters["io_job"] += result["io"]
            self._counters["optimizer"] += result["optimizer"]
            self._counters["comm"] += result["comm"]
        if u.home == "disk" and u.n_train:
            self._count("disk_write", u.n_train * 4)
            if u.owner == self.rank:
                self._count("disk_write", 2 * u.n_train * self.state_itemsize)
        self._reset_unit(u)

    def _reset_unit(self, u):
        """Drops a unit's gradients and step bookkeeping; a disk unit also its moments and
        parameter buffers."""
        for p in u.params[: len(u.train)]:
            p.grad = None
        u.g = u.g_buf = None
        u.fired = set()
        u.submitted = False
        if u.home == "disk":
            u.m = u.v = u.m_buf = u.v_buf = None
        # The host copy is the master: a compute-device copy is stale after the step.
        self._release(u)
        if self.device is not None and u.compute is not None:  # the root stays resident
            u.compute.copy_(u.p_tensor)
            self._count("device_in", u.n_total * 4)

    def _wait_oldest(self):
        if not self._jobs:
            return False
        u, job = self._jobs.popleft()
        t0 = time.perf_counter()
        try:
            result = job.result()
        except BaseException as error:
            self._fail_pending()
            self._failed = (
                f"{u.name}'s optimizer step failed ({type(error).__name__}: {error}); its state "
                "in the host/disk tiers may be half-written"
            )
            self._abort_backward()
            raise
        self._add_time("wait_optimizer", time.perf_counter() - t0)
        self._finish(u, result)
        return True

    def _reap(self):
        """Finishes the optimizer steps already done (frees their buffers) without waiting."""
        while self._jobs and self._jobs[0][1].done():
            self._wait_oldest()

    def _fail_pending(self):
        # Let the other jobs finish (their state stays consistent) before reporting.
        while self._jobs:
            u, job = self._jobs.popleft()
            with contextlib.suppress(BaseException):
                job.result()

    def _drain(self):
        while self._wait_oldest():
            pass

    # ---------------------------------------------------------------- the loop
    def _check_usable(self):
        if self._failed:
            raise InvalidArgumentError(
                f"offload: training state is not usable: {self._failed}; call "
                "trainer.resume(checkpoint_dir) to continue from the last checkpoint"
            )

    def backward(self, loss):
        """loss.backward(), stepping each unit's AdamW as soon as its gradients are done."""
        self._check_usable()
        self._drain()
        self._phase = "backward"
        root = self.units[0]
        for u in self.units:  # autograd must hand over fresh gradients, not add to old ones
            for p in u.params[: len(u.train)]:
                p.grad = None
        t0 = time.perf_counter()
        try:
            self._materialize(root, for_backward=True)
            loss.backward()
        except BaseException:
            self._phase = "idle"
            self._abort_backward()
            raise
        self._phase = "idle"
        self._add_time("backward", time.perf_counter() - t0)
        self._loss = float(loss.detach())

    def _abort_backward(self):
        self._fail_pending()
        for u in self.units:
            self._reset_unit(u)
        self._drop_prefetches()

    def _drop_prefetches(self):
        """Waits for prefetch reads still in flight and frees their buffers (a read must not
        outlive its buffer nor race a write of its extent). True when any was dropped."""
        dropped = False
        for u in self.units:
            futures = []
            if u.prefetch is not None:
                futures.append(u.prefetch[2])
            if u.mv_prefetch is not None:
                futures += u.mv_prefetch[4]
            for f in futures:
                with contextlib.suppress(BaseException):  # a failed read is simply not used
                    f.result()
            dropped = dropped or bool(futures)
            u.prefetch = u.mv_prefetch = None
        return dropped

    def step(self):
        """Finishes this step's optimizer work (units whose gradients were incomplete too)."""
        self._check_usable()
        for u in self.units:
            if u.fired and not u.submitted:
                self._submit(u)
        self._drain()
        self._drop_prefetches()
        for u in self.units:
            self._release(u)
        self.last_stats = self._step_stats()
        self._reset_counters()
        if self.pipeline_depth:  # the next forward's first disk block, read while idle
            self._prefetch(self._next_disk(None, +1))
        return self.last_stats

    def zero_grad(self, set_to_none=True):
        """Gradients are freed as they are consumed; this clears any the user made."""
        for u in self.units:
            if u.g is None:
                for p in u.params:
                    p.grad = None

    # ---------------------------------------------------------------- stats
    def _reset_counters(self):
        self._counters = collections.Counter()
        self._t_step = time.perf_counter()
        if hasattr(self, "host"):
            self._host_stats0 = self.host.stats()

    def _count(self, key, nbytes):
        with self._lock:
            self._counters[key] += nbytes

    def _add_time(self, key, seconds):
        with self._lock:
            self._counters[key] += seconds

    def _step_stats(self):
        c = self._counters
        wall = time.perf_counter() - self._t_step
        host = self.host.stats()
        background = c["optimizer"] + c["io_job"] + c["comm"]
        exposed = c["wait_optimizer"]
        overlap = 1.0 - min(exposed, background) / background if background > 0 else 1.0
        stats = StepStats(
            loss=getattr(self, "_loss", None),
            wall_s=wall,
            compute_s=max(0.0, wall - exposed - c["io_wait"]),
            io_wait_s=c["io_wait"],
            io_wait_forward_s=c["io_wait_forward"],
            io_wait_backward_s=c["io_wait_backward"],
            prefetch_misses=c["prefetch_miss"],
            prefetch_misses_forward=c["prefetch_miss_forward"],
            io_background_s=c["io_job"],
            optimizer_s=c["optimizer"],
            comm_s=c["comm"],
            optimizer_exposed_s=exposed,
            overlap=overlap,
            disk_read_bytes=c["disk_read"],
            disk_write_bytes=c["disk_write"],
            # Every disk transfer lands in or leaves from a host-tier staging buffer.
            host_bytes_in=c["disk_read"],
            host_bytes_out=c["disk_write"],
            host_peak=host["peak"],
            host_budget=host["budget"],
            host_current=host["current"],
            # Parameters copied to the compute device, gradients copied back (0 on the CPU).
            device_bytes_in=c["device_in"],
            device_bytes_out=c["device_out"],
            activation_bytes_offloaded=c["activations_out"],
        )
        if self.disk is not None:
            d = self.disk.stats()
            stats.update(disk_peak=d["peak"], disk_budget=d["budget"])
        return stats

    def homes(self):
        """{unit name: "host" | "disk"}."""
        return {u.name: u.home for u in self.units}

    # ---------------------------------------------------------------- checkpoints
    def _unit_arrays(self, u, state=True):
        """(params, m, v) of a unit as numpy arrays read from its home."""
        if u.home == "host":
            p = u.p
            m, v = u.m, u.v
            return p, m, v
        _, p = self._host_array(u.n_total, np.float32)
        futs = [_disk.pread(u.ext_p, p)]
        m = v = None
        if state and u.owner == self.rank and u.n_train:
            _, m = self._host_array(u.n_train, self._np_state())
            _, v = self._host_array(u.n_train, self._np_state())
            futs += [_disk.pread(u.ext_m, m), _disk.pread(u.ext_v, v)]
        self._wait(futs, "read", u.name)
        return p, m, v

    def save(self, directory):
        """Writes params + AdamW state to directory/ckpt-<step>, then flips LATEST atomically.

        Each file is written under a temporary name, fsynced and renamed; LATEST (the pointer
        resume() follows) is replaced last, so an interrupted save leaves the previous
        checkpoint intact and loadable.
        """
        from tierlm.train import checkpoint

        self._check_usable()
        self._drain()
        step = max(u.step for u in self.units)
        records = []

        def unit_payload(u):
            p, m, v = self._unit_arrays(u)
            parts = [p.view(np.uint8)]
            if m is not None:
                parts += [m.view(np.uint8), v.view(np.uint8)]
            return parts

        owned = [u for u in self.units if u.owner == self.rank]
        for u in self.units:
            records.append(
                dict(
                    name=u.name,
                    file=f"unit-{u.index:04d}.bin",
                    n_train=u.n_train,
                    n_total=u.n_total,
                    params=u.names,
                    step=u.step,
                    has_state=bool(u.n_train),
                )
            )
        meta = dict(
            format=CHECKPOINT_FORMAT,
            version=CHECKPOINT_VERSION,
            step=step,
            moments_dtype=str(self.moments_dtype).replace("torch.", ""),
            hyper=dict(self.hyper, betas=list(self.hyper["betas"])),
            world=self.world,
            units=records,
        )
        return checkpoint.write(
            directory, f"ckpt-{step:08d}", meta, [(u, unit_payload) for u in owned], self
        )

    def resume(self, directory):
        """Loads the checkpoint LATEST points to; CorruptError names a damaged file."""
        from tierlm.train import checkpoint

        self._drain()
        self._drop_prefetches()  # they hold the parameters this overwrites
        meta, path = checkpoint.read_meta(directory)
        if meta.get("moments_dtype") != str(self.moments_dtype).replace("torch.", ""):
            raise InvalidArgumentError(
                f"resume: {path} holds {meta.get('moments_dtype')} moments but this trainer "
                f"uses {self.moments_dtype}"
            )
        records = meta["units"]
        if len(records) != len(self.units) or any(
            r["name"] != u.name or r["n_total"] != u.n_total or r["n_train"] != u.n_train
            for r, u in zip(records, self.units, strict=False)
        ):
            raise CorruptError(
                f"resume: {os.path.join(path, 'manifest.json')} describes a different model "
                "(units, parameter sizes or trainable set differ)"
            )
        isz = self.state_itemsize
        for r, u in zip(records, self.units, strict=True):
            owner = u.owner == self.rank
            want = u.n_total * 4 + (2 * u.n_train * isz if u.n_train else 0)
            data = checkpoint.read_file(path, r["file"], meta, want)
            p_bytes = u.n_total * 4
            p = np.frombuffer(data, np.float32, u.n_total, 0)
            u.step = r["step"]
            if u.home == "host":
                u.p[:] = p
                if owner and u.n_train:
                    off = p_bytes
                    n = u.n_train
                    u.m[:] = np.frombuffer(data, self._np_state(), n, off)
                    u.v[:] = np.frombuffer(data, self._np_state(), n, off + n * isz)
            else:
                buf, arr = self._host_array(u.n_total, np.float32)
                arr[:] = p
                futs = [_disk.pwrite(u.ext_p, arr)]
                if owner and u.n_train:
                    _sb, s = self._host_array(2 * u.n_train * isz, np.uint8)
                    s[:] = np.frombuffer(data, np.uint8, 2 * u.n_train * isz, p_bytes)
                    half = u.n_train * isz
                    futs += [_disk.pwrite(u.ext_m, s[:half]), _disk.pwrite(u.ext_v, s[half:])]
                self._wait(futs, "write", u.name)
                del buf, arr, futs  # back to the budget before the next unit
                _sb = s = None
            self._reset_unit(u)  # a compute-device copy follows the loaded parameters
        self._failed = None
        return meta["step"]


_LIVE = weakref.WeakSet()


@atexit.register
def _detach_all():
    # At interpreter exit, drop the model's views of tier memory so the native buffers are
    # freed before the extension module goes away.
    for trainer in list(_LIVE):
        with contextlib.suppress(Exception):
            trainer._drain()
        with contextlib.suppress(Exception):
            trainer._drop_prefetches()  # no read may outlive its buffer
        for u in trainer.units:
            for p in u.params:
                with contextlib.suppress(Exception):
                    p.data = _released(p.shape)
                    p.grad = None
            u.p = u.p_buf = u.p_tensor = u.compute = u.g = u.g_buf = None
            u.m = u.v = u.m_buf = u.v_buf = u.prefetch = u.mv_prefetch = None
            u.ext_p = u.ext_m = u.ext_v = None
        trainer.host = trainer.disk = None


def _unit_host_bytes(u, isz, rank):
    """Bytes a unit holds in the host tier when its home is host."""
    total = _page(u.n_total * 4)
    if u.n_train and u.owner == rank:
        total += 2 * _page(u.n_train * isz)
    return total


def _unit_transient(u, isz, rank):
    """Bytes a disk-homed unit needs in the host tier while it is in backward + stepped."""
    total = _page(u.n_total * 4) + _page(u.n_train * 4)
    if u.n_train and u.owner == rank:
        total += 2 * _page(u.n_train * isz)
    return total


def _spread(k, n):
    """k of the indices 0..n-1, evenly spaced: no two adjacent while 2k <= n, both ends
    free while 2k < n."""
    step = n / k if k else 1.0  # >= 1, so flooring keeps them distinct
    return [int((j + 0.5) * step) for j in range(min(k, n))]


def plan_units(units, isz, rank=0):
    root = units[0]
    blocks = units[1:]
    root_bytes = _unit_host_bytes(root, isz, rank)
    transient_max = max([_unit_transient(b, isz, rank) for b in blocks] + [0])
    grad_max = max([_page(u.n_train * 4) for u in units] + [0])
    all_host = root_bytes + sum(_unit_host_bytes(b, isz, rank) for b in blocks) + grad_max
    # The root's gradient is held for the whole backward, beside one block's transient.
    minimum = root_bytes + _page(root.n_train * 4) + transient_max
    all_host = max(all_host + _page(root.n_train * 4), minimum)
    return dict(
        root=root_bytes + _page(root.n_train * 4),
        transient_max=transient_max,
        minimum=minimum,
        all_host=all_host,
    )


def _compute_device(units, device):
    """The device blocks compute on, None for in place in the host tier (CPU models by
    default). Every parameter must be float32 and on the CPU or on that device."""
    params = [(n, p) for u in units for n, p in zip(u.names, u.params, strict=True)]
    for name, p in params:
        if p.dtype != torch.float32:
            raise UnsupportedError(
                f"offload: parameter {name} is {p.dtype}; the offload trainer trains float32 "
                "models (convert with model.float())"
            )
    if device is None:
        where = {p.device for _, p in params}
        if len(where) > 1:
            raise UnsupportedError(
                f"offload: the model's parameters are on {sorted(map(str, where))}; give it "
                "on one device (model.cpu() or model.cuda())"
            )
        device = next(iter(where))
        if device.type == "cpu":
            return None
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise UnsupportedError(
            f"offload: cannot compute on {device}; the compute device is the CPU or a CUDA "
            "GPU (device=None computes where the model's parameters are)"
        )
    for name, p in params:
        if p.device.type != "cpu" and p.device != device:
            raise UnsupportedError(
                f"offload: parameter {name} is on {p.device}, neither the CPU nor the compute "
                f"device {device}; move the model (model.cpu())"
            )
    return device


def _move_buffers(model, device):
    # Buffers (rotary frequencies, masks) are small and stay on the compute device.
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)


def offload(model, budget=None, disk_dir=None, **options):
    """Wraps model for offloaded AdamW fine-tuning; returns the OffloadTrainer.

    budget: {"host": size, "disk": size} (sizes as bytes or "4GiB"); disk_dir: where
    disk-homed state lives. Options: lr, betas, eps, weight_decay, blocks,
    checkpoint_activations (True), offload_activations (False), moments_dtype ("float32" or
    "bfloat16"), io_backend ("auto" | "uring" | "threads"), process_group, pipeline_depth
    (2: when blocks go to disk, the budget keeps room for this many disk blocks in flight
    beside the one computing -- prefetched, or being stepped and written back -- at the cost
    of fewer host-resident blocks; 0 packs the host tier fullest), device (None: compute where
    the model's parameters are -- a CPU model in place in the host tier, no copies; a CUDA
    model or device="cuda": the host/disk homes stay the masters and each block's parameters
    are copied to the device for its forward and again for its backward, gradients copied
    back for the CPU AdamW; device="cpu" makes those copies on the CPU).
    """
    return OffloadTrainer(model, budget=budget, disk_dir=disk_dir, **options)


def offload_plan(model, blocks=None, moments_dtype="float32"):
    """{"minimum": bytes, "all_host": bytes, ...}: host budgets for offload(model) (rank 0)."""
    isz = 2 if moments_dtype_of(moments_dtype) == torch.bfloat16 else 4
    units = OffloadTrainer._build_units(None, model, blocks)
    return plan_units(units, isz, 0)


__all__ = ["OffloadTrainer", "StepStats", "find_blocks", "offload", "offload_plan"]
