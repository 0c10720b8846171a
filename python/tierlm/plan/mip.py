"""Exact placement of one independent piece of a plan (a "leaf"), by OR-Tools CP-SAT or by
HiGHS. Both see the same reduced model: sizes in units of the gcd of the aligned sizes,
no-overlap only between buffers live at a common op (the maximal cliques of the interval
graph), identical buffers ordered, and the greedy plan as the starting solution."""

import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from tierlm.errors import InvalidArgumentError, UnsupportedError

SOLVERS = ("cpsat", "highs")
# CP-SAT where OR-Tools (the `plan` extra) is installed; HiGHS, a core dependency, otherwise, so
# the exact planner works after a plain `pip install .`.
DEFAULT_SOLVER = "cpsat" if importlib.util.find_spec("ortools") is not None else "highs"


@dataclass
class Leaf:
    """One piece to place: buffers of nonzero size that interact only with each other."""

    sizes: np.ndarray  # raw bytes
    rounded: np.ndarray  # bytes rounded up to the alignment
    starts: np.ndarray
    ends: np.ndarray
    hint: np.ndarray  # a valid plan (byte offsets), e.g. the greedy one
    unit: int = 0  # gcd of the rounded sizes: offsets are multiples of it w.l.o.g.
    cliques: list = field(default_factory=list)
    bound: int = 0  # aligned lower bound on the peak (bytes)

    def __post_init__(self):
        self.unit = int(np.gcd.reduce(self.rounded.astype(np.int64))) if len(self.rounded) else 1
        if not self.cliques:  # given explicitly for a leaf that is not an interval graph
            self.cliques = maximal_cliques(self.starts, self.ends)
        # The top buffer of a clique sits above all the others' aligned sizes.
        slack = self.rounded - self.sizes
        self.bound = max(
            (int(self.rounded[c].sum() - slack[c].max()) for c in self.cliques), default=0
        )


def maximal_cliques(starts, ends):
    """The maximal sets of buffers live at one op (an interval graph has at most n)."""
    events = sorted(
        [(int(s), 1, i) for i, s in enumerate(starts)]
        + [(int(e) + 1, 0, i) for i, e in enumerate(ends)]
    )
    live, cliques, grew = set(), [], False
    for _, kind, i in events:
        if kind == 1:
            live.add(i)
            grew = True
        else:
            if grew:
                cliques.append(sorted(live))
                grew = False
            live.discard(i)
    return cliques


def _pairs(cliques):
    pairs = set()
    for c in cliques:
        for a in range(len(c)):
            for b in range(a + 1, len(c)):
                pairs.add((c[a], c[b]))
    return sorted(pairs)


def _identical_groups(leaf):
    groups = {}
    for i in range(len(leaf.sizes)):
        key = (int(leaf.sizes[i]), int(leaf.starts[i]), int(leaf.ends[i]))
        groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _ordered_hint(leaf, groups):
    """The hint with identical buffers' offsets sorted by index (still valid: they swap)."""
    hint = leaf.hint.astype(np.int64).copy()
    for g in groups:
        hint[g] = np.sort(hint[g])
    return hint


def gravity(leaf, offsets_units):
    """Pushes each buffer down onto the ones below it, keeping the solution's vertical order:
    integral offsets, never higher than before, and valid when the input was."""
    order = np.argsort(np.asarray(offsets_units, dtype=np.float64), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    below = [[] for _ in order]
    for a, b in _pairs(leaf.cliques):
        lo, hi = (a, b) if rank[a] < rank[b] else (b, a)
        below[hi].append(lo)
    units = leaf.rounded // leaf.unit
    out = np.zeros(len(order), dtype=np.int64)
    for i in order:
        out[i] = max((out[j] + units[j] for j in below[i]), default=0)
    return out


@dataclass
class LeafResult:
    offsets: np.ndarray  # bytes
    peak: int
    optimal: bool
    seconds: float
    solver: str


def _result(leaf, offsets, optimal, t0, solver):
    """offsets in bytes; falls back to the hint if the solver found nothing better."""
    offsets = np.asarray(offsets, dtype=np.int64)
    peak = int((offsets + leaf.sizes).max()) if len(offsets) else 0
    hint_peak = int((leaf.hint + leaf.sizes).max()) if len(offsets) else 0
    if peak > hint_peak:  # a solver that stopped early with nothing better than the hint
        offsets, peak = leaf.hint.astype(np.int64), hint_peak
    return LeafResult(
        offsets, peak, optimal or peak <= leaf.bound, time.perf_counter() - t0, solver
    )


# Beyond this many (clique member) terms the model takes longer to build than to be useful;
# such a leaf keeps its greedy plan.
MAX_TERMS = 4_000_000


def model_terms(leaf, solver):
    if solver == "highs":
        return sum(len(c) * (len(c) - 1) // 2 for c in leaf.cliques)
    return sum(len(c) for c in leaf.cliques)


def solve_leaf(leaf, time_limit, solver=DEFAULT_SOLVER, workers=None):
    """Best plan for the leaf found within time_limit seconds, never worse than its hint."""
    if solver in SOLVERS and model_terms(leaf, solver) > MAX_TERMS:
        t0 = time.perf_counter()
        return _result(leaf, leaf.hint, False, t0, "greedy")
    if solver == "cpsat":
        return _solve_cpsat(leaf, time_limit, workers)
    if solver == "highs":
        return _solve_highs(leaf, time_limit)
    raise InvalidArgumentError(f"plan: unknown MIP solver '{solver}'; use one of {SOLVERS}")


def _solve_cpsat(leaf, time_limit, workers):
    t0 = time.perf_counter()
    try:
        from ortools.sat.python import cp_model
    except ImportError as error:
        raise UnsupportedError(
            "plan: the CP-SAT solver needs OR-Tools (pip install ortools), or use solver='highs'"
        ) from error
    n, u = len(leaf.sizes), leaf.unit
    sizes = [int(s) for s in leaf.sizes]
    units = [int(r) // u for r in leaf.rounded]
    groups = _identical_groups(leaf)
    hint = _ordered_hint(leaf, groups)
    upper = int((hint + leaf.sizes).max())
    m = cp_model.CpModel()
    offs = [m.new_int_var(0, (upper - sizes[i]) // u, f"o{i}") for i in range(n)]
    spans = [m.new_fixed_size_interval_var(offs[i], units[i], f"m{i}") for i in range(n)]
    for c in leaf.cliques:
        if len(c) > 1:
            m.add_no_overlap([spans[i] for i in c])
    for g in groups:  # identical buffers are interchangeable: fix their order
        for a, b in zip(g, g[1:], strict=False):
            m.add(offs[a] + units[a] <= offs[b])
    peak = m.new_int_var(min(leaf.bound, upper), upper, "peak")
    for i in range(n):
        m.add(peak >= u * offs[i] + sizes[i])
    m.minimize(peak)
    for i in range(n):
        m.add_hint(offs[i], int(hint[i]) // u)
    s = cp_model.CpSolver()
    # Building the model took part of the budget.
    s.parameters.max_time_in_seconds = max(0.05, float(time_limit) - (time.perf_counter() - t0))
    s.parameters.num_workers = workers or 8
    status = s.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _result(leaf, leaf.hint, False, t0, "cpsat")
    values = np.array([s.value(o) for o in offs], dtype=np.int64) * u
    return _result(leaf, values, status == cp_model.OPTIMAL, t0, "cpsat")


def _quiet_highs(highspy):
    """A Highs instance; its constructor prints a banner on fd 1, which we drop."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    return h


def _solve_highs(leaf, time_limit):
    t0 = time.perf_counter()
    try:
        import highspy
    except ImportError as error:
        raise UnsupportedError(
            "plan: the HiGHS solver needs highspy (pip install highspy), or use solver='cpsat'"
        ) from error
    n, u = len(leaf.sizes), leaf.unit
    units = (leaf.rounded // u).astype(np.float64)
    raw = leaf.sizes.astype(np.float64) / u
    groups = _identical_groups(leaf)
    hint = _ordered_hint(leaf, groups) // u
    upper = float((hint * u + leaf.sizes).max()) / u
    # o_i + units_i - o_j never exceeds this when z leaves the row slack.
    big_m = upper - raw + units
    pairs = _pairs(leaf.cliques)
    fixed = {}
    for g in groups:
        for a, b in zip(g, g[1:], strict=False):
            fixed[(a, b)] = 1.0  # a below b
    # Columns: offsets o_0..o_{n-1} (continuous, made integral by gravity), peak, z_k.
    p_col = n
    num_col = n + 1 + len(pairs)
    col_lower = np.zeros(num_col)
    col_upper = np.empty(num_col)
    col_upper[:n] = upper - raw
    col_lower[p_col], col_upper[p_col] = leaf.bound / u, upper
    col_upper[n + 1 :] = 1.0
    for k, pair in enumerate(pairs):
        if pair in fixed:
            col_lower[n + 1 + k] = 1.0
    cost = np.zeros(num_col)
    cost[p_col] = 1.0
    inf = highspy.kHighsInf
    # Rows (built with numpy: a piece can have 10^5 pairs): peak >= o_i + size_i, then per
    # pair k = (i, j) with z_k = 1 meaning i below j:
    #   o_i - o_j + M_i z <= M_i - units_i      and      o_j - o_i - M_j z <= -units_j
    ii = np.array([p[0] for p in pairs], dtype=np.int64).reshape(-1)
    jj = np.array([p[1] for p in pairs], dtype=np.int64).reshape(-1)
    zz = n + 1 + np.arange(len(pairs), dtype=np.int64)
    peak_idx = np.stack([np.full(n, p_col), np.arange(n)], axis=1).reshape(-1)
    peak_val = np.tile([1.0, -1.0], n)
    pair_idx = np.concatenate(
        [np.stack([ii, jj, zz], axis=1), np.stack([jj, ii, zz], axis=1)], axis=1
    ).reshape(-1)
    pair_val = np.concatenate(
        [
            np.stack([np.ones(len(ii)), -np.ones(len(ii)), big_m[ii]], axis=1),
            np.stack([np.ones(len(ii)), -np.ones(len(ii)), -big_m[jj]], axis=1),
        ],
        axis=1,
    ).reshape(-1)
    index = np.concatenate([peak_idx, pair_idx]).astype(np.int32)
    value = np.concatenate([peak_val, pair_val])
    starts = np.concatenate([np.arange(n + 1) * 2, 2 * n + 3 * np.arange(1, 2 * len(ii) + 1)])
    row_lower = np.concatenate(
        [raw, np.stack([np.full(len(ii), -inf), np.full(len(ii), -inf)], axis=1).reshape(-1)]
    )
    row_upper = np.concatenate(
        [
            np.full(n, inf),
            np.stack([big_m[ii] - units[ii], -units[jj]], axis=1).reshape(-1),
        ]
    )
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = num_col, len(row_lower)
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, col_lower, col_upper
    lp.row_lower_, lp.row_upper_ = np.array(row_lower), np.array(row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = starts.astype(np.int32)
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = value
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = num_col, len(row_lower)
    lp.integrality_ = [highspy.HighsVarType.kContinuous] * (n + 1) + [
        highspy.HighsVarType.kInteger
    ] * len(pairs)
    h = _quiet_highs(highspy)
    h.setOptionValue("time_limit", max(0.05, float(time_limit) - (time.perf_counter() - t0)))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("threads", 1)
    h.passModel(lp)
    start = np.zeros(num_col)
    start[:n] = hint
    start[p_col] = upper
    start[n + 1 :] = (hint[ii] < hint[jj]).astype(np.float64)
    sol = highspy.HighsSolution()
    sol.col_value = list(start)
    sol.value_valid = True
    h.setSolution(sol)
    h.run()
    status = h.getModelStatus()
    values = np.array(h.getSolution().col_value[:n]) if h.getSolution().value_valid else None
    if values is None or len(values) != n:
        return _result(leaf, leaf.hint, False, t0, "highs")
    # Keep the solution's order; gravity makes the offsets integral (and never higher).
    offsets = gravity(leaf, values) * u
    return _result(leaf, offsets, status == highspy.HighsModelStatus.kOptimal, t0, "highs")
