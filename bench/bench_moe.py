"""Mixture-of-experts decode with experts across the tiers, at host budgets of 50% and 25% of the
weights: tierlm's expert store (cache + layer-ahead prefetch, experts homed by a usage profile;
the same with experts homed outer layers first; without prefetch; streaming every layer's
experts, the dense offload) against llama.cpp reading the same GGUF through mmap and
accelerate's disk offload of the same weights as a Hugging Face checkpoint.

The model (bench/moe_gguf.py) is a random Mixtral-shaped GGUF (default 4.1 GB in Q8_0: hidden
2048, 11 layers of 8 experts x FFN 6656, top-2, vocab 32000) quantized from F16 by llama.cpp's
own quantizer. THE SKEW IS SYNTHETIC: its routers are biased so that expert use follows a
Zipf-like law (a constant embedding dimension read with weight -zipf ln(rank + 1), ranks
permuted per layer); the share of the two most used experts is printed, as measured.
The usage profile is tierlm.profile_experts over --profile-tokens ids other than the prompt's.
Cold for every method: before each decode step the method's files are dropped from the page
cache (offload_baselines.drop_page_cache; tierlm reads experts with O_DIRECT, llama.cpp and
accelerate through the page cache). The first row runs every expert in memory: its s/token is
the computation every tierlm row overlaps its reads with. Columns: decode s/token and tokens/s
(median), bytes read from disk per token (/proc/self/io), expert hit rate, the disk time of
those bytes at the disk's random-read bandwidth (_common.DiskBound: the best of several
fio jobs on the package's largest file: all of them once, then the fastest few before and
after each row), the bound (for tierlm the
larger of that and the in-memory s/token) and how close the row comes to it, pooled and in
each round, tierlm cache+prefetch's speed-up over the row, and where each tierlm row's decode
steps went (expert reads waited for, on demand, read ahead and used; the share of the steps
the disk had an expert read in flight, from tierlm.io.trace(); --trace prints each step's idle
gaps). accelerate runs --accelerate-tokens tokens
only (default 2: one decode step; at 4 GB its steps take minutes).

    python bench/bench_moe.py [--layers 11] [--hidden 2048] [--intermediate 6656] [--quant q8_0]
        [--skip accelerate] [--rounds 4] [--accelerate-tokens N] [--keep] [--trace]

Disk: the F16 file (2x the parameters) and the Q8_0 one coexist while quantizing (11.8 GB at
the default size), the package after that, and for accelerate a bf16 checkpoint (2x) and its
offload files; --dir is deleted at the end unless --keep.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _disk_trace  # noqa: E402
import _llamacpp  # noqa: E402
import moe_gguf  # noqa: E402
import offload_baselines as ob  # noqa: E402
import tierlm  # noqa: E402
import tierlm.io  # noqa: E402
from _common import (  # noqa: E402
    DISK_BOUND,
    DiskBound,
    pool_rounds,
    print_table,
    require_same_tokens,
)
from bench_offload import tierlm_decode  # noqa: E402

USAGE = "expert_usage.json"
IN_MEMORY = "tierlm in memory"


def build(args, root):
    """The quantized GGUF and its tierlm package (made once, kept while --dir exists)."""
    gguf = root / f"model-{args.quant}.gguf"
    pkg = root / "pkg"
    if not gguf.exists():
        f16 = root / "model-f16.gguf"
        if not f16.exists():
            moe_gguf.write_random_mixtral(
                f16, args.hidden, args.intermediate, args.layers, args.experts, args.heads,
                args.kv_heads, args.vocab, args.zipf,
            )  # fmt: skip
        _llamacpp.quantize(str(f16), str(gguf), args.quant, args.threads)
        f16.unlink()
    if not (pkg / "manifest.json").exists():
        tierlm.export(str(gguf), str(pkg), progress=False)
    return str(gguf), str(pkg)


def ids_of(args, n, seed):
    return [(seed + 7 * i) % (args.vocab - 300) + 300 for i in range(n)]


def top2_share(profile):
    """Of the profile's routed tokens, the share of each layer's two most used experts."""
    top = total = 0
    for layer in profile["layers"]:
        counts = sorted(layer["tokens_per_expert"], reverse=True)
        top, total = top + sum(counts[:2]), total + sum(counts)
    return top / total


def decode_note(info, steps):
    """Where a tierlm row's decode steps went, per step: expert reads waited for, on demand
    (misses), read ahead and how many of those were used, and the prediction's accuracy."""
    d, n = info["decode"], max(1, len(steps))
    ahead, used = d["moe_prefetch_reads"], d["moe_prefetch_used"]
    right = d["moe_predicted_right"] / max(1, d["moe_predicted_lookups"])
    return (
        f"wait {d['moe_io_wait_seconds'] / n:.3f} s, {d['moe_misses'] / n:.1f} on demand + "
        f"{ahead / n:.1f} ahead ({used / max(1, ahead):.0%} used) per step, predicted "
        f"{right:.0%}"
    )


def tierlm_rows(args, pkg, weights, prompt, fio):
    """(method, budget, steps, hit %, note, bandwidths, [this round's (steps, bandwidths)],
    traced steps) per tierlm configuration and budget, the first row every expert in memory
    (the compute the others overlap their reads with)."""
    files = [str(p) for p in Path(pkg).glob("*.bin")]
    usage, aside = Path(pkg) / USAGE, Path(pkg) / (USAGE + ".aside")
    methods = [
        ("tierlm cache+prefetch", {}, True),
        ("tierlm cache+prefetch, outer", {}, False),
        ("tierlm cache, no prefetch", {"expert_prefetch": False}, True),
        ("tierlm stream (dense offload)", {"expert_cache": "stream"}, True),
    ]
    runs = [(IN_MEMORY, None, {}, True)]
    runs += [(name, frac, o, p) for frac in args.fractions for name, o, p in methods]
    rows, reference = [], None
    for name, frac, options, profiled in runs:
        if not profiled:
            usage.rename(aside)
        try:
            bw0 = fio()
            # in memory: a budget over the weights homes every expert on the host tier
            budget = int(weights * (frac or 2))
            with tierlm.io.trace() as records:
                steps, ids, info = tierlm_decode(
                    pkg, budget, prompt, args.new_tokens, files, **options
                )
        finally:
            if aside.exists():
                aside.rename(usage)
        reference = reference or ids
        require_same_tokens(f"{name} at {frac or 1:.0%} vs the first row", ids, reference, 1.0)
        s, e = info["stats"], info["placement"]["experts"]
        homed = sum(map(len, e["host_experts"]))
        note = f"{homed} homed ({e['homing']}), {e['cache_slots']} slots, "
        traced = _disk_trace.step_disk(records, info["windows"])
        if frac:
            note += decode_note(info, steps) + ", " + _disk_trace.summary(traced)
        else:
            note += "no reads"
        note += f", peak {info['peak'] / 2**20:.0f} MiB"
        bws = [bw0, fio()]
        rows.append((name, frac, steps, s["moe_hit_rate_pct"], note, bws, [(steps, bws)], [traced]))
    return rows, reference


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/tierlm-bench-moe")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--intermediate", type=int, default=6656)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--quant", default="q8_0", choices=["q8_0", "q4_k_m"])
    parser.add_argument("--zipf", type=float, default=1.5, help="router bias per ln(rank+1)")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=9, help="decode steps = this - 1")
    parser.add_argument("--profile-tokens", type=int, default=64)
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="of the tierlm rows, interleaved (each round's bound/t is printed: the disk's speed "
        "drifts within a run by more than prefetch and no prefetch differ)",
    )
    parser.add_argument(
        "--accelerate-tokens",
        type=int,
        default=2,
        help="accelerate's tokens (decode steps = this - 1): its steps take minutes at 4 GB",
    )
    parser.add_argument("--budgets", default="0.5,0.25", help="shares of the weights")
    parser.add_argument("--skip", default="", help="comma list: accelerate, llama.cpp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fio-seconds", type=int, default=1, help="per fio job")
    parser.add_argument("--keep", action="store_true", help="keep --dir (the model files)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print each tierlm row's decode steps: disk busy time and its idle gaps",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="floor: leading greedy tokens of llama.cpp / accelerate equal to tierlm's",
    )
    args = parser.parse_args()
    args.fractions = [float(f) for f in args.budgets.split(",")]
    skip = set(args.skip.split(","))
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        run(args, root, skip)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def run(args, root, skip):
    gguf, pkg = build(args, root)
    weights = tierlm.Package.open(pkg).manifest
    weights = sum(t["nbytes"] for t in weights["tensors"].values())
    profile = tierlm.profile_experts(
        pkg, ids=ids_of(args, args.profile_tokens, 11), budget={"host": int(weights * 0.5)}
    )
    prompt = ids_of(args, args.prompt, 3)
    fio_file = max((str(p) for p in Path(pkg).glob("*.bin")), key=os.path.getsize)

    fio = DiskBound(fio_file, seconds=args.fio_seconds)

    rows, reference = [], None
    for _ in range(args.rounds):  # interleaved: a slow spell hits every tierlm row alike
        more, ids = tierlm_rows(args, pkg, weights, prompt, fio)
        reference = reference or ids
        require_same_tokens("tierlm rows vs the first round", ids, reference, 1.0)
        rows += more
    if "llama.cpp" not in skip:
        bw0 = fio()
        steps, ids = _llamacpp.mmap_decode(gguf, args.threads, prompt, args.new_tokens)
        require_same_tokens("llama.cpp mmap vs tierlm", ids, reference, args.min_agreement)
        bws = [bw0, fio()]
        note = "budget-free, repack off"
        rows.append(("llama.cpp mmap", None, steps, None, note, bws, [(steps, bws)], []))
    if "accelerate" not in skip:
        hf = moe_gguf.hf_from_gguf(gguf, root / "hf")
        hf_files = [str(p) for p in Path(hf).glob("*.safetensors")]
        hf_weights = sum(os.path.getsize(f) for f in hf_files)
        n = min(args.accelerate_tokens, args.new_tokens)
        for frac in args.fractions:
            bw0 = fio()
            steps, offloaded, ids = ob.accelerate_decode(
                hf, int(hf_weights * frac), root / f"accelerate-{frac}", prompt, n, hf_files
            )
            shutil.rmtree(root / f"accelerate-{frac}", ignore_errors=True)
            require_same_tokens(
                f"accelerate at {frac:.0%} vs tierlm", ids[:n], reference[:n], args.min_agreement
            )
            note = (
                f"bf16 checkpoint {hf_weights / 1e9:.2f} GB, {len(offloaded)} offload files, "
                f"{len(steps)} decode step(s) only (--accelerate-tokens)"
            )
            bws = [bw0, fio()]
            rows.append(
                ("accelerate disk offload", frac, steps, None, note, bws, [(steps, bws)], [])
            )
    report(args, rows, weights, top2_share(profile), fio)


def against_bound(name, steps, bandwidths, compute):
    """(median s/token, median bytes/token, disk s of those bytes, bound s) of a row's steps."""
    t = ob.median([s[0] for s in steps])
    b = ob.median([s[1] for s in steps])
    bw = [x for x in bandwidths if x]
    disk = b / (sum(bw) / len(bw)) if bw else float("nan")
    # tierlm's rows compute what the in-memory row computes: their time is at least both
    return t, b, disk, max(disk, compute) if name.startswith("tierlm") else disk


def report(args, rows, weights, top2, fio):
    rows = pool_rounds(rows, (2, 5, 6, 7))  # steps, bandwidths, per round, traced steps
    bws = [b for row in rows for b in row[5] if b]
    print(
        f"\nmodel: random Mixtral-shaped {args.quant} GGUF (llama.cpp's quantizer), hidden "
        f"{args.hidden}, {args.layers} layers, {args.experts} experts x FFN {args.intermediate}, "
        f"top-2, vocab {args.vocab}: {weights / 1e9:.2f} GB of weights; SYNTHETIC Zipf-like "
        f"routing (zipf {args.zipf}): each layer's two most used experts take {100 * top2:.0f}% "
        f"of the profile's tokens (uniform: {200 / args.experts:.0f}%); prompt {args.prompt}, "
        f"{args.new_tokens - 1} decode steps x {args.rounds} interleaved rounds of the tierlm "
        "rows (median; accelerate: "
        f"{min(args.accelerate_tokens, args.new_tokens) - 1}), page cache dropped before every "
        f"step; {args.threads} threads; disk: {DISK_BOUND}; {fio.describe()} before and after "
        "each row: " + (f"{min(bws) / 1e9:.2f}-{max(bws) / 1e9:.2f} GB/s" if bws else "unavailable")
    )
    median = {(r[0], r[1]): ob.median([s[0] for s in r[2]]) for r in rows}
    compute = median[(IN_MEMORY, None)]
    base = {f: median[(rows[1][0], f)] for f in args.fractions}
    table = []
    for name, frac, steps, hit, note, row_bws, rounds, _traced in rows:
        t, b, disk, bound = against_bound(name, steps, row_bws, compute)
        per_round = "/".join(
            f"{r[3] / r[0]:.2f}" for r in (against_bound(name, *x, compute) for x in rounds)
        )
        speedups = [f"{t / base[f]:.2f}" for f in ([frac] if frac else args.fractions)]
        table.append(
            [
                name,
                f"{frac:.0%}" if frac else "-",
                f"{t:.3f}",
                f"{1 / t:.2f}",
                f"{b / 1e6:.0f}",
                f"{hit:.0f}%" if hit is not None else "-",
                f"{disk:.3f}",
                f"{bound:.3f}",
                f"{bound / t:.2f}",
                per_round,
                "/".join(speedups) if name != IN_MEMORY else "-",
                note,
            ]
        )
    print_table(
        [
            "method",
            "budget",
            "s/token",
            "tok/s",
            "MB/token",
            "hit",
            "disk s",
            "bound s",
            "bound/t",
            "per round",
            "x tierlm",
            "notes",
        ],
        table,
    )
    print(
        "budget: host budget as a share of the weights; MB/token: read from disk per decode "
        "step; hit: expert lookups since load (prompt and decode) served without a read on "
        "demand; disk s: MB/token / the disk's GB/s, the time the bytes actually read take at "
        "its bandwidth; bound s: for tierlm's rows the larger of that and the in-memory row's "
        "s/token (the same computation, which the reads overlap at best), for the baselines "
        "disk s; bound/t: 1.0 at that bound (target >= 0.9); per round: each round's bound/t "
        "(its steps' median, its disk measurements); x tierlm: s/token over tierlm "
        "cache+prefetch's at the same budget (llama.cpp, budget-free: at each budget; "
        "accelerate's budget is the same share of its bf16 checkpoint; targets >= 3 llama.cpp "
        "mmap and >= 5 accelerate at 25%); notes: wait = expert reads waited for, on demand = "
        "misses read when routed, ahead = experts read a layer ahead, per decode step; disk "
        "busy: the share of the decode steps with an expert read in flight (tierlm.io.trace)."
    )
    for name, frac, *_, traced in rows if args.trace else []:
        for i, steps in enumerate(traced):
            if steps and frac:  # the in-memory row reads nothing
                print(f"\n{name} at {frac:.0%}, round {i + 1}:")
                print("\n".join(_disk_trace.step_lines(steps)))


if __name__ == "__main__":
    main()
