"""Reads of disk-homed blocks into host-tier buffers ahead of need: in forward the next
pipeline_depth disk blocks' parameters, in backward the current block's moments (for its AdamW
step) and the next disk block's parameters and moments, each only when the budget has room."""

import contextlib

import numpy as np

from tierlm.train.units import pages


class Prefetcher:
    """blocks: the trainer's blocks in model order; staging: its HostStaging; moments: its
    Moments; counters: its StepCounters."""

    def __init__(self, blocks, staging, moments, counters, rank, pipeline_depth):
        self.blocks = blocks
        self.staging = staging
        self.moments = moments
        self.counters = counters
        self.rank = rank
        self.pipeline_depth = pipeline_depth

    def read_params(self, u, optional=False, headroom=0):
        """(buffer, array, future) of u's parameters read from disk; None when an optional
        read does not fit."""
        buf, arr = self.staging.array(u.n_total, np.float32, optional=optional, headroom=headroom)
        if buf is None:
            return None
        fut = u.ext_p.pread(arr)
        self.counters.add("disk_read", u.n_total * 4)
        return buf, arr, fut

    def read_moments(self, u, optional=False, headroom=0):
        """(m_buf, m, v_buf, v, futures) of u's moments read from disk, or None."""
        nbytes = pages(u.n_train * self.moments.itemsize)
        m_buf, m = self.staging.array(
            u.n_train, self.moments.numpy, optional=optional, headroom=headroom + nbytes
        )
        if m_buf is None:
            return None
        v_buf, v = self.staging.array(
            u.n_train, self.moments.numpy, optional=optional, headroom=headroom
        )
        if v_buf is None:
            return None
        futures = [u.ext_m.pread(m), u.ext_v.pread(v)]
        self.counters.add("disk_read", 2 * u.n_train * self.moments.itemsize)
        return m_buf, m, v_buf, v, futures

    def params(self, u, headroom=0):
        if u is None or u.home != "disk" or u.p is not None or u.prefetch is not None:
            return
        u.prefetch = self.read_params(u, optional=True, headroom=headroom)

    def forward(self, u):
        """While u runs forward: the next pipeline_depth disk blocks' parameters (no
        gradients yet to make room for)."""
        nxt = u
        for _ in range(max(1, self.pipeline_depth)):
            nxt = self.next_disk(nxt, +1)
            if nxt is None:
                break
            self.params(nxt)

    def backward(self, u):
        """While u is in backward: its moments first (needed for its AdamW step), then the
        next disk block's params and moments if that leaves room for what must come before
        u's step can free memory."""
        self.moments_of(u)
        needs_mv = u.home == "disk" and u.owns_state(self.rank) and u.mv_prefetch is None
        nxt = self.next_disk(u, -1)
        if nxt is None:
            return
        # Room for u's moments and for nxt's gradient, so neither waits on an AdamW step.
        headroom = pages(nxt.n_train * 4)
        if needs_mv:
            headroom += 2 * pages(u.n_train * self.moments.itemsize)
        self.params(nxt, headroom=headroom)
        if nxt.prefetch is not None or nxt.p is not None:
            self.moments_of(nxt, headroom=headroom)

    def moments_of(self, u, headroom=0):
        if (
            u.home != "disk"
            or not u.owns_state(self.rank)
            or u.mv_prefetch is not None
            or u.submitted
        ):
            return
        u.mv_prefetch = self.read_moments(u, optional=True, headroom=headroom)

    def take_moments(self, u):
        """u's moments for its AdamW step: the prefetched ones, else read now."""
        mv = u.mv_prefetch
        u.mv_prefetch = None
        return mv if mv is not None else self.read_moments(u)

    def next_disk(self, u, direction):
        """The nearest disk-homed block after u (None: from the start) in the direction compute
        goes (+1 forward, -1 backward), or None."""
        i = (-1 if direction > 0 else len(self.blocks)) if u is None else u.index - 1
        i += direction
        while 0 <= i < len(self.blocks):
            if self.blocks[i].home == "disk":
                return self.blocks[i]
            i += direction
        return None

    def drop(self, units):
        """Waits for prefetch reads still in flight and frees their buffers (a read must not
        outlive its buffer nor race a write of its extent). True when any was dropped."""
        dropped = False
        for u in units:
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
