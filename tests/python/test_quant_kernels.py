"""Quantized CPU kernels (GGUF block types) against gguf.quants, at every SIMD level this CPU
has, on awkward sizes. Weights come from quant_blocks.py (gguf.quants.quantize for the
32-block types, random blocks for the k-types).

Tolerances, per output, relative to |x| * |w_row| with W = gguf.quants.dequantize(blocks):
  - embedding rows equal the dequantized rows exactly (the kernels dequantize as ggml does);
  - linear vs f32 x: sqrt(B) / 254, B = 32 or 256 (kernels.hpp: each activation element is off
    by at most half a step of its block's int8 scale max|x| / 127);
  - linear vs x rounded through those int8 blocks in numpy: 1e-6 (f32 sums only).
"""

import functools

import numpy as np
import pytest
import tierlm
from quant_blocks import K_TYPES, QTYPES, block_elems, dequantize, quantized
from tierlm import _core

K = _core.kernels


def _levels():
    info = _core.cpu_info()
    return ["scalar"] + [lv for lv in ("avx2", "avx512") if info[lv]]


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def level(request):
    if request.param not in _levels():
        pytest.skip(f"CPU lacks {request.param}")
    before = _core.cpu_info()["simd_level"]
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(before)


@functools.lru_cache(maxsize=64)
def case(dtype, rows, cols, n, seed=0):
    rng = np.random.default_rng([rows, cols, n, seed])
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    blocks = quantized(dtype, w, rng)
    x = rng.standard_normal((n, cols), dtype=np.float32)
    return x, blocks, dequantize(blocks, dtype)


def rounded(x, block):
    """x through the kernels' activation blocks: d = max|x| / 127, q = round-half-even(x / d)
    computed as x * (1 / d), in f32."""
    xb = x.reshape(-1, block)
    d = (np.abs(xb).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    return (np.rint(xb * inv) * d).reshape(x.shape)


def scales(x, w):
    return (
        np.sqrt(np.square(x.astype(np.float64)).sum(1))[:, None]
        * np.sqrt(np.square(w.astype(np.float64)).sum(1))[None, :]
    )


SIZES_32 = [
    (1, 32, 1),
    (3, 96, 2),
    (37, 4128, 7),
    (4097, 32, 1),
    (37, 96, 33),
    (4097, 4128, 2),
    (3, 4128, 33),
    (1, 96, 7),
]
SIZES_K = [(r, {32: 256, 96: 768, 4128: 4352}[c], n) for r, c, n in SIZES_32]


@pytest.mark.parametrize("dtype", list(QTYPES))
def test_embedding_rows_equal_gguf_dequantize(level, dtype):
    rows, cols = 37, 3 * block_elems(dtype)
    _, blocks, ref = case(dtype, rows, cols, 1)
    ids = np.array([36, 0, 5, 5, 17], dtype=np.int32)
    out = K.embedding(blocks, ids, dtype=dtype)
    np.testing.assert_array_equal(out, ref[ids])


@pytest.mark.parametrize("dtype", list(QTYPES))
def test_linear_equals_dequantized_reference(level, dtype):
    block = block_elems(dtype)
    bound = np.sqrt(block) / 254
    for rows, cols, n in SIZES_K if dtype in K_TYPES else SIZES_32:
        if level == "scalar" and rows * cols * n > 50_000_000:
            continue  # the scalar reference is covered on the smaller cases and in C++
        x, blocks, w = case(dtype, rows, cols, n)
        y = K.linear(x, blocks, dtype=dtype)
        s = scales(x, w)
        exact = rounded(x, block).astype(np.float64) @ w.T.astype(np.float64)
        plain = x.astype(np.float64) @ w.T.astype(np.float64)
        what = f"{dtype} {level} rows {rows} cols {cols} n {n}"
        assert np.max(np.abs(y - exact) / s) <= 1e-6, what
        assert np.max(np.abs(y - plain) / s) <= bound, what
        if n > 1:  # decode (n = 1) of each row equals its row of the batch
            y1 = K.linear(x[-1:], blocks, dtype=dtype)
            assert np.max(np.abs(y1[0] - y[-1]) / s[-1]) <= 1e-6, what


def test_linear_bias_and_3d_input():
    x, blocks, w = case("q4_0", 5, 64, 6)
    bias = np.arange(5, dtype=np.float32)
    y = K.linear(x.reshape(2, 3, 64), blocks, bias, dtype="q4_0")
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y.reshape(6, 5), K.linear(x, blocks, dtype="q4_0") + bias, atol=1e-6)


def test_bad_quantized_arguments_are_clear():
    x, blocks, _ = case("q4_0", 5, 64, 1)
    with pytest.raises(ValueError, match="uint8"):
        K.linear(x, blocks.view(np.int8), dtype="q4_0")
    with pytest.raises(ValueError, match="whole q4_0 blocks"):
        K.linear(x, blocks[:, :-1], dtype="q4_0")
    with pytest.raises(ValueError, match="float32"):
        K.linear(x, blocks, np.zeros(5, np.float16), dtype="q4_0")
    with pytest.raises(ValueError, match="cols = 64"):
        K.linear(x[:, :32], blocks, dtype="q4_0")
    with pytest.raises(tierlm.UnsupportedError, match="norm weights must be f32, f16 or bf16"):
        K.rmsnorm(np.ones((1, 36), np.float32), blocks.reshape(-1)[:36], 1e-6, dtype="q4_0")
