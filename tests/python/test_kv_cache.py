"""The KV cache's element type (kv_dtype): f16 (the default), bf16 and q8_0 (int8 blocks along
head_dim) against the f32 cache on the same model, the bytes it holds and what the host budget
counts, and bad values refused with a message naming the option."""

import numpy as np
import pytest
import tierlm
from models import hf_logits, package, prompt, relative_error

torch = pytest.importorskip("torch")

# Logit error against the f32 cache, max |d| / max |ref| over the last position, on the random
# llama model (hidden 200, 10 heads on 2 KV heads, head_dim 20: one q8_0 block per row, padded)
# for prompts of 37 and 129 tokens. Measured: f16 1.1e-4 / 1.2e-4, bf16 8.9e-4 / 8.6e-4,
# q8_0 3.9e-3 / 2.1e-3; the bounds leave about 5x.
BOUNDS = {"f16": 1e-3, "bf16": 5e-3, "q8_0": 2e-2}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return package("llama", str(tmp_path_factory.mktemp("kv")), seed=11)


def load(pkg, **kw):
    kw.setdefault("budget", {"host": "256MiB"})
    return tierlm.load(pkg, **kw)


def test_f32_cache_matches_transformers_and_default_is_f16(llama):
    hf, pkg = llama
    ids = prompt(129, seed=4)
    f32 = load(pkg, kv_dtype="f32")
    assert f32.stats()["kv_dtype"] == "f32"
    assert relative_error(f32.logits(ids), hf_logits(hf, ids)[-1]) < 1e-4
    assert load(pkg).stats()["kv_dtype"] == "f16"


@pytest.mark.parametrize("kv_dtype", sorted(BOUNDS))
def test_compact_cache_logits_within_bound_of_f32(llama, kv_dtype):
    _, pkg = llama
    for length, seed in ((1, 1), (37, 2), (129, 4)):
        ids = prompt(length, seed=seed)
        ref = load(pkg, kv_dtype="f32").logits(ids)
        got = load(pkg, kv_dtype=kv_dtype).logits(ids)
        error = relative_error(got, ref)
        assert error < BOUNDS[kv_dtype], (kv_dtype, length, error)
        if length > 1:
            assert error > 0  # the cache really holds the rounded values


def test_compact_cache_decode_equals_its_prefill(llama):
    """Token by token (decode reads the cache it wrote) gives the prefill's logits: the store
    and the read agree in every dtype."""
    _, pkg = llama
    ids = prompt(23, seed=9)
    for kv_dtype in ("f16", "q8_0"):
        model = load(pkg, kv_dtype=kv_dtype, prefill_chunk=1)
        stepped = model.logits(ids)
        whole = load(pkg, kv_dtype=kv_dtype).logits(ids)
        assert relative_error(stepped, whole) < 1e-4


def test_greedy_tokens_of_f16_cache_equal_f32(llama):
    _, pkg = llama
    ids = prompt(40, seed=5)
    ref = load(pkg, kv_dtype="f32").generate(ids, max_new_tokens=24, stop_at_eos=False)
    got = load(pkg).generate(ids, max_new_tokens=24, stop_at_eos=False)
    assert got.output_ids == ref.output_ids


def kv_row_bytes(kv_dtype, head_dim):
    return {"f32": 4 * head_dim, "f16": 2 * head_dim, "bf16": 2 * head_dim}.get(
        kv_dtype, -(-head_dim // 32) * 34
    )


@pytest.mark.parametrize("kv_dtype", ["f32", "f16", "bf16", "q8_0"])
def test_kv_bytes_follow_the_dtype(llama, kv_dtype):
    _, pkg = llama
    model = load(pkg, kv_dtype=kv_dtype, max_context=97, max_batch=3)
    c = model.config
    head_dim = c["hidden_size"] // c["num_heads"]
    expect = 3 * c["num_layers"] * 2 * c["num_kv_heads"] * 97 * kv_row_bytes(kv_dtype, head_dim)
    s = model.stats()
    assert s["kv_dtype"] == kv_dtype
    assert expect <= s["kv_bytes"] < expect + 4096  # whole pages
    assert s["host"]["peak"] >= s["weight_bytes"] + s["kv_bytes"] + s["arena_bytes"]


def test_budget_counts_the_kv_dtype(llama):
    """A host budget that holds the f16 cache but not the f32 one: f32 is refused naming the KV
    cache and its dtype, f16 and q8_0 load and keep within the budget."""
    _, pkg = llama
    shape = dict(max_context=256, max_batch=64)
    big = load(pkg, kv_dtype="f32", **shape).stats()
    small = load(pkg, kv_dtype="f16", **shape).stats()
    assert small["kv_bytes"] * 2 == pytest.approx(big["kv_bytes"], abs=8192)
    # The f16 model resident plus a quarter of the f32 cache: the f32 cache and the activations
    # alone exceed it (the weights are far smaller than a quarter of that cache).
    budget = small["host"]["peak"] + big["kv_bytes"] // 4
    assert big["kv_bytes"] + big["arena_bytes"] > budget
    with pytest.raises(tierlm.BudgetError, match=r"KV cache .* tokens of f32"):
        tierlm.load(pkg, budget=budget, kv_dtype="f32", **shape)
    for kv_dtype in ("f16", "q8_0"):
        m = tierlm.load(pkg, budget=budget, kv_dtype=kv_dtype, **shape)
        m.generate(prompt(30), max_new_tokens=3)
        assert m.stats()["host"]["peak"] <= budget


def test_bad_kv_dtype_is_refused_naming_it(llama):
    _, pkg = llama
    with pytest.raises(tierlm.InvalidArgumentError, match="kv_dtype q4_0 is not a KV cache type"):
        load(pkg, kv_dtype="q4_0")
    with pytest.raises(tierlm.InvalidArgumentError, match="unknown dtype 'int7'"):
        load(pkg, kv_dtype="int7")


def test_batched_decode_with_int8_cache_equals_single(llama):
    _, pkg = llama
    prompts = [prompt(n, seed=n) for n in (5, 17, 2)]
    model = load(pkg, kv_dtype="q8_0", max_batch=3)
    batch = model.generate_batch(prompts, max_new_tokens=6, stop_at_eos=False)
    for p, r in zip(prompts, batch, strict=True):
        single = load(pkg, kv_dtype="q8_0").generate(p, max_new_tokens=6, stop_at_eos=False)
        assert r.output_ids == single.output_ids
    assert np.isfinite(model.logits(prompts[0])).all()
