"""KV on the disk tier (kv_host_budget): a cache given a share of the host budget smaller than
its bytes keeps that share in host memory and the oldest blocks in a scratch file of the disk
tier, read back layer by layer. Every token stays, so tokens and logits must be bit for bit
those of the cache in memory, on each I/O back end, with the host and disk peaks inside their
budgets; a disk budget or share too small is refused naming it; faults on the KV file's reads
and writes end in one clear error (fault_sweep.py's kv_spill_decode). With an eviction policy
(kv_policy) the compaction rewrites the spilled blocks in place, so the tokens, logits and
scores are again bit for bit those of the same policy in memory."""

import os

import numpy as np
import pytest
import tierlm
from models import SPILL_SHAPE, package, prompt
from tierlm.errors import BudgetError, InvalidArgumentError

pytest.importorskip("transformers")

CONTEXT = 1024
CHUNK = 32  # prefill steps of one block: 25 % of the KV keeps just two blocks in memory


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return package(
        "llama",
        str(tmp_path_factory.mktemp("kvspill")),
        seed=13,
        max_position_embeddings=CONTEXT,
        **SPILL_SHAPE,
    )[1]


@pytest.fixture(scope="module")
def in_memory(pkg):
    """The reference: the whole cache in host memory. Its KV bytes and host peak, the
    prefill's logits, every decode step's and the greedy tokens."""
    model = tierlm.load(pkg, max_context=CONTEXT, prefill_chunk=CHUNK)
    return dict(kv_bytes=model.stats()["kv_bytes"], **run(model))


def run(model):
    ids = prompt(701, seed=3)  # ends inside a block
    steps = [model.logits(ids)]
    for token in prompt(40, seed=4):
        steps.append(model.logits([token], append=True))
    tokens = model.generate(ids, max_new_tokens=70, stop_at_eos=False).output_ids
    return dict(steps=steps, tokens=tokens, peak=model.stats()["host"]["peak"])


def spilled_load(pkg, kv_bytes, peak, share, disk_dir, **options):
    """A load whose cache keeps `share` of kv_bytes in host memory, under a host budget of the
    in-memory run's peak less what the cache gives up (so that run does not fit) and a disk
    budget of the KV bytes: the model and the three budgets."""
    kv_host = int(kv_bytes * share)
    host, disk = peak - kv_bytes + kv_host, kv_bytes
    model = tierlm.load(
        pkg,
        budget={"host": host, "disk": disk},
        prefill_chunk=CHUNK,
        kv_host_budget=kv_host,
        disk_dir=disk_dir,
        **options,
    )
    return model, kv_host, host, disk


@pytest.mark.parametrize("share", [0.5, 0.25])
def test_spilled_cache_gives_the_in_memory_tokens_and_logits(
    pkg, in_memory, backend, share, tmp_path
):
    model, kv_host, host, disk = spilled_load(
        pkg, in_memory["kv_bytes"], in_memory["peak"], share, tmp_path, max_context=CONTEXT
    )
    assert not model.placement()["streaming"]  # the weights stay: only the KV moves
    got = run(model)
    assert got["tokens"] == in_memory["tokens"]
    for step, (ours, ref) in enumerate(zip(got["steps"], in_memory["steps"], strict=True)):
        assert np.array_equal(ours, ref), f"step {step}: logits differ"
    s = model.stats()
    assert s["kv_blocks_spilled"] > 0 and s["kv_disk_bytes_read"] > 0 and s["kv_slices_read"] > 0
    assert s["kv_io_backend"] == backend  # (O_DIRECT where tmp_path's file system allows it)
    # the read-ahead: two layers at least, more while they are small beside the share (12 here)
    assert 2 <= s["kv_staging_layers"] <= 12
    if backend == "threads":
        assert not s["kv_io_registered"]  # fixed buffers are the ring's (uring: RLIMIT_MEMLOCK)
    assert s["kv_bytes"] <= kv_host
    assert 0 < s["host"]["peak"] <= host == s["host"]["budget"]
    assert 0 < s["disk"]["peak"] <= disk == s["disk"]["budget"]
    assert s["peak_bytes"] == {"host": s["host"]["peak"], "disk": s["disk"]["peak"]}
    # 701 + 70 tokens in blocks of 32: 25 blocks of 96 KiB, all but the resident ones on disk
    assert s["kv_disk_bytes"] > 0 and s["kv_disk_bytes"] % s["kv_block_bytes"] == 0
    assert os.listdir(tmp_path) == []  # the scratch file is unlinked from the start


# Each policy keeps 1,024 tokens (the package's max_positions), so 25 % of them spill too.
POLICIES = ("window:4+1020", "sirllm:4+252+768@0.99", "h2o:4+252+768")


@pytest.fixture(scope="module")
def policy_in_memory(pkg):
    """Per policy, the reference run with the whole cache in host memory."""
    runs = {}
    for policy in POLICIES:
        model = tierlm.load(pkg, prefill_chunk=CHUNK, kv_policy=policy)
        runs[policy] = dict(kv_bytes=model.stats()["kv_bytes"], **run_past_the_cache(model))
    return runs


def run_past_the_cache(model):
    """Prefill to near the cache's end, decode past it a token at a time (evictions while the
    spilled blocks are read ahead), then generate from the start again."""
    ids = prompt(1000, seed=6)
    steps = [model.logits(ids)]
    for token in prompt(60, seed=7):
        steps.append(model.logits([token], append=True))
    scores = model.kv_scores()
    tokens = model.generate(ids, max_new_tokens=90, stop_at_eos=False).output_ids
    return dict(steps=steps, scores=scores, tokens=tokens, stats=model.stats())


@pytest.mark.parametrize("share", [0.5, 0.25])
@pytest.mark.parametrize("policy", POLICIES)
def test_spilled_cache_with_a_policy_gives_the_in_memory_tokens(
    pkg, policy_in_memory, policy, backend, share, tmp_path
):
    ref = policy_in_memory[policy]
    model, kv_host, host, disk = spilled_load(
        pkg, ref["kv_bytes"], ref["stats"]["host"]["peak"], share, tmp_path, kv_policy=policy
    )
    got = run_past_the_cache(model)
    assert got["tokens"] == ref["tokens"]
    for step, (ours, want) in enumerate(zip(got["steps"], ref["steps"], strict=True)):
        assert np.array_equal(ours, want), f"step {step}: logits differ"
    assert np.array_equal(got["scores"], ref["scores"])
    s, r = got["stats"], ref["stats"]
    assert s["kv_evicted"] == r["kv_evicted"] > 0 and s["kv_blocks"] == r["kv_blocks"]
    assert s["kv_io_backend"] == backend
    # every step reads the spilled blocks back; each eviction also rewrites those it moves
    # tokens in, in place: written beyond the blocks spilled whole
    assert s["kv_blocks_spilled"] > 0 and s["kv_slices_read"] > 0
    assert s["kv_disk_bytes_written"] > s["kv_blocks_spilled"] * s["kv_block_bytes"]
    assert s["kv_bytes"] <= kv_host
    assert 0 < s["host"]["peak"] <= host == s["host"]["budget"]
    assert 0 < s["disk"]["peak"] <= disk == s["disk"]["budget"]
    assert os.listdir(tmp_path) == []


def test_spill_beside_streamed_weights(pkg, in_memory, tmp_path):
    """A host budget below the weights too: matrices stream through the ring while the KV
    cache spills, both through the I/O engine, each tier within its budget."""
    kv_host = in_memory["kv_bytes"] // 4
    full = tierlm.load(pkg, max_context=CONTEXT).stats()
    host = full["host"]["peak"] - full["kv_bytes"] + kv_host - full["weight_bytes"] // 3
    model = tierlm.load(
        pkg,
        budget={"host": host},
        max_context=CONTEXT,
        kv_host_budget=kv_host,
        disk_dir=tmp_path,
    )
    assert model.placement()["streaming"]
    assert model._native.prefill_chunk == CHUNK  # the default chunk shrank to 2 resident blocks
    got = run(model)
    assert got["tokens"] == in_memory["tokens"]
    assert all(np.array_equal(a, b) for a, b in zip(got["steps"], in_memory["steps"], strict=True))
    s = model.stats()
    assert s["kv_blocks_spilled"] > 0 and s["stream_bytes_read"] > 0
    assert s["host"]["peak"] <= host and s["disk"]["peak"] <= s["disk"]["budget"]


def test_padded_q8_0_slices_spill_and_match(pkg, tmp_path):
    """q8_0 rows of head_dim 64 are 68 bytes: a layer's slice of a block (4352 bytes) is padded
    to two pages on disk and in memory; the padding must not shift what attention reads."""
    ref = tierlm.load(pkg, max_context=CONTEXT, prefill_chunk=CHUNK, kv_dtype="q8_0")
    want = run(ref)
    model = tierlm.load(
        pkg,
        max_context=CONTEXT,
        prefill_chunk=CHUNK,
        kv_dtype="q8_0",
        kv_host_budget=ref.stats()["kv_bytes"] // 2,
        disk_dir=tmp_path,
    )
    got = run(model)
    assert got["tokens"] == want["tokens"]
    assert all(np.array_equal(a, b) for a, b in zip(got["steps"], want["steps"], strict=True))
    s = model.stats()
    assert s["kv_blocks_spilled"] > 0 and s["kv_block_bytes"] == 12 * 8192


def test_shared_prefix_batch_spills_and_matches(pkg, tmp_path):
    """generate_batch shares the prompt's blocks among sequences: a spilled shared block is read
    back once per step for all of them (staged once, tests/cpp/test_kv_spill.cpp), and a shared
    tail block is copied (from disk when it is there)."""
    prompts = [prompt(150, seed=5)] * 3
    ref = tierlm.load(pkg, max_context=CONTEXT, prefill_chunk=CHUNK, max_batch=3)
    want = [r.output_ids for r in ref.generate_batch(prompts, max_new_tokens=40)]
    kv_host = ref.stats()["kv_bytes"] * 3 // 10  # three slots: three blocks one step writes
    model = tierlm.load(
        pkg,
        max_context=CONTEXT,
        prefill_chunk=CHUNK,
        max_batch=3,
        kv_host_budget=kv_host,
        disk_dir=tmp_path,
    )
    got = [r.output_ids for r in model.generate_batch(prompts, max_new_tokens=40)]
    assert got == want
    assert model.stats()["kv_blocks_spilled"] > 0


def test_cache_that_fits_its_share_does_not_spill(pkg):
    model = tierlm.load(pkg, max_context=CONTEXT, kv_host_budget="1GiB")
    model.generate(prompt(40), max_new_tokens=4)
    s = model.stats()
    assert s["kv_blocks_spilled"] == 0 and s["disk"]["peak"] == 0


def test_too_small_budgets_are_refused_naming_them(pkg, in_memory, tmp_path):
    kv_host = in_memory["kv_bytes"] // 4
    with pytest.raises(BudgetError, match="disk budget of 64.0 KiB"):
        tierlm.load(
            pkg,
            budget={"disk": "64KiB"},
            max_context=CONTEXT,
            kv_host_budget=kv_host,
            disk_dir=tmp_path,
        )
    with pytest.raises(BudgetError, match="kv_host_budget 64.0 KiB cannot hold"):
        tierlm.load(pkg, max_context=CONTEXT, kv_host_budget="64KiB")
    with pytest.raises(BudgetError, match="lower prefill_chunk to at most 32"):
        tierlm.load(pkg, max_context=CONTEXT, kv_host_budget=kv_host, prefill_chunk=256)


def test_options_without_a_kv_host_budget_are_refused(pkg, tmp_path):
    with pytest.raises(InvalidArgumentError, match="only a kv_host_budget"):
        tierlm.load(pkg, budget={"disk": "1GiB"})
    with pytest.raises(InvalidArgumentError, match="only a kv_host_budget"):
        tierlm.load(pkg, disk_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        tierlm.load(
            pkg, max_context=CONTEXT, kv_host_budget="1MiB", disk_dir=str(tmp_path / "missing")
        )
