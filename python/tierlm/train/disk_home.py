"""Disk home of offloaded training state: extents of a tierlm.DiskTier under one directory.

The native I/O engine (io_uring or a pread/pwrite pool, O_DIRECT when aligned) reads and writes
them through DiskExtent.pread / pwrite; buffers are numpy views of host-tier memory.
"""

import os
import shutil
import time

import tierlm
from tierlm.errors import InvalidArgumentError
from tierlm.sizes import format_size, round_up
from tierlm.tiers import PAGE


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
            return self.tier.allocate(round_up(nbytes, PAGE))
        except OSError as e:
            raise type(e)(
                e.errno,
                f"offload: cannot place {what} ({format_size(nbytes)}) on disk under "
                f"{self.dir}: {e.strerror or e}",
            ) from e

    def stats(self):
        return self.tier.stats()


def wait_all(futures):
    """Waits for every request (none may outlive its buffer, even when one fails) and raises
    the first failure; returns the seconds waited."""
    t0 = time.perf_counter()
    first = None
    for f in futures:
        try:
            f.result()
        except BaseException as error:  # noqa: BLE001  (re-raised once all are done)
            first = first or error
    if first is not None:
        raise first
    return time.perf_counter() - t0
