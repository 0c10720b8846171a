"""Python face of the memory tiers: budgets given as sizes, buffers shared with numpy/torch."""

from tierlm import _core
from tierlm.io import InFlight
from tierlm.records import as_dict
from tierlm.sizes import parse_size

# Host buffers and disk extents start on multiples of this (the unit of O_DIRECT): libtierlm's
# kAlignment (tierlm/core/align.hpp).
PAGE = _core.ALIGNMENT


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
    def pinned(self):
        """Registered with CUDA for DMA (HostTier(pin=True) on a machine with a GPU)."""
        return self._native.pinned

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
    """Host DRAM under a byte budget; buffers are mlocked while RLIMIT_MEMLOCK allows.

    pin=True also registers each buffer with CUDA (where a GPU is usable) for fast copies to a
    device tier; it costs time and pinned memory, so only a user of a device tier asks for it.
    """

    def __init__(self, budget, lock=True, pin=False):
        self._native = _core.HostTier(parse_size(budget, "host budget"), bool(lock), bool(pin))

    def allocate(self, nbytes, alignment=PAGE):
        return HostBuffer(self._native.allocate(parse_size(nbytes, "allocation"), alignment))

    @property
    def budget(self):
        return self._native.budget

    @property
    def available(self):
        return self._native.available

    def stats(self):
        return as_dict(self._native.stats())


class DiskExtent:
    """4 KiB-aligned bytes of a DiskTier's scratch file; returned to the tier when dropped.

    read/write take any C-contiguous CPU buffer (numpy, torch, bytearray) and an offset
    inside the extent; pread/pwrite return a tierlm.io.Future.
    """

    def __init__(self, native, tier):
        self._native = native
        self._tier = tier

    @property
    def size(self):
        return self._native.size

    @property
    def offset(self):
        """Offset in the tier's scratch file (a multiple of 4096)."""
        return self._native.offset

    @property
    def reserved(self):
        return self._native.reserved

    def read(self, buf, offset=0):
        return self._native.read(buf, offset)

    def write(self, buf, offset=0):
        return self._native.write(buf, offset)

    def pread(self, buf, offset=0):
        return self._tier.inflight.track(self._native.pread(buf, offset), buf)

    def pwrite(self, buf, offset=0):
        return self._tier.inflight.track(self._native.pwrite(buf, offset), buf)

    def release(self):
        """Returns the space to the tier now."""
        self._native.release()

    def __len__(self):
        return self.size


class DiskTier:
    """Extents of an unlinked scratch file under `directory`, within a byte budget.

    Space is reserved with posix_fallocate at allocate(), so a full disk fails there
    (OSError ENOSPC naming the directory) instead of in the middle of a write.
    """

    def __init__(self, directory, budget, backend="auto", queue_depth=32, direct=True):
        self._native = _core.DiskTier(
            str(directory), parse_size(budget, "disk budget"), backend, queue_depth, direct
        )
        self.inflight = InFlight()  # buffers of requests in flight, shared by its extents

    def allocate(self, nbytes):
        """A DiskExtent of nbytes (reserved rounded up to 4 KiB); BudgetError past the budget."""
        return DiskExtent(self._native.allocate(parse_size(nbytes, "allocation")), self)

    def pread_batch(self, requests):
        """requests: [(extent, buf, offset in the extent), ...] in one submission; Futures."""
        return self._batch(self._native.pread_batch, requests)

    def pwrite_batch(self, requests):
        return self._batch(self._native.pwrite_batch, requests)

    def _batch(self, submit, requests):
        requests = [(extent._native, buf, offset) for extent, buf, offset in requests]
        natives = submit(requests)
        return [
            self.inflight.track(n, buf) for n, (_, buf, _) in zip(natives, requests, strict=True)
        ]

    @property
    def budget(self):
        return self._native.budget

    @property
    def available(self):
        return self._native.available

    @property
    def directory(self):
        return self._native.directory

    @property
    def backend(self):
        return self._native.file.backend

    def stats(self):
        return as_dict(self._native.stats())

    def __del__(self):
        inflight = getattr(self, "inflight", None)
        if inflight is not None:
            inflight.wait_all()
