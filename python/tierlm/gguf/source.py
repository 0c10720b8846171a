"""A GGUF file as an export source: a Hugging Face style config from its metadata, its tensors
under Hugging Face names (so the architecture plans of tierlm.archs apply unchanged), Q and K
rows put back in Hugging Face's rotary order, and the tokenizer rebuilt from its vocabulary.
Mixture-of-experts GGUFs (llama with expert_count: Mixtral; qwen2moe; olmoe) stack the
experts: ffn_{gate,up,down}_exps [experts, rows, cols] are read as one entry per expert under
the family's Hugging Face names; Qwen2-MoE's shared expert is ffn_*_shexp with its sigmoid gate
ffn_gate_inp_shexp.
"""

import os
import re

import numpy as np

from tierlm.checkpoint import Entry
from tierlm.errors import CorruptError, InvalidArgumentError, UnsupportedError
from tierlm.gguf.reader import GGUF_DTYPES, field_value, gguf_read

# general.architecture -> (model_type, the HF class), for the Llama family tierlm runs
ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),  # Llama 2/3 and Mistral: llama.cpp writes both so
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen2moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "olmoe": ("olmoe", "OlmoeForCausalLM"),
}
_MOE_ARCHS = ("qwen2moe", "olmoe")  # always mixtures of experts; llama is one with expert_count
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
# Mixtral (the llama architecture with experts) names its router and experts apart
_MIXTRAL_NAMES = {"ffn_gate_inp": "block_sparse_moe.gate"}
# stacked experts -> (the family's name of one expert's matrix) for Mixtral, the others
_EXPERTS = {
    "ffn_gate_exps": ("block_sparse_moe.experts.{e}.w1", "mlp.experts.{e}.gate_proj"),
    "ffn_up_exps": ("block_sparse_moe.experts.{e}.w3", "mlp.experts.{e}.up_proj"),
    "ffn_down_exps": ("block_sparse_moe.experts.{e}.w2", "mlp.experts.{e}.down_proj"),
}
_SHARED_GATE = "ffn_gate_inp_shexp"  # 1-D [hidden] in GGUF, [1, hidden] in Hugging Face
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_ROPE_FREQS = "rope_freqs.weight"


def hf_name(gguf_name, arch="llama"):
    """llama.cpp's tensor name -> the Hugging Face checkpoint name (unknown names unchanged, so
    the export's unused-tensor check names them)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER.match(gguf_name)
    names = {**_LAYER_NAMES, **(_MIXTRAL_NAMES if arch == "llama" else {})}
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
    return gguf_name


def unpermute_rows(rows, heads):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute on whole rows ([n, row_bytes]
    uint8 or [n] values): within each head llama.cpp stores rotary pairs interleaved
    (x0, y0, x1, y1, ...); Hugging Face's rotate-half order is (x0, x1, ..., y0, y1, ...). Rows
    move whole, so this works on quantized bytes as on floats."""
    n = rows.shape[0]
    half = n // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


class GGUFCheckpoint:
    """The tensors of a GGUF file by Hugging Face name, like tierlm.checkpoint.Checkpoint."""

    def __init__(self, path, entries, permuted):
        self.dir = path  # named like Checkpoint's, for the export's messages
        self.entries = entries
        self._permuted = permuted  # HF name -> heads to unpermute over

    def raw(self, name):
        entry = self.entries[name]
        data = np.memmap(entry.file, np.uint8, "r", entry.start, (entry.nbytes,))
        heads = self._permuted.get(name)
        if heads is None:
            return data
        rows = entry.shape[0]
        return unpermute_rows(np.asarray(data).reshape(rows, -1), heads).reshape(-1)

    def __contains__(self, name):
        return name in self.entries


class GGUFSource:
    """What export needs from a GGUF file: hf_config, checkpoint, write_tokenizer, source_info."""

    def __init__(self, path, reader):
        self.path = path
        self.reader = reader
        arch = field_value(reader, "general.architecture", str)
        if arch not in ARCHITECTURES:
            raise UnsupportedError(
                f"{path}: GGUF architecture {arch!r} is not supported; tierlm imports "
                f"{', '.join(ARCHITECTURES)} (Mistral models are written as llama)"
            )
        self.arch = arch
        self.hf_config = self._config()
        self.checkpoint = self._checkpoint()

    @classmethod
    def open(cls, path, dtype=None, recipe=None):
        path = os.fspath(path)
        for option, value in (("dtype", dtype), ("recipe", recipe)):
            if value is not None:
                raise InvalidArgumentError(
                    f"{path}: a GGUF file's tensors are copied as they are stored, never "
                    f"re-quantized; --{option} does not apply to a GGUF import"
                )
        return cls(path, gguf_read(path))

    def meta(self, key, kind, default=None):
        return field_value(self.reader, f"{self.arch}.{key}", kind, default)

    def _require(self, key, kind=int):
        value = self.meta(key, kind)
        if value is None:
            raise UnsupportedError(f"{self.path}: GGUF metadata lacks {self.arch}.{key}")
        return self._positive(key, value)

    def _positive(self, key, value):
        """A size or count: positive (a zero head count would divide by zero further on)."""
        if not value > 0:
            raise CorruptError(f"{self.path}: GGUF metadata {self.arch}.{key} is {value}")
        return value

    def _config(self):
        model_type, hf_class = ARCHITECTURES[self.arch]
        names = {t.name for t in self.reader.tensors}
        experts = self.meta("expert_count", int)
        moe = {}
        if self.arch in _MOE_ARCHS:
            moe = self._moe_config(names)
        elif experts:
            if self.arch != "llama":
                raise UnsupportedError(
                    f"{self.path}: mixture-of-experts GGUF of architecture {self.arch!r} is not "
                    f"supported (tierlm imports llama-architecture ones: Mixtral; and "
                    f"{', '.join(_MOE_ARCHS)})"
                )
            model_type, hf_class = "mixtral", "MixtralForCausalLM"
            moe = {
                "num_local_experts": self._positive("expert_count", experts),
                "num_experts_per_tok": self._require("expert_used_count"),
                "sliding_window": None,
            }
        hidden, heads = self._require("embedding_length"), self._require("attention.head_count")
        key_length = "attention.key_length"
        head_dim = self._positive(key_length, self.meta(key_length, int, hidden // heads))
        if self.meta("attention.value_length", int, head_dim) != head_dim:
            raise UnsupportedError(f"{self.path}: key and value head sizes differ")
        rope_dims = self.meta("rope.dimension_count", int, head_dim)
        if rope_dims != head_dim:
            raise UnsupportedError(
                f"{self.path}: rotary dimensions {rope_dims} != head size {head_dim} (partial "
                "rotary embeddings are not supported)"
            )
        rope = {"rope_type": "default", "rope_theta": self.meta("rope.freq_base", float, 10000.0)}
        scaling = self.meta("rope.scaling.type", str, "none")
        if scaling == "linear":
            rope.update(rope_type="linear", factor=self._require("rope.scaling.factor", float))
        elif scaling != "none":
            raise UnsupportedError(
                f"{self.path}: rope scaling {scaling!r} is not supported (tierlm implements "
                "none and linear for GGUF files)"
            )
        if _ROPE_FREQS in names:
            rope = self._rope_factors(rope, head_dim)
        tokens = field_value(self.reader, "tokenizer.ggml.tokens", list) or []
        eos = [
            field_value(self.reader, f"tokenizer.ggml.{key}_token_id", int)
            for key in ("eos", "eot", "eom")
        ]
        eos = list(dict.fromkeys(e for e in eos if e is not None))
        bos = field_value(self.reader, "tokenizer.ggml.bos_token_id", int)
        return {
            "model_type": model_type,
            "architectures": [hf_class],
            "num_hidden_layers": self._require("block_count"),
            "hidden_size": hidden,
            "intermediate_size": self._require("feed_forward_length")
            if self.arch not in _MOE_ARCHS
            else self.meta("feed_forward_length", int) or moe["moe_intermediate_size"],
            "num_attention_heads": heads,
            "num_key_value_heads": self._positive(
                "attention.head_count_kv", self.meta("attention.head_count_kv", int, heads)
            ),
            "head_dim": head_dim,
            "max_position_embeddings": self._require("context_length"),
            "rms_norm_eps": self.meta("attention.layer_norm_rms_epsilon", float, 1e-5),
            "rope_parameters": rope,
            "vocab_size": self.meta("vocab_size", int, len(tokens)),
            "tie_word_embeddings": "output.weight" not in names,
            "attention_bias": model_type == "llama" and "blk.0.attn_q.bias" in names,
            "mlp_bias": model_type == "llama" and "blk.0.ffn_up.bias" in names,
            "hidden_act": "silu",
            "bos_token_id": bos,
            "eos_token_id": eos,
            **moe,
        }

    def _moe_config(self, names):
        """Qwen2-MoE's and OLMoE's expert keys. Layers without a router keep a dense FFN
        (Qwen2-MoE's mlp_only_layers); top-k weights are renormalised only where the file says
        so (expert_weights_norm; llama.cpp's qwen2moe and olmoe graphs never do)."""
        layers = self._require("block_count")
        dense = [i for i in range(layers) if f"blk.{i}.ffn_gate_inp.weight" not in names]
        inter = self.meta("expert_feed_forward_length", int) or self._require("feed_forward_length")
        shared = self.meta("expert_shared_feed_forward_length", int, 0)
        if self.arch == "qwen2moe" and "blk.0.ffn_up_shexp.weight" in names and not shared:
            raise UnsupportedError(
                f"{self.path}: shared-expert tensors without "
                f"{self.arch}.expert_shared_feed_forward_length"
            )
        return {
            "num_experts": self._positive("expert_count", self._require("expert_count")),
            "num_experts_per_tok": self._require("expert_used_count"),
            "moe_intermediate_size": self._positive("expert_feed_forward_length", inter),
            "shared_expert_intermediate_size": shared,
            "norm_topk_prob": bool(self.meta("expert_weights_norm", bool, False)),
            "mlp_only_layers": dense,
            "qkv_bias": "blk.0.attn_q.bias" in names,
            "use_sliding_window": False,
        }

    def _rope_factors(self, rope, head_dim):
        """Llama 3.1's scaling as llama.cpp stores it: rope_freqs.weight, one divisor per
        rotary frequency (its rope_type "llama3" computed once by the converter)."""
        t = next(t for t in self.reader.tensors if t.name == _ROPE_FREQS)
        where = f"{self.path}: tensor {_ROPE_FREQS}"
        if rope["rope_type"] != "default":
            raise UnsupportedError(f"{where} beside rope scaling {rope['rope_type']!r}")
        if t.tensor_type.name != "F32" or int(t.n_elements) != head_dim // 2:
            raise UnsupportedError(
                f"{where} is {t.tensor_type.name} of {int(t.n_elements)} values; tierlm reads "
                f"F32 of {head_dim // 2} (one per rotary frequency of head size {head_dim})"
            )
        factors = np.asarray(t.data, np.float32).reshape(-1)
        if not np.all(np.isfinite(factors)) or np.any(factors <= 0):
            raise UnsupportedError(f"{where} holds values that are not positive and finite")
        return {**rope, "rope_type": "factors", "factors": [float(f) for f in factors]}

    def _checkpoint(self):
        entries, permuted = {}, {}
        # llama.cpp permutes Q and K of the llama architecture only (qwen2 keeps HF's order)
        heads = {}
        if self.arch == "llama":
            heads = {
                "self_attn.q_proj": self.hf_config["num_attention_heads"],
                "self_attn.k_proj": self.hf_config["num_key_value_heads"],
            }
        for t in self.reader.tensors:
            if t.name == _ROPE_FREQS:
                continue  # in the config (rope_parameters), not a weight
            name = hf_name(t.name, self.arch)
            dtype = GGUF_DTYPES[t.tensor_type.name]
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            if len(shape) == 1 and dtype not in ("f32", "f16", "bf16"):
                raise UnsupportedError(
                    f"{self.path}: 1-D tensor {t.name} is {t.tensor_type.name}; tierlm keeps "
                    "norms and biases in f32 and imports them from F32, F16 or BF16 only"
                )
            m = _LAYER.match(t.name)
            if m and m.group(2) in _EXPERTS:
                part = _EXPERTS[m.group(2)][self.arch != "llama"]
                entries.update(self._expert_entries(t, m.group(1), part, dtype))
                continue
            if m and m.group(2) == _SHARED_GATE:
                shape = (1, *shape)
            entries[name] = Entry(self.path, dtype, shape, int(t.data_offset), int(t.n_bytes))
            for module, count in heads.items():
                if f".{module}." in name:
                    permuted[name] = count
        return GGUFCheckpoint(self.path, entries, permuted)

    def _expert_entries(self, t, layer, part, dtype):
        """One entry per expert of a stacked [experts, rows, cols] tensor: its bytes are the
        experts' matrices back to back. part: the family's name, "{e}" for the expert."""
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if len(shape) != 3:
            raise UnsupportedError(f"{self.path}: tensor {t.name} has shape {list(shape)}, not 3-D")
        each = int(t.n_bytes) // shape[0]
        return {
            f"model.layers.{layer}.{part.format(e=e)}.weight": Entry(
                self.path, dtype, shape[1:], int(t.data_offset) + e * each, each
            )
            for e in range(shape[0])
        }

    def write_tokenizer(self, package_dir):
        """Writes tokenizer/ (tokenizer.json, tokenizer_config.json) into the package being
        built; returns the file names."""
        from tierlm.gguf.tokenizer import write_tokenizer

        return write_tokenizer(self.reader, self.path, os.path.join(package_dir, "tokenizer"))

    def source_info(self):
        return {
            "gguf": os.path.basename(self.path),
            "gguf_architecture": self.arch,
            "gguf_name": field_value(self.reader, "general.name", str),
            "gguf_types": sorted({t.tensor_type.name for t in self.reader.tensors}),
        }
