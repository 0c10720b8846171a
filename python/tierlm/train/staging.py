"""Host-tier buffers of the offload trainer. A mandatory request waits for in-flight optimizer
steps (or drops prefetches) until it fits the budget; an optional one (a prefetch) is skipped
unless it fits with room to spare for what must still be allocated."""

import gc

import numpy as np

from tierlm.errors import BudgetError
from tierlm.train.units import pages


class HostStaging:
    """host: the HostTier. reap(): frees the buffers of optimizer steps already done.
    make_room(): waits for one step in flight or drops the prefetches; False when there was
    nothing to wait for."""

    def __init__(self, host, reap, make_room):
        self.host = host
        self._reap = reap
        self._make_room = make_room

    def close(self):
        """Lets go of the host tier (at interpreter exit, before the extension goes)."""
        self.host = None

    def array(self, n, dtype, optional=False, headroom=0):
        """(buffer, numpy view of n elements); (None, None) when an optional request does not
        fit with `headroom` bytes to spare."""
        nbytes = max(1, n * np.dtype(dtype).itemsize)
        self._reap()
        if optional:
            if self.host.available < pages(nbytes) + headroom:
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
                    if self._make_room():
                        continue
                    if collected:
                        raise
                    # Buffers may be pinned only by reference cycles (a traceback's frames).
                    gc.collect()
                    collected = True
        return buf, buf.numpy(np.dtype(dtype).name)[:n]
