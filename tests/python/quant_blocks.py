"""GGUF block tensors for the quantized tests: gguf.quants.quantize for the 32-block types and
random blocks of a chosen scale for the k-types, which gguf.quants cannot quantize (any bit
pattern is a valid block; only the f16 scales are set, to moderate values)."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
quants = pytest.importorskip("gguf.quants")

QTYPES = {
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
    "q5_0": gguf.GGMLQuantizationType.Q5_0,
    "q5_1": gguf.GGMLQuantizationType.Q5_1,
    "q4_k": gguf.GGMLQuantizationType.Q4_K,
    "q5_k": gguf.GGMLQuantizationType.Q5_K,
    "q6_k": gguf.GGMLQuantizationType.Q6_K,
}
K_TYPES = ("q4_k", "q5_k", "q6_k")
# Byte offsets of a k-block's f16 scales (d, and dmin where the type has one).
SCALES = {"q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def block_elems(dtype):
    return 256 if dtype in K_TYPES else 32


def dequantize(blocks, dtype):
    return quants.dequantize(blocks, QTYPES[dtype])


def random_k_blocks(dtype, rows, cols, rng, scale=1.0):
    """Random k-type blocks [rows, row_bytes] whose dequantized values have a standard
    deviation near scale."""
    elems, nbytes = gguf.GGML_QUANT_SIZES[QTYPES[dtype]]
    blocks = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    for at in SCALES[dtype]:
        d = rng.uniform(0.5, 1.0, blocks.shape[0]).astype(np.float16)
        blocks[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    std = float(dequantize(blocks, dtype).std()) or 1.0
    for at in SCALES[dtype]:  # the values are linear in d and dmin
        d = blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32) * (scale / std)
        blocks[:, at : at + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def quantized(dtype, w, rng):
    """uint8 [rows, row_bytes] blocks of the f32 matrix w (for a k-type: random blocks of w's
    shape and standard deviation)."""
    if dtype in K_TYPES:
        return random_k_blocks(dtype, *w.shape, rng, float(w.std()))
    return quants.quantize(w, QTYPES[dtype])
