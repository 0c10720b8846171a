"""Python face of the memory tiers: budgets given as sizes, buffers shared with numpy/torch."""

from tierlm import _core
from tierlm.sizes import parse_size


class HostBuffer:
    """Page-aligned host memory charged to a HostTier's budget; freed when dropped."""

    def __init__(self, native):
        self._native = native

    @property
    def size(self):
        return self._native.size

    @property
    def locked(self):
        return self._native.locked

    @property
    def address(self):
        return self._native.address

    def numpy(self, dtype="uint8", shape=None):
        """A numpy view of the buffer (no copy), optionally reinterpreted."""
        array = self._native.numpy()
        if dtype != "uint8":
            array = array.view(dtype)
        return array if shape is None else array.reshape(shape)

    def __dlpack__(self, **kwargs):
        return self.numpy().__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.numpy().__dlpack_device__()

    def __len__(self):
        return self.size


class HostTier:
    """Host DRAM under a byte budget; buffers are mlocked while RLIMIT_MEMLOCK allows."""

    def __init__(self, budget, lock=True):
        self._native = _core.HostTier(parse_size(budget, "host budget"), lock)

    def allocate(self, nbytes, alignment=4096):
        return HostBuffer(self._native.allocate(parse_size(nbytes, "allocation"), alignment))

    @property
    def budget(self):
        return self._native.budget

    @property
    def available(self):
        return self._native.available

    def stats(self):
        return self._native.stats()
