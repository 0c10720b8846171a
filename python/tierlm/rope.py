"""RoPE inverse frequencies from a Hugging Face config, with the scalings whose frequencies do
not depend on the sequence length (default, linear, llama3, and "factors": per-frequency
divisors as a GGUF file's rope_freqs.weight stores Llama 3.1's scaling). Others are refused:
running them with static frequencies would give wrong results.
"""

import math

import numpy as np

from tierlm.errors import UnsupportedError

SUPPORTED = ("default", "linear", "llama3", "factors")


def rope_parameters(hf):
    """Returns (rope_type, theta, parameters) from a transformers v4 or v5 config dict."""
    params = hf.get("rope_parameters")
    if params is None:  # transformers < 5: rope_theta beside an optional rope_scaling
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise UnsupportedError(
            "config.json: per-layer-type rope_parameters are not supported by tierlm"
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    return rope_type, theta, params


def rope_inv_freq(hf, head_dim):
    """Returns (rope_theta, inv_freq as a list of head_dim/2 floats, the raw parameters)."""
    rope_type, theta, params = rope_parameters(hf)
    if rope_type not in SUPPORTED:
        raise UnsupportedError(
            f"config.json: rope scaling type {rope_type!r} is not supported (tierlm implements "
            f"{', '.join(SUPPORTED)}; {rope_type} changes frequencies with the sequence length "
            "or scales attention)"
        )
    partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise UnsupportedError(f"config.json: partial_rotary_factor {partial} is not supported")
    if head_dim % 2:
        raise UnsupportedError(f"config.json: RoPE needs an even head_dim, got {head_dim}")
    # float32 like transformers, so the frequencies match it bit for bit where pow agrees
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(params["factor"])
    elif rope_type == "llama3":
        inv_freq = _llama3(inv_freq, params)
    elif rope_type == "factors":  # llama.cpp: theta_i / rope_freqs[i]
        inv_freq = (inv_freq / _factors(params, inv_freq.size)).astype(np.float32)
    return theta, [float(x) for x in inv_freq], params


def _factors(params, count):
    factors = np.asarray(params.get("factors", []), np.float32)
    if factors.shape != (count,) or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise UnsupportedError(
            f"rope factors: need {count} positive finite values (one per rotary frequency), "
            f"got {factors.size}"
        )
    return factors


def _llama3(inv_freq, params):
    try:
        factor = float(params["factor"])
        low = float(params["low_freq_factor"])
        high = float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
    except KeyError as missing:
        raise UnsupportedError(f"config.json: llama3 rope scaling lacks {missing}") from None
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
