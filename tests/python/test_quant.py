"""tierlm.quant against the gguf package's numpy quants (ggml's layouts): quantized bytes equal
for the types gguf can quantize, dequantized values equal for all eight on our bytes and on
random bytes, and the k-type quantizers (ports of ggml's reference) within stated errors."""

import ctypes
import glob
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tierlm.errors import InvalidArgumentError  # noqa: E402
from tierlm.quant import BLOCKS, QUANT_DTYPES, dequantize, quantize, row_bytes  # noqa: E402

# bounds on the relative RMS error of quantize -> dequantize on Gaussian rows (measured:
# q8_0 0.0053, q4_0 0.085, q4_1 0.077, q5_0 0.043, q5_1 0.038, q4_k 0.070, q5_k 0.036,
# q6_k 0.0175, i.e. 53-72% of these)
RMS_BOUND = {
    "q8_0": 0.01,
    "q4_0": 0.12,
    "q4_1": 0.11,
    "q5_0": 0.06,
    "q5_1": 0.055,
    "q4_k": 0.1,
    "q5_k": 0.05,
    "q6_k": 0.025,
}


def qtype(dtype):
    return getattr(gguf.GGMLQuantizationType, dtype.upper())


def awkward(rows, cols, seed=0):
    """Gaussian rows at different scales, with the edge cases of the quantizers: an all-zero
    row, a constant row, all-positive and all-negative rows, tiny values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
    if rows >= 6:
        x[1] = 0
        x[2] = 0.5
        x[3] = np.abs(x[3])
        x[4] = -np.abs(x[4])
        x[5, : cols // 2] = 1e-20
    return x


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 37])
def test_dequantize_equals_gguf(dtype, rows):
    elems = BLOCKS[dtype][0]
    x = awkward(rows, elems * 3)
    raw = quantize(dtype, x)
    assert raw.shape == (rows, row_bytes(dtype, elems * 3)) and raw.dtype == np.uint8
    np.testing.assert_array_equal(
        dequantize(dtype, raw, x.shape), gguf.quants.dequantize(raw, qtype(dtype))
    )
    noise = np.random.default_rng(rows).integers(0, 256, raw.shape, dtype=np.uint8)
    with np.errstate(all="ignore"):  # random f16 scales include inf and NaN
        ours = dequantize(dtype, noise, x.shape)
        theirs = gguf.quants.dequantize(noise, qtype(dtype))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_quantize_bytes_equal_gguf(dtype):
    x = awkward(37, 32 * 7)
    np.testing.assert_array_equal(quantize(dtype, x), gguf.quants.quantize(x, qtype(dtype)))


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_round_trip_error(dtype):
    x = np.random.default_rng(3).standard_normal((64, 512)).astype(np.float32)
    back = dequantize(dtype, quantize(dtype, x), x.shape)
    rms = float(np.sqrt(np.mean((back - x) ** 2) / np.mean(x**2)))
    assert rms < RMS_BOUND[dtype], rms
    edge = awkward(8, 512)
    np.testing.assert_array_equal(dequantize(dtype, quantize(dtype, edge[1:2]), (1, 512)), 0)
    # each block reproduces a constant row up to its f16 scale
    const = dequantize(dtype, quantize(dtype, edge[2:3]), (1, 512))
    np.testing.assert_allclose(const, 0.5, rtol=0.02)


def test_k_types_beat_their_legacy_peers():
    """The k-quant search finds better scales than the one-shot 32-blocks of the same bits."""
    x = np.random.default_rng(5).standard_normal((64, 512)).astype(np.float32)

    def err(dtype):
        return float(np.mean((dequantize(dtype, quantize(dtype, x), x.shape) - x) ** 2))

    assert err("q4_k") < err("q4_0") and err("q5_k") < err("q5_0")


def test_bad_shapes_are_refused():
    with pytest.raises(InvalidArgumentError, match="33 elements is not a whole number of q4_0"):
        quantize("q4_0", np.zeros((2, 33), np.float32))
    with pytest.raises(InvalidArgumentError, match="q6_k data of shape"):
        dequantize("q6_k", np.zeros(209, np.uint8), (1, 256))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        quantize("q8_0", np.full((1, 32), np.nan, np.float32))
    with pytest.raises(InvalidArgumentError, match="not a quantized dtype"):
        quantize("q3_k", np.zeros((1, 256), np.float32))


def _ggml():
    """ggml's own quantizer (ggml_quantize_chunk) from llama-cpp-python's libraries, or None."""
    try:
        import llama_cpp
    except Exception:
        return None
    for path in glob.glob(
        os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.*")
    ):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.ggml_quantize_chunk
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3
        fn.argtypes += [ctypes.c_void_p]
        return fn
    return None


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_quantize_against_ggml(dtype):
    """Our quantizers against ggml's C reference (no importance matrix). The k-types search
    over float sums whose order (and FMA contraction) depends on ggml's build, so a few blocks
    pick another candidate scale, and equal values can be encoded differently (measured with
    llama-cpp-python 0.3.36: 0-8% of blocks differ in bytes, 0-3.4% in values): at most 5% of
    the blocks dequantize differently, at no worse total error."""
    fn = _ggml()
    if fn is None:
        pytest.skip("llama-cpp-python (with libggml-base) is not installed")
    x = awkward(37, 1024)
    theirs = np.zeros((37, row_bytes(dtype, 1024)), np.uint8)
    fn(int(qtype(dtype)), x.ctypes.data, theirs.ctypes.data, 0, 37, 1024, None)
    ours = quantize(dtype, x)
    block = BLOCKS[dtype][1]
    differ = (ours.reshape(-1, block) != theirs.reshape(-1, block)).any(axis=1).mean()
    if dtype in ("q4_k", "q5_k", "q6_k"):
        mine, ggml = dequantize(dtype, ours, x.shape), dequantize(dtype, theirs, x.shape)
        values_differ = (mine.reshape(-1, 256) != ggml.reshape(-1, 256)).any(axis=1).mean()
        assert values_differ <= 0.05, (differ, values_differ)
        assert np.mean((mine - x) ** 2) <= np.mean((ggml - x) ** 2) * 1.001
    else:
        assert differ == 0
