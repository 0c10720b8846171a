import numpy as np
import pytest
import tierlm
from tierlm import _core


def test_budget_exactly_reached_then_exceeded():
    tier = tierlm.HostTier(3 * 4096)
    a = tier.allocate(4096)
    b = tier.allocate(8192)
    assert tier.stats()["current"] == 3 * 4096
    with pytest.raises(tierlm.BudgetError, match="host tier.*budget"):
        tier.allocate(1)
    del a, b
    assert tier.stats()["current"] == 0
    assert tier.stats()["peak"] == 3 * 4096


def test_budget_as_string():
    tier = tierlm.HostTier("1MiB")
    assert tier.budget == 1 << 20
    with pytest.raises(tierlm.InvalidArgumentError, match="host budget"):
        tierlm.HostTier("lots")


def test_numpy_view_shares_memory_and_keeps_buffer_alive():
    tier = tierlm.HostTier("1MiB")
    buf = tier.allocate(4097)
    view = buf.numpy()
    assert view.shape == (4097,)
    view[:] = 3
    assert buf.numpy()[4096] == 3
    assert buf.address % 4096 == 0
    floats = tierlm.HostTier("1MiB").allocate(40).numpy("float32", (2, 5))
    assert floats.shape == (2, 5)
    del buf
    assert view.sum() == 3 * 4097  # the view keeps the memory alive
    assert tier.stats()["current"] == 8192
    del view
    assert tier.stats()["current"] == 0


def test_dlpack_round_trip_numpy_and_torch():
    torch = pytest.importorskip("torch")
    buf = tierlm.HostTier("1MiB").allocate(64)
    as_numpy = np.from_dlpack(buf)
    as_torch = torch.from_dlpack(buf)
    as_torch[5] = 42
    assert as_numpy[5] == 42
    assert as_torch.data_ptr() == buf.address


def test_sizes():
    assert tierlm.parse_size("512MiB") == 512 << 20
    assert tierlm.parse_size("1.5GB") == 1_500_000_000
    assert tierlm.parse_size(7) == 7
    assert tierlm.format_size(4 << 20) == "4.0 MiB"
    with pytest.raises(tierlm.InvalidArgumentError):
        tierlm.parse_size(-1)


def test_memlock_limit_is_reported():
    assert _core.memlock_limit() > 0


def _require_gpu():
    if _core.device_count() == 0:
        pytest.skip(f"no GPU: {_core.device_unavailable_reason()}")


def test_device_tier_round_trip_and_budget():
    _require_gpu()
    tier = _core.DeviceTier(1 << 20)
    buf = tier.allocate(4097)
    src = np.arange(4097, dtype=np.uint8)
    tier.copy_in(buf, 0, src)
    out = np.zeros_like(src)
    tier.copy_out(buf, 0, out)
    np.testing.assert_array_equal(out, src)
    with pytest.raises(tierlm.BudgetError, match="device tier"):
        tier.allocate(1 << 20)
    assert tier.stats()["bytes_in"] == 4097


def test_device_tier_refused_without_gpu():
    if _core.device_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(tierlm.UnsupportedError, match="device tier"):
        _core.DeviceTier(1 << 20)
