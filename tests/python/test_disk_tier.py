import errno
import os

import numpy as np
import pytest
import tierlm


def test_budget_exactly_reached_then_exceeded(tmp_path, backend):
    tier = tierlm.DiskTier(tmp_path, 3 * 4096, backend=backend)
    assert tier.backend == backend
    a = tier.allocate(4096)
    b = tier.allocate(8192)
    assert tier.stats()["current"] == 3 * 4096 and tier.available == 0
    with pytest.raises(tierlm.BudgetError, match="disk tier.*budget"):
        tier.allocate(1)
    del a, b
    assert tier.stats()["current"] == 0
    assert tier.stats()["peak"] == 3 * 4096
    small = tierlm.DiskTier(tmp_path, "8KiB", backend=backend)
    with pytest.raises(tierlm.BudgetError):
        small.allocate(8193)
    assert small.allocate(8192).reserved == 8192


def test_round_trip_and_stats(tmp_path, backend):
    tier = tierlm.DiskTier(tmp_path, "1MiB", backend=backend)
    rng = np.random.default_rng(0)
    a, b = tier.allocate(4097), tier.allocate(10007)
    assert a.offset % 4096 == 0 and b.offset % 4096 == 0 and len(b) == 10007
    da = rng.integers(0, 256, 4097, dtype=np.uint8)
    db = rng.standard_normal(10007 // 8).astype(np.float64)  # 10000 bytes
    assert a.write(da) == 4097
    b.pwrite(db, 7).result()
    out = np.empty(4097, np.uint8)
    assert a.read(out) == 4097 and np.array_equal(out, da)
    back = np.empty_like(db)
    b.pread(back, 7).result()
    assert np.array_equal(back, db)
    s = tier.stats()
    assert (s["bytes_in"], s["bytes_out"], s["transfers"]) == (4097 + 10000, 4097 + 10000, 4)
    assert s["current"] == 8192 + 12288 and s["allocations"] == 2
    with pytest.raises(tierlm.InvalidArgumentError, match="outside the extent"):
        a.read(np.empty(2, np.uint8), 4096)
    with pytest.raises(tierlm.InvalidArgumentError, match="outside the extent"):
        b.write(np.empty(10001, np.uint8), 7)
    assert os.listdir(tmp_path) == []  # the scratch file is unlinked


def test_batches_over_several_extents(tmp_path, backend):
    tier = tierlm.DiskTier(tmp_path, "1MiB", backend=backend)
    sizes = [1, 4095, 4096, 4097, 30011]
    extents = [tier.allocate(n) for n in sizes]
    rng = np.random.default_rng(1)
    data = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    for fut in tier.pwrite_batch([(e, d, 0) for e, d in zip(extents, data, strict=True)]):
        fut.result()
    back = [np.zeros(n - 1 or 1, np.uint8) for n in sizes]
    pairs = [(e, b, 1 if n > 1 else 0) for e, b, n in zip(extents, back, sizes, strict=True)]
    for fut in tier.pread_batch(pairs):
        fut.result()
    assert np.array_equal(back[0], data[0])
    for b, d in zip(back[1:], data[1:], strict=True):
        assert np.array_equal(b, d[1:])
    with pytest.raises(tierlm.InvalidArgumentError, match="outside the extent"):
        tier.pread_batch([(extents[0], np.zeros(2, np.uint8), 0)])


def test_extents_reused_after_free(tmp_path, backend):
    tier = tierlm.DiskTier(tmp_path, 4 * 4096, backend=backend)
    x, y, z = (tier.allocate(4096) for _ in range(3))
    y_offset = y.offset
    del y
    again = tier.allocate(1)
    assert again.offset == y_offset
    again.release()
    x.release()
    z.release()
    whole = tier.allocate(4 * 4096)  # the freed neighbours coalesced
    assert whole.offset == 0 and tier.stats()["peak"] == 4 * 4096


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tierlm.DiskTier(missing, "1MiB")


def test_full_file_system_fails_at_allocation():
    # A tmpfs refuses at once a reservation larger than itself: a real ENOSPC, nothing filled.
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError as error:
        pytest.skip(f"no {shm}: {error}")
    size = stat.f_blocks * stat.f_frsize
    if size == 0:
        pytest.skip(f"{shm} has no size limit")
    tier = tierlm.DiskTier(shm, 1 << 62)
    with pytest.raises(OSError) as info:
        tier.allocate(size + (1 << 20))
    assert info.value.errno == errno.ENOSPC
    assert shm in str(info.value)
    assert tier.stats()["current"] == 0
    assert tier.allocate(4096).size == 4096
