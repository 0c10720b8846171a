"""A large OPT-shaped model with synthetic activation sparsity, for bench_sparse.py.

Random weights have no activation sparsity of their own, so the FFN is built to have it:
fc1's row i is a low-rank part a_i · B (rank r) plus a small full-rank noise e_i, and its
bias is set so that relu(x · fc1_i + b_i) is positive for a chosen fraction of inputs x
drawn like a LayerNorm output (N(0, 1) per element): b_i = -|fc1_i| · Φ⁻¹(sparsity).
The predictor of layer i is the low-rank part itself (down = B, up = a), with its bias
raised by a margin of the noise's spread so that recall stays high. This sparsity and this
predictor are synthetic; bench_sparse.py says so in its table. The trained demo model
(bench_sparse_quality.py) is where sparsity and predictors are real.

The residual stream is made to change slowly from layer to layer, as in trained models (the
demo OPT's consecutive FFN inputs have cosine similarity 0.95-0.97 after its first layer;
Deja Vu reports the same for OPT): the token and position embeddings are EMBED_SCALE times
the other weights' scale, so each layer's update is a small part of the stream (random
weights of one scale would let layer i's attention output replace the stream, and layer
i's input would say nothing about layer i+1's neurons, which read-ahead predicts from it).
And consecutive tokens share neurons as in trained models, where the stream carries the
context: token and position embeddings have a common part (SHARED), set so that over 15
decode steps (4 layers, 95%) the window (k = 4) hit rate and the read-ahead's recall and
precision (0.78, 0.55, 0.65) are near the demo model's after a short prompt (10 steps:
recall 0.55, precision 0.63; over 31 steps the demo repeats itself: hit 0.96, recall 0.34,
precision 0.12).

Every sparsity shares one set of big weight shards (hard links); only the fc1 biases (a
small shard) and the predictors differ, so several variants cost the disk of one.
"""

import json
import os
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from safetensors.torch import save_file
from tierlm.sparse.predictor import LayerPredictor, Predictors, layer_metrics

NOISE = 0.1  # |e_i| / |a_i B|: the part of fc1 the rank-r predictor cannot see
EMBED_SCALE = 100.0  # embeddings' scale / the other weights' (a slowly changing stream)
SHARED = 0.7  # embeddings' common direction (cosine between two tokens' = SHARED**2)
MARGIN = 1.5  # predictor bias margin in units of the noise's standard deviation
BIG_SHARDS = "shards"
SYNTHETIC = (
    "fc1 = low-rank part + noise, bias set for the target sparsity; metrics measured on 256"
    " N(0, 1) inputs (LayerNorm-like); embeddings x"
    + f"{EMBED_SCALE:g} (slowly changing stream), {SHARED:g} of them shared"
)


def variant_dir(root, sparsity):
    return Path(root) / f"opt-sparse{round(sparsity * 100)}"


def make_models(root, sparsities, hidden, layers, ffn, heads, vocab, rank, positions=2048, seed=0):
    """Writes (once) the shared shards and one HF directory per sparsity under root, each with
    config.json, model.safetensors.index.json, a bias shard and predictors. Returns the weight
    bytes of one variant."""
    root = Path(root)
    dirs = [variant_dir(root, s) for s in sparsities]
    if all(_made_as_now(d) for d in dirs):
        return _weight_bytes(dirs[0])
    shards = root / BIG_SHARDS
    shards.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * 0.02 * scale).to(torch.float16)

    def zeros(n):
        return torch.zeros(n, dtype=torch.float16)

    def ones(n):
        return torch.ones(n, dtype=torch.float16)

    weight_map = {}

    def embeddings(rows):
        common = torch.randn(hidden, generator=gen)
        own = torch.randn(rows, hidden, generator=gen)
        mixed = SHARED * common + (1 - SHARED**2) ** 0.5 * own
        return (mixed * 0.02 * EMBED_SCALE).to(torch.float16)

    def write(name, tensors):
        save_file(tensors, str(shards / name))
        weight_map.update(dict.fromkeys(tensors, f"{BIG_SHARDS}/{name}"))

    write(
        "embed.safetensors",
        {
            "model.decoder.embed_tokens.weight": embeddings(vocab),
            "model.decoder.embed_positions.weight": embeddings(positions + 2),
            "model.decoder.final_layer_norm.weight": ones(hidden),
            "model.decoder.final_layer_norm.bias": zeros(hidden),
        },
    )
    biases = {s: {} for s in sparsities}
    predictors = {s: [] for s in sparsities}
    metrics_by_sparsity = {s: [] for s in sparsities}
    inputs = rng.standard_normal((256, hidden), dtype=np.float32)  # LayerNorm-like x
    for i in range(layers):
        p = f"model.decoder.layers.{i}."
        basis = rng.standard_normal((rank, hidden), dtype=np.float32) / np.sqrt(hidden)
        coeffs = rng.standard_normal((ffn, rank), dtype=np.float32) * np.float32(
            0.02 * np.sqrt(hidden / rank)
        )
        low = coeffs @ basis
        low_norm = np.linalg.norm(low, axis=1)
        noise = rng.standard_normal((ffn, hidden), dtype=np.float32)
        noise *= (NOISE * low_norm / np.sqrt(hidden))[:, None]
        fc1 = low + noise
        fc1_f16 = torch.from_numpy(fc1).to(torch.float16)
        norm = np.linalg.norm(fc1_f16.float().numpy(), axis=1)
        noise_sd = NOISE * low_norm
        tensors = {p + "fc1.weight": fc1_f16, p + "fc2.weight": rand(hidden, ffn)}
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors[p + f"self_attn.{name}.weight"] = rand(hidden, hidden)
            tensors[p + f"self_attn.{name}.bias"] = zeros(hidden)
        tensors[p + "fc2.bias"] = zeros(hidden)
        for norm_name in ("self_attn_layer_norm", "final_layer_norm"):
            tensors[p + f"{norm_name}.weight"] = ones(hidden)
            tensors[p + f"{norm_name}.bias"] = zeros(hidden)
        write(f"layer{i}.safetensors", tensors)
        truth_pre = inputs @ fc1_f16.float().numpy().T
        for s in sparsities:
            bias = (-norm * NormalDist().inv_cdf(s)).astype(np.float32)
            biases[s][p + "fc1.bias"] = torch.from_numpy(bias).to(torch.float16)
            up_bias = bias + MARGIN * noise_sd
            truth = truth_pre + bias > 0
            pred = (inputs @ basis.T) @ coeffs.T + up_bias > 0
            metrics = {"layer": i, "rank": rank, **layer_metrics(pred, truth)}
            predictors[s].append(LayerPredictor(basis, coeffs, up_bias.astype(np.float32)))
            metrics_by_sparsity[s].append(metrics)
    for s, d in zip(sparsities, dirs, strict=True):
        _write_variant(d, shards, weight_map, biases[s], predictors[s], metrics_by_sparsity[s])
        _write_config(d, hidden, layers, ffn, heads, vocab, positions)
    return _weight_bytes(dirs[0])


def _made_as_now(directory):
    """Whether directory holds a variant this version of the generator made."""
    made = directory / "predictors.json"
    info = json.loads(made.read_text()).get("metrics", {}) if made.exists() else {}
    return info.get("synthetic") == SYNTHETIC


def _write_variant(directory, shards, weight_map, biases, layer_predictors, metrics):
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / BIG_SHARDS
    if not link.exists():
        link.mkdir()
        for f in shards.iterdir():
            os.link(f, link / f.name)
    save_file(biases, str(directory / "fc1-bias.safetensors"))
    full_map = dict(weight_map)
    full_map.update(dict.fromkeys(biases, "fc1-bias.safetensors"))
    index = {"metadata": {}, "weight_map": full_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    info = {"synthetic": SYNTHETIC, "layers": metrics}
    Predictors(layer_predictors, info).save(directory)


def _write_config(directory, hidden, layers, ffn, heads, vocab, positions):
    config = {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "ffn_dim": ffn,
        "num_attention_heads": heads,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "word_embed_proj_dim": hidden,
        "do_layer_norm_before": True,
        "activation_function": "relu",
        "enable_bias": True,
        "layer_norm_elementwise_affine": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "bos_token_id": 2,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _weight_bytes(directory):
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    files = {directory / f for f in index["weight_map"].values()}
    return sum(f.stat().st_size for f in files)
