"""The KV cache: its element type (kv_dtype: f16 by default, bf16, q8_0 int8 blocks) against the
f32 cache on the same model; its blocks (paged, taken as sequences grow, shared prefixes) and
what the host budget counts; bad values refused with a message naming the option. The eviction
policies (kv_policy) are in test_kv_policy.py."""

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
def test_kv_blocks_follow_the_dtype_and_the_length(llama, kv_dtype):
    """The paged cache holds at load the chunks the budget sets aside (one full-context sequence
    plus a block per other slot, in chunks of up to 16 blocks), uses a block per 32 tokens as a
    sequence grows, takes more chunks when sequences together outgrow that, and gives those
    back when they end."""
    _, pkg = llama
    model = load(pkg, kv_dtype=kv_dtype, max_context=256, max_batch=3)
    c = model.config
    head_dim = c["hidden_size"] // c["num_heads"]
    s = model.stats()
    block = c["num_layers"] * 2 * c["num_kv_heads"] * 32 * kv_row_bytes(kv_dtype, head_dim)
    assert (s["kv_dtype"], s["kv_block_tokens"], s["kv_block_bytes"]) == (kv_dtype, 32, block)
    per_chunk = min(16, (256 << 10) // block)  # blocks come from the host tier in chunks
    reserved = -(-(256 // 32 + 2) // per_chunk) * per_chunk * block
    assert (s["kv_blocks"], s["kv_bytes"]) == (0, reserved)
    for length in (1, 31, 33, 200):
        model.generate(prompt(length, seed=length), max_new_tokens=1)
        s = model.stats()
        assert (s["kv_blocks"], s["kv_bytes"]) == (-(-length // 32), reserved), length
    model.generate_batch([prompt(250, seed=i) for i in range(3)], max_new_tokens=1)
    s = model.stats()
    assert s["kv_blocks"] == 24
    assert s["kv_bytes"] == max(reserved, -(-24 // per_chunk) * per_chunk * block) > reserved
    assert s["host"]["peak"] >= s["weight_bytes"] + s["kv_bytes"] + s["arena_bytes"]
    model._native.reset()  # ends every sequence: the chunks past the reservation go back
    assert (model.stats()["kv_blocks"], model.stats()["kv_bytes"]) == (0, reserved)


def test_shared_prompt_prefix_uses_fewer_blocks(llama):
    """generate_batch computes a prefix common to several prompts once: the sequences share its
    blocks (copied before a write), and the tokens equal separate generations."""
    _, pkg = llama
    prefix = prompt(70, seed=21)
    prompts = [prefix + prompt(n, seed=n) for n in (3, 9, 1)]
    distinct = [prompt(len(p), seed=50 + i) for i, p in enumerate(prompts)]
    counts = {}
    for name, batch in (("shared", prompts), ("distinct", distinct)):
        model = load(pkg, kv_dtype="f32", max_batch=3)
        results = model.generate_batch(batch, max_new_tokens=8, stop_at_eos=False)
        counts[name] = model.stats()["kv_blocks"]
        for p, r in zip(batch, results, strict=True):
            single = load(pkg, kv_dtype="f32").generate(p, max_new_tokens=8, stop_at_eos=False)
            assert r.output_ids == single.output_ids
    # 3 sequences of 74..80 tokens: 9 blocks apart; sharing the two full prefix blocks saves 4.
    assert counts == {"distinct": 9, "shared": 5}


def test_budget_holds_as_the_cache_grows(llama):
    """The budget sets aside one full-context sequence (plus a block per other slot), not
    max_batch of them; sequences that outgrow what is left fail with a BudgetError naming the
    host tier, and the host peak never passes the budget."""
    _, pkg = llama
    small = load(pkg, kv_dtype="f16", max_context=256, max_batch=64).stats()
    chunk = 16 * small["kv_block_bytes"]  # the tiny model's f16 blocks come 16 to a chunk
    assert small["kv_bytes"] == 5 * chunk  # the reservation: 8 + 63 blocks
    budget = small["host"]["peak"] + 3 * chunk
    model = tierlm.load(pkg, budget=budget, kv_dtype="f16", max_context=256, max_batch=64)
    model.generate_batch([prompt(40, seed=i) for i in range(8)], max_new_tokens=4)  # 16 blocks
    assert model.stats()["host"]["peak"] <= budget
    with pytest.raises(tierlm.BudgetError, match="host tier"):  # 512 blocks: 32 chunks
        model.generate_batch([prompt(250, seed=i) for i in range(64)], max_new_tokens=2)
    assert model.stats()["host"]["peak"] <= budget
    with pytest.raises(tierlm.BudgetError, match=r"KV cache .* tokens of f32"):
        tierlm.load(pkg, budget=1 << 20, kv_dtype="f32", max_context=256, max_batch=64)


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
