"""Architecture definitions: each module turns a Hugging Face config into a package config, the
tensors to export (tierlm name, checkpoint name, shape) and the execution graph.

A module exposes NAME, MODEL_TYPES and `plan(hf_config, max_positions=None) -> ArchPlan`.
"""

import re
from dataclasses import dataclass, field

from tierlm.errors import UnsupportedError
from tierlm.rope import rope_inv_freq


@dataclass
class TensorSpec:
    name: str  # tierlm's name (docs/package-format.md)
    sources: tuple  # checkpoint names to try, first match wins
    shape: tuple
    layer: int = -1


@dataclass
class ArchPlan:
    architecture: str  # the module's NAME, written to the manifest
    config: dict  # the normalised config of the manifest
    tensors: list  # TensorSpec, in file order
    graph: dict
    ignore: re.Pattern = field(default_factory=lambda: re.compile(r"$^"))  # unused checkpoint keys


def _registry():
    from tierlm.archs import llama, moe, opt

    modules = (llama, moe, opt)
    return {model_type: module for module in modules for model_type in module.MODEL_TYPES}


def arch_lookup(hf_config, where="config.json"):
    """Returns the module for a config's model_type, or raises UnsupportedError."""
    registry = _registry()
    model_type = hf_config.get("model_type")
    if model_type not in registry:
        raise UnsupportedError(
            f"{where}: model_type {model_type!r} is not supported; tierlm exports "
            f"{', '.join(sorted(registry))}"
        )
    for name in hf_config.get("architectures") or []:
        if not name.endswith("ForCausalLM"):
            raise UnsupportedError(
                f"{where}: architecture {name} is not a causal language model; tierlm exports "
                "*ForCausalLM checkpoints"
            )
    return registry[model_type]


def option_refuse(hf, key, allowed, model_type):
    """Raises UnsupportedError when hf[key] is present and not in allowed."""
    if key in hf and hf[key] not in allowed:
        raise UnsupportedError(
            f"config.json: {model_type} option {key}={hf[key]!r} is not supported by tierlm "
            f"(supported: {', '.join(repr(a) for a in allowed)})"
        )


def context_length(hf_max, max_positions, window, what):
    """Returns the context the package allows: the checkpoint's, optionally capped by the user.

    A sliding window shorter than the context is refused unless the context is capped to it,
    because within the window full causal attention is exact.
    """
    if max_positions is not None:
        if max_positions < 1 or max_positions > hf_max:
            raise UnsupportedError(
                f"max_positions {max_positions} must be between 1 and the checkpoint's "
                f"max_position_embeddings {hf_max}"
            )
        hf_max = max_positions
    if window is not None and window < hf_max:
        raise UnsupportedError(
            f"config.json: {what} uses sliding-window attention (window {window} < context "
            f"{hf_max}) and tierlm has no sliding-window attention; export with "
            f"--max-positions {window} (max_positions={window}) to cap the context at the window"
        )
    return hf_max


def rope_decoder_config(hf, intermediate, ffn, window, max_positions):
    """The package config of a Llama-style decoder (RMSNorm, RoPE, grouped-query attention), the
    part archs/llama.py and archs/moe.py share; raises UnsupportedError when the query heads do
    not group over the KV heads or the context is refused (see context_length)."""
    model_type = hf["model_type"]
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise UnsupportedError(f"config.json: {heads} heads is not a multiple of {kv_heads}")
    context = context_length(
        hf.get("max_position_embeddings", 2048), max_positions, window, model_type
    )
    theta, inv_freq, rope = rope_inv_freq(hf, head_dim)
    eos = hf.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hidden,
        "num_layers": hf["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate,
        "max_positions": context,
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": theta,
        "rope_inv_freq": inv_freq,
        "rope_scaling": rope,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": eos_ids[0] if eos_ids else None,
        "eos_token_ids": eos_ids,
        "position_offset": 0,
        "norm": "rmsnorm",
        "ffn": ffn,
        "model_type": model_type,
    }
