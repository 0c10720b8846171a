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


class _Pending:
    """A request in flight; holds its buffer until result() (tierlm.io's keeper would hold
    completed buffers until it prunes, keeping host-tier memory charged after release)."""

    __slots__ = ("_native", "_buf")

    def __init__(self, native, buf):
        self._native = native
        self._buf = buf

    def result(self):
        try:
            return self._native.result()
        finally:
            self._buf = None


def pread(extent, buf, offset=0):
    return _Pending(extent._native.pread(buf, offset), buf)


def pwrite(extent, buf, offset=0):
    return _Pending(extent._native.pwrite(buf, offset), buf)
