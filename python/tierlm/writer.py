"""The Python writers' calls to the file system (export, checkpoint save). Each write, fsync
and copy first asks libtierlm's fault-injection hook (TIERLM_FAULT, parsed once in the native
I/O layer, with one count per process), so a fault sweep reaches Python's writes and the
engine's alike; and a failure becomes one error that names the file and what was kept."""

import errno
import os
import shutil
from contextlib import contextmanager

from tierlm import _core

_HINTS = {
    errno.ENOSPC: " (the file system is full: free space or write to another disk)",
    errno.EDQUOT: " (disk quota exceeded)",
    errno.EFBIG: " (file larger than the file system or RLIMIT_FSIZE allows)",
    errno.EIO: " (the device reported an error; check dmesg and the disk's health)",
    errno.EACCES: " (no permission to write there)",
    errno.EROFS: " (the file system is read-only)",
}


def fault_point(op, path, nbytes=0):
    """Bytes the call (op: write, fsync, ...) may move: nbytes, or fewer for an injected short
    count; raises the injected OSError naming path."""
    err, allowed = _core.io_fault_point(op, os.fspath(path), nbytes)
    if err:
        raise OSError(err, os.strerror(err), os.fspath(path))
    return allowed


def write(f, data):
    """Writes all of data (bytes-like, or str to a text file) to the open file f, continuing
    after short counts as a raw write would have to."""
    view = data if isinstance(data, str) else memoryview(data).cast("B")
    while len(view):
        n = fault_point("write", f.name, len(view))
        f.write(view[:n])
        view = view[n:]


def fsync(f):
    """Flushes f and fsyncs it to disk."""
    f.flush()
    fault_point("fsync", f.name)
    os.fsync(f.fileno())


def copy(src, dst):
    """shutil.copyfile, as one write of the file's size."""
    fault_point("write", dst, os.path.getsize(src))
    shutil.copyfile(src, dst)


@contextmanager
def writing(path):
    """Marks the OSErrors of a block with the file it writes (a file object's write does not)."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = os.fspath(path)
        raise


def write_error(error, action, kept):
    """An OSError of a writer as the one error to raise: `action` (e.g. "export to OUT") failed
    writing which file, why, what to do, and `kept` (what was left as it was)."""
    where = error.filename or "?"
    why = (error.strerror or str(error)) + _HINTS.get(error.errno, "")
    return OSError(error.errno, f"{action} failed writing {where}: {why}; {kept}", where)
