"""The KV eviction policies (kv_policy) on the random llama model (max_positions 256): window
(sinks + recent), sirllm (+ the highest decayed token entropies) and h2o (+ the most accumulated
attention). Each equals the full cache bit for bit until the cache fills, holds its budget of
tokens and blocks while generating past max_positions, decodes batched as single; the scores
match a transformers reference (token entropies from its logits, attention mass from its eager
attention weights), eviction drops the lowest of them; bad values are refused naming the
option."""

import re

import numpy as np
import pytest
import tierlm
from models import hf_logits, package, prompt, relative_error

torch = pytest.importorskip("torch")

# Each keeps 128 tokens: the window policy all recent, the scored ones 64 by score.
POLICIES = ["window:4+124", "sirllm:4+60+64", "h2o:4+60+64"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return package("llama", str(tmp_path_factory.mktemp("kvp")), seed=11)


def load(pkg, **kw):
    kw.setdefault("budget", {"host": "256MiB"})
    return tierlm.load(pkg, **kw)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def reference_nll(hf, ids):
    """-log p(ids[i] | ids[:i]) for i >= 1 from transformers' logits."""
    lp = log_softmax(hf_logits(hf, ids))
    return -lp[np.arange(len(ids) - 1), ids[1:]]


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_equals_the_full_cache_until_it_fills(llama, policy):
    _, pkg = llama
    ids = prompt(100, seed=31)
    full = load(pkg, kv_dtype="f32")
    model = load(pkg, kv_dtype="f32", kv_policy=policy)
    assert relative_error(model.logits(ids), full.logits(ids)) == 0
    assert np.array_equal(model.token_nll(ids), full.token_nll(ids))
    a = model.generate(ids, max_new_tokens=20, stop_at_eos=False).output_ids
    assert a == full.generate(ids, max_new_tokens=20, stop_at_eos=False).output_ids
    assert model.stats()["kv_evicted"] == 0


def test_token_nll_matches_transformers(llama):
    hf, pkg = llama
    ids = prompt(150, seed=5)
    nll = load(pkg, kv_dtype="f32").token_nll(ids)
    assert nll.shape == (149,)
    np.testing.assert_allclose(nll, reference_nll(hf, ids), rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_generates_past_max_positions_within_its_budget(llama, policy):
    """600 new tokens (2.3x the 256 trained positions): a bounded cache, evictions counted, and
    output that keeps changing (no collapse to one repeated token), where the full cache stops
    at its context."""
    _, pkg = llama
    ids = prompt(20, seed=3)
    stopped = load(pkg).generate(ids, max_new_tokens=600, stop_at_eos=False)
    assert stopped.finish_reason == "context" and len(stopped.output_ids) == 256 - 20 + 1
    model = load(pkg, kv_policy=policy)
    result = model.generate(ids, max_new_tokens=600, stop_at_eos=False)
    assert result.finish_reason == "length" and len(result.output_ids) == 600
    s = model.stats()
    # 20 + 599 tokens went through a cache of 128: at most 128 remain, dropped a block at a time.
    assert s["kv_blocks"] <= 4 and 20 + 599 - s["kv_evicted"] <= 128
    assert s["kv_evicted"] % 32 == 0
    assert len(set(result.output_ids[-200:])) > 5
    scores = model.kv_scores()
    assert len(scores) == (0 if policy.startswith("window") else 20 + 599 - s["kv_evicted"])


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_batched_equals_single(llama, policy):
    _, pkg = llama
    prompts = [prompt(n, seed=n) for n in (5, 70, 131)]
    model = load(pkg, kv_policy=policy, max_batch=3)
    batch = model.generate_batch(prompts, max_new_tokens=150, stop_at_eos=False)
    for p, r in zip(prompts, batch, strict=True):
        one = load(pkg, kv_policy=policy).generate(p, max_new_tokens=150, stop_at_eos=False)
        assert r.output_ids == one.output_ids


def test_token_nll_runs_past_the_context_with_a_policy(llama):
    _, pkg = llama
    ids = prompt(400, seed=8)
    with pytest.raises(tierlm.InvalidArgumentError, match="token_nll: 400 ids"):
        load(pkg).token_nll(ids)
    for policy in POLICIES:
        nll = load(pkg, kv_policy=policy).token_nll(ids)
        assert nll.shape == (399,) and np.isfinite(nll).all()


def test_sirllm_scores_are_decayed_token_entropies(llama):
    """After a prompt (in prefill chunks of 32), token t scores -log p(t | prefix) * D^(n-1-t),
    the first 0; a decode step decays them all once more and scores the new token from the
    last logits."""
    hf, pkg = llama
    d = 0.9
    ids = prompt(77, seed=9)
    model = load(pkg, kv_dtype="f32", kv_policy=f"sirllm:4+60+64@{d}")
    model.logits(ids)
    ref = np.concatenate([[0.0], reference_nll(hf, ids)]) * d ** np.arange(76, -1, -1)
    np.testing.assert_allclose(model.kv_scores(), ref, rtol=1e-4, atol=1e-4)
    model.logits([7], append=True)
    ref = np.concatenate([[0.0], reference_nll(hf, ids + [7])]) * d ** np.arange(77, -1, -1)
    np.testing.assert_allclose(model.kv_scores(), ref, rtol=1e-4, atol=1e-4)


def test_h2o_scores_are_accumulated_attention_mass(llama):
    """Token j's score: the softmax weight it got from every query, head and layer so far, as
    transformers' eager attention gives them."""
    hf, pkg = llama
    ids = prompt(93, seed=4)
    model = load(pkg, kv_dtype="f32", kv_policy="h2o:4+60+64")
    model.logits(ids)
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    hf.config._attn_implementation = "sdpa"
    ref = sum(a[0].double().sum(dim=(0, 1)) for a in out.attentions).numpy()
    layers, heads = len(out.attentions), out.attentions[0].shape[1]
    assert abs(ref.sum() - layers * heads * len(ids)) < 1e-6 * ref.sum()
    np.testing.assert_allclose(model.kv_scores(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["sirllm:4+60+64@0.9", "h2o:4+60+64"])
def test_scored_eviction_drops_the_lowest_scores_outside_sinks_and_window(llama, policy):
    """A full cache of 128 takes one more token: the 32 lowest-scored of tokens 4..67 (neither
    the 4 sinks nor the 60 recent) go, the others keep their order and scores (sirllm: decayed
    once more)."""
    hf, pkg = llama
    model = load(pkg, kv_dtype="f32", kv_policy=policy)
    ids = prompt(128, seed=12)
    model.logits(ids)
    before = model.kv_scores().astype(np.float64)
    model.logits([5], append=True)
    after = model.kv_scores()
    assert model.stats()["kv_evicted"] == 32 and len(after) == 97
    candidates = np.arange(4, 68)
    order = np.lexsort((candidates, before[4:68]))  # lowest score first, older on ties
    dropped = set(candidates[order[:32]].tolist())
    kept = [t for t in range(128) if t not in dropped]
    if policy.startswith("sirllm"):
        np.testing.assert_allclose(after[:-1], before[kept] * 0.9, rtol=1e-6)
    else:  # the step's queries add their attention to every kept token
        assert (after[:-1] >= before[kept] - 1e-6).all()
        rows = hf.config.num_attention_heads * hf.config.num_hidden_layers  # each sums to 1
        assert after[:-1].sum() - before[kept].sum() <= rows + 1e-3


def test_bad_kv_policy_is_refused_naming_it(llama, tmp_path):
    _, pkg = llama
    bad_values = (
        "window:4",
        "window:4+10",
        "sink:4+100",
        "window:-1+100",
        "window:4+100x",
        "sirllm:4+100",
        "sirllm:4+0+64",
        "sirllm:4+60+1",
        "sirllm:4+60+64@0",
        "sirllm:4+60+64@1.5",
        "sirllm:4+60+64@",
        "sirllm:4+60+64x",
        "h2o:4+60+64@0.9",
        "h2o:-4+60+64",
    )
    for bad in bad_values:
        with pytest.raises(tierlm.InvalidArgumentError, match=f"kv_policy '{re.escape(bad)}'"):
            load(pkg, kv_policy=bad)
    with pytest.raises(tierlm.InvalidArgumentError, match="max_positions 256"):
        load(pkg, kv_policy="window:4+300")
    with pytest.raises(tierlm.InvalidArgumentError, match="keeps 260 tokens"):
        load(pkg, kv_policy="h2o:4+128+128")
    with pytest.raises(tierlm.InvalidArgumentError, match="leave max_context unset"):
        load(pkg, kv_policy="sirllm:4+60+64", max_context=50)
    _, opt = package("opt", str(tmp_path), seed=2)
    with pytest.raises(tierlm.UnsupportedError, match="no rotary position embedding"):
        load(opt, kv_policy="h2o:4+60+64")
