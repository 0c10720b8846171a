"""Tensor dtypes of the package (f32, f16, bf16 and GGUF's block types, tierlm.quant) and
conversions between the float ones in numpy.

numpy has no bfloat16, so bf16 travels as uint16 bit patterns; rounding from f32 is to nearest
even, as torch does, so exported bytes equal `tensor.to(torch.bfloat16)`.
"""

import math

import numpy as np

from tierlm.errors import InvalidArgumentError, UnsupportedError
from tierlm.quant import BLOCKS, QUANT_DTYPES, dequantize, row_bytes

DTYPES = ("f32", "f16", "bf16")
PACKAGE_DTYPES = DTYPES + QUANT_DTYPES  # what a package tensor may be stored as
DTYPE_SIZES = {"f32": 4, "f16": 2, "bf16": 2}
# numpy dtype holding each package dtype's bytes (bf16 as its bit pattern)
NUMPY_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}
NUMPY_DTYPES.update({q: np.dtype(np.uint8) for q in QUANT_DTYPES})  # bytes, [rows, row_bytes]
SAFETENSORS_DTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def dtype_check(dtype, what="dtype", allowed=DTYPES):
    """Returns dtype if it is in allowed (None passes), else raises InvalidArgumentError."""
    if dtype is not None and dtype not in allowed:
        raise InvalidArgumentError(f"{what}: {dtype!r} is not one of {', '.join(allowed)}")
    return dtype


def dtype_is_quantized(dtype):
    return dtype in BLOCKS


def dtype_nbytes(dtype, shape, what="tensor"):
    """Bytes of a tensor: rows of whole blocks along the last axis for the block types."""
    shape = tuple(shape)
    if dtype in BLOCKS:
        return math.prod(shape[:-1]) * row_bytes(dtype, shape[-1] if shape else 1, what)
    return math.prod(shape) * DTYPE_SIZES[dtype]


def stored_shape(dtype, shape):
    """Shape of the stored array: [..., row_bytes] uint8 for a block type, else shape."""
    shape = tuple(shape)
    return (*shape[:-1], row_bytes(dtype, shape[-1])) if dtype in BLOCKS else shape


def safetensors_dtype(name, tensor, file):
    """Maps a safetensors dtype string to a package dtype, refusing integer/f64/f8 tensors."""
    if name not in SAFETENSORS_DTYPES:
        raise UnsupportedError(
            f"{file}: tensor {tensor} has dtype {name}; tierlm exports F32, F16 and BF16 "
            "checkpoints only (quantized or F64 weights are not supported)"
        )
    return SAFETENSORS_DTYPES[name]


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values):
    """Round to nearest even; NaN becomes the quiet NaN 0x7FC0, as torch converts."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, np.uint32(0x7FC0), rounded)
    return rounded.astype(np.uint16)


def to_f32(raw, dtype, shape=None):
    """Returns the values of raw bytes (any shape of uint8 or the numpy holder) as float32;
    a block type needs the tensor's shape."""
    if dtype in BLOCKS:
        return dequantize(dtype, raw, shape)
    data = np.asarray(raw).view(NUMPY_DTYPES[dtype])
    if dtype == "bf16":
        return bf16_to_f32(data)
    return data.astype(np.float32, copy=dtype != "f32")


def convert(raw, src, dst, tensor="tensor"):
    """Converts a 1-D uint8 buffer of src-dtype values to a dst-dtype numpy array.

    Raises InvalidArgumentError when finite values become infinite (f16 overflow), since a
    model exported that way would run wrong.
    """
    raw = np.asarray(raw, dtype=np.uint8)
    if src == dst:
        return raw.view(NUMPY_DTYPES[dst])
    values = to_f32(raw, src)
    with np.errstate(over="ignore"):
        out = values if dst == "f32" else values.astype(np.float16) if dst == "f16" else None
    if dst == "bf16":
        out = f32_to_bf16(values)
    check = to_f32(out.view(np.uint8), dst) if dst != "f32" else out
    overflow = np.isinf(check) & np.isfinite(values)
    if overflow.any():
        largest = float(np.max(np.abs(values[overflow])))
        raise InvalidArgumentError(
            f"tensor {tensor}: value {largest:g} overflows {dst}; export with a wider --dtype "
            "(bf16 or f32)"
        )
    return out
