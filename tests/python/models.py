"""Tiny random Hugging Face models of each supported architecture, saved as checkpoints and
exported to tierlm packages. Shared by the export and executor tests.

    from models import ARCHS, hf_checkpoint, package, hf_logits
    model, hf_dir = hf_checkpoint("llama", tmp_path / "hf")
    pkg = package("llama", tmp_path)          # checkpoint + export, returns the package dir

Weights are drawn at random with the scale of a trained model (activations of order 1, norm
weights near 1, non-zero biases) so that a misplaced tensor changes the logits visibly.
"""

import math
import os
import re

import numpy as np
from tierlm.reference import Reference

torch = None
transformers = None


def _import():
    global torch, transformers
    if torch is None:
        import pytest

        torch = pytest.importorskip("torch")
        transformers = pytest.importorskip("transformers")
        transformers.utils.logging.disable_progress_bar()


# Odd sizes: hidden 200, 3 layers, 5 heads where the architecture allows; vocab 211 (prime).
COMMON = {"vocab_size": 211, "hidden_size": 200, "num_hidden_layers": 3, "bos_token_id": 1}
ARCHS = {
    # GQA: 10 query heads share 2 KV heads
    "llama": dict(
        model_type="llama",
        num_attention_heads=10,
        num_key_value_heads=2,
        intermediate_size=307,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        eos_token_id=2,
    ),
    "llama_tied": dict(
        model_type="llama",
        num_attention_heads=5,
        num_key_value_heads=5,
        intermediate_size=307,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.0},
    ),
    "llama3": dict(
        model_type="llama",
        num_attention_heads=5,
        num_key_value_heads=1,
        intermediate_size=307,
        max_position_embeddings=512,
        eos_token_id=[2, 3],
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    # head_dim 24: q width 120 != hidden 200
    "mistral": dict(
        model_type="mistral",
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=24,
        intermediate_size=307,
        max_position_embeddings=256,
        sliding_window=None,
    ),
    "qwen2": dict(
        model_type="qwen2",
        num_attention_heads=5,
        num_key_value_heads=1,
        intermediate_size=307,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
    "opt": dict(
        model_type="opt",
        num_attention_heads=5,
        ffn_dim=307,
        max_position_embeddings=256,
        word_embed_proj_dim=200,
        do_layer_norm_before=True,
        pad_token_id=1,
        eos_token_id=2,
    ),
    # Mixture of experts: 5..7 experts of odd widths, top-k normalised or not. transformers runs
    # them with its per-expert loop ("eager"): its grouped_mm needs 16-byte strides.
    "mixtral": dict(
        model_type="mixtral",
        experts_implementation="eager",
        num_attention_heads=10,
        num_key_value_heads=2,
        intermediate_size=67,
        num_local_experts=5,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        sliding_window=None,
        eos_token_id=2,
    ),
    # shared expert behind its sigmoid gate; layer 1 dense (mlp_only_layers)
    "qwen2_moe": dict(
        model_type="qwen2_moe",
        experts_implementation="eager",
        num_attention_heads=5,
        num_key_value_heads=1,
        intermediate_size=97,
        moe_intermediate_size=67,
        shared_expert_intermediate_size=89,
        num_experts=7,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        mlp_only_layers=[1],
        max_position_embeddings=256,
    ),
    # q/k RMSNorm per head, head_dim 24 != hidden / heads
    "qwen3_moe": dict(
        model_type="qwen3_moe",
        experts_implementation="eager",
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=24,
        intermediate_size=97,
        moe_intermediate_size=67,
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=256,
    ),
    # q/k RMSNorm over the whole projection
    "olmoe": dict(
        model_type="olmoe",
        experts_implementation="eager",
        num_attention_heads=5,
        num_key_value_heads=5,
        intermediate_size=67,
        num_experts=5,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        max_position_embeddings=256,
        eos_token_id=2,
        pad_token_id=1,
    ),
}
PARITY_ARCHS = ("llama", "llama_tied", "llama3", "mistral", "qwen2", "opt")
MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


# A llama whose KV cache spills to disk at a quarter of its bytes (tests of kv_host_budget):
# head_dim 64 on one KV head makes a layer's keys + values of a 32-token block 8 KiB of f16,
# whole pages (nothing padded for O_DIRECT), and 12 layers leave room in the budget for the two
# staging buffers that read a layer's spilled blocks back.
SPILL_SHAPE = dict(
    hidden_size=128, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=12
)


def hf_config(arch, **overrides):
    """A transformers config for one of ARCHS, with overrides."""
    _import()
    settings = {**COMMON, **ARCHS[arch], **overrides}
    model_type = settings.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **settings)


def randomize(model, seed=0):
    """Draws every parameter at random with trained-model scales."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = 1 + 0.1 * noise
            elif param.dim() == 1:
                value = 0.1 * noise
            elif "embed" in name:
                value = noise * (0.02 if "positions" in name else 1.0)
            else:
                value = noise / math.sqrt(param.shape[1])
            param.copy_(value.to(param.dtype))
    return model


def hf_model(arch, dtype="float32", seed=0, **overrides):
    _import()
    config = hf_config(arch, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    return randomize(model, seed)


def hf_checkpoint(
    arch, hf_dir, dtype="float32", seed=0, max_shard_size=None, tokenizer=False, **kw
):
    """Saves a random model of `arch` to hf_dir (sharded when max_shard_size is given, e.g.
    "40KB"); returns (model, hf_dir)."""
    model = hf_model(arch, dtype, seed, **kw)
    os.makedirs(hf_dir, exist_ok=True)
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(hf_dir, **extra)
    if tokenizer:
        tiny_tokenizer(hf_dir, model.config.vocab_size)
    return model, str(hf_dir)


def package(arch, tmp_dir, dtype=None, hf_dtype="float32", seed=0, name=None, **kw):
    """Builds a random checkpoint of `arch` under tmp_dir and exports it; returns
    (model, package_dir). dtype is the export dtype (None keeps the checkpoint's)."""
    import tierlm

    name = name or f"{arch}-{hf_dtype}-{dtype}-{seed}"
    model, hf_dir = hf_checkpoint(arch, os.path.join(tmp_dir, name + "-hf"), hf_dtype, seed, **kw)
    out = os.path.join(tmp_dir, name + "-pkg")
    tierlm.export(hf_dir, out, dtype=dtype, progress=False)
    return model, out


def hf_logits(model, ids):
    """Logits [len(ids), vocab] of one prompt from transformers, as float32 numpy."""
    _import()
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long))
    return out.logits[0].float().numpy()


def prompt(length, vocab=211, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, length).tolist()


# Package tensor names of a Llama -> transformers parameter names (the matrices only).
HF_NAME = [
    (r"embed\.weight", "model.embed_tokens.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"layers\.(\d+)\.attn\.([qkvo])\.weight", r"model.layers.\1.self_attn.\2_proj.weight"),
    (r"layers\.(\d+)\.ffn\.(gate|up|down)\.weight", r"model.layers.\1.mlp.\2_proj.weight"),
]


def hf_name(name):
    for pattern, repl in HF_NAME:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def rss_bytes():
    """Resident set size of this process now, in bytes (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|: the parity measure of the tests."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def tiny_tokenizer(out_dir, vocab_size=211):
    """Trains a small byte-level BPE tokenizer offline and saves it in transformers' layout
    (tokenizer.json, tokenizer_config.json, ...). Returns the file names written."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = ["the quick brown fox jumps over the lazy dog", "tiered memory for language models"]
    tok.train_from_iterator(text * 4, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    before = set(os.listdir(out_dir))
    fast.save_pretrained(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)


def flipped_copy(pkg, dest, offset=4096 + 17):
    """A copy of package pkg at dest with one bit of its first weight file flipped (inside the
    second tensor page): loads unchecked, fails a CRC check."""
    import shutil

    shutil.copytree(pkg, dest)
    weights = sorted(f for f in os.listdir(dest) if f.endswith(".bin"))[0]
    with open(os.path.join(dest, weights), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    return dest


def offload_moe_package(tmp_dir):
    """The MoE package of the expert-offload tests: a Mixtral of 4 layers x 8 experts of
    3 x 307 x 200 bf16 (each part 30 pages): 32 experts, 11.8 MB."""
    return package(
        "mixtral",
        tmp_dir,
        dtype="bf16",
        num_hidden_layers=4,
        num_local_experts=8,
        intermediate_size=307,
        max_position_embeddings=64,
    )[1]


class RoutingRecorder(Reference):
    """The numpy reference, recording each moe op's input and the experts each row chose."""

    def __init__(self, pkg):
        super().__init__(pkg)
        self.calls = []

    def _moe(self, op, x):
        logits = x @ self.weight(op["weight"]).T
        self.calls.append((op, x, np.argsort(-logits, axis=-1)[:, : op["top_k"]]))
        return super()._moe(op, x)
