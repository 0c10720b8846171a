"""Experts across the tiers: a mixture-of-experts model whose experts do not all fit the host
budget homes some on the disk tier and reads them with O_DIRECT into the expert cache when
routed to; it must give the same tokens as the fully resident run at every budget, on both I/O
back ends, with the host tier's peak within the budget and the stats adding up."""

import re

import numpy as np
import pytest
import tierlm
from models import RoutingRecorder, offload_moe_package, prompt

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    pkg = offload_moe_package(str(tmp_path_factory.mktemp("moe-offload")))
    model = tierlm.load(pkg)
    ids = prompt(11)
    ref = model.generate(ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
    s, experts = model.stats(), model.placement()["experts"]
    assert sum(map(len, experts["host_experts"])) == 32 and experts["cache_slots"] == 0
    expert_bytes = experts["host_bytes"] + experts["router_bytes"]  # the store's footprint
    return {
        "pkg": pkg,
        "ids": ids,
        "ref": ref,
        "experts": expert_bytes,
        "others": s["weight_bytes"] - expert_bytes,
        "fixed": s["kv_bytes"] + s["arena_bytes"],
        "minimum": model.placement()["minimum_budget"],
    }


def budget_of(moe, share):
    """Room for the other weights, KV cache and activations, plus `share` of the experts."""
    if share == "minimum":
        return moe["minimum"]
    return moe["fixed"] + moe["others"] + int(moe["experts"] * share)


@pytest.mark.parametrize("share", [1.0, 0.5, 0.25, "minimum"])
def test_tokens_equal_resident_at_every_budget(moe, backend, share):
    budget = budget_of(moe, share)
    model = tierlm.load(moe["pkg"], budget={"host": budget})
    placement = model.placement()["experts"]
    homed = sum(map(len, placement["host_experts"]))
    on_disk = sum(map(len, placement["disk_experts"]))
    assert homed + on_disk == 32
    result = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert result.output_ids == moe["ref"]
    s = model.stats()
    assert s["host"]["peak"] <= budget
    assert s["moe_lookups"] == s["moe_host_hits"] + s["moe_cache_hits"] + s["moe_misses"]
    tokens = len(moe["ids"]) + NEW_TOKENS - 1  # the last new token is not run through
    assert s["moe_tokens"] == tokens
    # a step fetches each routed expert once: a decode step top_k (2) per layer, the prefill
    # (11 tokens) 2 to 8 per layer
    decode = 2 * 4 * (NEW_TOKENS - 1)
    assert decode + 2 * 4 <= s["moe_lookups"] <= decode + 8 * 4
    assert s["moe_experts_per_token"] == pytest.approx(s["moe_lookups"] / tokens)
    if share == 1.0:
        assert on_disk == 0 and s["moe_misses"] == 0 and s["moe_bytes_read"] == 0
        assert s["moe_hit_rate_pct"] == 100.0
        return
    assert on_disk > 0 and placement["cache_slots"] >= 1
    assert s["moe_misses"] > 0 and s["moe_hit_rate_pct"] < 100.0
    # every miss and every prefetch is one expert read: one expert's bytes (the fixture's
    # experts fit one read-ahead chunk, so none is read ahead in part and then dropped)
    reads = s["moe_misses"] + s["moe_prefetch_reads"]
    assert s["moe_bytes_read"] == reads * placement["expert_bytes"]
    assert s["moe_bytes_read_per_token"] == pytest.approx(s["moe_bytes_read"] / tokens)
    if share == "minimum":
        assert homed == 0 and placement["cache_slots"] == 1
    # experts are homed outer layers first (0, 3, 1, 2), each layer whole before the next
    counts = [len(placement["host_experts"][i]) for i in (0, 3, 1, 2)]
    assert counts == sorted(counts, reverse=True)
    assert all(c == 8 for c in counts[: max(sum(c > 0 for c in counts) - 1, 0)])


def test_budget_below_one_expert_is_refused(moe):
    with pytest.raises(tierlm.BudgetError, match="expert"):
        tierlm.load(moe["pkg"], budget={"host": moe["minimum"] - 4096})


def test_batched_decode_reads_each_expert_once_per_step(moe):
    """Three sequences decoded together give the single runs' tokens; grouping by expert makes
    a step's lookups its distinct experts, fewer than top_k per token and layer."""
    budget = budget_of(moe, 0.25)
    prompts = [prompt(5, seed=1), prompt(3, seed=2), prompt(8, seed=3)]
    single = tierlm.load(moe["pkg"], budget={"host": budget})
    expect = [single.generate(p, max_new_tokens=6).output_ids for p in prompts]
    model = tierlm.load(moe["pkg"], budget={"host": budget}, max_batch=3)
    results = model.generate_batch(prompts, max_new_tokens=6)
    assert [r.output_ids for r in results] == expect
    s = model.stats()
    assert 0 < s["moe_lookups"] < s["moe_tokens"] * 2 * 4


def test_cli_verbose_prints_expert_placement_and_stats(moe, capsys):
    from tierlm.cli import main

    budget = budget_of(moe, 0.5)  # 16 experts' bytes: routers, a cache of 4, 11 homed
    argv = ["generate", moe["pkg"], "--ids", "1,2,3", "--max-new-tokens", "4", "--verbose"]
    assert main([*argv, "--no-stop-at-eos", "--budget", f"host={budget}"]) == 0
    err = capsys.readouterr().err
    assert "homed on the host tier" in err and "lru cache of" in err
    assert "layer 0: host 0-7, disk none" in err  # outer layers homed first
    assert re.search(r"layer 3: host 0-\d, disk \d-7", err)
    assert "layer 1: host none, disk 0-7" in err
    assert "fetched/token, hit rate" in err


# expert_store.hpp's kPrefetchFloor: a predicted expert is read ahead when some row routes to
# it with at least this many even shares (top_k / experts) of probability.
PREFETCH_FLOOR = 0.75


def expected_prediction_counts(moe):
    """(lookups, right, named, likely) of the layer-ahead prediction over the fixture's
    generation: per step and moe layer l > 0, the distinct experts the rows chose, how many of
    them the rows' top_k under layer l's router applied to layer l-1's input named, how many
    distinct experts it named, and how many of those are likely enough to be read ahead
    (PREFETCH_FLOOR)."""
    ref = RoutingRecorder(moe["pkg"])
    lookups = right = named = likely = 0
    for step in [moe["ids"]] + [[t] for t in moe["ref"][:-1]]:
        ref.calls.clear()
        ref.forward(step)
        for (_, x, _), (op, _, chosen) in zip(ref.calls, ref.calls[1:], strict=False):
            logits = x @ ref.weight(op["weight"]).T
            predicted = np.argsort(-logits, axis=-1)[:, : op["top_k"]]
            actual = set(chosen.ravel().tolist())
            lookups += len(actual)
            right += len(actual & set(predicted.ravel().tolist()))
            p = np.exp(logits - logits.max(axis=-1, keepdims=True))
            shares = (p / p.sum(axis=-1, keepdims=True)).max(axis=0) * p.shape[1] / op["top_k"]
            names = set(predicted.ravel().tolist())
            named += len(names)
            likely += sum(shares[e] >= PREFETCH_FLOOR for e in names)
    return lookups, right, named, likely


def test_prefetch_predicts_a_layer_ahead(moe):
    budget = budget_of(moe, 0.25)
    runs = {}
    for prefetch in (True, False):
        model = tierlm.load(moe["pkg"], budget={"host": budget}, expert_prefetch=prefetch)
        ids = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
        assert ids == moe["ref"]
        runs[prefetch] = model.stats()
    off, on = runs[False], runs[True]
    assert off["moe_prefetch_reads"] == off["moe_predicted_lookups"] == 0
    assert on["moe_prefetch_reads"] > 0
    assert 0 < on["moe_prefetch_used"] <= on["moe_prefetch_reads"]
    # prefetched experts turn misses into hits
    assert on["moe_misses"] < off["moe_misses"]
    # the accuracy is the layer-ahead prediction's, recomputed with the numpy reference; only
    # the experts predicted above the floor are read ahead
    lookups, right, named, likely = expected_prediction_counts(moe)
    assert on["moe_prefetch_reads"] <= likely < named
    assert on["moe_predicted_lookups"] == lookups
    assert on["moe_predicted_right"] == right
    assert on["moe_prediction_accuracy_pct"] == pytest.approx(100 * right / lookups)


def test_verify_names_a_damaged_homed_expert(moe, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(moe["pkg"], bad)
    flip_byte(bad, "layers.2.moe.experts.5.up.weight")
    tierlm.load(bad)  # unchecked: loads
    with pytest.raises(tierlm.CorruptError, match=r"layers\.2\.moe\.experts\.5\.up\.weight"):
        tierlm.load(bad, verify=True)


def flip_byte(pkg, tensor, at=101):
    """Damages one byte of a tensor in the package's weight file."""
    import json

    with open(f"{pkg}/manifest.json") as f:
        info = json.load(f)["tensors"][tensor]
    with open(f"{pkg}/{info['file']}", "r+b") as f:
        f.seek(info["offset"] + at)
        byte = f.read(1)
        f.seek(info["offset"] + at)
        f.write(bytes([byte[0] ^ 0x10]))


def test_verify_checks_each_expert_read_from_disk(moe, tmp_path):
    """With verify, an expert read into the cache is checked against its CRC-32 before it is
    used: a file damaged after a verified load fails the step that reads the damaged expert,
    naming it, instead of giving wrong tokens."""
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(moe["pkg"], pkg)
    budget = {"host": budget_of(moe, 0.25)}
    model = tierlm.load(pkg, budget=budget, verify=True)
    at_load = model.stats()["verify"]
    assert at_load["when"] == "load, and experts as they are read"
    out = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
    assert out == moe["ref"]
    s = model.stats()
    checked = s["verify"]["tensors"] - at_load["tensors"]
    assert 0 < checked <= 3 * (s["moe_misses"] + s["moe_prefetch_reads"]) and checked % 3 == 0
    # a disk-homed expert this prompt routes to, damaged after a fresh verified load
    disk = model.placement()["experts"]["disk_experts"]
    used = [(m, e) for m, counts in enumerate(model.expert_usage()) for e in disk[m] if counts[e]]
    m, e = used[0]
    fresh = tierlm.load(pkg, budget=budget, verify=True)
    tensor = f"layers.{m}.moe.experts.{e}.down.weight"
    flip_byte(pkg, tensor)
    with pytest.raises(tierlm.CorruptError, match=re.escape(tensor)):
        fresh.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    unchecked = tierlm.load(pkg, budget=budget)  # without verify the damage goes unnoticed
    unchecked.generate(moe["ids"], max_new_tokens=1, stop_at_eos=False)


def test_experts_split_across_weight_files(moe, tmp_path, backend):
    """Weight files cut every 300 KB put parts of one expert in two files: its reads go to
    each file, the tokens stay the resident run's."""
    split = tierlm.export(
        moe["pkg"][: -len("-pkg")] + "-hf",
        tmp_path / "split",
        dtype="bf16",
        progress=False,
        file_limit=300_000,
    )
    import json

    with open(f"{split}/manifest.json") as f:
        tensors = json.load(f)["tensors"]
    files = {
        tensors[f"layers.1.moe.experts.{e}.{p}.weight"]["file"]
        for e in range(8)
        for p in ("gate", "up", "down")
    }
    assert len(files) > 8
    model = tierlm.load(split, budget={"host": budget_of(moe, 0.25)})
    out = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
    assert out == moe["ref"]
    assert model.stats()["moe_misses"] > 0


def test_stream_reads_every_expert_of_every_layer(moe, backend):
    """expert_cache="stream", the dense-offload baseline: no cache, every disk-homed expert of
    a layer read on every step (the next layer's too with prefetch); the tokens stay the
    resident run's and the budget holds."""
    budget = budget_of(moe, 0.25)
    for prefetch in (True, False):
        model = tierlm.load(
            moe["pkg"], budget={"host": budget}, expert_cache="stream", expert_prefetch=prefetch
        )
        placement = model.placement()["experts"]
        assert placement["policy"] == "stream"
        disk = sum(map(len, placement["disk_experts"]))
        # slots for one layer's experts (two with prefetch), the rest of the budget homes
        assert 1 <= placement["cache_slots"] <= (2 if prefetch else 1) * 8
        out = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        assert out.output_ids == moe["ref"]
        s = model.stats()
        assert s["host"]["peak"] <= budget
        reads = s["moe_bytes_read"] // placement["expert_bytes"]
        # each of the NEW_TOKENS steps (the prompt's and the decode steps) reads every
        # disk-homed expert, less those its slots still hold from the step before
        slots = placement["cache_slots"]
        assert reads >= NEW_TOKENS * (disk - slots), (reads, disk, slots)
        assert reads <= NEW_TOKENS * disk + s["moe_misses"]
