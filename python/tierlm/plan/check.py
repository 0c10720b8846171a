"""Independent plan checker in pure Python: a sweep over time, sharing no code with the
native checker, so a planner bug cannot hide behind a checker bug."""

import bisect
import heapq

from tierlm.errors import InvalidArgumentError


def _describe(i, size, start, end, offset):
    return f"buffer {i} ({size} bytes at offset {offset}, ops {start}..{end})"


def check(sizes, starts=None, ends=None, offsets=None, align=64):
    """Raises InvalidArgumentError unless the plan is valid; returns its peak.

    Valid: one offset per buffer, each offset a multiple of `align`, and no two buffers
    live at a common op (lifetimes [start, end] include both ends) share a byte. A zero-size
    buffer takes no space. `check(plan)` checks a Plan against the buffers it was made for.
    """
    if starts is None and hasattr(sizes, "offsets"):
        plan = sizes
        sizes, starts, ends, offsets, align = (
            plan.sizes,
            plan.starts,
            plan.ends,
            plan.offsets,
            plan.align,
        )
    sizes = [int(s) for s in sizes]
    starts = [int(s) for s in starts]
    ends = [int(e) for e in ends]
    offsets = [int(o) for o in offsets]
    n = len(sizes)
    if not (len(starts) == len(ends) == len(offsets) == n):
        raise InvalidArgumentError(
            f"plan: {n} sizes, {len(starts)} starts, {len(ends)} ends and {len(offsets)} "
            "offsets; give one of each per buffer"
        )
    if align < 1:
        raise InvalidArgumentError(f"plan: alignment must be at least 1 byte, got {align}")
    peak = 0
    for i in range(n):
        if sizes[i] < 0 or offsets[i] < 0:
            raise InvalidArgumentError(
                f"plan: {_describe(i, sizes[i], starts[i], ends[i], offsets[i])} has a negative "
                "size or offset"
            )
        if ends[i] < starts[i]:
            raise InvalidArgumentError(
                f"plan: buffer {i} ends (op {ends[i]}) before it starts (op {starts[i]})"
            )
        if offsets[i] % align:
            raise InvalidArgumentError(
                f"plan: {_describe(i, sizes[i], starts[i], ends[i], offsets[i])} is not aligned "
                f"to {align} bytes"
            )
        if sizes[i]:
            peak = max(peak, offsets[i] + sizes[i])

    # Live buffers sorted by offset; they are pairwise disjoint (else we raised), so a new
    # buffer can only collide with the live buffers just below and just above it.
    live_offsets, live_ids = [], []
    expiry = []  # (end, id)
    for i in sorted(range(n), key=lambda k: starts[k]):
        if not sizes[i]:
            continue
        while expiry and expiry[0][0] < starts[i]:
            _, done = heapq.heappop(expiry)
            k = bisect.bisect_left(live_offsets, offsets[done])
            while live_ids[k] != done:
                k += 1
            del live_offsets[k], live_ids[k]
        k = bisect.bisect_left(live_offsets, offsets[i])
        neighbours = []
        if k > 0:
            neighbours.append(live_ids[k - 1])
        if k < len(live_ids):
            neighbours.append(live_ids[k])
        for j in neighbours:
            if offsets[j] < offsets[i] + sizes[i] and offsets[i] < offsets[j] + sizes[j]:
                a, b = min(i, j), max(i, j)
                raise InvalidArgumentError(
                    f"plan: {_describe(a, sizes[a], starts[a], ends[a], offsets[a])} and "
                    f"{_describe(b, sizes[b], starts[b], ends[b], offsets[b])} overlap in memory "
                    f"while both live (ops {max(starts[a], starts[b])}..{min(ends[a], ends[b])})"
                )
        live_offsets.insert(k, offsets[i])
        live_ids.insert(k, i)
        heapq.heappush(expiry, (ends[i], i))
    return peak
