"""Fixtures shared by the Python tests: the I/O back end and the SIMD level, each run over every
choice, with the choices this machine lacks skipped visibly (with the reason)."""

import os

# One intra-op thread for torch (and the BLAS under numpy), read when they are imported: the test
# models are tiny, and OpenMP workers forking and spinning per op beside pytest-xdist's other
# worker cost far more than they give (test_model.py took 7x the CPU time with two). tierlm's
# own thread pool does not read it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from tierlm import _core, io  # noqa: E402

IO_BACKENDS = ["threads", "uring"]
SIMD_LEVELS = ["scalar", "avx2", "avx512"]


def simd_supported(level):
    """Whether this CPU runs SIMD level `level` (every level up to the detected best)."""
    return SIMD_LEVELS.index(level) <= SIMD_LEVELS.index(_core.cpu_info()["simd_detected"])


@pytest.fixture(params=IO_BACKENDS)
def backend(request, monkeypatch):
    """An I/O back end, also set as TIERLM_IO so that what picks "auto" (model loads) uses it."""
    if request.param == "uring" and not io.probe()["uring_available"]:
        pytest.skip(f"io_uring unavailable: {io.probe()['reason']}")
    monkeypatch.setenv("TIERLM_IO", request.param)
    return request.param


@pytest.fixture(params=SIMD_LEVELS)
def level(request):
    """A SIMD level, set as the process's kernel level for the test (restored after)."""
    if not simd_supported(request.param):
        pytest.skip(f"CPU lacks {request.param} (best: {_core.cpu_info()['simd_detected']})")
    before = _core.cpu_info()["simd_level"]
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(before)


@pytest.fixture
def simd_levels():
    """The SIMD levels this CPU runs, for tests that compare them within one case."""
    return [lvl for lvl in SIMD_LEVELS if simd_supported(lvl)]
