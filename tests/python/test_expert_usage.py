"""Usage profiles of mixture-of-experts packages (tierlm.profile_experts, expert_usage.json):
the counts are the routing of the numpy reference, the expert store homes the most used experts
on the host tier by them, the tokens stay the resident run's and the budget holds; a profile
that does not match the model is refused naming the file."""

import json
import os
import shutil

import numpy as np
import pytest
import tierlm
from models import RoutingRecorder, offload_moe_package, package, prompt

NEW_TOKENS = 6
LAYERS, EXPERTS, TOP_K = 4, 8, 2


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    pkg = offload_moe_package(str(tmp_path_factory.mktemp("expert-usage")))  # 4 x 8 experts
    model = tierlm.load(pkg)
    ids = prompt(11)
    ref = model.generate(ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
    s, experts = model.stats(), model.placement()["experts"]
    assert experts["homing"] == "outer layers first"  # no profile yet
    expert_bytes = experts["host_bytes"] + experts["router_bytes"]
    fixed = s["weight_bytes"] - expert_bytes + s["kv_bytes"] + s["arena_bytes"]
    return {"pkg": pkg, "ids": ids, "ref": ref, "experts": expert_bytes, "fixed": fixed}


def copy_package(moe, tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(moe["pkg"], dst)
    return dst


def test_profile_counts_the_references_routing(moe, tmp_path):
    pkg = copy_package(moe, tmp_path)
    ids = prompt(61, seed=5)  # a prime number of tokens, prefilled in chunks
    profile = tierlm.profile_experts(pkg, ids=ids + [7, 8], max_tokens=61)
    assert profile["tokens"] == 61 and profile["source"] == "ids"
    with open(pkg / "expert_usage.json") as f:
        assert json.load(f) == profile
    ref = RoutingRecorder(str(pkg))
    ref.forward(ids)
    assert [layer["layer"] for layer in profile["layers"]] == list(range(LAYERS))
    for layer, (_, _, chosen) in zip(profile["layers"], ref.calls, strict=True):
        want = np.bincount(chosen.ravel(), minlength=EXPERTS)
        counts = np.array(layer["tokens_per_expert"])
        assert counts.sum() == 61 * TOP_K
        # bf16 weights in f32 arithmetic: a near-tie may flip one pick of one token
        assert np.abs(counts - want).sum() <= 2, (counts, want)


def ranked(profile):
    """Keys (layer, expert) by share of their layer's tokens, most used first; ties outer
    layers first (0, 3, 1, 2), then by expert: the order the store homes them in."""
    outer = {0: 0, 3: 1, 1: 2, 2: 3}
    keys = []
    for m, layer in enumerate(profile["layers"]):
        counts = layer["tokens_per_expert"]
        keys += [(-c / sum(counts), outer[m], e, m) for e, c in enumerate(counts)]
    return [(m, e) for _, _, e, m in sorted(keys)]


@pytest.mark.parametrize("share", [0.5, 0.25])
def test_placement_follows_the_profile(moe, tmp_path, backend, share):
    """A profile whose favourites are spread over the layers (most used: expert 7 of layer 2,
    expert 3 of layer 1, ...): the homed experts are its top ones, not outer layers first."""
    pkg = copy_package(moe, tmp_path)
    rng = np.random.default_rng(3)
    profile = {
        "source": "test",
        "tokens": 100,
        "layers": [
            {
                "layer": m,
                "tokens_per_expert": rng.permutation([90, 40, 20, 15, 10, 9, 8, 8]).tolist(),
            }
            for m in range(LAYERS)
        ],
    }
    profile["layers"][2]["tokens_per_expert"] = [1, 1, 1, 1, 1, 1, 1, 193]
    (pkg / "expert_usage.json").write_text(json.dumps(profile))
    budget = moe["fixed"] + int(moe["experts"] * share)
    model = tierlm.load(pkg, budget={"host": budget})
    placement = model.placement()["experts"]
    assert placement["homing"] == "usage profile"
    homed = {(m, e) for m, es in enumerate(placement["host_experts"]) for e in es}
    assert 0 < len(homed) < LAYERS * EXPERTS
    assert homed == set(ranked(profile)[: len(homed)])
    assert (2, 7) in homed and (2, 0) not in homed
    result = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert result.output_ids == moe["ref"]
    s = model.stats()
    assert s["host"]["peak"] <= budget
    assert s["moe_lookups"] == s["moe_host_hits"] + s["moe_cache_hits"] + s["moe_misses"]
    # the usage since load counts every routed token: top_k per token and layer
    tokens = len(moe["ids"]) + NEW_TOKENS - 1
    assert [sum(c) for c in model.expert_usage()] == [tokens * TOP_K] * LAYERS


@pytest.mark.parametrize("policy", ["lru", "lfu"])  # lfu: its counts seeded by the profile
def test_a_measured_profile_homes_the_measured_favourites(moe, tmp_path, policy):
    pkg = copy_package(moe, tmp_path)
    profile = tierlm.profile_experts(pkg, ids=prompt(40, seed=9))
    budget = moe["fixed"] + int(moe["experts"] * 0.25)
    model = tierlm.load(pkg, budget={"host": budget}, expert_cache=policy)
    placement = model.placement()["experts"]
    homed = {(m, e) for m, es in enumerate(placement["host_experts"]) for e in es}
    assert homed == set(ranked(profile)[: len(homed)])
    out = model.generate(moe["ids"], max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
    assert out == moe["ref"]
    s = model.stats()
    assert s["host"]["peak"] <= budget and s["moe_misses"] + s["moe_cache_hits"] > 0
    assert model.placement()["experts"]["policy"] == policy


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p["layers"].pop(), r"3 layers, the graph has 4 moe layers"),
        (lambda p: p["layers"][1].update(layer=2), r"layers\[1\] is layer 2"),
        (lambda p: p["layers"][3]["tokens_per_expert"].pop(), r"layers\[3\] has 7 experts"),
        (lambda p: p["layers"][0]["tokens_per_expert"].__setitem__(4, -1), "negative"),
        (lambda p: p["layers"][0]["tokens_per_expert"].__setitem__(4, 1.5), "tokens_per_expert"),
    ],
)
def test_a_profile_that_does_not_match_is_refused(moe, tmp_path, damage, message):
    pkg = copy_package(moe, tmp_path)
    profile = {"layers": [{"layer": m, "tokens_per_expert": [1] * EXPERTS} for m in range(LAYERS)]}
    damage(profile)
    (pkg / "expert_usage.json").write_text(json.dumps(profile))
    with pytest.raises(tierlm.CorruptError, match=message) as err:
        tierlm.load(pkg)
    assert "expert_usage.json" in str(err.value)


def test_profile_options_are_checked(moe, tmp_path):
    pkg = copy_package(moe, tmp_path)
    with pytest.raises(tierlm.InvalidArgumentError, match="text or ids"):
        tierlm.profile_experts(pkg, text="a", ids=[1])
    with pytest.raises(tierlm.InvalidArgumentError, match="max_tokens"):
        tierlm.profile_experts(pkg, ids=[1], max_tokens=0)
    with pytest.raises(tierlm.InvalidArgumentError, match="no tokenizer; give profile_experts"):
        tierlm.profile_experts(pkg)  # the calibration text needs the package's tokenizer
    with pytest.raises(tierlm.InvalidArgumentError, match="no tokens"):
        tierlm.profile_experts(pkg, ids=[])
    assert not os.path.exists(pkg / "expert_usage.json")


def test_a_dense_model_has_no_profile(tmp_path):
    _, pkg = package("llama", str(tmp_path))
    with pytest.raises(tierlm.UnsupportedError, match="mixture-of-experts"):
        tierlm.profile_experts(pkg, ids=[1, 2, 3])
    assert tierlm.load(pkg).expert_usage() == []
