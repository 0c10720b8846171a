"""MEMO's repeated-layer reduction for pieces that cannot be split in time (a model's layers
chained by their residual buffers): find the period of the repetition, give every copy of a
layer's buffer the same offset, and solve the much smaller "one layer" problem in which two
buffers conflict when any of their copies are live at a common op. Its plan is valid for the
whole piece; it is optimal for the piece when it meets the piece's bound, and otherwise a
warm start for the full MIP."""

from collections import Counter, defaultdict

import numpy as np

from tierlm.plan import mip


def find_period(sizes, starts, ends, min_share=0.5):
    """The shift in ops that maps most buffers onto an identical buffer, or None."""
    groups = defaultdict(list)
    for s, a, b in zip(sizes.tolist(), starts.tolist(), ends.tolist(), strict=True):
        groups[(s, b - a)].append(a)
    shifts = Counter()
    for firsts in groups.values():
        firsts.sort()
        for a, b in zip(firsts, firsts[1:], strict=False):
            if b > a:
                shifts[b - a] += 1
    if not shifts:
        return None
    period, count = shifts.most_common(1)[0]
    return period if count >= min_share * len(sizes) else None


def classes(sizes, starts, ends, period):
    """Chains each buffer to its next copy (a period later, or a multiple for buffers that
    outlive a period) that it does not overlap; returns one class id per buffer."""
    index = defaultdict(list)
    order = np.lexsort((ends, starts))
    for i in order[::-1]:  # popped in increasing start order
        index[(int(sizes[i]), int(starts[i]), int(ends[i]))].append(int(i))
    successor = {}
    has_pred = set()
    for i in order.tolist():
        # A buffer living longer than a period shares its offset with the first copy that
        # starts after it ends (its copies alternate between that many offsets).
        step = period * ((int(ends[i]) - int(starts[i])) // period + 1)
        key = (int(sizes[i]), int(starts[i]) + step, int(ends[i]) + step)
        while index.get(key) and index[key][-1] in has_pred:
            index[key].pop()
        if index.get(key):
            j = index[key].pop()
            successor[i] = j
            has_pred.add(j)
    label = np.full(len(sizes), -1, dtype=np.int64)
    count = 0
    for i in order.tolist():
        if i in has_pred:
            continue
        j = i
        while j is not None and label[j] < 0:
            label[j] = count
            j = successor.get(j)
        count += 1
    return label, count


def quotient_leaf(leaf, label, count):
    """The one-layer problem: a class per chain, cliques mapped onto classes."""
    first = np.full(count, -1, dtype=np.int64)
    for i, c in enumerate(label.tolist()):
        if first[c] < 0:
            first[c] = i
    cliques = sorted({tuple(sorted({int(label[i]) for i in c})) for c in leaf.cliques})
    sizes, rounded = leaf.sizes[first], leaf.rounded[first]
    hint = _greedy_offsets(rounded, cliques)
    fake = np.arange(count)  # classes are not intervals; cliques are given
    return mip.Leaf(sizes, rounded, fake, fake, hint, cliques=[list(c) for c in cliques])


def _greedy_offsets(rounded, cliques):
    """Decreasing size, each class at the lowest offset clear of its placed neighbours."""
    neighbours = defaultdict(set)
    for c in cliques:
        for a in c:
            neighbours[a].update(c)
    offsets = np.zeros(len(rounded), dtype=np.int64)
    placed = set()
    for i in sorted(range(len(rounded)), key=lambda k: -rounded[k]):
        spans = sorted(
            (offsets[j], offsets[j] + rounded[j]) for j in neighbours[i] if j in placed and j != i
        )
        at = 0
        for lo, hi in spans:
            if at + rounded[i] <= lo:
                break
            at = max(at, hi)
        offsets[i] = at
        placed.add(i)
    return offsets


def solve_repeated(leaf, time_limit, solver, workers=None, min_reduction=2.0):
    """Plan for the leaf by solving one layer; None when the leaf does not repeat enough."""
    period = find_period(leaf.sizes, leaf.starts, leaf.ends)
    if period is None:
        return None
    label, count = classes(leaf.sizes, leaf.starts, leaf.ends, period)
    if count * min_reduction > len(leaf.sizes):
        return None
    small = quotient_leaf(leaf, label, count)
    result = mip.solve_leaf(small, time_limit, solver=solver, workers=workers)
    offsets = result.offsets[label]
    peak = int((offsets + leaf.sizes).max())
    return mip.LeafResult(offsets, peak, peak <= leaf.bound, result.seconds, result.solver), count
