import itertools
import json
import os

import numpy as np
import pytest
import tierlm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tierlm import plan
from tierlm.cli import main as cli_main
from tierlm.errors import CorruptError, InvalidArgumentError, UnsupportedError


def brute_force_peak(sizes, starts, ends, align):
    """Exact optimum by enumeration: some order of placing buffers, each at its lowest
    feasible aligned offset, reaches any (gravity-normalised) optimal plan."""
    n = len(sizes)
    conflicts = [
        [j for j in range(n) if j != i and starts[i] <= ends[j] and starts[j] <= ends[i]]
        for i in range(n)
    ]
    best = sum((s + align - 1) // align * align for s in sizes)
    for order in itertools.permutations(range(n)):
        offsets, peak = {}, 0
        for i in order:
            placed = sorted(
                (offsets[j], offsets[j] + sizes[j]) for j in conflicts[i] if j in offsets
            )
            candidates = [0] + [-(-hi // align) * align for _, hi in placed]
            for c in sorted(candidates):
                if all(c + sizes[i] <= lo or hi <= c for lo, hi in placed):
                    offsets[i] = c
                    break
            peak = max(peak, offsets[i] + sizes[i])
            if peak >= best:
                break
        else:
            best = min(best, peak)
    return best


def random_instance(rng, n, horizon, max_len, max_units, unit=64, odd=False):
    sizes = rng.integers(1, max_units + 1, n) * unit
    if odd:
        sizes = sizes - rng.integers(0, unit, n)
    starts = rng.integers(0, horizon, n)
    ends = starts + rng.integers(0, max_len + 1, n)
    return sizes, starts, ends


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("solver", plan.SOLVERS)
def test_mip_equals_brute_force(seed, solver):
    rng = np.random.default_rng(seed)
    n = 8 if seed == 0 else 6 + seed % 2
    align = [64, 1, 13][seed % 3]
    sizes, starts, ends = random_instance(rng, n, 7, 4, 9, unit=align * 4, odd=seed % 2 == 1)
    expected = brute_force_peak(sizes.tolist(), starts.tolist(), ends.tolist(), align)
    p = plan.solve(sizes, starts, ends, align=align, method="mip", time_limit=20, solver=solver)
    assert plan.check(p) == p.peak
    assert p.optimal
    assert p.peak == expected
    assert p.lower_bound <= p.peak


# Seven buffers where every greedy order ends one unit above the optimum (found by search).
GAP_LAYER = ([1, 1, 1, 6, 5, 6, 3], [3, 4, 2, 2, 5, 4, 5], [4, 6, 5, 4, 8, 6, 7])


def test_mip_beats_greedy_where_greedy_misses():
    sizes, starts, ends = GAP_LAYER
    exact = brute_force_peak(sizes, starts, ends, 1)
    g = plan.solve(sizes, starts, ends, align=1, method="greedy")
    assert g.peak > exact and not g.optimal
    for solver in plan.SOLVERS:
        p = plan.solve(sizes, starts, ends, align=1, method="mip", solver=solver)
        assert p.check() == p.peak == exact and p.optimal and p.solver == solver
    best = plan.solve(sizes, starts, ends, align=1, method="best")
    assert best.peak == exact and best.method == "mip"


def test_checker_rejects_overlap_and_names_both():
    sizes, starts, ends = [100, 100, 100], [0, 6, 4], [5, 9, 7]
    with pytest.raises(InvalidArgumentError, match=r"buffer 0 .*buffer 2 .*ops 4\.\.5"):
        plan.check(sizes, starts, ends, [0, 0, 64], align=64)
    with pytest.raises(InvalidArgumentError, match="buffer 1 .*buffer 2"):
        plan.check(sizes, starts, ends, [0, 128, 128], align=64)
    # Lifetimes include both ends: ops 5 and 5 meet.
    with pytest.raises(InvalidArgumentError, match="overlap"):
        plan.check([8, 8], [0, 5], [5, 9], [0, 4], align=1)
    # Touching in memory is fine, as is sharing bytes at different times.
    assert plan.check(sizes, starts, ends, [0, 0, 128], align=64) == 228
    assert plan.check([8, 8, 0], [0, 6, 0], [5, 9, 9], [0, 0, 0], align=1) == 8


def test_checker_rejects_misalignment_and_bad_input():
    with pytest.raises(InvalidArgumentError, match="not aligned to 64"):
        plan.check([4096], [0], [1], [4095], align=64)
    assert plan.check([4096], [0], [1], [4095], align=1) == 8191
    with pytest.raises(InvalidArgumentError, match="one of each"):
        plan.check([1, 2], [0, 0], [1, 1], [0], align=1)
    with pytest.raises(InvalidArgumentError, match="before it starts"):
        plan.check([1], [3], [2], [0], align=1)


def test_native_checker_agrees_on_bad_plans():
    from tierlm import _core

    sizes = np.array([100, 100, 100], dtype=np.uint64)
    starts, ends = np.array([0, 6, 4]), np.array([5, 9, 7])
    with pytest.raises(InvalidArgumentError, match="buffer 0 .*buffer 2"):
        _core.plan_check(sizes, starts, ends, np.array([0, 0, 64], dtype=np.uint64), 64)
    with pytest.raises(InvalidArgumentError, match="aligned"):
        _core.plan_check(sizes, starts, ends, np.array([0, 0, 130], dtype=np.uint64), 64)


instances = st.integers(1, 14).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(1, 5000), min_size=n, max_size=n),
        st.lists(st.integers(0, 20), min_size=n, max_size=n),
        st.lists(st.integers(0, 8), min_size=n, max_size=n),
        st.sampled_from([1, 8, 64, 4096]),
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances)
def test_random_instances_give_valid_plans(instance):
    sizes, starts, lengths, align = instance
    ends = [s + d for s, d in zip(starts, lengths, strict=True)]
    bound = plan.lower_bound(sizes, starts, ends)
    peaks = {}
    for method in ("greedy", "mip", "best"):
        p = plan.solve(sizes, starts, ends, align=align, method=method, time_limit=2)
        assert plan.check(sizes, starts, ends, p.offsets, align) == p.peak
        assert p.lower_bound == bound <= p.peak
        assert p.peak <= sum(-(-s // align) * align for s in sizes)
        peaks[method] = p.peak
    assert peaks["mip"] <= peaks["greedy"] and peaks["best"] <= peaks["greedy"]


def test_highs_and_cpsat_agree_on_a_layered_instance():
    rng = np.random.default_rng(5)
    sizes, starts, ends = random_instance(rng, 23, 30, 6, 31, odd=True)
    a = plan.solve(sizes, starts, ends, method="mip", solver="cpsat", time_limit=20)
    b = plan.solve(sizes, starts, ends, method="mip", solver="highs", time_limit=20)
    assert a.check() == a.peak and b.check() == b.peak
    assert a.optimal and b.optimal
    assert a.peak == b.peak


def test_reductions_fix_whole_run_buffers_and_reuse_identical_layers():
    # A buffer live throughout, and 12 identical layers (10 ops apart) that no buffer
    # crosses, each one where greedy misses the optimum by one unit.
    sizes, starts, ends = [4], [0], [12 * 10 - 1]
    for k in range(12):
        sizes += GAP_LAYER[0]
        starts += [s + 10 * k for s in GAP_LAYER[1]]
        ends += [e + 10 * k for e in GAP_LAYER[2]]
    g = plan.solve(sizes, starts, ends, align=1, method="greedy")
    p = plan.solve(sizes, starts, ends, align=1, method="mip", time_limit=10)
    assert p.check() == p.peak == 4 + 16 < g.peak
    assert p.offsets[0] == 0 and p.optimal
    assert p.stats["fixed"] == 1 and p.stats["leaves"] == 12
    assert p.stats["solved"] == 1 and p.stats["reused"] == 11


def test_greedy_hundred_thousand_buffers_is_valid():
    rng = np.random.default_rng(1)
    sizes, starts, ends = random_instance(rng, 100_000, 100_000, 60, 4096, odd=True)
    p = plan.solve(sizes, starts, ends, method="greedy")
    assert p.check() == p.peak
    assert p.lower_bound <= p.peak < sizes.sum()


def test_solve_rejects_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="method"):
        plan.solve([1], [0], [0], method="magic")
    with pytest.raises(InvalidArgumentError, match="solver"):
        plan.solve([1], [0], [0], solver="gurobi")
    with pytest.raises(InvalidArgumentError, match="before it starts"):
        plan.solve([1], [2], [1])
    with pytest.raises(InvalidArgumentError, match="one of each"):
        plan.solve([1, 2], [0], [0])
    empty = plan.solve([], [], [])
    assert empty.peak == 0 and empty.optimal


def test_trace_torch_records_lifetimes():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    x = torch.randn(37, 61, requires_grad=True)
    w = torch.randn(61, 61, requires_grad=True)

    def step():
        y = (x @ w).relu()
        (y * y).sum().backward()

    trace = plan.trace_torch(step)
    assert trace.num_ops > 5 and len(trace) > 3
    assert (trace.starts <= trace.ends).all() and (trace.ends < trace.num_ops).all()
    nbytes = 37 * 61 * 4
    assert nbytes in trace.sizes.tolist()
    # The gradients outlive the step; the matmul output dies once relu has run.
    grads = [i for i, n in enumerate(trace.names) if n.startswith("aten.mm")]
    assert len(grads) == 3
    first_mm = min(grads, key=lambda i: trace.starts[i])
    assert trace.ends[first_mm] < trace.num_ops - 1
    assert trace.ends.max() == trace.num_ops - 1
    p = plan.solve(*trace, method="best", time_limit=5)
    assert p.check() == p.peak and p.peak <= trace.sizes.sum()
    # Inputs are not the step's buffers.
    assert x.untyped_storage().nbytes() != trace.sizes.sum()


def test_save_load_roundtrip_and_corruption(tmp_path):
    sizes, starts, ends = [4096, 100, 4097, 1], [0, 1, 2, 3], [2, 3, 5, 3]
    p = plan.solve(sizes, starts, ends, method="mip")
    names = ["h", "q", "scores", "tiny"]
    path = plan.save(p, names, tmp_path / "plans" / "seq-17.json")
    q = plan.load(path)
    assert q.seq == 17 and q.names == names and q.peak == p.peak and q.align == 64
    assert q.offsets.tolist() == p.offsets.tolist() and q.method == p.method
    doc = json.loads(open(path).read())
    assert set(doc) >= {"seq", "align", "method", "peak", "lower_bound", "buffers"}
    assert doc["buffers"][2] == {
        "name": "scores",
        "size": 4097,
        "first": 2,
        "last": 5,
        "offset": int(p.offsets[2]),
    }
    doc["buffers"][1]["offset"] = doc["buffers"][0]["offset"]  # now overlapping
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(CorruptError, match="seq-17.json.*buffer 0.*buffer 1"):
        plan.load(path)
    open(path, "w").write("{not json")
    with pytest.raises(CorruptError, match="not JSON"):
        plan.load(path)
    with pytest.raises(InvalidArgumentError, match="names"):
        plan.save(p, ["a"], tmp_path / "x.json")


def test_cli_plans_a_json_file(tmp_path, capsys):
    rng = np.random.default_rng(2)
    sizes, starts, ends = random_instance(rng, 41, 30, 6, 50)
    src = tmp_path / "buffers.json"
    src.write_text(
        json.dumps({"sizes": sizes.tolist(), "starts": starts.tolist(), "ends": ends.tolist()})
    )
    out = tmp_path / "seq-41.json"
    args = ["plan", str(src), "--method", "mip", "--time-limit", "5", "--json", "--out", str(out)]
    assert cli_main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["peak"] >= result["lower_bound"] == plan.lower_bound(sizes, starts, ends)
    assert result["method"] == "mip" and result["written"] == str(out)
    assert plan.load(out).peak == result["peak"]
    assert cli_main(["plan", str(src), "--method", "greedy"]) == 0
    text = capsys.readouterr().out
    assert "lower bound" in text and "ratio" in text and "greedy" in text


def test_cli_package_needs_memory_buffers(tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    assert cli_main(["plan", str(pkg)]) == 1
    assert "--seq" in capsys.readouterr().err
    if not hasattr(tierlm, "load"):
        assert cli_main(["plan", str(pkg), "--seq", "8"]) == 1
        assert "tierlm.load" in capsys.readouterr().err

    class NoBuffers:
        pass

    monkeypatch.setattr(tierlm, "load", lambda path: NoBuffers(), raising=False)
    assert cli_main(["plan", str(pkg), "--seq", "8"]) == 1
    assert "memory_buffers" in capsys.readouterr().err
    with pytest.raises(UnsupportedError):
        cli_main(["--debug", "plan", str(pkg), "--seq", "8"])


def test_cli_package_writes_plans_seq_file(tmp_path, capsys, monkeypatch):
    # The executor's side of the contract: model.memory_buffers(seq) lists its buffers.
    class Model:
        def memory_buffers(self, seq):
            return [
                {"name": "h", "size": seq * 64, "first": 0, "last": 3},
                {"name": "x", "size": seq * 64, "first": 1, "last": 2},
                {"name": "logits", "size": 1000, "first": 3, "last": 4},
            ]

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    monkeypatch.setattr(tierlm, "load", lambda path: Model(), raising=False)
    assert cli_main(["plan", str(pkg), "--seq", "11", "--method", "mip"]) == 0
    loaded = plan.load(os.path.join(pkg, "plans", "seq-11.json"))
    assert loaded.seq == 11 and loaded.names == ["h", "x", "logits"]
    assert loaded.peak == max(2 * 11 * 64, 11 * 64 + 1000) and loaded.optimal


def test_oversized_leaf_keeps_its_greedy_plan(monkeypatch):
    from tierlm.plan import mip

    rng = np.random.default_rng(4)
    sizes, starts, ends = random_instance(rng, 60, 20, 9, 300, odd=True)
    greedy = plan.solve(sizes, starts, ends, method="greedy")
    monkeypatch.setattr(mip, "MAX_TERMS", 1)
    p = plan.solve(sizes, starts, ends, method="mip", time_limit=5)
    assert p.check() == p.peak <= greedy.peak


def chained_gap_layers(layers, residual_len=5):
    """GAP_LAYER repeated every 10 ops, each layer handing a residual to the next one."""
    sizes, starts, ends = [], [], []
    for k in range(layers):
        sizes += GAP_LAYER[0] + [2]
        starts += [s + 10 * k for s in GAP_LAYER[1]] + [10 * k + 8]
        ends += [e + 10 * k for e in GAP_LAYER[2]] + [10 * k + 8 + residual_len]
    return np.array(sizes), np.array(starts), np.array(ends)


def test_repeated_layers_are_planned_as_one(monkeypatch):
    from tierlm.plan import mip, repeat

    sizes, starts, ends = chained_gap_layers(30)
    assert repeat.find_period(sizes, starts, ends) == 10
    label, count = repeat.classes(sizes, starts, ends, 10)
    assert count == 8 and sorted(set(label.tolist())) == list(range(8))
    # A residual living longer than a layer alternates between two offsets.
    long_sizes, long_starts, long_ends = chained_gap_layers(30, residual_len=12)
    assert repeat.classes(long_sizes, long_starts, long_ends, 10)[1] == 9

    g = plan.solve(sizes, starts, ends, align=1, method="greedy")
    hint = g.offsets
    leaf = mip.Leaf(sizes, sizes, starts, ends, hint)
    result, layer = repeat.solve_repeated(leaf, 10, "cpsat")
    assert layer == 8 and result.optimal and result.peak == 16 < g.peak
    assert plan.check(sizes, starts, ends, result.offsets, 1) == 16

    solve_module = __import__("sys").modules["tierlm.plan.solve"]
    monkeypatch.setattr(solve_module, "REPEAT_MIN_BUFFERS", 10)
    p = plan.solve(long_sizes, long_starts, long_ends, align=1, method="mip", time_limit=10)
    assert p.check() == p.peak and p.stats["layer_buffers"] == 9
    assert p.peak <= plan.solve(long_sizes, long_starts, long_ends, align=1, method="greedy").peak
