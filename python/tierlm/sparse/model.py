"""Loads an OPT causal LM into torch from a Hugging Face directory or a tierlm package, and
gives access to each layer's FFN (its input after the FFN layer norm, and its weights).

The sparse tools train and evaluate in torch. ReLU FFNs (OPT) from a directory or a
package; gated SiLU FFNs (Llama family, thresholded sparsity, lossy) from a Hugging Face
directory.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NP_DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": None}
GATED_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class LoadedModel:
    model: object  # transformers OPTForCausalLM, f32, eval mode
    tokenizer: object  # tokenizers.Tokenizer or None
    source: str  # "hf" | "package" | "gguf"
    path: Path

    @property
    def gated(self):
        """True for gated SiLU FFNs (Llama family), False for OPT's ReLU."""
        return not hasattr(self.model.model, "decoder")

    @property
    def layers(self):
        return self.model.model.layers if self.gated else self.model.model.decoder.layers

    def ffn_input_module(self, layer):
        """The module whose forward input is the FFN input (after the FFN norm)."""
        return self.layers[layer].mlp if self.gated else self.layers[layer].fc1

    @property
    def num_layers(self):
        return len(self.layers)

    @property
    def hidden_size(self):
        return self.model.config.hidden_size

    @property
    def ffn_dim(self):
        c = self.model.config
        return c.intermediate_size if self.gated else c.ffn_dim

    def ffn(self, layer):
        """(up [ffn, d], up bias [ffn], down [d, ffn], down bias [d]) as f32 numpy arrays
        (zero biases when the FFN has none)."""
        if self.gated:
            mlp = self.layers[layer].mlp
            up, down = mlp.up_proj, mlp.down_proj
        else:
            up, down = self.layers[layer].fc1, self.layers[layer].fc2
        return (_np(up.weight), _bias(up), _np(down.weight), _bias(down))

    def gate(self, layer):
        """Gated FFNs: (gate [ffn, d], gate bias [ffn]) as f32 numpy arrays."""
        proj = self.layers[layer].mlp.gate_proj
        return _np(proj.weight), _bias(proj)

    def encode(self, text):
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer files: pass token ids instead of text")
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids):
        return self.tokenizer.decode(list(ids))


def _np(t):
    return t.detach().float().numpy()


def _bias(linear):
    if linear.bias is None:
        return np.zeros(linear.weight.shape[0], np.float32)
    return _np(linear.bias)


def _check_opt(config, path, gated_ok=False):
    arch = config.get("model_type") or config.get("architecture")
    if arch == "opt" or (gated_ok and arch in GATED_TYPES):
        return
    where = "" if gated_ok else " from a package (train on its Hugging Face directory)"
    raise ValueError(
        f"{path}: architecture '{arch}' is not supported by the sparse tools{where}: OPT "
        f"(ReLU FFN), or {', '.join(GATED_TYPES)} (gated SiLU, thresholded) from a Hugging Face "
        "directory"
    )


def _load_tokenizer(directory):
    from tokenizers import Tokenizer

    file = Path(directory) / "tokenizer.json"
    return Tokenizer.from_file(str(file)) if file.exists() else None


def load_model(path):
    """An OPT model from an HF directory (config.json) or a package (manifest.json), or a
    Llama-family model from an HF directory or a .gguf file (dequantized to f32)."""
    import torch

    path = Path(path)
    if path.suffix == ".gguf" and path.is_file():
        return _load_gguf(path)
    if (path / "manifest.json").exists():
        return _load_package(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path}: neither a tierlm package (manifest.json) nor a Hugging Face directory "
            "(config.json)"
        )
    _check_opt(json.loads((path / "config.json").read_text()), path, gated_ok=True)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return LoadedModel(model, _load_tokenizer(path), "hf", path)


def _load_gguf(path):
    """A Llama-family GGUF, dequantized to f32 by transformers (its gguf integration)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    _check_opt({"model_type": model.config.model_type}, path, gated_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return LoadedModel(model, tokenizer.backend_tokenizer, "gguf", path)


def _package_tensor(path, meta):
    dtype = meta["dtype"]
    count = int(np.prod(meta["shape"]))
    raw = np.fromfile(
        path / meta["file"],
        dtype=np.uint16 if dtype == "bf16" else _NP_DTYPES[dtype],
        count=count,
        offset=meta["offset"],
    )
    if raw.size != count:
        raise ValueError(
            f"{path / meta['file']}: short read of a tensor at offset {meta['offset']}"
        )
    if dtype == "bf16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32).reshape(meta["shape"])


def _load_package(path):
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    manifest = json.loads((path / "manifest.json").read_text())
    _check_opt(manifest, path)
    cfg = manifest["config"]
    config = OPTConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        ffn_dim=cfg["intermediate_size"],
        num_attention_heads=cfg["num_heads"],
        max_position_embeddings=cfg["max_positions"],
        do_layer_norm_before=True,
        word_embed_proj_dim=cfg["hidden_size"],
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=cfg.get("tie_embeddings", True),
        bos_token_id=cfg.get("bos_token_id", 2),
        eos_token_id=cfg.get("eos_token_id", 2),
    )
    model = OPTForCausalLM(config).eval()
    names = {
        "embed.weight": "model.decoder.embed_tokens.weight",
        "embed.positions": "model.decoder.embed_positions.weight",
        "final_norm.weight": "model.decoder.final_layer_norm.weight",
        "final_norm.bias": "model.decoder.final_layer_norm.bias",
        "lm_head.weight": "lm_head.weight",
    }
    parts = {
        "attn_norm": "self_attn_layer_norm",
        "ffn_norm": "final_layer_norm",
        "attn.q": "self_attn.q_proj",
        "attn.k": "self_attn.k_proj",
        "attn.v": "self_attn.v_proj",
        "attn.o": "self_attn.out_proj",
        "ffn.up": "fc1",
        "ffn.down": "fc2",
    }
    for i in range(cfg["num_layers"]):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = f"model.decoder.layers.{i}.{theirs}.{kind}"
    state = {}
    for name, meta in manifest["tensors"].items():
        if name not in names:
            raise ValueError(f"{path}: tensor '{name}' has no OPT counterpart")
        state[names[name]] = torch.from_numpy(_package_tensor(path, meta))
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not config.tie_word_embeddings]
    if missing:
        raise ValueError(f"{path}: package lacks tensors for {missing[:3]}")
    model.tie_weights()
    tok_dir = path / manifest.get("tokenizer", {}).get("dir", "tokenizer")
    return LoadedModel(model, _load_tokenizer(tok_dir), "package", path)


def run_with_hooks(loaded, ids, context, hooks, progress=None):
    """Runs the model over the ids (int64 numpy) in windows of `context` tokens, then removes
    the forward hooks it was given (also on error). progress(done_tokens, total_tokens) is
    called after each window."""
    import torch

    try:
        with torch.no_grad():
            for start in range(0, len(ids), context):
                loaded.model(input_ids=torch.from_numpy(ids[start : start + context])[None])
                if progress:
                    progress(min(len(ids), start + context), len(ids))
    finally:
        for h in hooks:
            h.remove()


def collect_ffn_inputs(loaded, ids, context=None, max_tokens=None, progress=None, sink=None):
    """Each layer's FFN input (after its layer norm) for the ids, fed in windows of `context`;
    progress(done_tokens, total_tokens) after each window.

    Returns a list (one per layer) of f32 arrays [tokens, hidden]; with sink(layer, rows),
    hands each window's rows to it as they come instead and returns None (memory bounded by
    one window: tierlm.sparse.spill)."""
    import torch

    context = context or loaded.model.config.max_position_embeddings
    ids = np.asarray(ids, dtype=np.int64)
    if max_tokens:
        ids = ids[:max_tokens]
    store = [[] for _ in range(loaded.num_layers)]
    hooks = []
    for i in range(loaded.num_layers):

        def hook(_module, args, i=i):
            rows = args[0].detach().reshape(-1, args[0].shape[-1])
            if sink is None:
                store[i].append(rows.clone())
            else:
                sink(i, rows.float().numpy())

        hooks.append(loaded.ffn_input_module(i).register_forward_pre_hook(hook))
    run_with_hooks(loaded, ids, context, hooks, progress)
    return None if sink is not None else [torch.cat(s).numpy() for s in store]
