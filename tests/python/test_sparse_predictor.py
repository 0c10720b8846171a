import json
import zlib

import numpy as np
import pytest
import torch
from tierlm.cli import main
from tierlm.sparse import DEMO_MODEL_DIR
from tierlm.sparse.corpus import held_out_text, train_text
from tierlm.sparse.model import load_model
from tierlm.sparse.predictor import (
    Predictors,
    activation_labels,
    default_ranks,
    layer_metrics,
    train_layer,
)

needs_demo = pytest.mark.skipif(
    not (DEMO_MODEL_DIR / "config.json").exists(), reason="demo model not shipped"
)


def test_default_ranks_are_larger_for_the_last_layers():
    assert default_ranks(6, 256) == [32, 32, 32, 32, 64, 64]
    assert default_ranks(3, 64, rank=5, last_rank=7, last_layers=1) == [5, 5, 7]


def test_balanced_training_learns_a_low_rank_rule():
    # Neurons fire on a rank-2 function of x: a rank-2 predictor must find it.
    rng = np.random.default_rng(0)
    d, ffn, n = 24, 37, 3000
    a = rng.standard_normal((2, d)).astype(np.float32)
    b = rng.standard_normal((ffn, 2)).astype(np.float32)
    up, bias = b @ a, np.full(ffn, -1.5, np.float32)  # sparse: mostly negative
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = activation_labels(x, up, bias)
    assert 0.05 < y.mean() < 0.4
    p = train_layer(x[:2500], y[:2500], rank=2, epochs=30, lr=1e-2)
    m = layer_metrics(p.predict(x[2500:]), y[2500:])
    assert m["recall"] > 0.9 and m["precision"] > 0.6, m


def write_package(loaded, out):
    """A tierlm package (docs/package-format.md) of an OPT model, written by hand."""
    out.mkdir()
    sd = loaded.model.state_dict()
    names = {
        "embed.weight": "model.decoder.embed_tokens.weight",
        "embed.positions": "model.decoder.embed_positions.weight",
        "final_norm.weight": "model.decoder.final_layer_norm.weight",
        "final_norm.bias": "model.decoder.final_layer_norm.bias",
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
    for i in range(loaded.num_layers):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = f"model.decoder.layers.{i}.{theirs}.{kind}"
    tensors, blob = {}, bytearray()
    for ours, theirs in names.items():
        data = sd[theirs].to(torch.float16).numpy().tobytes()
        blob += b"\0" * (-len(blob) % 4096)
        tensors[ours] = {
            "dtype": "f16",
            "shape": list(sd[theirs].shape),
            "file": "weights-0.bin",
            "offset": len(blob),
            "nbytes": len(data),
            "crc32": zlib.crc32(data),
            "layer": -1,
        }
        blob += data
    (out / "weights-0.bin").write_bytes(bytes(blob))
    c = loaded.model.config
    manifest = {
        "format": "tierlm-package",
        "format_version": 1,
        "architecture": "opt",
        "dtype": "f16",
        "config": {
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "num_layers": c.num_hidden_layers,
            "num_heads": c.num_attention_heads,
            "num_kv_heads": c.num_attention_heads,
            "head_dim": c.hidden_size // c.num_attention_heads,
            "intermediate_size": c.ffn_dim,
            "max_positions": c.max_position_embeddings,
            "norm_eps": 1e-5,
            "tie_embeddings": True,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "position_offset": 2,
        },
        "files": [{"name": "weights-0.bin", "size": len(blob)}],
        "tensors": tensors,
        "tokenizer": {"dir": "tokenizer", "files": ["tokenizer.json"]},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_bytes(
        (loaded.path / "tokenizer.json").read_bytes()
    )


@needs_demo
def test_cli_trains_on_hf_dir_and_package_with_useful_recall(tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text(train_text(max_chars=40_000))
    held = tmp_path / "held.txt"
    held.write_text(held_out_text(max_chars=12_000))
    loaded = load_model(DEMO_MODEL_DIR)
    pkg = tmp_path / "pkg"
    write_package(loaded, pkg)
    # The package loads to the same model.
    ids = torch.tensor([loaded.encode("import os\n")])
    pkg_model = load_model(pkg)
    with torch.no_grad():
        torch.testing.assert_close(pkg_model.model(ids).logits, loaded.model(ids).logits)
    for src, out in [(DEMO_MODEL_DIR, tmp_path / "hf-pred"), (pkg, pkg)]:
        args = [
            "sparse",
            "train",
            str(src),
            "--calibration",
            str(calib),
            "--held-out",
            str(held),
            "--max-tokens",
            "4096",
            "--epochs",
            "3",
            "--threads",
            "1",
            "--json",
        ]
        if out != pkg:
            args += ["--out", str(out)]
        else:  # the package run only checks the path works: few steps
            args += ["--min-steps", "40"]
        assert main(args) == 0
        result = json.loads(capsys.readouterr().out)
        assert len(result["layers"]) == loaded.num_layers
        for m in result["layers"] if out != pkg else []:
            # ReLU sparsity is real in the trained model; the predictor finds most firing neurons.
            assert m["true_density"] < 0.5
            assert m["recall"] > 0.8, m
            assert m["precision"] > m["true_density"], m
        p = Predictors.load(out)
        assert p.ranks == result["ranks"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["sparse", "train", str(tmp_path), "--calibration", "nope.txt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tierlm: error:") and "config.json" in err and err.count("\n") == 1
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["sparse", "train", str(tmp_path), "--calibration", "x"]) == 1
    err = capsys.readouterr().err
    assert "'gpt2' is not supported by the sparse tools" in err and "OPT" in err
    with pytest.raises(FileNotFoundError):
        Predictors.load(tmp_path)


def test_recall_at_precision_matches_brute_force():
    from tierlm.sparse.predictor import recall_at_precision

    rng = np.random.default_rng(11)
    labels = rng.random((37, 13)) < 0.3
    logits = labels * 1.0 + rng.standard_normal((37, 13))
    for precision in (0.3, 0.5, 0.9):
        best = 0.0
        for cut in np.unique(logits):
            pred = logits >= cut
            tp = np.logical_and(pred, labels).sum()
            if tp >= precision * pred.sum():
                best = max(best, tp / labels.sum())
        assert recall_at_precision(logits, labels, precision) == pytest.approx(best)
    assert recall_at_precision(logits, np.zeros_like(labels)) == 1.0


def test_keep_all_selects_every_neuron():
    from tierlm.sparse.predictor import LayerPredictor, keep_all

    rng = np.random.default_rng(2)
    p = LayerPredictor(
        rng.standard_normal((3, 7)).astype(np.float32),
        rng.standard_normal((11, 3)).astype(np.float32),
        np.full(11, -50.0, np.float32),
        0.5,
    )
    x = rng.standard_normal((5, 7)).astype(np.float32) * 100
    assert not p.predict(x).all()
    assert keep_all(p).predict(x).all() and keep_all(p).rank == p.rank
