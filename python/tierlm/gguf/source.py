"""A GGUF file as an export source: a Hugging Face style config from its metadata, its tensors
under Hugging Face names (so the architecture plans of tierlm.archs apply unchanged), Q and K
rows put back in Hugging Face's rotary order, and the tokenizer rebuilt from its vocabulary.
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
}
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
}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name):
    """llama.cpp's tensor name -> the Hugging Face checkpoint name (unknown names unchanged, so
    the export's unused-tensor check names them)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
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
        if experts := self.meta("expert_count", int):
            raise UnsupportedError(
                f"{self.path}: mixture-of-experts GGUF ({experts} experts) is not supported"
            )
        names = {t.name for t in self.reader.tensors}
        if "rope_freqs.weight" in names:
            raise UnsupportedError(
                f"{self.path}: tensor rope_freqs.weight (Llama 3.1-style rope scaling factors) is "
                "not supported by the GGUF import yet; export the Hugging Face checkpoint instead"
            )
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
            "intermediate_size": self._require("feed_forward_length"),
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
        }

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
            name = hf_name(t.name)
            dtype = GGUF_DTYPES[t.tensor_type.name]
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            if len(shape) == 1 and dtype not in ("f32", "f16", "bf16"):
                raise UnsupportedError(
                    f"{self.path}: 1-D tensor {t.name} is {t.tensor_type.name}; tierlm keeps "
                    "norms and biases in f32 and imports them from F32, F16 or BF16 only"
                )
            entries[name] = Entry(self.path, dtype, shape, int(t.data_offset), int(t.n_bytes))
            for module, count in heads.items():
                if f".{module}." in name:
                    permuted[name] = count
        return GGUFCheckpoint(self.path, entries, permuted)

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
