"""Reference quantizers and dequantizers (numpy) for GGUF's block types, byte for byte: the
package stores these layouts as GGUF does (docs/package-format.md), export quantizes with them,
and the native kernels are tested against `dequantize`.

    raw = quantize("q4_0", weights)               # [rows, cols] f32 -> [rows, row_bytes] uint8
    values = dequantize("q4_0", raw, weights.shape)
"""

import math

import numpy as np

from tierlm.errors import InvalidArgumentError
from tierlm.quant import kquants, legacy

# dtype -> (elements per block, bytes per block), as ggml's GGML_QUANT_SIZES
BLOCKS = {
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "q4_k": (256, 144),
    "q5_k": (256, 176),
    "q6_k": (256, 210),
}
QUANT_DTYPES = tuple(BLOCKS)

_CODECS = {
    "q8_0": (legacy.quantize_q8_0, legacy.dequantize_q8_0),
    "q4_0": (legacy.quantize_q4_0, legacy.dequantize_q4_0),
    "q4_1": (legacy.quantize_q4_1, legacy.dequantize_q4_1),
    "q5_0": (legacy.quantize_q5_0, legacy.dequantize_q5_0),
    "q5_1": (legacy.quantize_q5_1, legacy.dequantize_q5_1),
    "q4_k": (kquants.quantize_q4_k, kquants.dequantize_q4_k),
    "q5_k": (kquants.quantize_q5_k, kquants.dequantize_q5_k),
    "q6_k": (kquants.quantize_q6_k, kquants.dequantize_q6_k),
}
_ROWS_PER_STEP = 1 << 16  # blocks converted at a time, to bound the temporaries


def _block(dtype):
    if dtype not in BLOCKS:
        raise InvalidArgumentError(
            f"{dtype!r} is not a quantized dtype (one of {', '.join(QUANT_DTYPES)})"
        )
    return BLOCKS[dtype]


def blocks_fit(dtype, cols):
    """True when a row of cols elements is a whole number of dtype blocks."""
    return cols > 0 and cols % _block(dtype)[0] == 0


def row_bytes(dtype, cols, what="tensor"):
    """Bytes of one row of cols elements; InvalidArgumentError unless whole blocks."""
    elems, nbytes = _block(dtype)
    if cols % elems:
        raise InvalidArgumentError(
            f"{what}: a row of {cols} elements is not a whole number of {dtype} blocks "
            f"({elems} elements each)"
        )
    return cols // elems * nbytes


def quantize(dtype, values, what="tensor"):
    """Quantizes f32 values [..., cols] (cols a whole number of blocks) along the last axis;
    returns uint8 [..., row_bytes]."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    elems, _ = _block(dtype)
    shape = values.shape
    out_cols = row_bytes(dtype, shape[-1] if shape else 1, what)
    if not np.isfinite(values).all():
        raise InvalidArgumentError(f"{what}: cannot quantize NaN or infinite values to {dtype}")
    blocks = values.reshape(-1, elems)
    encode = _CODECS[dtype][0]
    out = [encode(blocks[i : i + _ROWS_PER_STEP]) for i in range(0, len(blocks), _ROWS_PER_STEP)]
    joined = np.concatenate(out) if out else np.zeros((0, _block(dtype)[1]), np.uint8)
    return joined.reshape(*shape[:-1], out_cols)


def dequantize(dtype, raw, shape):
    """The f32 values [shape] of quantized bytes raw (any uint8 buffer of the right size)."""
    shape = tuple(int(d) for d in shape)
    elems, nbytes = _block(dtype)
    expected = math.prod(shape[:-1]) * row_bytes(dtype, shape[-1])
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if raw.size != expected:
        raise InvalidArgumentError(
            f"{dtype} data of shape {list(shape)} is {expected} bytes, got {raw.size}"
        )
    blocks = raw.reshape(-1, nbytes)
    decode = _CODECS[dtype][1]
    out = [decode(blocks[i : i + _ROWS_PER_STEP]) for i in range(0, len(blocks), _ROWS_PER_STEP)]
    joined = np.concatenate(out) if out else np.zeros((0, elems), np.float32)
    return joined.astype(np.float32, copy=False).reshape(shape)
