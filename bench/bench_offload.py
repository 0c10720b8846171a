"""Offloaded decode: tierlm's streaming weight store against accelerate's disk offload and
per-layer streaming (AirLLM's method), at host budgets of 50% and 25% of the weight bytes.

Cold for every method: before each decode step (not timed) the method's weight files are
unmapped from the process's page tables (madvise PAGEOUT/DONTNEED on their /proc/self/maps
ranges: accelerate keeps its offload files and safetensors memory-mapped, where
posix_fadvise alone cannot evict them) and dropped from the page cache (posix_fadvise
DONTNEED); mincore then checks residency (column cached%). tierlm reads with O_DIRECT.
Agreement: tierlm's tokens at every budget must equal its first row's, and each baseline's
greedy tokens (transformers' bf16 forward) must follow tierlm's for --min-agreement of them,
else the bench prints AGREEMENT FAILED and exits 1 before its table.
Columns: decode s/token (median of the decode steps), bytes the process read from disk per
token (/proc/self/io), the disk bound (bytes per token / the disk's random-read bandwidth:
_common.DiskBound, the best of several fio jobs on the package's largest file: all of them
once, then the fastest few before and after each row since the disk is shared), and ratios.

    python bench/bench_offload.py [--layers 12] [--hidden 2048] [--new-tokens 4] [--dir DIR]

--compare-merge adds, at each budget, tierlm with the auto ring's bytes as sections of one
matrix each (ring_sections = the auto ring's bytes / the largest streamed matrix: what the
auto ring was before it merged sections), interleaved with the merged auto ring; the notes
give requests per pass. A SmolLM2-135M shape: --hidden 576 --layers 30 --intermediate 1536
--vocab 49152 --skip accelerate,layers --compare-merge.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import offload_baselines as ob  # noqa: E402
import tierlm  # noqa: E402
from _common import DISK_BOUND, DiskBound, require_same_tokens  # noqa: E402
from tierlm.package import Package  # noqa: E402


def tierlm_decode(pkg, budget, prompt_ids, new_tokens, files, **options):
    """Decode steps (seconds, bytes read, residency) and token ids of tierlm at a host budget;
    options go to tierlm.load (ring_sections, sparse, ...)."""
    model = tierlm.load(
        pkg, budget={"host": budget}, max_context=len(prompt_ids) + new_tokens, **options
    )
    ob.drop_page_cache(files)
    stamps, untimed, ids, first = [], 0.0, [], None
    cpu, untimed_cpu = [], 0.0  # the process's CPU time (all threads), like the stamps
    drops = []  # (start, end) of each untimed part, time.perf_counter (CLOCK_MONOTONIC)
    for token in model.stream(prompt_ids, max_new_tokens=new_tokens, stop_at_eos=False):
        ids.append(token.id)
        start, start_cpu = time.perf_counter(), time.process_time()
        first = first or model.stats()  # after the prompt: where the decode steps' counts start
        cached = ob.drop_page_cache(files)
        drops.append((start, time.perf_counter()))
        untimed += time.perf_counter() - start
        untimed_cpu += time.process_time() - start_cpu
        stamps.append((time.perf_counter(), untimed, ob.process_read_bytes(), cached))
        cpu.append(time.process_time() - untimed_cpu)
    steps = ob.decode_steps(stamps)
    s = model.stats()
    info = {
        "stats": s,
        # the counters of the decode steps alone (stats since the first token)
        "decode": {
            k: v - first[k]
            for k, v in s.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and first
        },
        "sparse_tokens": model.sparse_tokens() if s["sparse"] else None,
        "placement": model.placement(),
        "peak": s["host"]["peak"],
        "cpu_seconds": [b - a for a, b in zip(cpu, cpu[1:], strict=False)],  # per decode step
        # each decode step's timed span on the monotonic clock (tierlm.io.trace's)
        "windows": [(a[1], b[0]) for a, b in zip(drops, drops[1:], strict=False)],
        "wait": s["io_wait_seconds"],
        "busy": s["read_busy_seconds"],
        "backend": s["io_backend"],
        "chunk_waits": s.get("chunk_waits", 0),
        "direct": s["io_direct"],
    }
    del model
    return steps, ids, info


def unmerged_sections(pkg, placement):
    """Sections of one matrix each holding the auto ring's bytes (the ring before merging)."""
    tensors = Package.open(str(pkg)).tensors
    largest = max(-(-tensors[n]["nbytes"] // 4096) * 4096 for n in placement["streamed_tensors"])
    return max(1, placement["ring_bytes"] // largest)


def requests_note(info):
    s, p = info["stats"], info["placement"]
    passes = s["layer_waits"] // max(1, len(p["streamed_layers"]))
    return f", {s['stream_requests'] / max(1, passes):.0f} requests/pass"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/tierlm-bench-offload")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=4, help="decode steps = this - 1")
    parser.add_argument("--budgets", default="0.5,0.25")
    parser.add_argument("--skip", default="", help="comma list: accelerate,layers")
    parser.add_argument("--ring-sections", type=int, default=0, help="tierlm's (0 = auto)")
    parser.add_argument("--fio-seconds", type=int, default=1, help="per fio job")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row, interleaved")
    parser.add_argument("--verbose", action="store_true", help="print every decode step")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="floor: leading greedy tokens of each baseline equal to tierlm's, as a fraction",
    )
    parser.add_argument(
        "--compare-merge", action="store_true", help="also tierlm with one matrix per section"
    )
    args = parser.parse_args()

    root = Path(args.dir)
    hf = root / "hf"
    pkg = root / "pkg"
    weight_bytes = ob.make_random_llama(
        hf, args.hidden, args.layers, args.intermediate, 16, 4, args.vocab
    )
    if not (pkg / "manifest.json").exists():
        tierlm.export(str(hf), str(pkg), dtype="bf16", progress=False)
    hf_files = [str(p) for p in hf.glob("*.safetensors")]
    pkg_files = [str(p) for p in pkg.glob("*.bin")]
    biggest = max(pkg_files, key=os.path.getsize)
    prompt_ids = [(7 * i + 3) % args.vocab for i in range(args.prompt)]
    skip = set(filter(None, args.skip.split(",")))

    # The disk is shared: measure its bandwidth next to every row, not once.
    fio = DiskBound(biggest, seconds=args.fio_seconds)

    rows = []  # (method, budget fraction, steps, note, fio bandwidth before, after)
    tierlm_ids, baseline_ids = None, []
    # Rounds interleave the methods, so a slow spell of the shared disk hits all of them.
    for _round in range(args.rounds):
        if "layers" not in skip:
            bw0 = fio()
            steps, ids = ob.layer_streaming_decode(str(hf), prompt_ids, args.new_tokens, hf_files)
            baseline_ids.append(("per-layer streaming", ids))
            rows.append(("per-layer streaming", None, steps, "no overlap, budget-free", bw0, fio()))
        for frac in [float(f) for f in args.budgets.split(",")]:
            budget = int(weight_bytes * frac)
            bw0 = fio()
            steps, ids, info = tierlm_decode(
                str(pkg),
                budget,
                prompt_ids,
                args.new_tokens,
                pkg_files,
                ring_sections=args.ring_sections,
            )
            bw1 = fio()
            if tierlm_ids is None:
                tierlm_ids = ids
            # the same package at another budget: the same computation, the same tokens
            require_same_tokens(f"tierlm at {frac:.0%} vs its first row", ids, tierlm_ids, 1.0)
            p = info["placement"]
            note = (
                f"{p['sections']} sections x {p['section_bytes'] / 2**20:.0f} MiB "
                f"({p['chunks']} chunks/token), {len(p['resident_layers'])}/{args.layers} layers "
                f"resident, {info['backend']}{' O_DIRECT' if info['direct'] else ''}, peak "
                f"{info['peak'] / 2**20:.0f} MiB, overlap "
                f"{100 * (1 - info['wait'] / info['busy']) if info['busy'] else 100:.0f}%"
            )
            rows.append(("tierlm", frac, steps, note + requests_note(info), bw0, bw1))
            if args.compare_merge:
                sections = unmerged_sections(pkg, p)
                bw0 = fio()
                steps, ids, info = tierlm_decode(
                    str(pkg), budget, prompt_ids, args.new_tokens, pkg_files, ring_sections=sections
                )
                require_same_tokens(f"unmerged ring at {frac:.0%} vs tierlm", ids, tierlm_ids, 1.0)
                note = f"{sections} sections x 1 matrix{requests_note(info)}"
                rows.append(("tierlm unmerged ring", frac, steps, note, bw0, fio()))
            if "accelerate" not in skip:
                offload = root / f"accelerate-offload-{frac}"
                steps, offloaded, ids = ob.accelerate_decode(
                    str(hf), budget, offload, prompt_ids, args.new_tokens, hf_files
                )
                baseline_ids.append((f"accelerate at {frac:.0%}", ids))
                note = f"device_map=auto, max_memory, {len(offloaded)} offload files"
                rows.append(("accelerate disk offload", frac, steps, note, bw1, fio()))

    for name, ids in baseline_ids:  # transformers' bf16 forward against tierlm's
        n = len(tierlm_ids)
        require_same_tokens(f"{name} vs tierlm", ids[:n], tierlm_ids, args.min_agreement)
    merged = {}  # (method, fraction) -> [steps, note, fio bandwidths], rounds pooled
    for method, frac, steps, note, b0, b1 in rows:
        entry = merged.setdefault((method, frac), [[], note, []])
        entry[0].extend(steps)
        entry[2].extend(b for b in (b0, b1) if b)
    bws = [b for row in rows for b in row[4:] if b]
    print(
        f"\nmodel: random Llama bf16, hidden {args.hidden}, {args.layers} layers, ffn "
        f"{args.intermediate}, vocab {args.vocab}: {weight_bytes / 1e9:.2f} GB of weights; "
        f"prompt {args.prompt} tokens, {args.new_tokens - 1} decode steps x {args.rounds} "
        "rounds (median); before "
        "every step each method's weight files are unmapped (madvise) and dropped from the "
        "page cache (fadvise), residency checked with mincore (cached%: the most seen); "
        f"{DISK_BOUND}; {fio.describe()} before and after each row: "
        + (f"{min(bws) / 1e9:.2f}-{max(bws) / 1e9:.2f} GB/s" if bws else "unavailable")
    )
    header = (
        f"{'method':<24} {'budget':>6} {'s/token':>8} {'MB/token':>9} {'cached%':>7} "
        f"{'fio GB/s':>8} {'bound s':>8} {'bound/t':>8} {'x tierlm':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    tier_time = {}
    for (method, frac), (steps, _note, _bws) in merged.items():
        if method == "tierlm":
            tier_time[frac] = ob.median([s[0] for s in steps])
    for (method, frac), (steps, note, row_bws) in merged.items():
        fracs = [frac] if frac is not None else sorted(tier_time, reverse=True)
        for f in fracs:
            t = ob.median([s[0] for s in steps])
            b = ob.median([s[1] for s in steps])
            cached = max(s[2] for s in steps) if steps else float("nan")
            bw = sum(row_bws) / len(row_bws) if row_bws else None
            bound = b / bw if bw else float("nan")
            ratio = t / tier_time[f] if f in tier_time and t else float("nan")
            print(
                f"{method:<24} {int(f * 100):>5}% {t:>8.3f} {b / 1e6:>9.1f} {100 * cached:>6.1f}%"
                f" {bw / 1e9 if bw else float('nan'):>8.2f} {bound:>8.3f} "
                f"{bound / t if t else float('nan'):>8.2f} {ratio:>8.2f}  {note}"
            )
            if args.verbose:
                for i, (st, sb, sc) in enumerate(steps):
                    print(
                        f"    step {i}: {st:.3f} s, {sb / 1e6:.1f} MB read, weight files "
                        f"{100 * sc:.2f}% cached when it began"
                    )
    print(
        "bound s: MB/token / fio GB/s (mean of the fio runs before and after the row's "
        "runs); "
        "bound/t: disk bound / measured (1.0 = at the disk bound); x tierlm: method's s/token"
        " / tierlm's s/token at the same budget (per-layer streaming is budget-free: compared"
        " with tierlm at each budget)"
    )


if __name__ == "__main__":
    main()
