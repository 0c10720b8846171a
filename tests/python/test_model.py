"""The native executor against transformers: logits, greedy generation, sampling options,
memory plans and clear errors on damaged packages and bad prompts."""

import json
import os
import shutil

import numpy as np
import pytest
import tierlm
from models import PARITY_ARCHS, hf_checkpoint, hf_logits, package, prompt, relative_error

torch = pytest.importorskip("torch")
VOCAB = 211


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """(hf model, package dir) per (arch, export dtype), exported once per module."""
    cache = {}
    root = tmp_path_factory.mktemp("packages")

    def get(arch, dtype="f32"):
        if (arch, dtype) not in cache:
            cache[arch, dtype] = package(arch, str(root), dtype=dtype, seed=len(cache))
        return cache[arch, dtype]

    return get


def load(pkg, **kw):
    """The parity tests check the f32 math against transformers, so the KV cache is f32 here;
    test_kv_cache.py bounds the compact caches (f16 by default) against it."""
    kw.setdefault("budget", {"host": "256MiB"})
    kw.setdefault("kv_dtype", "f32")
    return tierlm.load(pkg, **kw)


@pytest.mark.parametrize("arch", PARITY_ARCHS)
@pytest.mark.parametrize("length", [1, 7, 129])
def test_logits_match_transformers_f32(arch, length, packages):
    hf, pkg = packages(arch)
    model = load(pkg)
    ids = prompt(length, seed=length)
    got = model.logits(ids)
    assert got.shape == (VOCAB,) and got.dtype == np.float32
    assert relative_error(got, hf_logits(hf, ids)[-1]) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_logits_half_dtypes(arch, dtype, packages):
    hf, pkg = packages(arch, dtype)
    model = load(pkg)
    ids = prompt(19, seed=3)
    got = model.logits(ids)
    # The same math on weights rounded to the dtype (activations f32): tight.
    rounded = {
        k: (
            v.to(getattr(torch, {"bf16": "bfloat16", "f16": "float16"}[dtype])).float()
            if v.dim() > 1
            else v
        )
        for k, v in hf.state_dict().items()
    }
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    hf.load_state_dict(rounded)
    # f16 weights widen to f32 exactly; bf16 matrix products may round the activations to
    # bf16 too (AVX512-BF16 dot products, as llama.cpp does).
    try:
        assert relative_error(got, hf_logits(hf, ids)[-1]) < (1e-4 if dtype == "f16" else 1e-2)
    finally:
        hf.load_state_dict(original)
    # Against the f32 model: within the dtype's rounding.
    tolerance = 5e-2 if dtype == "bf16" else 1e-2
    assert relative_error(got, hf_logits(hf, ids)[-1]) < tolerance


@pytest.mark.parametrize("arch", PARITY_ARCHS)
@pytest.mark.parametrize("length", [1, 7, 129])
def test_greedy_generation_matches_transformers(arch, length, packages):
    hf, pkg = packages(arch)
    model = load(pkg, budget={"host": 256 << 20})
    ids = prompt(length, seed=100 + length)
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, length, dtype=torch.long),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )[0, length:].tolist()
    result = model.generate(ids, max_new_tokens=32)
    assert result.output_ids == ref
    assert result.prompt_ids == ids
    assert result.text is None  # no tokenizer in the package
    assert result.finish_reason in ("length", "eos")
    s = result.stats
    assert s["prompt_tokens"] == length and s["new_tokens"] == len(ref)
    assert s["prefill_tokens_per_s"] > 0
    assert s["peak_bytes"]["host"] > 0 and s["disk_bytes_read"] > 0


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty, packages):
    """transformers' repetition_penalty looks at the whole sequence (repetition_last_n=0); a
    penalty under 1 favours repeats instead."""
    hf, pkg = packages("llama")
    model = load(pkg)
    ids = prompt(9, seed=5) * 2  # repeated tokens in the prompt too
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            repetition_penalty=penalty,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
    got = model.generate(
        ids, max_new_tokens=24, repetition_penalty=penalty, repetition_last_n=0, stop_at_eos=False
    )
    assert got.output_ids[: len(ref)] == ref  # transformers stops at eos
    assert got.output_ids != model.generate(ids, max_new_tokens=24, stop_at_eos=False).output_ids


def test_chunked_prefill_equals_one_batch(packages):
    _, pkg = packages("llama")
    whole = load(pkg)
    chunked = load(pkg, prefill_chunk=50)
    assert chunked._native.prefill_chunk == 50
    ids = prompt(129, seed=9)
    np.testing.assert_allclose(chunked.logits(ids), whole.logits(ids), rtol=0, atol=1e-5)
    a = chunked.generate(ids, max_new_tokens=8).output_ids
    assert a == whole.generate(ids, max_new_tokens=8).output_ids


def test_logits_append_continues_the_sequence(packages):
    _, pkg = packages("llama")
    model = load(pkg)
    ids = prompt(37, seed=4)
    whole = model.logits(ids)
    model.logits(ids[:20])
    for i in range(20, 36):  # one token at a time: the decode path
        model.logits([ids[i]], append=True)
    np.testing.assert_allclose(model.logits([ids[36]], append=True), whole, rtol=0, atol=1e-4)
    model.logits(ids[:30])
    np.testing.assert_allclose(model.logits(ids[30:], append=True), whole, rtol=0, atol=1e-4)
    assert model._native.position == 37


def test_stream_yields_generate_tokens(packages):
    model = load(packages("qwen2")[1])
    ids = prompt(7)
    tokens = list(model.stream(ids, max_new_tokens=12, stop_at_eos=False))
    ref = model.generate(ids, max_new_tokens=12, stop_at_eos=False).output_ids
    assert [t.id for t in tokens] == ref
    assert len(tokens) == 12 and all(t.text is None for t in tokens)


def test_sampling_is_seeded_and_options_apply(packages):
    model = load(packages("llama")[1])
    ids = prompt(5)

    def run(**kw):
        return model.generate(ids, max_new_tokens=20, stop_at_eos=False, **kw).output_ids

    greedy = run()
    a = run(temperature=1.0, seed=7)
    assert a == run(temperature=1.0, seed=7)
    assert a != run(temperature=1.0, seed=8)
    assert run(temperature=1.5, top_k=1, seed=3) == greedy
    assert run(temperature=1.5, top_p=1e-6, seed=3) == greedy
    # top_k=k never picks outside the k most likely next tokens.
    k = 3
    out = run(temperature=5.0, top_k=k, seed=11)
    assert out != run(temperature=5.0, top_k=1, seed=11)
    for i, token in enumerate(out):
        logits = model.logits(ids + out[:i])
        assert token in np.argsort(-logits, kind="stable")[:k]


def test_max_new_tokens_and_first_token(packages):
    model = load(packages("llama")[1])
    ids = prompt(4)
    assert model.generate(ids, max_new_tokens=0).output_ids == []
    first = model.generate(ids, max_new_tokens=1, stop_at_eos=False).output_ids
    assert len(first) == 1 and first[0] == int(np.argmax(model.logits(ids)))


def test_stops_at_every_eos_id(packages):
    _, pkg = packages("llama3")  # eos_token_id [2, 3]
    model = load(pkg)
    assert sorted(model.config["eos_token_ids"]) == [2, 3]
    ids = prompt(6, seed=5)
    free = model.generate(ids, max_new_tokens=40, stop_at_eos=False).output_ids
    stops = [i for i, t in enumerate(free) if t in (2, 3)]
    result = model.generate(ids, max_new_tokens=40)
    if stops:
        assert result.output_ids == free[: stops[0] + 1] and result.finish_reason == "eos"
    else:
        assert result.output_ids == free and result.finish_reason == "length"


def test_stats_and_memory_plan(packages):
    _, pkg = packages("opt")
    model = load(pkg, prefill_chunk=16)
    model.generate(prompt(7), max_new_tokens=5, stop_at_eos=False)
    s = model.stats()
    assert s["prefill_tokens"] == 7 and s["decode_tokens"] == 4
    assert s["host"]["peak"] <= 256 << 20
    assert s["host"]["peak"] >= s["weight_bytes"] + s["kv_bytes"] + s["arena_bytes"]
    manifest = json.load(open(os.path.join(model.path, "manifest.json")))
    assert s["disk_bytes_read"] == sum(t["nbytes"] for t in manifest["tensors"].values())
    bufs = model.memory_buffers(16)
    assert set(bufs) == {"names", "sizes", "starts", "ends"}
    assert len(set(bufs["names"])) == len(bufs["names"])
    assert all(s <= e for s, e in zip(bufs["starts"], bufs["ends"], strict=True))
    plan = model.memory_plan()
    assert plan["seq"] == 16 and plan["source"] == "internal"
    assert plan["lower_bound"] <= plan["peak"] <= sum(plan["sizes"])
    n = len(plan["names"])
    for i in range(n):
        for j in range(i + 1, n):
            live = plan["starts"][i] <= plan["ends"][j] and plan["starts"][j] <= plan["ends"][i]
            apart = (
                plan["offsets"][i] + plan["sizes"][i] <= plan["offsets"][j]
                or plan["offsets"][j] + plan["sizes"][j] <= plan["offsets"][i]
            )
            assert not live or apart


def copy_package(src, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst)
    return dst


def test_stored_plan_is_used(packages, tmp_path):
    pkg = copy_package(packages("llama")[1], tmp_path)
    ref = load(pkg, prefill_chunk=8)
    bufs = ref.memory_buffers(8)
    # A valid but wasteful plan: every buffer at its own offset.
    offsets = np.concatenate([[0], np.cumsum([(s + 63) // 64 * 64 for s in bufs["sizes"]])])
    (pkg / "plans").mkdir()
    plan = {
        "seq": 8,
        "buffers": [
            {"name": n, "size": s, "offset": int(o)}
            for n, s, o in zip(bufs["names"], bufs["sizes"], offsets, strict=False)
        ],
    }
    (pkg / "plans" / "seq-8.json").write_text(json.dumps(plan))
    model = load(pkg)
    used = model.memory_plan()
    assert used["seq"] == 8 and used["source"].endswith("seq-8.json")
    assert used["peak"] == int(offsets[-2] + bufs["sizes"][-1])
    ids = prompt(20)
    np.testing.assert_allclose(model.logits(ids), ref.logits(ids), rtol=0, atol=1e-5)
    # A plan whose live buffers overlap is refused, never used.
    plan["buffers"][1]["offset"] = plan["buffers"][0]["offset"]
    (pkg / "plans" / "seq-8.json").write_text(json.dumps(plan))
    assert bufs["starts"][1] <= bufs["ends"][0]
    with pytest.raises(tierlm.CorruptError, match="overlap"):
        load(pkg)


def test_text_prompt_with_tokenizer(tmp_path):
    # The byte-level tokenizer has 259 ids at least: the model's vocabulary must cover them.
    _, hf_dir = hf_checkpoint("llama", tmp_path / "hf", tokenizer=True, vocab_size=300)
    pkg = tierlm.export(hf_dir, tmp_path / "pkg", progress=False)
    model = load(pkg)
    assert model.tokenizer is not None
    text = "the lazy fox"
    result = model.generate(text, max_new_tokens=6, stop_at_eos=False)
    assert result.prompt_ids == model.tokenizer.encode(text).ids
    again = model.generate(result.prompt_ids, max_new_tokens=6, stop_at_eos=False)
    assert result.output_ids == again.output_ids
    assert result.text == model.tokenizer.decode(result.output_ids, skip_special_tokens=True)
    pieces = [t.text for t in model.stream(text, max_new_tokens=6, stop_at_eos=False)]
    assert "".join(pieces) == result.text
    with pytest.raises(tierlm.InvalidArgumentError, match="empty prompt"):
        model.generate("", max_new_tokens=2)


# --- bad input: each a clear error -----------------------------------------------------


def test_missing_weight_file(packages, tmp_path):
    pkg = copy_package(packages("llama")[1], tmp_path)
    os.remove(pkg / "weights-0.bin")
    with pytest.raises(FileNotFoundError, match="weights-0.bin"):
        tierlm.load(pkg, budget="256MiB")


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        tierlm.load(tmp_path, budget="256MiB")


def test_truncated_weight_file(packages, tmp_path):
    pkg = copy_package(packages("llama")[1], tmp_path)
    path = pkg / "weights-0.bin"
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 4097)
    with pytest.raises(tierlm.CorruptError, match=r"weights-0.bin.*truncated"):
        tierlm.load(pkg, budget="256MiB")


def test_flipped_bytes_detected_with_verification(packages, tmp_path):
    pkg = copy_package(packages("llama")[1], tmp_path)
    manifest = json.loads((pkg / "manifest.json").read_text())
    info = manifest["tensors"]["layers.1.ffn.up.weight"]
    with open(pkg / "weights-0.bin", "r+b") as f:
        f.seek(info["offset"] + 101)
        byte = f.read(1)
        f.seek(info["offset"] + 101)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(tierlm.CorruptError, match=r"layers\.1\.ffn\.up\.weight.*checksum"):
        tierlm.load(pkg, budget="256MiB", verify=True)
    tierlm.load(pkg, budget="256MiB")  # without verification the load does not read checksums


def test_newer_format_version(packages, tmp_path):
    pkg = copy_package(packages("llama")[1], tmp_path)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["format_version"] = 2
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tierlm.UnsupportedError, match=r"format_version 2.*\(1\)"):
        tierlm.load(pkg, budget="256MiB")


def test_malformed_manifest(packages, tmp_path):
    pkg = copy_package(packages("llama")[1], tmp_path)
    text = (pkg / "manifest.json").read_text()
    (pkg / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(tierlm.CorruptError, match=r"manifest.json: invalid JSON at line"):
        tierlm.load(pkg, budget="256MiB")


def test_prompt_too_long_and_empty(packages):
    model = load(packages("opt")[1])
    with pytest.raises(tierlm.InvalidArgumentError, match=r"257 tokens.*context is 256"):
        model.generate(prompt(257), max_new_tokens=1)
    with pytest.raises(tierlm.InvalidArgumentError, match="context"):
        model.logits(prompt(257))
    with pytest.raises(tierlm.InvalidArgumentError, match="empty prompt"):
        model.generate([], max_new_tokens=1)
    with pytest.raises(tierlm.InvalidArgumentError, match="empty prompt"):
        model.logits([])
    with pytest.raises(tierlm.InvalidArgumentError, match="outside the vocabulary"):
        model.generate([5, VOCAB], max_new_tokens=1)
    # Generation stops when the context is full instead of overrunning it.
    result = model.generate(prompt(250), max_new_tokens=20, stop_at_eos=False)
    assert result.finish_reason == "context" and len(result.output_ids) == 7


def test_budget_too_small_is_refused(packages):
    with pytest.raises(tierlm.BudgetError, match=r"host tier: .*host budget"):
        tierlm.load(packages("llama")[1], budget={"host": "1MiB"})
    with pytest.raises(tierlm.InvalidArgumentError, match="size"):
        tierlm.load(packages("llama")[1], budget={"host": "lots"})


def test_tierlm_plan_output_is_used(packages, tmp_path):
    pytest.importorskip("ortools")
    from tierlm.cli import main

    pkg = copy_package(packages("opt")[1], tmp_path)
    ref = load(pkg, prefill_chunk=12)
    assert main(["plan", str(pkg), "--seq", "12", "--time-limit", "2"]) == 0
    model = load(pkg)
    plan = model.memory_plan()
    assert plan["seq"] == 12 and plan["source"].endswith(os.path.join("plans", "seq-12.json"))
    stored = json.loads((pkg / "plans" / "seq-12.json").read_text())
    assert plan["peak"] == stored["peak"] <= ref.memory_plan()["peak"]
    ids = prompt(30, seed=4)
    np.testing.assert_allclose(model.logits(ids), ref.logits(ids), rtol=0, atol=1e-5)
    assert (
        model.generate(ids, max_new_tokens=6).output_ids
        == ref.generate(ids, max_new_tokens=6).output_ids
    )


def test_concurrent_use_is_refused_not_corrupted(packages):
    import threading

    model = load(packages("llama")[1])
    ids = prompt(129, seed=1)
    ref = model.logits(ids)
    errors, results = [], []

    def work():
        for _ in range(5):
            try:
                results.append(model.logits(ids))
            except tierlm.InvalidArgumentError as error:
                errors.append(str(error))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("another thread" in e for e in errors)
    assert len(results) + len(errors) == 15 and results
    for r in results:
        np.testing.assert_array_equal(r, ref)


def test_generate_batch_equals_single_generation(packages):
    hf, pkg = packages("qwen2")
    model = load(pkg, max_batch=3)
    assert model._native.max_batch == 3
    prompts = [prompt(7, seed=1), prompt(1, seed=2), prompt(20, seed=3)]
    results = model.generate_batch(prompts, max_new_tokens=12)
    single = load(pkg)
    for p, r in zip(prompts, results, strict=True):
        assert r.prompt_ids == p
        assert r.output_ids == single.generate(p, max_new_tokens=12).output_ids
    # Matches transformers too (greedy).
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompts[2]]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )[0, 20:].tolist()
    assert results[2].output_ids == ref
    sampled = model.generate_batch(prompts, max_new_tokens=6, temperature=1.0, seed=9)
    for i, (p, r) in enumerate(zip(prompts, sampled, strict=True)):
        one = single.generate(p, max_new_tokens=6, temperature=1.0, seed=9 + i)
        assert r.output_ids == one.output_ids
    with pytest.raises(tierlm.InvalidArgumentError, match="max_batch"):
        single.generate_batch(prompts, max_new_tokens=2)
