"""Input-channel sparsity (training-free, TEAL-like) of a gated Llama in the native executor:
decode speed and bytes read per token of dense offload vs `tierlm.load(pkg, sparse=True)` at
several target sparsities, on a Llama-shaped model (default 44 layers of hidden 2048, ffn
5632, bf16: 4.1 GB), host budget 50% of the weight bytes, page cache dropped before every
decode step; every row is run --rounds times, interleaved, and its median decode step kept.

Thresholds: calibrated (tierlm.sparse.channel.calibrate, uniform) with the torch reference on
a 2-layer model of the same shape and initialisation fed random tokens in windows of the
bench's context; layer 0's thresholds go to the big model's layer 0, layer 1's to every other
layer. The sparsity the executor then reaches is measured and printed (kept channels / all).
Random weights, except that the RMSNorm weights vary per channel as a trained model's do
(--norm-spread, default 0.5: SmolLM2-135M's deeper layers measure a std of log|w| of
0.53-0.57), so the q/k/v and gate/up inputs keep some channels more often than others; the
attention output and down's input have no such structure here, and the massive-activation
channels of trained models are not emulated, so the caches hit less than a real model's.
Each target runs twice: plain, and with sparse_readahead (at each decode step's attention
input, the gate/up columns its FFN input is predicted to keep are read while attention
computes; the tokens are the same). Neuron sparsity (predictors) is not run: no trained
predictors exist for this model, and on SwiGLU it was found unusable (issue 17).

Columns: decode s/token, MB the process read per token, MB of channel columns read per token,
channels kept (of the sparse sites), hit (kept channels whose columns were not read: those
of the sites the budget keeps resident), the disk bound for the bytes read
(streamed matrices at the disk's random-read bandwidth, columns at the disk's bandwidth for
reads of the row's mean request size, rounded up to 4 KiB: adjacent columns and gaps under
32 KiB are read as one request; both _common.disk_bandwidth, the best of fio jobs over queue
depths), bound / measured, and speed relative to dense offload. Notes of a read-ahead row:
recall (of the columns read, the share read ahead), precision (of the columns read ahead, the
share kept) and the MB per token read ahead but not kept (whole columns).

--trace adds, per sparse row, one more decode step with the I/O engine's request log on
(tierlm.io.trace): the requests' sizes, the share of the step with requests
in flight, their mean number then, the streamed sites' read rate over their span (first
submit to last completion) and the disk's idle time between one streamed site and the next.

    python bench/bench_sparse_gated.py [--layers 44] [--targets 0.25,0.4,0.5] [--rounds 2]
        [--dir /tmp/tierlm-bench-sparse-gated --keep] [--trace]
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_offload  # noqa: E402
import bench_sparse  # noqa: E402
import offload_baselines as ob  # noqa: E402
import tierlm  # noqa: E402
import tierlm.io  # noqa: E402
from _common import DISK_BOUND, DISK_DEPTHS, disk_bandwidth, leading_equal  # noqa: E402
from tierlm.package import Package  # noqa: E402


def calibrate_small(root, args, context):
    """Thresholds of a 2-layer model of the bench's shape, per target (torch reference)."""
    import numpy as np
    from tierlm.sparse.channel import SITES, ChannelThresholds, collect_histograms
    from tierlm.sparse.model import load_model

    small = root / "calibration-hf"
    ob.make_random_llama(
        small, args.hidden, 2, args.ffn, args.heads, args.kv_heads, args.vocab, 1, args.norm_spread
    )
    loaded = load_model(small)
    loaded.model.float()
    ids = np.random.default_rng(1).integers(0, args.vocab, args.calibration_tokens)
    # One pass for every target: channel.calibrate's uniform thresholds, from one histogram.
    hists = collect_histograms(loaded, ids, context)
    out = {
        t: ChannelThresholds(t, [{s: h[s].quantile(t) for s in SITES} for h in hists], len(ids))
        for t in args.targets
    }
    shutil.rmtree(small)
    return out


def spread(thresholds, layers):
    """The small model's thresholds over `layers` layers (layer 1's for every deeper one)."""
    from tierlm.sparse.channel import ChannelThresholds

    per = [thresholds.layers[min(i, 1)] for i in range(layers)]
    return ChannelThresholds(thresholds.target_sparsity, per, thresholds.calibration_tokens)


def use_thresholds(pkg, thresholds):
    """Writes the channel files once (they do not depend on the target), then only the
    thresholds file and the manifest's target."""
    from tierlm.sparse.channel_package import register_channels
    from tierlm.sparse.package import read_manifest, set_manifest_section

    if not read_manifest(pkg).get("channels"):
        register_channels(pkg, thresholds)
        return
    thresholds.save(pkg)
    section = read_manifest(pkg)["channels"]
    section["target_sparsity"] = thresholds.target_sparsity
    set_manifest_section(pkg, "channels", section)


def run_row(pkg, budget, prompt_ids, new_tokens, options):
    files = [str(p) for p in Path(pkg).glob("*.bin")]
    steps, ids, info = bench_offload.tierlm_decode(
        pkg, budget, prompt_ids, new_tokens, files, **options
    )
    result = {
        "time": ob.median([s[0] for s in steps]),
        "bytes": ob.median([s[1] for s in steps]),
        "cached": max(s[2] for s in steps),
        "ids": ids,
        "peak": info["peak"],
        "placement": info["placement"],
        "sparse": None,
    }
    log = info["sparse_tokens"]
    if log:  # the last len(steps) records are the timed decode steps
        last = {k: v[-len(steps) :] for k, v in log.items()}
        kept, read = sum(last["neurons_predicted"]), sum(last["neurons_read"])
        s = info["stats"]
        result["sparse"] = {
            "bytes": ob.median(last["bytes_read"]),
            "request": sum(last["bytes_read"]) / max(sum(last["requests"]), 1),
            "kept": kept / len(steps),
            "hit": 1.0 - read / kept if kept else 1.0,
            "cache_bytes": s["sparse_host_bytes"],
            "resident": sum(1 for c in s["sparse_capacity"] if c > 0),
            "sites": len(s["sparse_capacity"]),
            "io": sum(last["io_seconds"]) / len(steps),
            "compute": sum(last["compute_seconds"]) / len(steps),
            "memory": sum(last["memory_seconds"]) / len(steps),
            "ahead_rows": sum(last["readahead_rows"]) / len(steps),
            "ahead_hits": sum(last["readahead_hits"]) / len(steps),
            "read": read / len(steps),
        }
    return result


def traced_step(pkg, budget, prompt_ids, options):
    """One decode step (the third) of a fresh load with the request log on: (seconds,
    [(path, offset, len, submitted, landed)], times in seconds from the step's start)."""
    import time

    files = [str(p) for p in Path(pkg).glob("*.bin")]
    model = tierlm.load(pkg, budget={"host": budget}, max_context=len(prompt_ids) + 4, **options)
    ob.drop_page_cache(files)
    tokens = model.stream(prompt_ids, max_new_tokens=4, stop_at_eos=False)
    for _ in range(3):
        next(tokens)
    ob.drop_page_cache(files)
    with tierlm.io.trace() as log:
        start = time.monotonic()
        next(tokens)
        seconds = time.monotonic() - start
    for _ in tokens:
        pass
    del model
    records = [
        (r["path"], r["offset"], r["len"], r["submitted"] - start, r["landed"] - start)
        for r in log
        if r["landed"] >= 0
    ]
    return seconds, records


def trace_summary(seconds, records):
    """The request log of one step as one line (see the module's doc)."""
    sizes = sorted(r[2] for r in records)
    events = sorted([(r[3], 1) for r in records] + [(r[4], -1) for r in records if r[4] >= 0])
    depth, last, busy, weighted = 0, 0.0, 0.0, 0.0
    for t, step in events:
        if depth > 0:
            busy += t - last
            weighted += depth * (t - last)
        depth, last = depth + step, t
    sites = {}
    for path, _, size, submitted, done in records:
        s = sites.setdefault(path, [submitted, done, 0])
        s[0], s[1], s[2] = min(s[0], submitted), max(s[1], done), s[2] + size
    spans = sorted(sites.values())
    span = sum(b - a for a, b, _ in spans)
    gaps = [nxt[0] - cur[1] for cur, nxt in zip(spans, spans[1:], strict=False)]
    q = [sizes[len(sizes) * k // 4] >> 10 for k in (1, 2, 3)] if sizes else [0, 0, 0]
    return (
        f"{len(records)} requests (quartiles {q[0]}/{q[1]}/{q[2]} KiB), in flight "
        f"{busy / seconds:.0%} of the step ({weighted / max(busy, 1e-9):.0f} on average), "
        f"{len(spans)} files at {sum(b for _, _, b in spans) / max(span, 1e-9) / 1e6:.0f} MB/s "
        f"over their spans, idle between them {sum(gaps) * 1e3:.0f} ms "
        f"({sum(gaps) / max(len(gaps), 1) * 1e3:.2f} ms each) of {seconds * 1e3:.0f} ms"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/tierlm-bench-sparse-gated")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=44)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--targets", default="0.25,0.4,0.5")
    parser.add_argument("--budget", type=float, default=0.5, help="of the weight bytes")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=9, help="decode steps = this - 1")
    parser.add_argument("--rounds", type=int, default=2, help="repeat every row, interleaved")
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument(
        "--norm-spread",
        type=float,
        default=0.5,
        help="RMSNorm weights exp(spread * N(0, 1)) per channel (SmolLM2-135M's deeper layers: "
        "std of log|w| 0.53-0.57); 0: all ones",
    )
    parser.add_argument("--keep", action="store_true", help="keep the package")
    parser.add_argument(
        "--trace", action="store_true", help="log one more step's requests per sparse row"
    )
    args = parser.parse_args()
    args.targets = [float(t) for t in args.targets.split(",")]

    root = Path(args.dir)
    pkg = root / "pkg"
    context = args.prompt + args.new_tokens
    if not (pkg / "manifest.json").exists():
        hf = root / "hf"
        ob.make_random_llama(
            hf,
            args.hidden,
            args.layers,
            args.ffn,
            args.heads,
            args.kv_heads,
            args.vocab,
            norm_spread=args.norm_spread,
        )
        tierlm.export(str(hf), str(pkg), progress=False)
        shutil.rmtree(hf)  # the package holds the same bytes
    weight_bytes = sum(t["nbytes"] for t in Package.open(str(pkg)).tensors.values())
    budget = int(weight_bytes * args.budget)
    print(f"calibrating {args.targets} on a 2-layer model of the same shape", flush=True)
    thresholds = calibrate_small(root, args, context)
    prompt_ids = [(7 * i + 3) % args.vocab for i in range(args.prompt)]
    rows = [("dense offload", None, False)]
    for t in args.targets:
        rows += [(f"input sparsity {t:.0%}", t, False), (f"  + read-ahead {t:.0%}", t, True)]
    results = {name: [] for name, _, _ in rows}
    for r in range(args.rounds):
        for name, target, ahead in rows:
            options = {"kv_dtype": "f32"}
            if target is not None:
                use_thresholds(str(pkg), spread(thresholds[target], args.layers))
                options.update(sparse=True, sparse_readahead=ahead)
            out = run_row(str(pkg), budget, prompt_ids, args.new_tokens, options)
            results[name].append(out)
            print(f"  round {r + 1} {name}: {out['time']:.3f} s/token", flush=True)
    traces = {}
    if args.trace:
        for name, target, ahead in rows[1:]:
            use_thresholds(str(pkg), spread(thresholds[target], args.layers))
            options = {"kv_dtype": "f32", "sparse": True, "sparse_readahead": ahead}
            traces[name] = trace_summary(*traced_step(str(pkg), budget, prompt_ids, options))
    channel_files = [str(p) for p in pkg.glob("channel-*.bin")]
    dense_files = [str(p) for p in pkg.glob("*.bin") if not p.name.startswith("channel-")]
    bandwidths = bench_sparse.fio_bandwidths(
        max(dense_files, key=os.path.getsize), [bench_sparse.STREAMED]
    )
    requests = {}  # sparse row -> its mean request size, a whole number of pages
    for name, _, _ in rows[1:]:
        sp = results[name][-1]["sparse"]
        requests[name] = -(-int(sp["request"]) // 4096) * 4096 if sp and sp["request"] else None
    if channel_files:
        largest = max(channel_files, key=os.path.getsize)
        for block in sorted({b for b in requests.values() if b}):
            bandwidths[f"{block >> 10}K"] = disk_bandwidth(largest, seconds=2, blocks=[block])

    print(
        f"\nmodel: Llama shape, hidden {args.hidden}, {args.layers} layers, ffn {args.ffn}, "
        f"heads {args.heads}/{args.kv_heads}, vocab {args.vocab}, bf16, "
        f"{weight_bytes / 1e9:.2f} GB of weights; host budget {args.budget:.0%} = "
        f"{budget / 1e9:.2f} GB; prompt {args.prompt} tokens, {args.new_tokens - 1} decode "
        f"steps, page cache dropped before each step; {args.rounds} interleaved rounds, median; "
        f"thresholds calibrated on a 2-layer model of the same shape (random weights, RMSNorm "
        f"spread {args.norm_spread})"
    )
    print(
        f"disk ({DISK_BOUND}; small blocks at QD {'/'.join(map(str, DISK_DEPTHS))}): "
        + ", ".join(f"{b} {v / 1e9:.2f} GB/s" for b, v in bandwidths.items() if v)
    )
    header = (
        f"{'method':<22} {'s/token':>8} {'MB/token':>9} {'cols MB':>8} {'kept':>6} {'hit':>5} "
        f"{'bound s':>8} {'bound/t':>8} {'x dense':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    per_site = 2 * args.hidden + args.hidden + args.ffn  # channels of the 4 sites of a layer
    dense_time = ob.median([x["time"] for x in results["dense offload"]])
    dense_ids = results["dense offload"][0]["ids"]
    column_bytes = 2 * args.ffn * 2  # a gate/up column: both matrices' bf16 column
    for name, _, _ in rows:
        runs = results[name]
        t = ob.median([x["time"] for x in runs])
        nbytes = ob.median([x["bytes"] for x in runs])
        sp = runs[-1]["sparse"]
        cols = ob.median([x["sparse"]["bytes"] for x in runs]) if sp else 0.0
        block = f"{requests[name] >> 10}K" if requests.get(name) else None
        bw = bandwidths.get(block) if block else None
        streamed = max(nbytes - cols, 0.0)
        bound = streamed / bandwidths[bench_sparse.STREAMED] + (cols / bw if bw else 0.0)
        kept = f"{sp['kept'] / (per_site * args.layers):>6.2f}" if sp else f"{'-':>6}"
        hit = f"{sp['hit']:>5.2f}" if sp else f"{'-':>5}"
        p = runs[-1]["placement"]
        layers = len(p["resident_layers"]) + len(p["streamed_layers"])
        resident = f"{len(p['resident_layers'])}/{layers}" if p["streaming"] else "all"
        notes = (
            f"peak {runs[-1]['peak'] / 2**30:.2f} GiB, {resident} layers resident, ids = dense "
            f"for the first {leading_equal(runs[-1]['ids'], dense_ids)}/{len(dense_ids)}"
        )
        if sp:
            notes += (
                f", fio {block}, I/O wait {sp['io']:.3f} s + kernel {sp['compute']:.3f} s + "
                f"selection {sp['memory']:.3f} s/token, {sp['resident']}/{sp['sites']} "
                f"sites resident, {sp['cache_bytes'] / 2**30:.2f} GiB of columns + staging, "
                f"columns at {cols / t / 1e6:.0f} MB/s over the step (fio {block} "
                f"{bw / 1e6 if bw else 0:.0f} MB/s)"
            )
            if sp["ahead_rows"]:
                wasted = (sp["ahead_rows"] - sp["ahead_hits"]) * column_bytes
                notes += (
                    f", read-ahead recall {sp['ahead_hits'] / max(sp['read'], 1):.2f} precision "
                    f"{sp['ahead_hits'] / sp['ahead_rows']:.2f}, {wasted / 1e6:.0f} MB wasted"
                )
        print(
            f"{name:<22} {t:>8.3f} {nbytes / 1e6:>9.1f} {cols / 1e6:>8.1f} {kept} {hit} "
            f"{bound:>8.3f} {bound / t:>8.2f} {dense_time / t:>8.2f}  {notes}"
        )
    for name, line in traces.items():
        print(f"trace {name.strip()}: {line}")
    print(
        "kept: channels kept / all channels of the sparse sites; hit: kept channels not read "
        "(resident sites); bound: the disk time of the bytes read; bound/t: bound / measured"
    )
    if not args.keep:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
