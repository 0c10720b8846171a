"""Export: HF checkpoint -> package, checked against transformers through the numpy reference
executor, plus layout, dtypes, damage and refusal cases."""

import importlib
import json
import os
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tierlm  # noqa: E402
import torch  # noqa: E402
from models import (  # noqa: E402
    PARITY_ARCHS,
    hf_checkpoint,
    hf_logits,
    hf_model,
    package,
    prompt,
    relative_error,
    tiny_tokenizer,
)
from tierlm.cli import main  # noqa: E402
from tierlm.package import Package  # noqa: E402
from tierlm.reference import Reference, reference_logits  # noqa: E402

# the module (tierlm.export is the function): tests patch its CHUNK
export_module = importlib.import_module("tierlm.export")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """arch -> (transformers model, f32 package dir), built once per module."""
    root = tmp_path_factory.mktemp("export")
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = package(arch, str(root))
        return cache[arch]

    return get


def write_config(path, **config):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


# ---------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("arch", PARITY_ARCHS)
def test_reference_matches_transformers(built, arch):
    model, pkg = built(arch)
    for length in (1, 7):
        ids = prompt(length, seed=length)
        error = relative_error(reference_logits(pkg, ids), hf_logits(model, ids))
        assert error < 1e-4, f"{arch}, {length} tokens: relative error {error}"


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_reference_decode_with_cache_matches_prefill(built, arch):
    model, pkg = built(arch)
    ids = prompt(11, seed=3)
    full = hf_logits(model, ids)
    ref = Reference(pkg)
    steps = [ref.forward(ids[:8])] + [ref.forward([t]) for t in ids[8:]]
    assert ref.length == 11
    assert relative_error(np.concatenate(steps), full) < 1e-4


def test_long_prompt_reaches_scaled_rope_frequencies(built):
    model, pkg = built("llama3")  # llama3 scaling with original context 64: positions past it
    ids = prompt(129, seed=5)
    assert relative_error(reference_logits(pkg, ids), hf_logits(model, ids)) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "llama_tied", "llama3", "qwen2"])
def test_rope_inv_freq_equals_transformers(built, arch):
    model, pkg = built(arch)
    expected = model.model.rotary_emb.inv_freq.numpy()
    actual = np.asarray(Package.open(pkg).config["rope_inv_freq"], np.float32)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_manifest_config_and_tensor_names(built):
    model, pkg = built("llama")
    p = Package.open(pkg)
    c = p.config
    assert (c["num_heads"], c["num_kv_heads"], c["head_dim"], c["num_layers"]) == (10, 2, 20, 3)
    assert c["max_positions"] == 256 and c["eos_token_ids"] == [2] and not c["tie_embeddings"]
    names = set(p.tensors)
    assert {"embed.weight", "lm_head.weight", "final_norm.weight"} <= names
    assert "layers.2.ffn.gate.weight" in names and "layers.0.attn.q.bias" not in names
    state = model.state_dict()
    np.testing.assert_array_equal(
        p.array("layers.1.attn.k.weight"), state["model.layers.1.self_attn.k_proj.weight"]
    )
    assert p.tensors["layers.1.attn.k.weight"]["layer"] == 1
    assert p.tensors["embed.weight"]["layer"] == -1
    _, tied = built("llama_tied")
    tied = Package.open(tied)
    assert "lm_head.weight" not in tied.tensors and tied.config["tie_embeddings"]
    assert tied.graph["ops"][-1]["weight"] == "embed.weight"
    assert "layers.0.attn.o.bias" in tied.tensors and "layers.0.ffn.up.bias" in tied.tensors
    _, qwen = built("qwen2")
    qwen = Package.open(qwen).tensors
    assert "layers.0.attn.v.bias" in qwen and "layers.0.attn.o.bias" not in qwen
    _, opt = built("opt")
    opt = Package.open(opt)
    assert opt.config["position_offset"] == 2 and opt.config["rope_inv_freq"] is None
    assert opt.tensors["embed.positions"]["shape"] == [258, 200]


def test_transformers_v4_config_style(built, tmp_path):
    """rope_theta + rope_scaling (transformers < 5) give the same package config."""
    import shutil

    _, pkg = built("llama_tied")
    hf_dir = tmp_path / "v4"
    shutil.copytree(pkg[: -len("-pkg")] + "-hf", hf_dir)
    with open(hf_dir / "config.json") as f:
        config = json.load(f)
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    with open(hf_dir / "config.json", "w") as f:
        json.dump(config, f)
    out = Package.open(tierlm.export(hf_dir, tmp_path / "pkg", progress=False))
    assert out.config["rope_inv_freq"] == Package.open(pkg).config["rope_inv_freq"]
    assert out.config["rope_theta"] == 5000.0


def test_generation_config_eos_ids(built, tmp_path):
    import shutil

    _, pkg = built("llama3")
    hf_dir = tmp_path / "hf"
    shutil.copytree(pkg[: -len("-pkg")] + "-hf", hf_dir)
    assert Package.open(pkg).config["eos_token_ids"] == [2, 3]
    with open(hf_dir / "generation_config.json", "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": [7, 2, 3]}, f)
    config = Package.open(tierlm.export(hf_dir, tmp_path / "pkg", progress=False)).config
    assert config["eos_token_ids"] == [7, 2, 3] and config["eos_token_id"] == 7


def test_layout_is_aligned_and_padded_with_zeros(built):
    _, pkg = built("qwen2")
    p = Package.open(pkg)
    spans = sorted((t["offset"], t["offset"] + t["nbytes"]) for t in p.tensors.values())
    data = np.fromfile(os.path.join(pkg, "weights-0.bin"), np.uint8)
    assert data.size % 4096 == 0 and data.size == p.manifest["files"][0]["size"]
    assert all(start % 4096 == 0 for start, _ in spans)
    gaps = [(a[1], b[0]) for a, b in zip(spans, spans[1:], strict=False)] + [
        (spans[-1][1], data.size)
    ]
    assert all(not data[a:b].any() for a, b in gaps)
    p.verify()


# ---------------------------------------------------------------- checkpoints and dtypes


def test_sharded_checkpoint(tmp_path):
    model, hf_dir = hf_checkpoint("mistral", tmp_path / "hf", max_shard_size="150KB")
    shards = [n for n in os.listdir(hf_dir) if n.endswith(".safetensors")]
    assert len(shards) > 2 and os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
    out = tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    ids = prompt(7)
    assert relative_error(reference_logits(out, ids), hf_logits(model, ids)) < 1e-4


def test_sharded_checkpoint_with_missing_shard(tmp_path):
    _, hf_dir = hf_checkpoint("opt", tmp_path / "hf", max_shard_size="150KB")
    os.remove(os.path.join(hf_dir, sorted(n for n in os.listdir(hf_dir) if "-of-" in n)[1]))
    with pytest.raises(tierlm.NotFoundError, match="shard .* is missing"):
        tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    assert not os.path.exists(tmp_path / "pkg")


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("f16", torch.float16)])
def test_export_converts_like_torch(tmp_path, dtype, torch_dtype):
    model, pkg = package("qwen2", str(tmp_path), dtype=dtype)
    p = Package.open(pkg)
    state = model.state_dict()
    assert p.manifest["dtype"] == dtype
    for name, hf_name in [
        ("embed.weight", "model.embed_tokens.weight"),
        ("layers.2.ffn.down.weight", "model.layers.2.mlp.down_proj.weight"),
    ]:
        assert p.tensors[name]["dtype"] == dtype
        expected = state[hf_name].to(torch_dtype).view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(p.tensor(name).view(np.uint16), expected)
    bias = p.tensors["layers.0.attn.q.bias"]
    assert bias["dtype"] == "f32"  # 1-D tensors stay f32
    p.verify()
    # logits of the rounded weights: within the dtype's tolerance of the f32 model
    ids = prompt(7)
    assert relative_error(reference_logits(pkg, ids), hf_logits(model, ids)) < 5e-2


def test_bf16_checkpoint_keeps_exact_weights(tmp_path):
    model, pkg = package("llama", str(tmp_path), hf_dtype="bfloat16")
    p = Package.open(pkg)
    assert p.manifest["dtype"] == "bf16" and p.manifest["source"]["dtypes"] == ["bf16"]
    assert p.tensors["layers.0.attn_norm.weight"]["dtype"] == "f32"
    # the same bf16 weights computed in f32 by transformers and by the reference
    model = model.float()
    ids = prompt(7)
    assert relative_error(reference_logits(pkg, ids), hf_logits(model, ids)) < 1e-4
    f32 = tierlm.export(os.path.dirname(pkg) + "/llama-bfloat16-None-0-hf", tmp_path / "f32")
    np.testing.assert_array_equal(Package.open(f32).array("embed.weight"), p.array("embed.weight"))


def test_f16_overflow_is_refused_and_leaves_nothing(tmp_path):
    model = hf_model("opt")
    with torch.no_grad():
        model.model.decoder.layers[2].fc2.weight[3, 5] = 1e5
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(tierlm.InvalidArgumentError, match=r"layers\.2\.ffn\.down\.weight.*f16"):
        tierlm.export(tmp_path / "hf", tmp_path / "pkg", dtype="f16", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no package, no temporary directory
    tierlm.export(tmp_path / "hf", tmp_path / "pkg", dtype="bf16", progress=False)


def test_file_split_and_chunked_conversion(tmp_path, monkeypatch):
    _, hf_dir = hf_checkpoint("llama", tmp_path / "hf")
    whole = Package.open(tierlm.export(hf_dir, tmp_path / "whole", progress=False))
    monkeypatch.setattr(export_module, "CHUNK", 4098)  # many chunks per tensor, odd size
    limit = 100_000  # below the 84 KiB embedding + next tensor: several files
    split = tierlm.export(hf_dir, tmp_path / "split", progress=False, file_limit=limit)
    split = Package.open(split)
    assert len(split.manifest["files"]) > 3
    for f in split.manifest["files"]:
        size = os.path.getsize(tmp_path / "split" / f["name"])
        tensors = [t for t in split.tensors.values() if t["file"] == f["name"]]
        assert size % 4096 == 0 and (size <= limit + 4095 or len(tensors) == 1)
    split.verify()
    for name, info in whole.tensors.items():
        assert split.tensors[name]["crc32"] == info["crc32"]
        np.testing.assert_array_equal(split.tensor(name), whole.tensor(name))


def test_export_memory_stays_near_one_chunk(tmp_path, monkeypatch):
    kw = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=8, head_dim=32)
    _, hf_dir = hf_checkpoint("llama", tmp_path / "hf", num_hidden_layers=12, **kw)
    total = sum(os.path.getsize(os.path.join(hf_dir, n)) for n in os.listdir(hf_dir))
    assert total > 20 << 20
    monkeypatch.setattr(export_module, "CHUNK", 256 << 10)
    tracemalloc.start()
    try:
        tierlm.export(hf_dir, tmp_path / "pkg", dtype="bf16", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"export peaked at {peak} B for a {total} B checkpoint"


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_files_are_copied(tmp_path):
    _, hf_dir = hf_checkpoint("llama", tmp_path / "hf", tokenizer=True)
    written = [n for n in os.listdir(hf_dir) if n.startswith("tokenizer")]
    assert "tokenizer.json" in written
    p = Package.open(tierlm.export(hf_dir, tmp_path / "pkg", progress=False))
    assert sorted(p.manifest["tokenizer"]["files"]) == sorted(written)
    for name in written:
        with (
            open(os.path.join(hf_dir, name), "rb") as a,
            open(os.path.join(p.tokenizer_dir(), name), "rb") as b,
        ):
            assert a.read() == b.read()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(p.tokenizer_dir())
    assert tok.decode(tok.encode("the lazy fox")) == "the lazy fox"


def test_checkpoint_without_tokenizer_exports(built):
    _, pkg = built("mistral")
    p = Package.open(pkg)
    assert p.manifest["tokenizer"] is None and p.tokenizer_dir() is None
    assert not os.path.exists(os.path.join(pkg, "tokenizer"))


def test_tiny_tokenizer_lists_its_files(tmp_path):
    pytest.importorskip("tokenizers")
    assert "tokenizer.json" in tiny_tokenizer(str(tmp_path))


# ---------------------------------------------------------------- damaged packages


@pytest.fixture
def copy(built, tmp_path):
    import shutil

    def make(arch="opt"):
        target = tmp_path / f"copy-{arch}"
        shutil.copytree(built(arch)[1], target)
        return str(target)

    return make


def test_missing_weight_file(copy):
    pkg = copy()
    os.remove(os.path.join(pkg, "weights-0.bin"))
    with pytest.raises(tierlm.NotFoundError, match=r"weights-0\.bin.*embed\.weight"):
        Package.open(pkg)


def test_truncated_weight_file(copy):
    pkg = copy()
    path = os.path.join(pkg, "weights-0.bin")
    last = max(Package.open(pkg).tensors.items(), key=lambda kv: kv[1]["offset"])
    os.truncate(path, last[1]["offset"] + last[1]["nbytes"] - 1)
    with pytest.raises(tierlm.CorruptError, match=rf"weights-0\.bin: tensor {last[0]}.*truncated"):
        Package.open(pkg)
    os.truncate(path, last[1]["offset"] + last[1]["nbytes"])  # tensor whole, padding cut
    with pytest.raises(tierlm.CorruptError, match=r"weights-0\.bin: size"):
        Package.open(pkg)


def test_flipped_byte_fails_checksum(copy):
    pkg = copy()
    info = Package.open(pkg).tensors["layers.1.ffn.up.weight"]
    with open(os.path.join(pkg, "weights-0.bin"), "r+b") as f:
        f.seek(info["offset"] + 777)
        byte = f.read(1)[0]
        f.seek(info["offset"] + 777)
        f.write(bytes([byte ^ 0x10]))
    p = Package.open(pkg)  # sizes are fine; checksums are checked on demand
    p.verify(["layers.0.ffn.up.weight"])
    with pytest.raises(tierlm.CorruptError, match=r"tensor layers\.1\.ffn\.up\.weight .*checksum"):
        p.verify()


def test_newer_format_version(copy):
    pkg = copy()
    path = os.path.join(pkg, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["format_version"] = 2
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(tierlm.UnsupportedError, match="version 2 is newer.*version 1"):
        Package.open(pkg)


def test_bad_graph_is_refused(copy):
    pkg = copy()
    path = os.path.join(pkg, "graph.json")
    with open(path) as f:
        graph = json.load(f)
    graph["ops"][3]["op"] = "softcap"
    with open(path, "w") as f:
        json.dump(graph, f)
    with pytest.raises(tierlm.CorruptError, match="op 3.*unknown op 'softcap'"):
        Package.open(pkg)


def test_not_a_package(tmp_path):
    with pytest.raises(tierlm.NotFoundError, match="manifest.json"):
        Package.open(tmp_path)


# ---------------------------------------------------------------- refusals


LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    num_attention_heads=4,
    num_hidden_layers=1,
    intermediate_size=96,
    vocab_size=50,
    max_position_embeddings=256,
)


@pytest.mark.parametrize(
    "config,message",
    [
        ({**LLAMA, "model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({**LLAMA, "architectures": ["LlamaForSequenceClassification"]}, "not a causal"),
        ({**LLAMA, "hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({**LLAMA, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        ({**LLAMA, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
        (
            {**LLAMA, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
            "partial",
        ),
        ({**LLAMA, "quantization_config": {"quant_method": "gptq"}}, "quantized"),
        ({**LLAMA, "model_type": "mistral", "sliding_window": 64}, "--max-positions 64"),
        (
            {
                **LLAMA,
                "model_type": "qwen2",
                "use_sliding_window": True,
                "sliding_window": 32,
                "max_window_layers": 0,
            },
            "sliding-window",
        ),
        (
            {**LLAMA, "model_type": "opt", "ffn_dim": 96, "do_layer_norm_before": False},
            "do_layer_norm_before",
        ),
        ({**LLAMA, "model_type": "opt", "ffn_dim": 96, "word_embed_proj_dim": 32}, "project_in"),
        (
            {**LLAMA, "model_type": "opt", "ffn_dim": 96, "activation_function": "silu"},
            "activation",
        ),
    ],
)
def test_unsupported_config_is_refused(tmp_path, config, message):
    hf_dir = write_config(tmp_path / "hf", **config)
    with pytest.raises(tierlm.UnsupportedError, match=message):
        tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_sliding_window_with_capped_context(tmp_path):
    model, hf_dir = hf_checkpoint("mistral", tmp_path / "hf", sliding_window=16)
    out = tierlm.export(hf_dir, tmp_path / "pkg", progress=False, max_positions=16)
    assert Package.open(out).config["max_positions"] == 16
    ids = prompt(16)  # a full window: sliding and full causal attention agree
    assert relative_error(reference_logits(out, ids), hf_logits(model, ids)) < 1e-4
    with pytest.raises(ValueError, match="exceed the context of 16"):
        reference_logits(out, prompt(17))


def test_unknown_checkpoint_tensor_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, hf_dir = hf_checkpoint("qwen2", tmp_path / "hf")
    path = os.path.join(hf_dir, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(40)
    save_file(tensors, path)
    with pytest.raises(tierlm.UnsupportedError, match=r"q_norm\.weight.*not used"):
        tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    del (
        tensors["model.layers.0.self_attn.q_norm.weight"],
        tensors["model.layers.2.mlp.up_proj.weight"],
    )
    save_file(tensors, path)
    with pytest.raises(tierlm.NotFoundError, match=r"layers\.2\.mlp\.up_proj\.weight"):
        tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    tensors["model.layers.2.mlp.up_proj.weight"] = torch.zeros(300, 200)
    save_file(tensors, path)
    with pytest.raises(tierlm.CorruptError, match=r"shape \[300, 200\].*\[307, 200\]"):
        tierlm.export(hf_dir, tmp_path / "pkg", progress=False)


def test_truncated_checkpoint_is_refused(tmp_path):
    _, hf_dir = hf_checkpoint("opt", tmp_path / "hf")
    path = os.path.join(hf_dir, "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(tierlm.CorruptError, match="does not fit the file"):
        tierlm.export(hf_dir, tmp_path / "pkg", progress=False)


def test_existing_output_and_overwrite(built, tmp_path):
    _, pkg = built("opt")
    hf_dir = pkg[: -len("-pkg")] + "-hf"
    out = tmp_path / "out"
    tierlm.export(hf_dir, out, progress=False)
    with pytest.raises(tierlm.InvalidArgumentError, match="already exists.*overwrite"):
        tierlm.export(hf_dir, out, progress=False)
    tierlm.export(hf_dir, out, progress=False, overwrite=True, dtype="bf16")
    assert Package.open(out).manifest["dtype"] == "bf16"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(tierlm.NotFoundError, match="does not exist"):
        tierlm.export(tmp_path / "nope", tmp_path / "pkg")
    with pytest.raises(tierlm.InvalidArgumentError, match="'f8'"):
        tierlm.export(tmp_path, tmp_path / "pkg", dtype="f8")


# ---------------------------------------------------------------- CLI


def test_cli_export(built, tmp_path, capsys):
    _, pkg = built("llama_tied")
    hf_dir = pkg[: -len("-pkg")] + "-hf"
    assert main(["export", hf_dir, str(tmp_path / "cli"), "--dtype", "f16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dtype"] == "f16" and summary["architecture"] == "llama"
    assert summary["files"] == ["weights-0.bin"] and summary["tokenizer"] == []
    assert main(["export", hf_dir, str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tierlm: error:") and "already exists" in err[0]
