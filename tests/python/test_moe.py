"""Mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): the export, the numpy
reference and the native executor against transformers (logits in f32, greedy tokens), tokens
grouped by expert in prefill and batched decode, and damaged moe graphs refused by name."""

import json
import shutil

import numpy as np
import pytest
import tierlm
from models import MOE_ARCHS, hf_logits, package, prompt, relative_error
from tierlm.graph import graph_check
from tierlm.reference import Reference, reference_logits

torch = pytest.importorskip("torch")
VOCAB = 211


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """(hf model, package dir) per arch, exported once per module."""
    cache = {}
    root = tmp_path_factory.mktemp("moe")

    def get(arch):
        if arch not in cache:
            cache[arch] = package(arch, str(root), seed=11 + len(cache))
        return cache[arch]

    return get


def load(pkg, **kw):
    kw.setdefault("budget", {"host": "256MiB"})
    kw.setdefault("kv_dtype", "f32")  # compared with transformers' f32 (the default cache is f16)
    return tierlm.load(pkg, **kw)


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_reference_matches_transformers(arch, packages):
    hf, pkg = packages(arch)
    ids = prompt(13, seed=5)
    assert relative_error(reference_logits(pkg, ids), hf_logits(hf, ids)) < 1e-4


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_manifest_keeps_each_expert_contiguous(arch, packages):
    _, pkg = packages(arch)
    with open(f"{pkg}/manifest.json") as f:
        tensors = json.load(f)["tensors"]
    config = json.load(open(f"{pkg}/manifest.json"))["config"]
    assert config["ffn"] == "moe" and config["num_experts"] >= 5
    for layer in config["moe_layers"]:
        for e in range(config["num_experts"]):
            parts = [tensors[f"layers.{layer}.moe.experts.{e}.{p}.weight"] for p in ("gate", "up")]
            parts.append(tensors[f"layers.{layer}.moe.experts.{e}.down.weight"])
            # gate, up, down back to back in one file: one read fetches the expert
            assert len({p["file"] for p in parts}) == 1
            for a, b in zip(parts, parts[1:], strict=False):
                assert b["offset"] == a["offset"] + -(-a["nbytes"] // 4096) * 4096


@pytest.mark.parametrize("arch", MOE_ARCHS)
@pytest.mark.parametrize("length", [1, 7, 129])
def test_logits_match_transformers_f32(arch, length, packages):
    hf, pkg = packages(arch)
    got = load(pkg).logits(prompt(length, seed=length))
    assert got.shape == (VOCAB,)
    assert relative_error(got, hf_logits(hf, prompt(length, seed=length))[-1]) < 1e-4


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_greedy_generation_matches_transformers(arch, packages):
    hf, pkg = packages(arch)
    ids = prompt(9, seed=21)
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
    out = load(pkg).generate(ids, max_new_tokens=24, stop_at_eos=False).output_ids
    assert out[: len(ref)] == ref


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
def test_batched_decode_and_chunked_prefill(arch, packages):
    """Rows of several sequences (batched decode) and prefill chunks of 1..5 rows group tokens
    by expert differently; each must give the single-sequence tokens."""
    _, pkg = packages(arch)
    prompts = [prompt(7, seed=1), prompt(1, seed=2), prompt(20, seed=3)]
    single = load(pkg)
    expect = [single.generate(p, max_new_tokens=10).output_ids for p in prompts]
    batched = load(pkg, max_batch=3).generate_batch(prompts, max_new_tokens=10)
    assert [r.output_ids for r in batched] == expect
    chunked = load(pkg, prefill_chunk=5)
    assert chunked.generate(prompts[2], max_new_tokens=10).output_ids == expect[2]


def test_decode_with_cache_matches_prefill_in_reference(packages):
    _, pkg = packages("qwen3_moe")
    ids = prompt(9, seed=4)
    ref = Reference(pkg)
    ref.forward(ids[:5])
    step = np.concatenate([ref.forward([t]) for t in ids[5:]])
    assert relative_error(step, reference_logits(pkg, ids)[5:]) < 1e-5


def _edit_graph(pkg, dest, change):
    shutil.copytree(pkg, dest)
    with open(f"{dest}/graph.json") as f:
        graph = json.load(f)
    op = next(op for op in graph["ops"] if op["op"] == "moe")
    change(op)
    with open(f"{dest}/graph.json", "w") as f:
        json.dump(graph, f)
    return graph


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda op: op.update(top_k=op["experts"] + 1), "top_k"),
        (lambda op: op.update(experts=op["experts"] + 1), r"needs \[6, 200\]|experts\.5\.gate"),
        (lambda op: op.update(weight="layers.0.attn.q.weight"), "router"),
        (lambda op: op.update(expert_prefix="layers.0.moe.gone"), "layers.0.moe.gone.0.gate"),
    ],
)
def test_damaged_moe_op_is_refused(packages, tmp_path, change, message):
    _, pkg = packages("mixtral")
    graph = _edit_graph(pkg, tmp_path / "bad", change)
    with open(f"{pkg}/manifest.json") as f:
        tensors = json.load(f)["tensors"]
    with pytest.raises(tierlm.CorruptError, match=message):
        graph_check(graph, tensors)
    with pytest.raises((tierlm.CorruptError, tierlm.NotFoundError), match=message):
        load(tmp_path / "bad").logits([1, 2])


# (transformers arch, GGUF architecture, the file's router / expert names in HF's checkpoint)
GGUF_MOE = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "olmoe": "olmoe"}


@pytest.mark.parametrize("matrix_type", ["F32", "Q8_0"])
@pytest.mark.parametrize("arch", list(GGUF_MOE))
def test_gguf_stacked_experts_import(tmp_path, arch, matrix_type):
    """llama.cpp's MoE GGUFs (experts stacked per matrix as ffn_{gate,up,down}_exps; Qwen2-MoE's
    shared expert as ffn_*_shexp behind the 1-D gate ffn_gate_inp_shexp) import with one
    tensor per expert, each expert's bytes the file's slice; F32 runs like transformers, logits
    and greedy tokens. Qwen2-MoE keeps its dense layer 1 (a layer without a router)."""
    gguf = pytest.importorskip("gguf")
    from gguf_files import write_gguf
    from models import hf_model
    from tierlm.package import Package

    # quantized rows are whole 32-wide blocks: hidden 256, expert widths 96 and 64
    sizes = dict(hidden_size=256, intermediate_size=96, num_attention_heads=8)
    if arch != "mixtral":
        sizes.update(moe_intermediate_size=96, num_key_value_heads=8 if arch == "olmoe" else 2)
    if arch == "qwen2_moe":
        sizes.update(shared_expert_intermediate_size=64, intermediate_size=128)
    hf = hf_model(arch, seed=4, **(sizes if matrix_type != "F32" else {}))
    path = write_gguf(hf, tmp_path / f"{arch}.gguf", matrix_type, arch=GGUF_MOE[arch])
    pkg = Package.open(tierlm.export(path, tmp_path / "pkg", progress=False))
    experts = hf.config.num_local_experts if arch == "mixtral" else hf.config.num_experts
    assert pkg.manifest["architecture"] == "moe" and pkg.config["num_experts"] == experts
    assert pkg.config["model_type"] == arch
    reader = gguf.GGUFReader(path)
    stacked = {t.name: t.data for t in reader.tensors}
    layer = 2 if arch == "qwen2_moe" else 1  # qwen2_moe's layer 1 is dense
    for e in range(experts):
        for part in ("gate", "up", "down"):
            tensor = pkg.tensor(f"layers.{layer}.moe.experts.{e}.{part}.weight")
            want = stacked[f"blk.{layer}.ffn_{part}_exps.weight"][e]
            np.testing.assert_array_equal(np.asarray(tensor).reshape(-1), want.reshape(-1))
    if arch == "qwen2_moe":
        assert pkg.config["moe_layers"] == [0, 2] and "layers.1.ffn.up.weight" in pkg.tensors
        for part in ("gate", "up", "down"):
            want = stacked[f"blk.0.ffn_{part}_shexp.weight"].reshape(-1)
            got = np.asarray(pkg.tensor(f"layers.0.moe.shared.{part}.weight")).reshape(-1)
            np.testing.assert_array_equal(got, want)
        assert pkg.tensors["layers.0.moe.shared_gate.weight"]["shape"] == [1, hf.config.hidden_size]
    if matrix_type == "F32":
        ids = prompt(11, seed=9)
        model = load(pkg.path)
        assert relative_error(model.logits(ids), hf_logits(hf, ids)[-1]) < 1e-4
        with torch.no_grad():
            want = hf.generate(
                torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8
            )[0, len(ids) :].tolist()
        got = model.generate(ids, max_new_tokens=8, stop_at_eos=False).output_ids
        assert got == want
        # the rebuilt tokenizer reads the shipped calibration text: a usage profile of its
        # first max_positions (256) tokens, top_k picks per token and moe layer
        profile = tierlm.profile_experts(pkg.path)
        assert profile["source"] == "calibration.txt" and profile["tokens"] == 256
        top_k = hf.config.num_experts_per_tok
        assert [sum(p["tokens_per_expert"]) for p in profile["layers"]] == [256 * top_k] * len(
            pkg.config["moe_layers"]
        )
