"""Byte helpers shared by the quantizers: GGUF stores scales as little-endian f16 and rounds
the way ggml's C reference does, so these reproduce its float32 arithmetic in numpy.
"""

import numpy as np


def f16_bytes(values):
    """f32 values -> their f16 bit patterns as [..., 2] little-endian bytes."""
    return np.asarray(values, np.float32).astype("<f2").view(np.uint8).reshape(*np.shape(values), 2)


def f16_values(raw):
    """[..., 2] bytes of little-endian f16 -> f32 values [...]."""
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(np.float32)


def round_away(x):
    """C's roundf (halves away from zero), as quantize_row_q8_0_ref rounds."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def nearest_int(x):
    """ggml's nearest_int: round half to even in float32 (the 1.5 * 2^23 trick)."""
    return np.rint(np.asarray(x, np.float32)).astype(np.int32)


def reciprocal(d):
    """1 / d, and 0 where d is 0 (an all-zero block quantizes to zeros)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def pack_nibbles(low, high):
    """Two arrays of 4-bit codes -> one byte each, low in bits 0-3."""
    return (low.astype(np.uint8) & 0x0F) | (high.astype(np.uint8) << 4)


def nibbles(raw):
    """Bytes [..., n] -> (low 4 bits, high 4 bits), each [..., n] uint8."""
    return raw & np.uint8(0x0F), raw >> np.uint8(4)
