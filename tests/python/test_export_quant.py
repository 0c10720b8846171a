"""Quantize at export (tierlm.export(..., dtype=q8_0|q4_0|..., recipe=...)): the package's
bytes are tierlm.quant's of the checkpoint's values, its logits (numpy reference) equal
transformers' on the dequantized weights, recipes pick dtypes per tensor, widths that are not
whole blocks fall back to 16 bits and are reported; and tied checkpoints that store only
lm_head.weight."""

import os

import models
import numpy as np
import pytest
import tierlm
from tierlm.cli import main
from tierlm.package import Package
from tierlm.quant import quantize
from tierlm.reference import reference_logits

SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
HF_NAMES = {  # tierlm name -> transformers parameter, for the matrices of layer i
    "attn.q.weight": "self_attn.q_proj.weight",
    "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight",
    "attn.o.weight": "self_attn.o_proj.weight",
    "ffn.gate.weight": "mlp.gate_proj.weight",
    "ffn.up.weight": "mlp.up_proj.weight",
    "ffn.down.weight": "mlp.down_proj.weight",
}


def hf_param(name):
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name == "lm_head.weight":
        return "lm_head.weight"
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{HF_NAMES[rest]}"


def dequantized_model(model, pkg):
    """model with each matrix replaced by the package's values (its dtype's rounding)."""
    torch = models.torch
    state = model.state_dict()
    with torch.no_grad():
        for name, info in pkg.tensors.items():
            if len(info["shape"]) == 2:
                state[hf_param(name)].copy_(torch.from_numpy(pkg.array(name)))
    return model


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q4_1", "q5_1", "q4_k", "q6_k"])
def test_quantized_export(tmp_path, dtype):
    model, hf_dir = models.hf_checkpoint("llama", tmp_path / "hf", **SHAPE)
    pkg = Package.open(tierlm.export(hf_dir, tmp_path / "pkg", dtype=dtype, progress=False))
    pkg.verify()
    state = model.state_dict()
    for name, info in pkg.tensors.items():
        if len(info["shape"]) == 1:
            assert info["dtype"] == "f32"
            continue
        assert info["dtype"] == dtype
        expected = quantize(dtype, state[hf_param(name)].numpy())
        np.testing.assert_array_equal(np.asarray(pkg.tensor(name)), expected)
    q = pkg.manifest["quantization"]
    assert q["dtype"] == dtype and q["fallbacks"] == [] and q["recipe"] is None
    ids = models.prompt(7)
    expected = models.hf_logits(dequantized_model(model, pkg), ids)
    assert models.relative_error(reference_logits(pkg, ids), expected) < 1e-4


def test_quantized_export_is_close_to_the_original(tmp_path):
    model, hf_dir = models.hf_checkpoint("llama", tmp_path / "hf", **SHAPE)
    ids = models.prompt(7)
    original = models.hf_logits(model, ids)
    for dtype, bound in (("q8_0", 0.02), ("q4_0", 0.3)):
        pkg = tierlm.export(hf_dir, tmp_path / dtype, dtype=dtype, progress=False)
        error = models.relative_error(reference_logits(pkg, ids), original)
        assert error < bound, (dtype, error)


def test_recipe_m_and_report(tmp_path, capsys):
    _, hf_dir = models.hf_checkpoint("llama", tmp_path / "hf", **SHAPE)
    out = tmp_path / "pkg"
    assert (
        main(["export", hf_dir, str(out), "--dtype", "q4_0", "--recipe", "m", "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    pkg = Package.open(out)
    dtypes = {n: t["dtype"] for n, t in pkg.tensors.items()}
    assert dtypes["embed.weight"] == dtypes["lm_head.weight"] == "q8_0"
    assert dtypes["layers.2.attn.v.weight"] == dtypes["layers.0.ffn.down.weight"] == "q8_0"
    assert dtypes["layers.1.attn.q.weight"] == dtypes["layers.1.ffn.up.weight"] == "q4_0"
    assert dtypes["layers.1.attn_norm.weight"] == "f32" and pkg.manifest["dtype"] == "mixed"
    assert pkg.manifest["quantization"]["recipe"]["name"] == "m"
    assert "matrices: 15 q4_0, 8 q8_0" in printed


def test_recipe_file_fallback_and_errors(tmp_path):
    _, hf_dir = models.hf_checkpoint(
        "llama", tmp_path / "hf", **{**SHAPE, "intermediate_size": 300}
    )
    recipe = tmp_path / "recipe.txt"
    recipe.write_text(
        "# keep attention in the checkpoint's dtype\n"
        "layers.*.attn.* keep\n"
        "lm_head.weight  bf16   # the output at 16 bits\n"
        "nothing.matches q8_0\n"
    )
    pkg = Package.open(
        tierlm.export(hf_dir, tmp_path / "pkg", dtype="q4_1", recipe=recipe, progress=False)
    )
    dtypes = {n: t["dtype"] for n, t in pkg.tensors.items()}
    assert dtypes["layers.0.attn.o.weight"] == "f32" and dtypes["lm_head.weight"] == "bf16"
    assert dtypes["layers.0.ffn.up.weight"] == "q4_1" and dtypes["embed.weight"] == "q4_1"
    # FFN down reads rows of 300: not whole 32-blocks, so bf16 (the checkpoint is f32)
    assert dtypes["layers.0.ffn.down.weight"] == "bf16"
    q = pkg.manifest["quantization"]
    assert [f["tensor"] for f in q["fallbacks"]] == [
        f"layers.{i}.ffn.down.weight" for i in range(3)
    ]
    assert q["fallbacks"][0]["reason"] == "rows of 300 elements are not whole q4_1 blocks of 32"
    assert q["unmatched_rules"] == [f"nothing.matches q8_0 ({recipe}:4)"]
    (tmp_path / "bad.txt").write_text("layers.* q3_k\n")
    with pytest.raises(tierlm.InvalidArgumentError, match=r"bad\.txt:1: dtype 'q3_k'"):
        tierlm.export(hf_dir, tmp_path / "x", recipe=tmp_path / "bad.txt", progress=False)
    with pytest.raises(tierlm.NotFoundError, match="not a built-in recipe"):
        tierlm.export(hf_dir, tmp_path / "x", recipe="xl", progress=False)
    # Bundles take up's block type; down, at bf16 here (300 is not whole blocks), is
    # quantized to it along the hidden size, where its rows of down^T are whole blocks.
    sparse = Package.open(
        tierlm.export(hf_dir, tmp_path / "x", dtype="q8_0", sparse=True, progress=False)
    )
    assert sparse.tensors["layers.0.ffn.down.weight"]["dtype"] == "bf16"
    layers = sparse.manifest["bundles"]["layers"]
    assert {(b["dtype"], b["n_neurons"], b["row_bytes"]) for b in layers} == {
        ("q8_0", 300, 3 * SHAPE["hidden_size"] // 32 * 34)
    }


def test_tied_checkpoint_with_only_lm_head(tmp_path):
    """safetensors' save_model keeps one name of tied tensors, which may be lm_head.weight."""
    from safetensors.torch import save_file

    model, hf_dir = models.hf_checkpoint("llama_tied", tmp_path / "hf")
    state = {
        k: v.contiguous() for k, v in model.state_dict().items() if k != "model.embed_tokens.weight"
    }
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    save_file(state, os.path.join(hf_dir, "model.safetensors"))
    pkg = Package.open(tierlm.export(hf_dir, tmp_path / "pkg", progress=False))
    assert "lm_head.weight" not in pkg.tensors and pkg.config["tie_embeddings"]
    np.testing.assert_array_equal(pkg.array("embed.weight"), model.lm_head.weight.detach().numpy())
    ids = models.prompt(5)
    assert models.relative_error(reference_logits(pkg, ids), models.hf_logits(model, ids)) < 1e-4
