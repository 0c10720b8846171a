"""Offloaded decode: tierlm's streaming weight store against accelerate's disk offload and
per-layer streaming (AirLLM's method), at host budgets of 50% and 25% of the weight bytes.

The page cache of every weight file is dropped before each decode step for every method
(posix_fadvise DONTNEED, not timed): tierlm reads with O_DIRECT, the baselines through mmap.
Columns: decode s/token (median of the decode steps), bytes the process read from disk per
token (/proc/self/io), the disk bound (bytes per token / fio's random-read bandwidth at
8 MiB blocks, tierlm's request size; io_uring, O_DIRECT, QD 32), and ratios.

    python bench/bench_offload.py [--layers 12] [--hidden 2048] [--new-tokens 4] [--dir DIR]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import offload_baselines as ob  # noqa: E402
import tierlm  # noqa: E402


def tierlm_decode(pkg, budget, prompt_ids, new_tokens, files):
    """Decode steps (seconds, bytes read) and token ids of tierlm at a host budget."""
    model = tierlm.load(pkg, budget={"host": budget}, max_context=len(prompt_ids) + new_tokens)
    ob.drop_page_cache(files)
    stamps, untimed, ids = [], 0.0, []
    for token in model.stream(prompt_ids, max_new_tokens=new_tokens, stop_at_eos=False):
        ids.append(token.id)
        start = time.perf_counter()
        ob.drop_page_cache(files)
        untimed += time.perf_counter() - start
        stamps.append((time.perf_counter(), untimed, ob.process_read_bytes()))
    steps = []
    for (t0, u0, b0), (t1, u1, b1) in zip(stamps, stamps[1:], strict=False):
        steps.append(((t1 - t0) - (u1 - u0), b1 - b0))
    s = model.stats()
    info = {
        "placement": model.placement(),
        "peak": s["host"]["peak"],
        "wait": s["io_wait_seconds"],
        "busy": s["read_busy_seconds"],
        "backend": s["io_backend"],
        "direct": s["io_direct"],
    }
    del model
    return steps, ids, info


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
    bandwidth = ob.fio_read_bandwidth(biggest, block="8M", depth=32, seconds=3)
    prompt_ids = [(7 * i + 3) % args.vocab for i in range(args.prompt)]
    skip = set(filter(None, args.skip.split(",")))

    rows = []
    tierlm_ids = None
    per_layer = None
    if "layers" not in skip:
        steps, _ids = ob.layer_streaming_decode(str(hf), prompt_ids, args.new_tokens, hf_files)
        per_layer = steps
    for frac in [float(f) for f in args.budgets.split(",")]:
        budget = int(weight_bytes * frac)
        steps, ids, info = tierlm_decode(str(pkg), budget, prompt_ids, args.new_tokens, pkg_files)
        if tierlm_ids is None:
            tierlm_ids = ids
        same = (
            "ids == first tierlm row" if ids == tierlm_ids else "ids DIFFER from first tierlm row"
        )
        p = info["placement"]
        note = (
            f"{p['sections']} sections x {p['section_bytes'] / 2**20:.0f} MiB, "
            f"{len(p['resident_layers'])}/{args.layers} layers resident, {info['backend']}"
            f"{' O_DIRECT' if info['direct'] else ''}, peak {info['peak'] / 2**20:.0f} MiB, "
            f"overlap {100 * (1 - info['wait'] / info['busy']) if info['busy'] else 100:.0f}%"
            f", {same}"
        )
        rows.append(("tierlm", frac, steps, note))
        if "accelerate" not in skip:
            offload = root / f"accelerate-offload-{frac}"
            steps = ob.accelerate_decode(
                str(hf), budget, offload, prompt_ids, args.new_tokens, hf_files
            )
            rows.append(("accelerate disk offload", frac, steps, "device_map=auto, max_memory"))
        if per_layer is not None:
            rows.append(("per-layer streaming", frac, per_layer, "no overlap, budget-free"))

    print(
        f"\nmodel: random Llama bf16, hidden {args.hidden}, {args.layers} layers, ffn "
        f"{args.intermediate}, vocab {args.vocab}: {weight_bytes / 1e9:.2f} GB of weights; "
        f"prompt {args.prompt} tokens, {args.new_tokens - 1} decode steps, page cache dropped "
        f"before each step; fio 8 MiB randread QD32: "
        + (f"{bandwidth / 1e9:.2f} GB/s" if bandwidth else "unavailable")
    )
    header = (
        f"{'method':<24} {'budget':>6} {'s/token':>8} {'MB/token':>9} {'bound s':>8} "
        f"{'bound/t':>8} {'tierlm x':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    tier_time = {}
    for method, frac, steps, note in rows:
        t = ob.median([s for s, _ in steps])
        b = ob.median([b for _, b in steps])
        if method == "tierlm":
            tier_time[frac] = t
        bound = b / bandwidth if bandwidth else float("nan")
        speed = tier_time.get(frac, float("nan")) / t if t else float("nan")
        print(
            f"{method:<24} {int(frac * 100):>5}% {t:>8.3f} {b / 1e6:>9.1f} {bound:>8.3f} "
            f"{bound / t if t else float('nan'):>8.2f} {1 / speed if speed else float('nan'):>8.2f}"
            f"  {note}"
        )
    print(
        "bound/t: disk bound / measured (1.0 = at the disk bound); tierlm x: method's s/token"
        " / tierlm's s/token at the same budget"
    )


if __name__ == "__main__":
    main()
