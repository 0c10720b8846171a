"""Sparse-neuron flash loading (LLM in a flash) at scale: decode speed and bytes read per
token of dense offload vs sparse loading without window, with window, and with window +
row-column bundling (the paper's ablation), on an OPT-shaped model of >= 4 GB whose
activation sparsity is synthetic (90%, 95%, 97% of the FFN neurons off; see
sparse_synthetic.py), host budget 50% of the weight bytes, page cache dropped before every
decode step, and the last row with read-ahead (layer i+1's predicted rows read while layer
i computes; its tokens must equal the row before it, which reads the same rows later). Then,
unless --skip-quality, the quality table of the trained demo model (bench_sparse_quality.py:
real sparsity, predictor recall/precision, perplexity).

Before the table each sparse run's greedy tokens must follow dense's for --min-agreement of
them (the predictor is lossy), else AGREEMENT FAILED and exit 1.
Columns: decode s/token (median of the decode steps), MB the process read from disk per
token, FFN MB read per token (the sparse rows; dense offload: the FFN matrices streamed),
the disk bound (streamed bytes per token / the disk's random-read bandwidth, plus sparse row
bytes per token / the bandwidth at the small block nearest the mean sparse request size; both
_common.disk_bandwidth, the best of fio jobs over queue depths), and speed relative to dense.
Sparse rows' notes split a token's time (medians): FFN wait (submitting and waiting for row
reads), FFN compute (predictor, cache copies, kernel), the rest (attention, head), and the time
not waiting; max(bound, not waiting) / t is how close the token is to what neither the disk nor
the CPU work can go below, where the bound alone ignores compute. Process CPU: CPU seconds of
all the process's threads per decode step (less than "not waiting" when it waits for a core).

    python bench/bench_sparse.py [--layers 40] [--sparsities 0.9,0.95,0.97] [--dir DIR]
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_offload  # noqa: E402
import bench_sparse_quality  # noqa: E402
import offload_baselines as ob  # noqa: E402
import sparse_synthetic  # noqa: E402
import tierlm  # noqa: E402
from _common import DISK_BOUND, DISK_DEPTHS, disk_bandwidth, leading_equal, require_same_tokens  # noqa: E402

# name, tierlm.load options
NO_AHEAD = {"sparse": True, "sparse_readahead": False}
BUNDLES = "sparse + window + bundles"
READAHEAD = "  + read-ahead"
METHODS = [
    ("dense offload", {}),
    ("sparse, no window", {**NO_AHEAD, "sparse_window": 1}),
    ("sparse + window k=4", {**NO_AHEAD, "sparse_window": 4, "sparse_bundled": False}),
    (BUNDLES, {**NO_AHEAD, "sparse_window": 4}),
    (READAHEAD, {"sparse": True, "sparse_window": 4, "sparse_readahead": True}),
]


def run_method(pkg, budget, prompt_ids, new_tokens, files, options):
    """One round: (timed decode steps, token ids, info) of tierlm with these options."""
    return bench_offload.tierlm_decode(pkg, budget, prompt_ids, new_tokens, files, **options)


def summarize(rounds):
    """A method's rounds: medians over the timed decode steps of every round."""
    steps = [s for st, _, _ in rounds for s in st]
    ids, info = rounds[0][1], rounds[0][2]
    result = {
        "time": ob.median([s[0] for s in steps]),
        "bytes": ob.median([s[1] for s in steps]),
        "cached": max(s[2] for s in steps),
        "ids": ids,
        "peak": max(i["peak"] for _, _, i in rounds),
        "cpu": ob.median([c for _, _, i in rounds for c in i["cpu_seconds"]]),
        "decode": len(steps),
        "placement": info["placement"],
        "sparse": None,
    }
    if info["sparse_tokens"]:  # per token through the FFNs: each round's last are its timed steps
        last = {k: [] for k in info["sparse_tokens"]}
        for st, _, i in rounds:
            for k, v in i["sparse_tokens"].items():
                last[k] += v[-len(st) :]
        predicted, read = sum(last["neurons_predicted"]), sum(last["neurons_read"])
        # where a token's time goes: waiting for (and submitting) FFN reads, FFN compute
        # (predictor, cache copies, kernel), and the rest (attention, head, sampling)
        wait = last["io_seconds"]
        ffn_cpu = [sum(v) for v in zip(*(last[k] for k in CPU_PARTS), strict=True)]
        ahead, hits = sum(last["readahead_rows"]), sum(last["readahead_hits"])
        result["sparse"] = {
            "ahead_recall": hits / read if read else 1.0,
            "ahead_precision": hits / ahead if ahead else 1.0,
            "ahead": ahead > 0,
            "ffn_bytes": ob.median(last["bytes_read"]),
            "request": sum(last["bytes_read"]) / max(sum(last["requests"]), 1),
            "predicted": predicted / len(steps),
            "hit": 1.0 - read / predicted if predicted else 1.0,
            "capacity": sum(info["stats"]["sparse_capacity"]),
            "wait": ob.median(wait),
            "ffn_cpu": ob.median(ffn_cpu),
            "rest": ob.median([t[0] - w - c for t, w, c in zip(steps, wait, ffn_cpu, strict=True)]),
            "busy": ob.median([t[0] - w for t, w in zip(steps, wait, strict=True)]),
        }
    return result


# SparseTokenInfo's seconds spent computing (io_seconds is the time spent waiting for reads)
CPU_PARTS = ("predictor_seconds", "memory_seconds", "compute_seconds")

# The small reads of sparse rows and columns, each measured on its own (best over queue depths);
# STREAMED: the disk's bandwidth for the streamed matrices (the best of DISK_BOUND's jobs).
SMALL_BLOCKS = {"4K": 4096, "8K": 8192, "16K": 16384}
STREAMED = "streamed"


def fio_bandwidths(path, blocks):
    """{block name: bytes/s} for SMALL_BLOCKS names and STREAMED, on path."""
    return {
        b: disk_bandwidth(path, seconds=2) if b == STREAMED
        else disk_bandwidth(path, seconds=2, blocks=[SMALL_BLOCKS[b]])
        for b in blocks
    }  # fmt: skip


def block_for(request_bytes, bandwidths):
    """The measured small block size closest to the mean request size (STREAMED, whose blocks
    are 1 MiB and up, where that is closer)."""
    sizes = {**SMALL_BLOCKS, STREAMED: 1 << 20}
    best = min(bandwidths, key=lambda b: abs(sizes[b] - request_bytes))
    return best, bandwidths[best]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/tierlm-bench-sparse")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rank", type=int, default=64, help="predictor rank")
    parser.add_argument("--sparsities", default="0.9,0.95,0.97")
    parser.add_argument("--budget", type=float, default=0.5, help="of the weight bytes")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=9, help="decode steps = this - 1")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each method, interleaved")
    parser.add_argument("--keep", action="store_true", help="keep the packages")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="floor: leading greedy tokens of each sparse run equal to dense's, as a fraction",
    )
    args = parser.parse_args()

    root = Path(args.dir)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    weight_bytes = sparse_synthetic.make_models(
        root, sparsities, args.hidden, args.layers, args.ffn, args.heads, args.vocab, args.rank
    )
    budget = int(weight_bytes * args.budget)
    ffn_dense = 2 * args.layers * args.ffn * args.hidden * 2  # fc1 + fc2, f16
    prompt_ids = [(7 * i + 3) % args.vocab for i in range(args.prompt)]
    bandwidths = None
    results = []
    for sparsity in sparsities:
        hf = sparse_synthetic.variant_dir(root, sparsity)
        pkg = root / f"pkg-sparse{round(sparsity * 100)}"
        if not (pkg / "manifest.json").exists():
            tierlm.export(str(hf), str(pkg), sparse=True, progress=False)
        files = [str(p) for p in pkg.glob("*.bin")]
        if bandwidths is None:
            bandwidths = fio_bandwidths(max(files, key=os.path.getsize), [*SMALL_BLOCKS, STREAMED])
        rounds = {name: [] for name, _ in METHODS}
        for _ in range(args.rounds):  # interleaved, so drift hits every method alike
            for name, options in METHODS:
                rounds[name].append(
                    run_method(str(pkg), budget, prompt_ids, args.new_tokens, files, options)
                )
                step = ob.median([t for t, _, _ in rounds[name][-1][0]])
                print(f"  {sparsity:.0%} {name}: {step:.3f} s/token", flush=True)
        for name, _ in METHODS:
            results.append((sparsity, name, summarize(rounds[name])))
        if not args.keep:
            shutil.rmtree(pkg)

    print(
        f"\nmodel: OPT shape, hidden {args.hidden}, {args.layers} layers, ffn {args.ffn}, vocab "
        f"{args.vocab}, f16, {weight_bytes / 1e9:.2f} GB of weights; SYNTHETIC sparsity "
        f"({sparse_synthetic.SYNTHETIC}); predictor rank {args.rank}; host budget "
        f"{args.budget:.0%} = {budget / 1e9:.2f} GB; prompt {args.prompt} tokens, "
        f"{args.new_tokens - 1} decode steps x {args.rounds} rounds (medians over all), page "
        "cache dropped before each step"
    )
    print(
        f"disk ({DISK_BOUND}; small blocks at QD {'/'.join(map(str, DISK_DEPTHS))}): "
        + ", ".join(f"{b} {v / 1e9:.2f} GB/s" for b, v in bandwidths.items() if v)
    )
    dense_ids = {sp: r["ids"] for sp, name, r in results if name == "dense offload"}
    for sparsity, name, r in (x for x in results if x[1] != "dense offload"):
        # the predictor misses some firing neurons, so tokens may part late: a floor, not 100%
        what = f"{sparsity:.0%} {name} vs dense offload"
        require_same_tokens(what, r["ids"], dense_ids[sparsity], args.min_agreement)
    no_ahead = {sp: r["ids"] for sp, name, r in results if name == BUNDLES}
    for sparsity, _, r in (x for x in results if x[1] == READAHEAD):
        # the read-ahead changes what is read when, never what is computed
        what = f"{sparsity:.0%} read-ahead vs the same sparse run without it"
        require_same_tokens(what, r["ids"], no_ahead[sparsity], 1.0)
    header = (
        f"{'sparsity':>8} {'method':<26} {'s/token':>8} {'MB/token':>9} {'FFN MB/tok':>10} "
        f"{'FFN %':>6} {'bound s':>8} {'bound/t':>8} {'x dense':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    dense, before, bounds = {}, {}, {}
    for sparsity, name, r in results:
        if name == "dense offload":
            dense[sparsity] = r
        if name == BUNDLES:
            before[sparsity] = r
        d = dense[sparsity]
        sp = r["sparse"]
        # Streamed matrices at the disk's bandwidth, sparse rows at their request size's.
        sparse_bytes = sp["ffn_bytes"] if sp else 0
        block, bw = block_for(sp["request"], bandwidths) if sp else (STREAMED, None)
        bound = (r["bytes"] - sparse_bytes) / bandwidths[STREAMED] + (
            sparse_bytes / bw if bw else 0
        )
        bounds[(sparsity, name)] = bound
        if sp:
            ffn_cell = f"{sp['ffn_bytes'] / 1e6:>10.1f} {100 * sp['ffn_bytes'] / ffn_dense:>5.1f}%"
        else:
            ffn_cell = f"{'-':>10} {'-':>6}"
        agree = leading_equal(r["ids"], d["ids"])
        p = r["placement"]
        layers = len(p["resident_layers"]) + len(p["streamed_layers"])
        resident = f"{len(p['resident_layers'])}/{layers}" if p["streaming"] else "all"
        notes = (
            f"cached {100 * r['cached']:.1f}%, peak {r['peak'] / 2**30:.2f} GiB, {resident} layers"
            f" resident, ids = dense for the first "
            f"{agree}/{len(d['ids'])}, fio {block}"
        )
        if sp:
            notes += (
                f", predicted {sp['predicted']:.0f}/tok, hit {sp['hit']:.2f}, cache "
                f"{sp['capacity']} rows"
            )
        if sp:
            # the token cannot beat the disk time nor the time it spends not waiting for reads
            floor = max(bound, sp["busy"])
            notes += (
                f", per token: FFN wait {sp['wait']:.3f} s, FFN compute {sp['ffn_cpu']:.3f} s, "
                f"rest {sp['rest']:.3f} s, not waiting {sp['busy']:.3f} s, max(bound, not "
                f"waiting) / t {floor / r['time']:.2f}, process CPU {r['cpu']:.3f} s"
            )
        if sp and sp["ahead"]:
            # the bound of the bytes the token needs: what the same run reads without read-ahead
            need = bounds[(sparsity, BUNDLES)]
            notes += (
                f", read-ahead recall {sp['ahead_recall']:.2f} precision "
                f"{sp['ahead_precision']:.2f}, x no read-ahead "
                f"{before[sparsity]['time'] / r['time']:.2f}, bound of the bytes needed / t "
                f"{need / r['time']:.2f}"
            )
        print(
            f"{sparsity:>8.0%} {name:<26} {r['time']:>8.3f} {r['bytes'] / 1e6:>9.1f} {ffn_cell} "
            f"{bound:>8.3f} {bound / r['time']:>8.2f} {d['time'] / r['time']:>8.2f}  {notes}"
        )
    print(
        f"FFN %: FFN bytes read per token / the dense FFN bytes ({ffn_dense / 1e6:.0f} MB); "
        "bound/t: disk bound / measured; x dense: dense offload s/token / method's s/token"
    )
    if not args.skip_quality:
        print("\nquality on the trained demo model (bench_sparse_quality.py):\n")
        bench_sparse_quality.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
