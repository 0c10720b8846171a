"""Test-only: tiny random Hugging Face models and a minimal writer of tierlm packages for
them, used by the executor tests until tierlm.export lands (then these call it instead)."""

import json
import os
import zlib

import numpy as np
import torch

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def tiny_hf_model(arch, seed=0, **overrides):
    """A random-initialised transformers model with odd sizes, in eval mode, f32."""
    import transformers

    torch.manual_seed(seed)
    if arch in ("llama", "mistral", "qwen2"):
        kwargs = dict(
            vocab_size=263,
            hidden_size=200,
            intermediate_size=333,
            num_hidden_layers=3,
            num_attention_heads=5,
            num_key_value_heads=1 if arch != "qwen2" else 5,
            head_dim=40,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
        if arch == "llama":
            kwargs["num_key_value_heads"] = 1
        if arch == "mistral":
            kwargs["sliding_window"] = None
            kwargs["num_key_value_heads"] = 5
            kwargs["num_attention_heads"] = 5
        kwargs.update(overrides)
        cls = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        }[arch]
        config = cls[0](**kwargs)
        model = cls[1](config)
    elif arch == "opt":
        kwargs = dict(
            vocab_size=263,
            hidden_size=200,
            ffn_dim=333,
            num_hidden_layers=3,
            num_attention_heads=5,
            max_position_embeddings=256,
            word_embed_proj_dim=200,
            do_layer_norm_before=True,
            activation_function="relu",
            enable_bias=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        kwargs.update(overrides)
        config = transformers.OPTConfig(**kwargs)
        model = transformers.OPTForCausalLM(config)
    else:
        raise ValueError(arch)
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name or "layer_norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


class _Writer:
    def __init__(self, out_dir, dtype):
        self.out_dir = out_dir
        self.dtype = dtype
        self.tensors = {}
        self.file = open(os.path.join(out_dir, "weights-0.bin"), "wb")
        self.offset = 0

    def add(self, name, tensor, layer=-1, keep_f32=False):
        dtype = "f32" if keep_f32 else self.dtype
        t = tensor.detach().to(DTYPES[dtype]).contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if dtype == "bf16" else t.numpy().tobytes()
        pad = (-self.offset) % 4096
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.tensors[name] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "file": "weights-0.bin",
            "offset": self.offset,
            "nbytes": len(raw),
            "crc32": zlib.crc32(raw),
            "layer": layer,
        }
        self.file.write(raw)
        self.offset += len(raw)
        return name

    def close(self):
        self.file.close()


def export_hf(model, out_dir, dtype="f32", tokenizer_dir=None):
    """Writes a format-1 package for a tiny Llama/Mistral/Qwen2/OPT model; returns out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.config
    arch = cfg.model_type
    w = _Writer(out_dir, dtype)
    sd = {k: v for k, v in model.state_dict().items()}
    ops = []
    values = {}

    def op(kind, ins, out, width, layer, **attrs):
        values[out] = width
        ops.append({"op": kind, "in": ins, "out": out, **attrs, "layer": layer})

    hidden = cfg.hidden_size
    heads = cfg.num_attention_heads
    if arch == "opt":
        head_dim = hidden // heads
        kv_heads = heads
        inter = cfg.ffn_dim
        prefix = "model.decoder."
        op(
            "embedding",
            ["tokens"],
            "h",
            hidden,
            -1,
            weight=w.add("embed.weight", sd[prefix + "embed_tokens.weight"]),
        )
        w.add("embed.positions", sd[prefix + "embed_positions.weight"])
        op(
            "position_embedding",
            ["h", "positions"],
            "h",
            hidden,
            -1,
            weight="embed.positions",
            offset=2,
        )
        for i in range(cfg.num_hidden_layers):
            p = f"{prefix}layers.{i}."
            L = f"layers.{i}."

            def t(name, src, i=i, p=p, L=L):
                return w.add(L + name, sd[p + src], layer=i)

            op(
                "layernorm",
                ["h"],
                "x",
                hidden,
                i,
                weight=t("attn_norm.weight", "self_attn_layer_norm.weight"),
                bias=t("attn_norm.bias", "self_attn_layer_norm.bias"),
                eps=1e-5,
            )
            for proj in "qkv":
                op(
                    "linear",
                    ["x"],
                    proj,
                    hidden,
                    i,
                    weight=t(f"attn.{proj}.weight", f"self_attn.{proj}_proj.weight"),
                    bias=t(f"attn.{proj}.bias", f"self_attn.{proj}_proj.bias"),
                )
            op(
                "attention",
                ["q", "k", "v"],
                "a",
                hidden,
                i,
                heads=heads,
                kv_heads=heads,
                head_dim=head_dim,
                scale=head_dim**-0.5,
            )
            op(
                "linear",
                ["a"],
                "o",
                hidden,
                i,
                weight=t("attn.o.weight", "self_attn.out_proj.weight"),
                bias=t("attn.o.bias", "self_attn.out_proj.bias"),
            )
            op("add", ["h", "o"], "h", hidden, i)
            op(
                "layernorm",
                ["h"],
                "x",
                hidden,
                i,
                weight=t("ffn_norm.weight", "final_layer_norm.weight"),
                bias=t("ffn_norm.bias", "final_layer_norm.bias"),
                eps=1e-5,
            )
            op(
                "linear",
                ["x"],
                "f",
                inter,
                i,
                weight=t("ffn.up.weight", "fc1.weight"),
                bias=t("ffn.up.bias", "fc1.bias"),
            )
            op("relu", ["f"], "f", inter, i)
            op(
                "linear",
                ["f"],
                "d",
                hidden,
                i,
                weight=t("ffn.down.weight", "fc2.weight"),
                bias=t("ffn.down.bias", "fc2.bias"),
            )
            op("add", ["h", "d"], "h", hidden, i)
        op(
            "layernorm",
            ["h"],
            "x",
            hidden,
            -1,
            weight=w.add("final_norm.weight", sd[prefix + "final_layer_norm.weight"]),
            bias=w.add("final_norm.bias", sd[prefix + "final_layer_norm.bias"]),
            eps=1e-5,
        )
        op("lm_head", ["x"], "logits", cfg.vocab_size, -1, weight="embed.weight")
        tie = True
        theta = 10000.0
        inv_freq = None
        offset = 2
        eps = 1e-5
    else:
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        kv_heads = cfg.num_key_value_heads
        inter = cfg.intermediate_size
        eps = cfg.rms_norm_eps
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        inv_freq = (
            1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        ).tolist()
        offset = 0
        tie = bool(cfg.tie_word_embeddings)
        op(
            "embedding",
            ["tokens"],
            "h",
            hidden,
            -1,
            weight=w.add("embed.weight", sd["model.embed_tokens.weight"]),
        )
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            L = f"layers.{i}."

            def t(name, src, i=i, p=p, L=L):
                return w.add(L + name, sd[p + src], layer=i)

            op(
                "rmsnorm",
                ["h"],
                "x",
                hidden,
                i,
                weight=t("attn_norm.weight", "input_layernorm.weight"),
                eps=eps,
            )
            widths = {"q": heads * head_dim, "k": kv_heads * head_dim, "v": kv_heads * head_dim}
            for proj in "qkv":
                bias = (
                    t(f"attn.{proj}.bias", f"self_attn.{proj}_proj.bias")
                    if p + f"self_attn.{proj}_proj.bias" in sd
                    else None
                )
                op(
                    "linear",
                    ["x"],
                    proj,
                    widths[proj],
                    i,
                    weight=t(f"attn.{proj}.weight", f"self_attn.{proj}_proj.weight"),
                    bias=bias,
                )
            op("rope", ["q"], "q", widths["q"], i, heads=heads, head_dim=head_dim)
            op("rope", ["k"], "k", widths["k"], i, heads=kv_heads, head_dim=head_dim)
            op(
                "attention",
                ["q", "k", "v"],
                "a",
                widths["q"],
                i,
                heads=heads,
                kv_heads=kv_heads,
                head_dim=head_dim,
                scale=head_dim**-0.5,
            )
            op(
                "linear",
                ["a"],
                "o",
                hidden,
                i,
                weight=t("attn.o.weight", "self_attn.o_proj.weight"),
                bias=None,
            )
            op("add", ["h", "o"], "h", hidden, i)
            op(
                "rmsnorm",
                ["h"],
                "x",
                hidden,
                i,
                weight=t("ffn_norm.weight", "post_attention_layernorm.weight"),
                eps=eps,
            )
            op(
                "linear",
                ["x"],
                "g",
                inter,
                i,
                weight=t("ffn.gate.weight", "mlp.gate_proj.weight"),
                bias=None,
            )
            op(
                "linear",
                ["x"],
                "u",
                inter,
                i,
                weight=t("ffn.up.weight", "mlp.up_proj.weight"),
                bias=None,
            )
            op("silu_mul", ["g", "u"], "f", inter, i)
            op(
                "linear",
                ["f"],
                "d",
                hidden,
                i,
                weight=t("ffn.down.weight", "mlp.down_proj.weight"),
                bias=None,
            )
            op("add", ["h", "d"], "h", hidden, i)
        op(
            "rmsnorm",
            ["h"],
            "x",
            hidden,
            -1,
            weight=w.add("final_norm.weight", sd["model.norm.weight"]),
            eps=eps,
        )
        head = "embed.weight" if tie else w.add("lm_head.weight", sd["lm_head.weight"])
        op("lm_head", ["x"], "logits", cfg.vocab_size, -1, weight=head)
    w.close()
    size = os.path.getsize(os.path.join(out_dir, "weights-0.bin"))
    manifest = {
        "format": "tierlm-package",
        "format_version": 1,
        "architecture": arch,
        "dtype": dtype,
        "config": {
            "vocab_size": cfg.vocab_size,
            "hidden_size": hidden,
            "num_layers": cfg.num_hidden_layers,
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "head_dim": head_dim,
            "intermediate_size": inter,
            "max_positions": cfg.max_position_embeddings,
            "norm_eps": eps,
            "rope_theta": theta,
            "rope_inv_freq": inv_freq,
            "tie_embeddings": tie,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "position_offset": offset,
        },
        "files": [{"name": "weights-0.bin", "size": size}],
        "tensors": w.tensors,
        "tokenizer": None,
    }
    if tokenizer_dir:
        import shutil

        os.makedirs(os.path.join(out_dir, "tokenizer"), exist_ok=True)
        files = []
        for name in os.listdir(tokenizer_dir):
            if name.startswith("tokenizer") or name.endswith(".json"):
                shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, "tokenizer"))
                files.append(name)
        manifest["tokenizer"] = {"dir": "tokenizer", "files": files}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    graph = {
        "inputs": {"tokens": "int32[tokens]", "positions": "int32[tokens]"},
        "output": "logits",
        "values": values,
        "ops": ops,
    }
    with open(os.path.join(out_dir, "graph.json"), "w") as f:
        json.dump(graph, f, indent=1)
    return out_dir
