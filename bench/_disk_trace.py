"""Where the disk idles during decode steps, from tierlm.io.trace()'s requests: per step, the
time at least one read was in flight (busy), the gaps with none, and the bytes per busy second.
A read counts from its submission to its landing (io_uring: when its completion was taken)."""

MIN_GAP = 0.001  # shorter idle spells are not listed (they are still left out of busy)


def _merged(spans):
    """Overlapping (start, end) spans merged, in order."""
    out = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def step_disk(records, windows):
    """Per step window (start, end): {seconds, busy, reads, bytes, gaps: [(offset into the step,
    length)]}; a read still in flight when the recording stopped counts to its window's end."""
    steps = []
    for a, b in windows:
        spans, reads, nbytes = [], 0, 0
        for r in records:
            end = r["landed"] if r["landed"] >= 0 else b
            if end <= a or r["submitted"] >= b:
                continue
            spans.append((max(a, r["submitted"]), min(b, end)))
            if r["submitted"] >= a:
                reads, nbytes = reads + 1, nbytes + r["len"]
        busy, gaps, at = 0.0, [], a
        for s, e in _merged(spans) + [[b, b]]:
            if s - at >= MIN_GAP:
                gaps.append((at - a, s - at))
            busy, at = busy + (e - s), max(at, e)
        step = {"seconds": b - a, "busy": busy, "reads": reads, "bytes": nbytes, "gaps": gaps}
        steps.append(step)
    return steps


def summary(steps):
    """One phrase for a row: the disk's busy share of its decode steps and bytes per busy s."""
    t = sum(s["seconds"] for s in steps)
    busy = sum(s["busy"] for s in steps)
    nbytes = sum(s["bytes"] for s in steps)
    if not steps or t <= 0:
        return "no trace"
    idle = (t - busy) / len(steps)
    rate = f"{nbytes / busy / 1e9:.2f} GB/s while busy" if busy > 0 else "never busy"
    return f"disk busy {busy / t:.0%} of the steps (idle {1e3 * idle:.0f} ms/step), {rate}"


def step_lines(steps):
    """One line per step: time, busy, reads, and the idle gaps (ms, at ms into the step)."""
    lines = []
    for i, s in enumerate(steps):
        gaps = " ".join(f"{1e3 * g:.0f}@{1e3 * at:.0f}" for at, g in s["gaps"]) or "-"
        lines.append(
            f"step {i}: {s['seconds']:.3f} s, busy {s['busy']:.3f} s "
            f"({s['busy'] / max(s['seconds'], 1e-9):.0%}), {s['reads']} reads "
            f"{s['bytes'] / 1e6:.0f} MB, idle ms@ms: {gaps}"
        )
    return lines
