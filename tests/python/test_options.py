"""Every option of tierlm.load and Model.generate acts or is refused: each parameter has a case
that shows its effect and, for a numeric one, that a value outside its range is refused with
libtierlm's message naming it. A parameter added without a case fails the walk."""

import inspect
import json
import os
import re
import shutil

import numpy as np
import pytest
import tierlm
from models import SPILL_SHAPE, flipped_copy, package, prompt
from tierlm import _core
from tierlm.errors import CorruptError, InvalidArgumentError

DEMO = os.path.join(os.path.dirname(tierlm.__file__), "data", "demo-opt")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return package("llama", str(tmp_path_factory.mktemp("options")), seed=5)[1]


@pytest.fixture(scope="module")
def sparse_pkg(tmp_path_factory):
    if not os.path.exists(os.path.join(DEMO, "predictors.json")):
        pytest.skip("demo model not shipped")
    out = str(tmp_path_factory.mktemp("options-sparse") / "pkg")
    tierlm.export(DEMO, out, progress=False, sparse=True)
    return out


def refused(option, value, **kwargs):
    return pytest.raises(InvalidArgumentError, match=f"^{option} = {value} is out of range")


def streaming_budget(pkg):
    """A host budget just below what the resident model needs: its layers stream."""
    return tierlm.load(pkg, budget="1GiB").stats()["host"]["peak"] - (64 << 10)


def case_budget(pkg, sparse_pkg):
    model = tierlm.load(pkg, budget={"host": "48MiB"})
    assert model.stats()["host"]["budget"] == 48 << 20
    assert tierlm.load(pkg, budget=streaming_budget(pkg)).placement()["streaming"]
    with pytest.raises(InvalidArgumentError, match="not 'device'.*no device tier"):
        tierlm.load(pkg, budget={"host": "48MiB", "device": "1GiB"})
    with pytest.raises(
        InvalidArgumentError, match="only the host and disk tier budgets, not 'gpu'"
    ):
        tierlm.load(pkg, budget={"gpu": "1GiB"})
    # the disk tier holds what kv_host_budget moves there (case_kv_host_budget), nothing else
    with pytest.raises(InvalidArgumentError, match="only a kv_host_budget"):
        tierlm.load(pkg, budget={"host": "48MiB", "disk": "1GiB"})
    with refused("disk_budget", 2**64):
        tierlm.load(pkg, budget={"disk": 2**64}, kv_host_budget="1MiB")
    with refused("host_budget", 2**64):
        tierlm.load(pkg, budget=2**64)


def case_threads(pkg, sparse_pkg):
    before = _core.cpu_info()["threads"]
    try:
        tierlm.load(pkg, threads=3)
        assert _core.cpu_info()["threads"] == 3
        with refused("threads", 10**6):
            tierlm.load(pkg, threads=10**6)
        with refused("threads", -1):
            tierlm.load(pkg, threads=-1)
        with refused("threads", 2000):  # the native entry point has the same bound
            _core.set_threads(2000)
        assert _core.cpu_info()["threads"] == 3
    finally:
        _core.set_threads(before)


def case_verify(pkg, sparse_pkg, tmp_path):
    bad = flipped_copy(pkg, str(tmp_path / "bad"))
    tierlm.load(bad)  # unchecked, the flipped byte loads
    with pytest.raises(CorruptError, match="CRC"):
        tierlm.load(bad, verify=True)


def case_max_context(pkg, sparse_pkg):
    assert tierlm.load(pkg, max_context=40).context_length == 40
    with refused("max_context", -1):
        tierlm.load(pkg, max_context=-1)
    with refused("max_context", 2**31):
        tierlm.load(pkg, max_context=2**31)


def case_prefill_chunk(pkg, sparse_pkg):
    assert tierlm.load(pkg, prefill_chunk=50)._native.prefill_chunk == 50
    with refused("prefill_chunk", -3):
        tierlm.load(pkg, prefill_chunk=-3)


def case_lock(pkg, sparse_pkg):
    assert tierlm.load(pkg, lock=False).stats()["host"]["locked"] == 0
    if _core.memlock_limit() < 1 << 20:
        pytest.skip(f"RLIMIT_MEMLOCK is {_core.memlock_limit()} bytes: nothing can be locked")
    assert tierlm.load(pkg, lock=True).stats()["host"]["locked"] > 0


def case_max_batch(pkg, sparse_pkg):
    with pytest.raises(InvalidArgumentError, match="max_batch"):
        tierlm.load(pkg).generate_batch([[1, 2], [3, 4]], max_new_tokens=2)
    assert len(tierlm.load(pkg, max_batch=2).generate_batch([[1, 2], [3, 4]], 2)) == 2
    with refused("max_batch", 0):
        tierlm.load(pkg, max_batch=0)


def case_ring_sections(pkg, sparse_pkg):
    for sections in (1, 2):
        p = tierlm.load(pkg, budget=streaming_budget(pkg), ring_sections=sections).placement()
        assert p["streaming"] and p["sections"] == sections
    with refused("ring_sections", -1):
        tierlm.load(pkg, ring_sections=-1)


def case_sparse(pkg, sparse_pkg):
    assert tierlm.load(sparse_pkg, sparse=True).stats()["sparse"]
    assert not tierlm.load(sparse_pkg).stats()["sparse"]
    with pytest.raises(tierlm.errors.NotFoundError, match="--sparse"):
        tierlm.load(pkg, sparse=True)


def case_sparse_window(pkg, sparse_pkg):
    assert tierlm.load(sparse_pkg, sparse=True, sparse_window=2).stats()["sparse_window"] == 2
    with refused("sparse_window", 0):
        tierlm.load(sparse_pkg, sparse=True, sparse_window=0)


def case_sparse_bundled(pkg, sparse_pkg):
    ids = prompt(9, vocab=200)
    for bundled in (True, False):
        model = tierlm.load(sparse_pkg, sparse=True, sparse_bundled=bundled)
        s = model.generate(ids, max_new_tokens=3).stats
        assert s["sparse_bundled"] is bundled
        # Apart, each row read (after the read-ahead, or ahead) is two requests; bundled,
        # neighbours coalesce.
        rows = s["sparse_neurons_read"] - s["sparse_readahead_hits"] + s["sparse_readahead_rows"]
        assert (s["sparse_requests"] == 2 * rows) is not bundled


def case_sparse_capacity(pkg, sparse_pkg):
    s = tierlm.load(sparse_pkg, sparse=True, sparse_capacity=300).stats()
    assert s["sparse_capacity"] == [300] * len(s["sparse_capacity"])
    with refused("sparse_capacity", -1):
        tierlm.load(sparse_pkg, sparse=True, sparse_capacity=-1)


def case_sparse_readahead(pkg, sparse_pkg):
    ids = prompt(7)
    runs = {}
    for ahead in (True, False):
        model = tierlm.load(sparse_pkg, sparse=True, sparse_readahead=ahead)
        out = model.generate(ids, max_new_tokens=6, stop_at_eos=False)
        runs[ahead] = out.output_ids, model.stats()
    assert runs[True][0] == runs[False][0]  # what is read when, never what is computed
    assert runs[True][1]["sparse_readahead"] and runs[True][1]["sparse_readahead_rows"] > 0
    assert not runs[False][1]["sparse_readahead"] and runs[False][1]["sparse_readahead_rows"] == 0


def case_expert_cache(pkg, sparse_pkg, tmp_path):
    moe = package("mixtral", str(tmp_path), seed=2, num_local_experts=8)[1]
    full = tierlm.load(moe).stats()
    # a third of the experts' bytes: most experts on the disk tier, read through the cache
    budget = full["kv_bytes"] + full["arena_bytes"] + full["weight_bytes"] // 3
    ids = prompt(9)
    tokens = {}
    for policy in ("lru", "lfu", "stream"):
        model = tierlm.load(moe, budget=budget, expert_cache=policy)
        assert model.placement()["experts"]["policy"] == policy
        tokens[policy] = model.generate(ids, max_new_tokens=6, stop_at_eos=False).output_ids
        assert model.stats()["moe_misses"] > 0
    assert tokens["lru"] == tokens["lfu"] == tokens["stream"]
    with pytest.raises(InvalidArgumentError, match='expert_cache "mru"'):
        tierlm.load(moe, expert_cache="mru")


def case_expert_prefetch(pkg, sparse_pkg, tmp_path):
    moe = package("mixtral", str(tmp_path), seed=3, num_local_experts=8)[1]
    full = tierlm.load(moe).stats()
    budget = full["kv_bytes"] + full["arena_bytes"] + full["weight_bytes"] // 3
    for prefetch in (True, False):
        model = tierlm.load(moe, budget=budget, expert_prefetch=prefetch)
        model.generate(prompt(9), max_new_tokens=4)
        assert (model.stats()["moe_predicted_lookups"] > 0) is prefetch
        assert (model.placement()["experts"]["router_bytes"] > 0) is prefetch


def case_kv_dtype(pkg, sparse_pkg):
    f16, f32 = tierlm.load(pkg).stats(), tierlm.load(pkg, kv_dtype="f32").stats()
    assert (f16["kv_dtype"], f32["kv_dtype"]) == ("f16", "f32")
    assert f16["kv_block_bytes"] * 2 == f32["kv_block_bytes"]
    with pytest.raises(InvalidArgumentError, match="kv_dtype q6_k is not a KV cache type"):
        tierlm.load(pkg, kv_dtype="q6_k")


def case_kv_policy(pkg, sparse_pkg):
    ids = prompt(6)
    full = tierlm.load(pkg).generate(ids, max_new_tokens=400, stop_at_eos=False)
    model = tierlm.load(pkg, kv_policy="window:4+124")
    streamed = model.generate(ids, max_new_tokens=400, stop_at_eos=False)
    assert full.finish_reason == "context" and streamed.finish_reason == "length"
    assert model.stats()["kv_evicted"] > 0
    for scored in ("sirllm:4+60+64@0.99", "h2o:4+60+64"):
        model = tierlm.load(pkg, kv_policy=scored)
        out = model.generate(ids, max_new_tokens=400, stop_at_eos=False)
        assert out.finish_reason == "length" and model.stats()["kv_evicted"] > 0
        assert len(model.kv_scores()) == 6 + 399 - model.stats()["kv_evicted"]
    for bad in ("window:4", "sirllm:4+60", "h2o:4+60+64@0.5"):
        with pytest.raises(InvalidArgumentError, match=re.escape(f"kv_policy '{bad}'")):
            tierlm.load(pkg, kv_policy=bad)


def case_kv_host_budget(pkg, sparse_pkg, tmp_path):
    spill = package("llama", str(tmp_path), seed=5, **SPILL_SHAPE)[1]
    full = tierlm.load(spill).stats()["kv_bytes"]
    model = tierlm.load(spill, kv_host_budget=full * 2 // 5, budget={"disk": "16MiB"})
    ids = prompt(150)
    assert model.generate(ids, max_new_tokens=8).output_ids == (
        tierlm.load(spill).generate(ids, max_new_tokens=8).output_ids
    )
    s = model.stats()
    assert s["kv_bytes"] <= full * 2 // 5 and s["kv_blocks_spilled"] > 0
    assert s["disk"]["budget"] == 16 << 20 and 0 < s["disk"]["peak"] <= 16 << 20
    with refused("kv_host_budget", 2**64):
        tierlm.load(spill, kv_host_budget=2**64)
    # with a kv_policy: the policy evicts from the spilled cache, the tokens those in memory
    policy, ids = "h2o:4+124+128", prompt(6)
    in_memory = tierlm.load(spill, kv_policy=policy)
    want = in_memory.generate(ids, max_new_tokens=300, stop_at_eos=False).output_ids
    half = in_memory.stats()["kv_bytes"] // 2
    both = tierlm.load(spill, kv_policy=policy, kv_host_budget=half)
    assert both.generate(ids, max_new_tokens=300, stop_at_eos=False).output_ids == want
    s = both.stats()
    assert s["kv_evicted"] == in_memory.stats()["kv_evicted"] > 0
    assert s["kv_blocks_spilled"] > 0 and s["kv_bytes"] <= half


def case_disk_dir(pkg, sparse_pkg, tmp_path):
    spill = package("llama", str(tmp_path), seed=5, **SPILL_SHAPE)[1]
    full = tierlm.load(spill).stats()["kv_bytes"]
    model = tierlm.load(spill, kv_host_budget=full * 2 // 5, disk_dir=tmp_path)
    model.generate(prompt(150), max_new_tokens=2)
    assert model.stats()["kv_blocks_spilled"] > 0
    with pytest.raises(OSError, match="missing does not exist"):
        tierlm.load(spill, kv_host_budget=full * 2 // 5, disk_dir=tmp_path / "missing")
    with pytest.raises(InvalidArgumentError, match="only a kv_host_budget"):
        tierlm.load(spill, disk_dir=tmp_path)


LOAD_CASES = {
    "budget": case_budget,
    "threads": case_threads,
    "verify": case_verify,
    "max_context": case_max_context,
    "prefill_chunk": case_prefill_chunk,
    "lock": case_lock,
    "max_batch": case_max_batch,
    "ring_sections": case_ring_sections,
    "sparse": case_sparse,
    "sparse_window": case_sparse_window,
    "sparse_bundled": case_sparse_bundled,
    "sparse_capacity": case_sparse_capacity,
    "sparse_readahead": case_sparse_readahead,
    "expert_cache": case_expert_cache,
    "expert_prefetch": case_expert_prefetch,
    "kv_dtype": case_kv_dtype,
    "kv_policy": case_kv_policy,
    "kv_host_budget": case_kv_host_budget,
    "disk_dir": case_disk_dir,
}


def test_every_load_option_has_a_case():
    options = set(inspect.signature(tierlm.load).parameters) - {"path"}
    assert options == set(LOAD_CASES), "give each tierlm.load option a case in LOAD_CASES"


@pytest.mark.parametrize("option", sorted(LOAD_CASES))
def test_load_option_acts_or_is_refused(option, pkg, sparse_pkg, tmp_path):
    case = LOAD_CASES[option]
    extra = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(case).parameters else {}
    case(pkg, sparse_pkg, **extra)


def test_every_generate_option_acts_or_is_refused(pkg, tmp_path):
    model = tierlm.load(pkg)
    params = set(inspect.signature(model.generate).parameters) - {"prompt"}
    assert params == {
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "stop_at_eos",
        "repetition_penalty",
        "repetition_last_n",
    }
    ids = prompt(6)

    def run(**kw):
        return model.generate(ids, **{"max_new_tokens": 16, "stop_at_eos": False, **kw})

    greedy = run().output_ids
    assert len(run(max_new_tokens=4).output_ids) == 4
    hot = run(temperature=5.0, seed=1).output_ids
    assert hot != greedy and hot == run(temperature=5.0, seed=1).output_ids
    assert run(temperature=5.0, seed=2).output_ids != hot
    assert run(temperature=5.0, top_k=1, seed=1).output_ids == greedy
    assert run(temperature=5.0, top_p=1e-6, seed=1).output_ids == greedy
    # Greedy on these random weights repeats tokens: a strong penalty over the whole sequence
    # changes the choice; looking back one token, no token follows itself.
    assert len(set(greedy)) < len(greedy)
    assert run(repetition_penalty=1e4, repetition_last_n=0).output_ids != greedy
    last_one = run(repetition_penalty=1e4, repetition_last_n=1).output_ids
    assert all(a != b for a, b in zip(last_one, last_one[1:], strict=False))
    # The same weights with greedy[3] as eos: stop_at_eos ends after its first occurrence.
    eos_pkg = str(tmp_path / "eos")
    shutil.copytree(pkg, eos_pkg)
    with open(os.path.join(eos_pkg, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["config"]["eos_token_id"] = manifest["config"]["eos_token_ids"] = [greedy[3]]
    with open(os.path.join(eos_pkg, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    eos_model = tierlm.load(eos_pkg)
    assert eos_model.generate(ids, max_new_tokens=16, stop_at_eos=False).output_ids == greedy
    stopped = eos_model.generate(ids, max_new_tokens=16)
    assert stopped.output_ids == greedy[: greedy.index(greedy[3]) + 1]
    assert stopped.finish_reason == "eos"
    bad_values = (
        ("max_new_tokens", -1),
        ("top_k", 2**31),
        ("seed", -1),
        ("seed", 2**64),
        ("repetition_last_n", -1),
    )
    for name, value in bad_values:
        with refused(name, value):
            run(**{name: value})
    for bad in (-1, 2**31, 2**40):
        with refused("token id", bad):
            model.generate([1, bad, 2])
    with pytest.raises(InvalidArgumentError, match="vocabulary"):
        model.generate([1, model.vocab_size])
    with pytest.raises(InvalidArgumentError, match="temperature"):
        run(temperature=-1.0)
    with pytest.raises(InvalidArgumentError, match="top_p"):
        run(top_p=0.0)
    with pytest.raises(InvalidArgumentError, match="repetition_penalty"):
        run(repetition_penalty=0.0)


def test_option_ranges_table_is_what_python_checks():
    from tierlm import limits

    names = {r.name for r in _core.option_ranges()}
    assert {"threads", "max_context", "seed", "token id", "host_budget"} <= names
    threads = next(r for r in _core.option_ranges() if r.name == "threads")
    assert (threads.min, threads.max) == (0, 1024)
    assert limits.check("threads", np.int64(4)) == 4
    with pytest.raises(InvalidArgumentError, match="threads must be an integer"):
        limits.check("threads", 2.5)


def test_host_tier_pins_only_when_asked():
    plain = tierlm.HostTier(1 << 20).allocate(8192)
    assert not plain.pinned  # no device tier uses it: no CUDA registration, GPU or not
    asked = tierlm.HostTier(1 << 20, pin=True).allocate(8192)
    if _core.device_count() == 0:
        pytest.skip(f"pin=True registers with CUDA: no GPU ({_core.device_unavailable_reason()})")
    assert asked.pinned
