"""Resident loads read the weights with O_DIRECT through the I/O engine, so the weights end up
in the host tier only and not a second time in the page cache (checked with mincore); where
the file system refuses O_DIRECT (tmpfs) the load falls back to buffered reads and says why."""

import ctypes
import mmap
import os
import shutil
import tempfile

import pytest
import tierlm
from models import package, prompt
from tierlm import io

_libc = ctypes.CDLL(None, use_errno=True)
PAGE = mmap.PAGESIZE


def cached_pages(path):
    """(pages of path in the page cache, pages of path), by mincore over a private mapping."""
    size = os.path.getsize(path)
    pages = -(-size // PAGE)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    start = ctypes.c_char.from_buffer(mm)
    try:
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec):
            pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        return sum(v & 1 for v in vec), pages
    finally:
        del start
        mm.close()


def weight_files(pkg):
    return [os.path.join(pkg, f) for f in sorted(os.listdir(pkg)) if f.startswith("weights-")]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    _, out = package("llama", str(tmp_path_factory.mktemp("resident_io")), dtype="bf16")
    return out


def test_resident_load_leaves_the_weights_out_of_the_page_cache(pkg, backend):
    files = weight_files(pkg)
    for path in files:
        io.drop_cache(path)
    before = sum(cached_pages(p)[0] for p in files)
    total = sum(cached_pages(p)[1] for p in files)
    model = tierlm.load(pkg)
    stats = model.stats()
    assert stats["io_backend"] == backend
    if not stats["io_direct"]:
        assert stats["io_direct_reason"]
        pytest.skip(f"O_DIRECT unavailable for {pkg}: {stats['io_direct_reason']}")
    assert stats["io_direct_reason"] == ""
    after = sum(cached_pages(p)[0] for p in files)
    # Only a weight file's unaligned tail (at most one page per file) goes through the cache.
    assert after - before <= len(files), (before, after, total)
    model.logits(prompt(5))
    # The measure itself sees a buffered read of the same files.
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    assert sum(cached_pages(p)[0] for p in files) >= total - len(files)


def test_refused_o_direct_falls_back_visibly(pkg, tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) here")
    copy = tempfile.mkdtemp(dir=shm)
    try:
        target = os.path.join(copy, "pkg")
        shutil.copytree(pkg, target)
        plain = tierlm.load(pkg).logits(prompt(5))
        model = tierlm.load(target)
        stats = model.stats()
        if stats["io_direct"]:
            pytest.skip(f"{shm} accepts O_DIRECT here")
        assert "O_DIRECT" in stats["io_direct_reason"], stats["io_direct_reason"]
        assert (model.logits(prompt(5)) == plain).all()
    finally:
        shutil.rmtree(copy, ignore_errors=True)
