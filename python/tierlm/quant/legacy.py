"""GGUF's 32-element block types q8_0, q4_0, q4_1, q5_0, q5_1: quantizers that follow ggml's
quantize_row_*_ref in float32 (so their bytes equal llama.cpp's) and dequantizers, over arrays of
blocks ([n, 32] f32 <-> [n, block_bytes] uint8). Layouts: docs/package-format.md.
"""

import numpy as np

from tierlm.quant.blocks import (
    f16_bytes,
    f16_values,
    nibbles,
    pack_nibbles,
    reciprocal,
    round_away,
)

QK = 32


def _signed_max(x):
    """The element of largest magnitude of each block, with its sign (the first on ties)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)


def _split_codes(codes):
    """[n, 32] codes -> [n, 16] bytes: element j in the low nibble, element j + 16 high."""
    return pack_nibbles(codes[:, : QK // 2], codes[:, QK // 2 :])


def _join_codes(qs):
    low, high = nibbles(qs)
    return np.concatenate([low, high], axis=-1)


def _high_bits(codes):
    """Bit 4 of each of the 32 codes as one little-endian uint32 (bit j = element j)."""
    bits = ((codes.astype(np.uint8) >> 4) & 1).astype(np.uint32) << np.arange(QK, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=-1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack_high_bits(qh):
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(QK, dtype=np.uint32)) & 1).astype(np.uint8) << 4


def quantize_q8_0(x):
    d = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
    qs = round_away(x * reciprocal(d)).astype(np.int8).view(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), qs], axis=-1)


def dequantize_q8_0(raw):
    return f16_values(raw[:, :2])[:, None] * raw[:, 2:].view(np.int8).astype(np.float32)


def quantize_q4_0(x):
    d = _signed_max(x) / np.float32(-8)
    codes = np.minimum(np.trunc(x * reciprocal(d) + np.float32(8.5)), 15).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), _split_codes(codes)], axis=-1)


def dequantize_q4_0(raw):
    codes = _join_codes(raw[:, 2:]).astype(np.float32) - np.float32(8)
    return f16_values(raw[:, :2])[:, None] * codes


def quantize_q4_1(x):
    low, high = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (high - low) / np.float32(15)
    codes = np.minimum(np.trunc((x - low) * reciprocal(d) + np.float32(0.5)), 15).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), f16_bytes(low[:, 0]), _split_codes(codes)], axis=-1)


def dequantize_q4_1(raw):
    d, m = f16_values(raw[:, 0:2])[:, None], f16_values(raw[:, 2:4])[:, None]
    return d * _join_codes(raw[:, 4:]).astype(np.float32) + m


def quantize_q5_0(x):
    d = _signed_max(x) / np.float32(-16)
    codes = np.minimum(np.trunc(x * reciprocal(d) + np.float32(16.5)), 31).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), _high_bits(codes), _split_codes(codes)], axis=-1)


def dequantize_q5_0(raw):
    codes = _join_codes(raw[:, 6:]) | _unpack_high_bits(raw[:, 2:6])
    return f16_values(raw[:, :2])[:, None] * (codes.astype(np.float32) - np.float32(16))


def quantize_q5_1(x):
    low, high = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (high - low) / np.float32(31)
    codes = np.minimum(np.trunc((x - low) * reciprocal(d) + np.float32(0.5)), 31).astype(np.uint8)
    parts = [f16_bytes(d[:, 0]), f16_bytes(low[:, 0]), _high_bits(codes), _split_codes(codes)]
    return np.concatenate(parts, axis=-1)


def dequantize_q5_1(raw):
    d, m = f16_values(raw[:, 0:2])[:, None], f16_values(raw[:, 2:4])[:, None]
    codes = _join_codes(raw[:, 8:]) | _unpack_high_bits(raw[:, 4:8])
    return d * codes.astype(np.float32) + m
