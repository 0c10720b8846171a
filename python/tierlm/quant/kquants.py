"""GGUF's 256-element "k" block types q4_k, q5_k, q6_k: numpy ports of ggml's reference
quantizers (quantize_row_q{4,5,6}_K_ref, without an importance matrix) and dequantizers, over
arrays of super-blocks ([n, 256] f32 <-> [n, block_bytes] uint8). Layouts:
docs/package-format.md.
"""

import numpy as np

from tierlm.quant.blocks import f16_bytes, f16_values, nearest_int, nibbles, pack_nibbles

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)


def _fit_min_scale(x, weights, nmax, rmin, rdelta, nstep):
    """ggml's make_qkx2_quants over sub-blocks x [s, 32]: codes 0..nmax with a scale and a
    non-positive offset, searched over nstep + 1 candidate scales for the least weighted
    squared error. As in ggml, each candidate is taken relative to the best offset so far.
    Returns (scale [s], -offset [s], codes [s, 32])."""
    low = np.minimum(x.min(axis=-1), 0).astype(np.float32)
    high = x.max(axis=-1)
    flat = high == low
    sum_w = weights.sum(axis=-1)
    sum_x = (weights * x).sum(axis=-1)

    def codes_at(iscale, low):
        return np.clip(nearest_int(iscale[:, None] * (x - low[:, None])), 0, nmax)

    def span(low):
        return np.where(flat, np.float32(1), high - low)

    iscale = np.float32(nmax) / span(low)
    scale = np.float32(1) / iscale
    codes = codes_at(iscale, low)
    best = (weights * (scale[:, None] * codes + low[:, None] - x) ** 2).sum(axis=-1)
    for step in range(nstep + 1):
        factor = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax)
        trial = codes_at(factor / span(low), low)
        lf = trial.astype(np.float32)
        sum_l = (weights * lf).sum(axis=-1)
        sum_l2 = (weights * lf * lf).sum(axis=-1)
        sum_xl = (weights * lf * x).sum(axis=-1)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        this_min = np.where(positive, np.float32(0), this_min)
        with np.errstate(invalid="ignore", over="ignore"):
            err = (weights * (this_scale[:, None] * lf + this_min[:, None] - x) ** 2).sum(axis=-1)
        better = ok & (err < best)
        codes = np.where(better[:, None], trial, codes)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        low = np.where(better, this_min, low)
    scale = np.where(flat, np.float32(0), scale).astype(np.float32)
    codes = np.where(flat[:, None], 0, codes)
    return scale, (-low).astype(np.float32), codes


def _pack_scales_k4(sc, m):
    """Eight 6-bit scales and mins [n, 8] -> ggml's 12-byte packing (get_scale_min_k4)."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return out


def unpack_scales_k4(packed):
    """ggml's get_scale_min_k4 for j = 0..7: 12 bytes [n, 12] -> (scales, mins), [n, 8] each."""
    d, m, md = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([d & 63, (md & 0x0F) | ((d >> 6) << 4)], axis=-1)
    mn = np.concatenate([m & 63, (md >> 4) | ((m >> 6) << 4)], axis=-1)
    return sc, mn


def _quantize_min_scale(x, nmax, rmin, nstep):
    """The shared part of q4_k and q5_k: per 32-element sub-block scale and min, both stored as
    6 bits of the super-block's f16 d and dmin. Returns (d, dmin, packed scales, codes)."""
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)
    av = np.sqrt((sub * sub).sum(axis=-1, keepdims=True) / np.float32(32))
    scale, mins, codes = _fit_min_scale(sub, av + np.abs(sub), nmax, rmin, 0.1, nstep)
    scale, mins, codes = scale.reshape(n, 8), mins.reshape(n, 8), codes.reshape(n, 8, 32)
    max_scale, max_min = scale.max(axis=-1), mins.max(axis=-1)
    inv_scale = np.where(max_scale > 0, np.float32(63) / np.where(max_scale > 0, max_scale, 1), 0)
    inv_min = np.where(max_min > 0, np.float32(63) / np.where(max_min > 0, max_min, 1), 0)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scale), 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins), 63).astype(np.uint8)
    d_bytes = f16_bytes(max_scale / np.float32(63))
    dmin_bytes = f16_bytes(max_min / np.float32(63))
    d = f16_values(d_bytes)[:, None] * ls.astype(np.float32)
    dm = f16_values(dmin_bytes)[:, None] * lm.astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)[:, :, None]
    requant = np.clip(nearest_int((x.reshape(n, 8, 32) + dm[:, :, None]) / safe), 0, nmax)
    codes = np.where((d == 0)[:, :, None], codes, requant).astype(np.uint8)
    return d_bytes, dmin_bytes, _pack_scales_k4(ls, lm), codes


def quantize_q4_k(x):
    d, dmin, scales, codes = _quantize_min_scale(x, 15, -1.0, 20)
    # each 64 elements: sub-block 2k in the low nibbles of 32 bytes, 2k + 1 in the high ones
    qs = pack_nibbles(codes[:, 0::2], codes[:, 1::2]).reshape(-1, 128)
    return np.concatenate([d, dmin, scales, qs], axis=-1)


def _min_scale_factors(raw):
    d, dmin = f16_values(raw[:, 0:2])[:, None], f16_values(raw[:, 2:4])[:, None]
    sc, mn = unpack_scales_k4(raw[:, 4:16])
    return (d * sc.astype(np.float32))[:, :, None], (dmin * mn.astype(np.float32))[:, :, None]


def dequantize_q4_k(raw):
    scale, offset = _min_scale_factors(raw)
    low, high = nibbles(raw[:, 16:].reshape(-1, 4, 32))
    codes = np.stack([low, high], axis=2).reshape(-1, 8, 32).astype(np.float32)
    return (scale * codes - offset).reshape(-1, QK_K)


def quantize_q5_k(x):
    d, dmin, scales, codes = _quantize_min_scale(x, 31, -0.5, 15)
    qs = pack_nibbles(codes[:, 0::2] & 0x0F, codes[:, 1::2] & 0x0F).reshape(-1, 128)
    # bit 4 of sub-block j's element l goes to bit j of qh[l]
    bits = (codes >> 4).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    qh = np.bitwise_or.reduce(bits, axis=1)
    return np.concatenate([d, dmin, scales, qh, qs], axis=-1)


def dequantize_q5_k(raw):
    scale, offset = _min_scale_factors(raw)
    low, high = nibbles(raw[:, 48:].reshape(-1, 4, 32))
    codes = np.stack([low, high], axis=2).reshape(-1, 8, 32)
    qh = raw[:, 16:48][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]
    codes = (codes | ((qh & 1) << 4)).astype(np.float32)
    return (scale * codes - offset).reshape(-1, QK_K)


def _fit_symmetric(x, nmax):
    """ggml's make_qx_quants with rmse_type 1 over sub-blocks x [s, 16]: codes -nmax..nmax-1
    with one scale, searched over 19 candidates for the least x²-weighted squared error.
    Returns (scale [s], codes [s, 16] as stored: l + nmax, 0 for an all-zero sub-block)."""
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)[:, 0]
    zero = np.abs(peak) < GROUP_MAX_EPS
    peak = np.where(zero, np.float32(1), peak)
    weights = x * x

    def trial(iscale):
        codes = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = codes.astype(np.float32)
        return codes, (weights * x * lf).sum(axis=-1), (weights * lf * lf).sum(axis=-1)

    codes, sumlx, suml2 = trial(np.float32(-nmax) / peak)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 > 0, sumlx / suml2, np.float32(0)).astype(np.float32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / peak
        tcodes, sumlx, suml2 = trial(iscale.astype(np.float32))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        with np.errstate(divide="ignore", invalid="ignore"):
            tscale = np.where(better, sumlx / suml2, scale).astype(np.float32)
        codes = np.where(better[:, None], tcodes, codes)
        scale = tscale
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, np.float32(0), scale), np.where(zero[:, None], 0, codes + nmax)


def quantize_q6_k(x):
    n = x.shape[0]
    scale, codes = _fit_symmetric(x.reshape(n * 16, 16), 32)
    scale, codes = scale.reshape(n, 16), codes.reshape(n, 16, 16)
    peak = np.take_along_axis(scale, np.abs(scale).argmax(axis=-1, keepdims=True), axis=-1)[:, 0]
    zero = np.abs(peak) < GROUP_MAX_EPS
    iscale = np.float32(-128) / np.where(zero, np.float32(1), peak)
    d_bytes = f16_bytes(np.where(zero, np.float32(0), np.float32(1) / iscale))
    scales = np.minimum(nearest_int(iscale[:, None] * scale), 127).astype(np.int8)
    d = f16_values(d_bytes)[:, None] * scales.astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)[:, :, None]
    requant = np.clip(nearest_int(x.reshape(n, 16, 16) / safe), -32, 31) + 32
    codes = np.where((d == 0)[:, :, None], codes, requant)
    codes = codes.astype(np.uint8).reshape(n, 2, 4, 32)  # [half, quarter, l]
    low, high = codes & 0x0F, codes >> 4
    ql = np.concatenate(
        [pack_nibbles(low[:, :, 0], low[:, :, 2]), pack_nibbles(low[:, :, 1], low[:, :, 3])],
        axis=-1,
    ).reshape(n, 128)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    parts = [ql, qh.reshape(n, 64), scales.view(np.uint8), d_bytes]
    out = np.concatenate(parts, axis=-1)
    out[zero] = 0
    return out


def dequantize_q6_k(raw):
    n = raw.shape[0]
    ql = raw[:, :128].reshape(n, 2, 64)
    qh = raw[:, 128:192].reshape(n, 2, 32)
    scales = raw[:, 192:208].view(np.int8).astype(np.float32).reshape(n, 2, 8)
    d = f16_values(raw[:, 208:210])[:, None, None, None, None]
    low0, high0 = nibbles(ql[:, :, :32])
    low1, high1 = nibbles(ql[:, :, 32:])
    quarters = [low0, low1, high0, high1]  # elements 0-31, 32-63, 64-95, 96-127 of each half
    codes = np.stack(
        [q | (((qh >> np.uint8(2 * k)) & 3) << 4) for k, q in enumerate(quarters)], axis=2
    ).astype(np.float32) - np.float32(32)  # [n, half, quarter, 32]
    # scale index within a half: quarter * 2 + l // 16
    sc = scales.reshape(n, 2, 4, 2)[:, :, :, :, None]
    values = d * sc * codes.reshape(n, 2, 4, 2, 16)
    return values.reshape(n, QK_K)
