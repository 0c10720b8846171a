"""tierlm.plan.solve: the native greedy, then an exact MIP on what is left after exact
reductions. Reductions: buffers live for a whole piece go to its bottom (any plan can be
rearranged so, at no cost); pieces of time no buffer crosses are solved separately; pieces
identical up to a shift in time (the layers of a model) are solved once and reused (MEMO);
a piece made of chained repeated layers is first planned as one layer whose copies share
offsets (repeat.py), which is optimal when it meets the bound and a warm start otherwise."""

import time
from dataclasses import dataclass, field

import numpy as np

from tierlm import _core
from tierlm.errors import InvalidArgumentError
from tierlm.plan import mip, repeat
from tierlm.plan.check import check as _check

METHODS = ("greedy", "mip", "best")


@dataclass
class Plan:
    """Offsets for buffers, the arena size they need and how close that is to the bound."""

    offsets: np.ndarray  # int64 bytes, one per buffer
    peak: int  # max(offset + size): the arena size
    lower_bound: int  # max over ops of the bytes live at once
    optimal: bool  # the peak is proven minimal
    seconds: float  # time to solve
    method: str  # "greedy" or "mip"
    solver: str  # what produced the offsets: greedy-<order>, cpsat, highs
    align: int
    sizes: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    names: list | None = None
    seq: int | None = None
    stats: dict = field(default_factory=dict)

    @property
    def ratio(self):
        return self.peak / self.lower_bound if self.lower_bound else 1.0

    def check(self):
        """Verifies the plan with the independent checker; returns the peak."""
        return _check(self.sizes, self.starts, self.ends, self.offsets, self.align)

    def __repr__(self):
        return (
            f"Plan({len(self.offsets)} buffers, peak={self.peak}, lower_bound={self.lower_bound}, "
            f"ratio={self.ratio:.4f}, optimal={self.optimal}, method={self.method}, "
            f"solver={self.solver}, seconds={self.seconds:.3f})"
        )


def _arrays(sizes, starts, ends):
    sizes = np.ascontiguousarray(np.asarray(sizes, dtype=np.int64).reshape(-1))
    starts = np.ascontiguousarray(np.asarray(starts, dtype=np.int64).reshape(-1))
    ends = np.ascontiguousarray(np.asarray(ends, dtype=np.int64).reshape(-1))
    if not (len(sizes) == len(starts) == len(ends)):
        raise InvalidArgumentError(
            f"plan: {len(sizes)} sizes, {len(starts)} starts and {len(ends)} ends; give one of "
            "each per buffer"
        )
    if len(sizes) and sizes.min() < 0:
        raise InvalidArgumentError(f"plan: buffer {int(np.argmin(sizes))} has a negative size")
    bad = np.nonzero(ends < starts)[0]
    if len(bad):
        i = int(bad[0])
        raise InvalidArgumentError(
            f"plan: buffer {i} ends (op {ends[i]}) before it starts (op {starts[i]}); give each "
            "buffer start <= end"
        )
    return sizes, starts, ends


def greedy(sizes, starts, ends, align=64, order="best"):
    """The native best-fit greedy: (offsets, peak, lower_bound, order). order: "size",
    "time", "area" (size x lifetime), "length" (lifetime) or "best" (all, smallest peak)."""
    sizes, starts, ends = _arrays(sizes, starts, ends)
    offsets, peak, bound, used = _core.plan_greedy(
        sizes.astype(np.uint64), starts, ends, int(align), order
    )
    return offsets.astype(np.int64), int(peak), int(bound), used


def lower_bound(sizes, starts, ends):
    """max over ops of the bytes live at once; no plan's peak is below it."""
    sizes, starts, ends = _arrays(sizes, starts, ends)
    return int(_core.plan_lower_bound(sizes.astype(np.uint64), starts, ends))


def _components(ids, starts, ends):
    """Splits buffers into pieces of time that no buffer crosses."""
    order = ids[np.argsort(starts[ids], kind="stable")]
    cuts, reach = [], None
    for k, i in enumerate(order):
        if reach is not None and starts[i] > reach:
            cuts.append(k)
        reach = ends[i] if reach is None else max(reach, ends[i])
    return np.split(order, cuts)


def _decompose(ids, sizes, rounded, starts, ends):
    """Exact reductions: returns (fixed, leaves), fixed = [(id, offset)], leaves = [(ids, base)]."""
    fixed, leaves = [], []
    stack = [(ids, 0)]
    while stack:
        ids, base = stack.pop()
        lo, hi = starts[ids].min(), ends[ids].max()
        # Stacking at the bottom is free only when no alignment padding would move up.
        whole = (starts[ids] == lo) & (ends[ids] == hi) & (sizes[ids] == rounded[ids])
        if whole.any():
            for i in sorted(ids[whole], key=lambda k: -sizes[k]):
                fixed.append((int(i), base))
                base += int(rounded[i])
            ids = ids[~whole]
            if len(ids) == 0:
                continue
        parts = _components(ids, starts, ends)
        if len(parts) == 1 and not whole.any():
            leaves.append((ids, base))
        else:
            stack.extend((p, base) for p in parts)
    return fixed, leaves


# Pieces at least this large try the repeated-layer reduction before the full MIP (below
# it the full MIP does at least as well within the same time on our instances).
REPEAT_MIN_BUFFERS = 2000


def _solve_piece(leaf, budget, solver, workers, stats):
    """The full MIP on one piece, first through one repeated layer when it has them."""
    t0 = time.perf_counter()
    if len(leaf.sizes) >= REPEAT_MIN_BUFFERS:
        found = repeat.solve_repeated(leaf, budget / 2, solver, workers)
        if found is not None:
            result, layer = found
            stats["layer_buffers"] = stats.get("layer_buffers", 0) + layer
            if result.optimal:
                return result
            hint_peak = int((leaf.hint + leaf.sizes).max())
            if result.peak < hint_peak:
                leaf.hint = result.offsets
    left = max(0.05, budget - (time.perf_counter() - t0))
    return mip.solve_leaf(leaf, left, solver=solver, workers=workers)


def solve(
    sizes,
    starts,
    ends,
    align=64,
    method="best",
    time_limit=10.0,
    solver=mip.DEFAULT_SOLVER,
    workers=None,
):
    """Places buffers (byte sizes, lifetimes [starts[i], ends[i]] in ops, both included) at
    offsets that are multiples of `align`, so that buffers live at a common op never overlap.

    method: "greedy" (native best fit, milliseconds), "mip" (exact: greedy, exact reductions,
    then CP-SAT or HiGHS within `time_limit` seconds; the best plan found and whether it is
    proven optimal), "best" (greedy, and the MIP only where greedy is not provably optimal;
    `method` on the result says which plan won). solver: "cpsat" or "highs" (default: cpsat
    where OR-Tools is installed, else highs).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InvalidArgumentError(f"plan: unknown method '{method}'; use one of {METHODS}")
    if solver not in mip.SOLVERS:
        raise InvalidArgumentError(f"plan: unknown solver '{solver}'; use one of {mip.SOLVERS}")
    align = int(align)
    if align < 1:
        raise InvalidArgumentError(f"plan: alignment must be at least 1 byte, got {align}")
    sizes, starts, ends = _arrays(sizes, starts, ends)
    g_offsets, g_peak, bound, g_order = greedy(sizes, starts, ends, align)
    base = dict(align=align, sizes=sizes, starts=starts, ends=ends)
    plan = Plan(
        g_offsets, g_peak, bound, g_peak <= bound, 0.0, "greedy", f"greedy-{g_order}", **base
    )
    if method == "greedy" or plan.optimal:
        if method == "mip":
            plan.method = "mip"
        plan.seconds = time.perf_counter() - t0
        return plan

    # Leave a little of the limit for assembling and checking the plan afterwards.
    deadline = t0 + float(time_limit) - min(0.25, 0.05 * float(time_limit))
    rounded = (sizes + align - 1) // align * align
    ids = np.nonzero(sizes > 0)[0]
    fixed, leaves = _decompose(ids, sizes, rounded, starts, ends)
    offsets = np.zeros(len(sizes), dtype=np.int64)
    for i, off in fixed:
        offsets[i] = off
    # Greedy per leaf; the leaves that can still set the peak above the bound get the MIP.
    entries, work = [], []
    cache = {}
    stats = dict(buffers=len(sizes), fixed=len(fixed), leaves=len(leaves), solved=0, reused=0)
    for leaf_ids, leaf_base in leaves:
        lo = int(starts[leaf_ids].min())
        key = tuple(
            sorted(zip(starts[leaf_ids] - lo, ends[leaf_ids] - lo, sizes[leaf_ids], strict=True))
        )
        order = np.lexsort((sizes[leaf_ids], ends[leaf_ids], starts[leaf_ids]))
        leaf_ids = leaf_ids[order]  # canonical order, so equal keys map buffer to buffer
        lo_offsets, lo_peak, _, _ = greedy(sizes[leaf_ids], starts[leaf_ids], ends[leaf_ids], align)
        leaf = mip.Leaf(
            sizes[leaf_ids], rounded[leaf_ids], starts[leaf_ids], ends[leaf_ids], lo_offsets
        )
        offsets[leaf_ids] = leaf_base + lo_offsets
        entry = dict(ids=leaf_ids, base=leaf_base, leaf=leaf, key=key, peak=lo_peak)
        entry["optimal"] = lo_peak <= leaf.bound
        entries.append(entry)
        if not entry["optimal"] and leaf_base + lo_peak > bound:
            work.append(entry)
    work.sort(key=lambda e: -(e["base"] + e["peak"]))
    solvers_used = set()
    for k, entry in enumerate(work):
        if entry["key"] in cache:
            result = cache[entry["key"]]
            stats["reused"] += 1
        else:
            budget = max(0.05, (deadline - time.perf_counter()) / (len(work) - k))
            result = _solve_piece(entry["leaf"], budget, solver, workers, stats)
            cache[entry["key"]] = result
            stats["solved"] += 1
            solvers_used.add(result.solver)
        offsets[entry["ids"]] = entry["base"] + result.offsets
        entry["peak"], entry["optimal"] = result.peak, result.optimal
    peak = int((offsets + sizes)[sizes > 0].max()) if (sizes > 0).any() else 0
    # Proven when the bound is met, or every piece that reaches the peak is proven minimal
    # (the reductions are exact, so a piece's optimum bounds the whole plan's).
    tops = [(e["base"] + e["peak"], e["optimal"]) for e in entries]
    optimal = (
        peak <= bound
        or all(ok for top, ok in tops if top == peak)
        and any(top == peak for top, _ in tops)
    )
    stats["mip_buffers"] = int(sum(len(e["ids"]) for e in work))
    label = "mip" if method == "mip" else "greedy"
    if peak < plan.peak or (peak == plan.peak and method == "mip"):
        solver_name = "+".join(sorted(solvers_used)) or plan.solver
        plan = Plan(offsets, peak, bound, optimal, 0.0, "mip", solver_name, **base)
    else:
        plan.method = label
        plan.optimal = plan.optimal or (optimal and plan.peak <= peak)
    plan.stats = stats
    plan.seconds = time.perf_counter() - t0
    return plan
