"""OffloadTrainer: wires the offload trainer's parts (units and their placement, host staging,
prefetch, autograd hooks, the optimizer worker, data parallel, stats, checkpoints) to one
model, and runs the step: backward streams the blocks, step() finishes the optimizer work."""

import atexit
import contextlib
import time
import weakref

import numpy as np
import torch

from tierlm.errors import InvalidArgumentError
from tierlm.sizes import parse_size
from tierlm.tiers import HostTier
from tierlm.train import snapshot
from tierlm.train.adamw import moments_dtype_of
from tierlm.train.binding import Binding, compute_device, move_buffers, released
from tierlm.train.disk_home import DiskHome, wait_all
from tierlm.train.distributed import DataParallel
from tierlm.train.hooks import Hooks
from tierlm.train.placement import check_budget, place_blocks, plan_units
from tierlm.train.prefetch import Prefetcher
from tierlm.train.staging import HostStaging
from tierlm.train.stats import StepCounters
from tierlm.train.units import Moments, build_units
from tierlm.train.worker import OptimizerWorker


class OffloadTrainer:
    """Created by tierlm.train.offload(); see tierlm.train.offload for the loop.

    Attributes: units (root + one per block), homes() ({unit: "host"|"disk"}), plan (the
    budget plan: minimum, all_host, root, transient_max bytes), host (the HostTier), disk
    (the disk home or None), last_stats (stats of the last step()).
    device: where blocks compute (see offload()). offload_activations: with a compute device
    and checkpoint_activations=False, the float32 tensors autograd saves for backward wait in
    host-tier buffers instead of device memory; computing in place on the host they already
    live there, so the flag changes nothing (with checkpointing the block inputs are the only
    activations kept).
    The parts it is made of, for one another: dp (DataParallel), counters (StepCounters),
    staging (HostStaging), binding (Binding), prefetch (Prefetcher), worker
    (OptimizerWorker), hooks (Hooks).
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
        self.moments = Moments(moments_dtype_of(moments_dtype))
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

        self.dp = DataParallel(process_group)
        rank = self.dp.rank
        self.units = build_units(model, blocks)
        self.blocks = self.units[1:]
        self.device = compute_device(self.units, device)
        for u in self.units:
            u.owner = self.dp.owner_of(u.index)

        isz = self.moments.itemsize
        host_budget = budget.get("host")
        self.plan = plan_units(self.units, isz, rank)
        if host_budget is None:
            from tierlm.budgets import available_host_bytes

            host_budget = max(self.plan["all_host"], int(available_host_bytes() * 0.75))
        host_budget = parse_size(host_budget, "host budget")
        check_budget(self.plan, host_budget)
        place_blocks(self.blocks, self.plan, host_budget, isz, rank, self.pipeline_depth)
        self.host = HostTier(host_budget, lock=False)
        self.disk = None
        if any(u.home == "disk" for u in self.units):
            disk_budget = budget.get("disk")
            self.disk = DiskHome(
                disk_dir,
                None if disk_budget is None else parse_size(disk_budget, "disk budget"),
                backend=io_backend,
            )

        self.counters = StepCounters()
        self.worker = OptimizerWorker(
            self.hyper, self.moments, self.dp, self.counters, self.reset_unit, self._abort_backward
        )
        self.staging = HostStaging(self.host, self.worker.reap, self._make_room)
        self.binding = Binding(self.device, self.units[0], self.counters)
        self.prefetch = Prefetcher(
            self.blocks, self.staging, self.moments, self.counters, rank, self.pipeline_depth
        )
        self.hooks = Hooks(self)
        self._failed = None
        self._loss = None
        self.last_stats = None
        self._init_homes()
        if self.device is not None:
            move_buffers(model, self.device)
        self.hooks.install()
        _LIVE.add(self)

    def _init_homes(self):
        """Copies every parameter into its home and points the model at it."""
        for u in self.units:
            owner = u.owns_state(self.dp.rank)
            if u.home == "host":
                u.p_buf, u.p = self.staging.array(u.n_total, np.float32)
                u.p_tensor = torch.from_numpy(u.p)
                u.fill(u.p)
                if self.binding.releasable(u):  # copied to the compute device when it runs
                    self.binding.unbind(u)
                else:
                    self.binding.bind(u)
                if owner:
                    u.m_buf, u.m = self.staging.array(u.n_train, self.moments.numpy)
                    u.v_buf, u.v = self.staging.array(u.n_train, self.moments.numpy)
                    u.m[:] = 0
                    u.v[:] = 0
            else:
                u.ext_p = self.disk.allocate(u.n_total * 4, f"{u.name} parameters")
                buf, arr = self.staging.array(u.n_total, np.float32)
                u.fill(arr)
                wait_all([u.ext_p.pwrite(arr)])
                if owner:
                    nbytes = u.n_train * self.moments.itemsize
                    u.ext_m = self.disk.allocate(nbytes, f"{u.name} exp_avg")
                    u.ext_v = self.disk.allocate(nbytes, f"{u.name} exp_avg_sq")
                    zeros = arr.view(np.uint8)[:nbytes]
                    zeros[:] = 0
                    wait_all([u.ext_m.pwrite(zeros), u.ext_v.pwrite(zeros)])
                    del zeros
                del buf, arr  # back to the budget before the next unit
                self.binding.unbind(u)

    # ---------------------------------------------------------------- streaming
    def materialize(self, u, for_backward):
        """Makes u's parameters usable for compute (read from disk if need be, bound) and,
        for backward, gives it a gradient buffer."""
        if u.home == "disk" and u.p is None:
            staged = u.prefetch
            if staged is None:
                self.counters.add("prefetch_miss", 1)
                if not for_backward:
                    self.counters.add("prefetch_miss_forward", 1)
                staged = self.prefetch.read_params(u)
            u.prefetch = None
            buf, arr, fut = staged
            waited = wait_all([fut])
            self.counters.add("io_wait", waited)
            self.counters.add("io_wait_backward" if for_backward else "io_wait_forward", waited)
            u.p_buf, u.p = buf, arr
            u.p_tensor = torch.from_numpy(arr)
        if u.compute is None:
            self.binding.bind(u)
        if for_backward and u.n_train and u.g is None:
            # Each parameter's gradient is copied in when autograd finishes it (Hooks):
            # cheaper than zeroing the buffer and letting autograd add into it. Only the
            # alignment gaps between parameters are zeroed (AdamW runs over them too).
            u.g_buf, u.g = self.staging.array(u.n_train, np.float32)
            for a, b in u.gaps:
                u.g[a:b] = 0

    def submit(self, u):
        """Hands u to the optimizer worker once its gradient is complete (or at step())."""
        u.submitted = True
        self.counters.add("comm", self.dp.reduce_to_owner(torch.from_numpy(u.g), u.owner))
        u.step += 1
        reads = []
        if u.home == "disk" and u.owns_state(self.dp.rank):
            m_buf, u.m, v_buf, u.v, reads = self.prefetch.take_moments(u)
            u.m_buf, u.v_buf = m_buf, v_buf
        fired = None if len(u.fired) == len(u.train) else set(u.fired)
        self.worker.submit(u, reads, fired)

    def reset_unit(self, u):
        """Drops a unit's gradients and step bookkeeping; a disk unit also its moments and
        parameter buffers. A resident compute-device copy is refreshed from the master."""
        for p in u.params[: len(u.train)]:
            p.grad = None
        u.g = u.g_buf = None
        u.fired = set()
        u.submitted = False
        if u.home == "disk":
            u.m = u.v = u.m_buf = u.v_buf = None
        self.binding.release(u)
        self.binding.refresh(u)

    def _make_room(self):
        return self.worker.wait_oldest() or self.prefetch.drop(self.units)

    def mark_failed(self, reason):
        """Refuses backward/step/save until a resume succeeds."""
        self._failed = reason

    # ---------------------------------------------------------------- the loop
    def _check_open(self):
        if self.worker is None:
            raise InvalidArgumentError(
                "offload: this trainer was closed; make a new one with tierlm.train.offload()"
            )

    def _check_usable(self):
        self._check_open()
        failed = self._failed or self.worker.failed
        if failed:
            raise InvalidArgumentError(
                f"offload: training state is not usable: {failed}; call "
                "trainer.resume(checkpoint_dir) to continue from the last checkpoint"
            )

    def backward(self, loss):
        """loss.backward(), stepping each unit's AdamW as soon as its gradients are done."""
        self._check_usable()
        self.worker.drain()
        self.hooks.phase = "backward"
        root = self.units[0]
        for u in self.units:  # autograd must hand over fresh gradients, not add to old ones
            for p in u.params[: len(u.train)]:
                p.grad = None
        t0 = time.perf_counter()
        try:
            self.materialize(root, for_backward=True)
            loss.backward()
        except BaseException:
            self.hooks.phase = "idle"
            self._abort_backward()
            raise
        self.hooks.phase = "idle"
        self.counters.add("backward", time.perf_counter() - t0)
        self._loss = float(loss.detach())

    def _abort_backward(self):
        self.worker.cancel()
        for u in self.units:
            self.reset_unit(u)
        self.prefetch.drop(self.units)

    def step(self):
        """Finishes this step's optimizer work (units whose gradients were incomplete too)."""
        self._check_usable()
        for u in self.units:
            if u.fired and not u.submitted:
                self.submit(u)
        self.worker.drain()
        self.prefetch.drop(self.units)
        for u in self.units:
            self.binding.release(u)
        self.last_stats = self.counters.summary(
            self._loss, self.host.stats(), None if self.disk is None else self.disk.stats()
        )
        self.counters.reset()
        if self.pipeline_depth:  # the next forward's first disk block, read while idle
            self.prefetch.params(self.prefetch.next_disk(None, +1))
        return self.last_stats

    def zero_grad(self, set_to_none=True):
        """Gradients are freed as they are consumed; this clears any the user made."""
        for u in self.units:
            if u.g is None:
                for p in u.params:
                    p.grad = None

    def homes(self):
        """{unit name: "host" | "disk"}."""
        return {u.name: u.home for u in self.units}

    # ---------------------------------------------------------------- state
    def state_dict(self):
        """{parameter name: tensor} of every parameter, read from its home (copies)."""
        self._check_open()
        self.worker.drain()
        out = {}
        for u in self.units:
            p, _, _ = snapshot.read_unit(self, u, state=False)
            flat = torch.from_numpy(p)
            for name, param in zip(u.names, u.params, strict=True):
                out[name] = u.slice(flat, param).clone()
            p = flat = None  # back to the budget before the next unit
        return out

    def save(self, directory):
        """Writes params + AdamW state to directory/ckpt-<step>, then flips LATEST atomically.

        Each file is written under a temporary name, fsynced and renamed; LATEST (the pointer
        resume() follows) is replaced last, so an interrupted save leaves the previous
        checkpoint intact and loadable.
        """
        self._check_usable()
        self.worker.drain()
        return snapshot.save(self, directory)

    def resume(self, directory):
        """Loads the checkpoint LATEST points to; returns its step. All or nothing: on a
        damaged or mismatched checkpoint (CorruptError naming the file) the trainer is left
        exactly as it was."""
        self._check_open()
        self.worker.drain()
        self.prefetch.drop(self.units)  # they hold the parameters this overwrites
        step = snapshot.resume(self, directory)
        for u in self.units:
            self.reset_unit(u)  # a compute-device copy follows the loaded parameters
        self._failed = None
        self.worker.failed = None
        return step

    def close(self, restore=True):
        """Waits for pending work, unhooks the model and stops the worker.

        restore=True gives every parameter back its own memory (outside the budget), so the
        model is a plain torch module again. Closing twice does nothing.
        """
        if self.worker is None:
            return
        self.worker.drain()
        self.prefetch.drop(self.units)
        if restore:
            values = self.state_dict()
            for u in self.units:
                for name, p in zip(u.names, u.params, strict=True):
                    value = values[name]
                    p.data = value if self.device is None else value.to(self.device)
                u.p = u.p_buf = u.p_tensor = u.compute = None
        self.hooks.remove()
        self.worker.shutdown()
        # The parts call back into the trainer (reference cycles): let them go, so a closed
        # trainer and its tiers are freed once dropped, not at some later garbage collection.
        self.hooks = self.worker = self.staging = self.prefetch = None

    def detach(self):
        """At interpreter exit: drops the model's views of tier memory, so the native buffers
        are freed before the extension module goes away."""
        with contextlib.suppress(Exception):
            self.worker.drain()
        with contextlib.suppress(Exception):
            self.prefetch.drop(self.units)  # no read may outlive its buffer
        for u in self.units:
            for p in u.params:
                with contextlib.suppress(Exception):
                    p.data = released(p.shape)
                    p.grad = None
            u.p = u.p_buf = u.p_tensor = u.compute = u.g = u.g_buf = None
            u.m = u.v = u.m_buf = u.v_buf = u.prefetch = u.mv_prefetch = None
            u.ext_p = u.ext_m = u.ext_v = None
        if self.staging is not None:  # None once closed
            self.staging.close()
        self.host = self.disk = None


_LIVE = weakref.WeakSet()


@atexit.register
def _detach_all():
    for trainer in list(_LIVE):
        trainer.detach()
