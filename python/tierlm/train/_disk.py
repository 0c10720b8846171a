"""Disk home of offloaded training state: extents of the disk tier, read and written as futures.

Uses tierlm.DiskTier (the native I/O engine: io_uring or a pread/pwrite pool, O_DIRECT when
aligned). Buffers passed in are numpy arrays over host-tier memory (page-aligned).
"""

import os
import shutil

import tierlm
from tierlm.errors import InvalidArgumentError
from tierlm.sizes import format_size

ALIGN = 4096


def round_up(n, align=ALIGN):
    return (n + align - 1) // align * align


def check_dir(disk_dir):
    """Raises a clear error when the state directory is missing or not writable."""
    if disk_dir is None:
        raise InvalidArgumentError(
            "offload: the budget puts state on disk but no disk_dir was given; pass "
            "disk_dir=<directory on a fast local drive> or raise the host budget"
        )
    if not os.path.isdir(disk_dir):
        raise FileNotFoundError(
            2,
            f"offload: disk_dir {disk_dir!r} does not exist; create it or choose another "
            "directory for the offloaded optimizer state",
        )
    if not os.access(disk_dir, os.W_OK):
        raise PermissionError(13, f"offload: disk_dir {disk_dir!r} is not writable")


class DiskHome:
    """The disk tier under one directory with a byte budget (default: the free space)."""

    def __init__(self, disk_dir, budget=None, backend="auto"):
        check_dir(disk_dir)
        if budget is None:
            budget = shutil.disk_usage(disk_dir).free
        self.dir = disk_dir
        self.tier = tierlm.DiskTier(disk_dir, budget, backend=backend)

    @property
    def backend(self):
        return self.tier.backend

    def allocate(self, nbytes, what):
        try:
            return self.tier.allocate(round_up(nbytes))
        except OSError as e:
            raise type(e)(
                e.errno,
                f"offload: cannot place {what} ({format_size(nbytes)}) on disk under "
                f"{self.dir}: {e.strerror or e}",
            ) from e

    def stats(self):
        return self.tier.stats()


# --- Until the native DiskTier lands on this branch (io branch): a pread/pwrite pool. ---
if not hasattr(tierlm, "DiskTier"):
    import concurrent.futures
    import tempfile
    import threading

    from tierlm.errors import BudgetError

    class _Extent:
        def __init__(self, tier, offset, size):
            self.tier, self.offset, self.size = tier, offset, size

        def _io(self, fn, buf, offset, write):
            mv = memoryview(buf).cast("B")
            n = len(mv)
            if offset + n > self.size:
                raise InvalidArgumentError(f"disk tier: {n} bytes at {offset} past extent")

            def run():
                done = 0
                while done < n:
                    k = fn(self.tier.fd, mv[done:], self.offset + offset + done)
                    if k == 0:
                        raise OSError(5, f"disk tier: short transfer in {self.tier.path}")
                    done += k
                with self.tier.lock:
                    self.tier.counters["bytes_in" if write else "bytes_out"] += n
                    self.tier.counters["transfers"] += 1
                return n

            return self.tier.pool.submit(run)

        def pread(self, buf, offset=0):
            return self._io(os.preadv_one, buf, offset, False)

        def pwrite(self, buf, offset=0):
            return self._io(os.pwritev_one, buf, offset, True)

    def _preadv_one(fd, mv, offset):
        return os.preadv(fd, [mv], offset)

    def _pwritev_one(fd, mv, offset):
        return os.pwritev(fd, [mv], offset)

    os.preadv_one = _preadv_one
    os.pwritev_one = _pwritev_one

    class _PyDiskTier:
        backend = "threads"

        def __init__(self, disk_dir, budget, backend="auto"):
            fd, self.path = tempfile.mkstemp(prefix="tierlm-disk-", dir=disk_dir)
            os.unlink(self.path)
            self.fd = fd
            self.budget = budget
            self.top = 0
            self.current = 0
            self.peak = 0
            self.lock = threading.Lock()
            self.counters = {"bytes_in": 0, "bytes_out": 0, "transfers": 0}
            self.pool = concurrent.futures.ThreadPoolExecutor(4)

        def allocate(self, nbytes):
            if self.current + nbytes > self.budget:
                raise BudgetError(
                    f"disk tier: allocation of {format_size(nbytes)} exceeds the budget of "
                    f"{format_size(self.budget)} ({format_size(self.current)} in use)"
                )
            off = self.top
            os.posix_fallocate(self.fd, off, nbytes)
            self.top += nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            return _Extent(self, off, nbytes)

        def stats(self):
            return dict(budget=self.budget, current=self.current, peak=self.peak, **self.counters)

    tierlm.DiskTier = _PyDiskTier
