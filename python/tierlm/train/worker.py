"""The optimizer worker: one background thread that runs each unit's fused AdamW step as soon
as its gradient is complete, then writes the new state back to the unit's home, while
autograd goes on with the earlier blocks (Fuyou's overlap). Steps finish in submission order."""

import collections
import concurrent.futures
import contextlib
import time

import numpy as np
import torch

from tierlm.train.adamw import adam_step
from tierlm.train.disk_home import wait_all


class OptimizerWorker:
    """hyper: lr, betas, eps, weight_decay; moments: the Moments dtype; dp: DataParallel;
    counters: StepCounters; on_done(u): called on the caller's thread when u's step is
    finished (frees its buffers); on_failure(): called when a step failed, before raising."""

    def __init__(self, hyper, moments, dp, counters, on_done, on_failure):
        self.hyper = hyper
        self.moments = moments
        self.dp = dp
        self.counters = counters
        self.on_done = on_done
        self.on_failure = on_failure
        self.failed = None  # what went wrong, once a step failed
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "tierlm-adam")
        self._jobs = collections.deque()

    def submit(self, u, reads, fired):
        """Steps u (u.step already counted) once `reads` (its moments) are in. fired: the
        ids of the parameters that got a gradient, None for all of them."""
        job = self._executor.submit(self._job, u, u.step, reads, fired)
        self._jobs.append((u, job))

    def _job(self, u, step, reads, fired):
        """Background thread: AdamW on the unit, state written back to its home."""
        t0 = time.perf_counter()
        for f in reads:
            f.result()
        t1 = time.perf_counter()
        if u.owns_state(self.dp.rank):
            m, v = self.moments.torch(u.m), self.moments.torch(u.v)
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
        if u.n_train:
            self.dp.broadcast_from_owner(u.p_tensor[: u.n_train], u.owner)
        t3 = time.perf_counter()
        writes = []
        if u.home == "disk" and u.n_train:
            writes.append(u.ext_p.pwrite(u.p.view(np.uint8)[: u.n_train * 4]))
            if u.owner == self.dp.rank:
                writes.append(u.ext_m.pwrite(u.m))
                writes.append(u.ext_v.pwrite(u.v))
        wait_all(writes)
        t4 = time.perf_counter()
        return dict(io_job=(t1 - t0) + (t4 - t3), optimizer=t2 - t1, comm=t3 - t2)

    def wait_oldest(self):
        """Finishes the oldest step in flight; False when there is none."""
        if not self._jobs:
            return False
        u, job = self._jobs.popleft()
        t0 = time.perf_counter()
        try:
            times = job.result()
        except BaseException as error:
            self.cancel()
            self.failed = (
                f"{u.name}'s optimizer step failed ({type(error).__name__}: {error}); its state "
                "in the host/disk tiers may be half-written"
            )
            self.on_failure()
            raise
        self.counters.add("wait_optimizer", time.perf_counter() - t0)
        self.counters.add_all(times)
        if u.home == "disk" and u.n_train:
            self.counters.add("disk_write", u.n_train * 4)
            if u.owner == self.dp.rank:
                self.counters.add("disk_write", 2 * u.n_train * self.moments.itemsize)
        self.on_done(u)
        return True

    def reap(self):
        """Finishes the steps already done (frees their buffers) without waiting."""
        while self._jobs and self._jobs[0][1].done():
            self.wait_oldest()

    def drain(self):
        while self.wait_oldest():
            pass

    def cancel(self):
        """Lets the steps in flight finish (their state stays consistent) and forgets them."""
        while self._jobs:
            _, job = self._jobs.popleft()
            with contextlib.suppress(BaseException):
                job.result()

    def shutdown(self):
        self._executor.shutdown(wait=True)
