"""Quantized decode against llama.cpp on the same GGUF files: a random Llama of TinyLlama-1.1B's
shape (transformers config, bf16 safetensors) written as an f16 GGUF, quantized by llama.cpp's
own quantizer (llama_model_quantize) to Q8_0, Q4_0 and Q4_K_M; tierlm imports those files
(`tierlm export X.gguf`, bytes copied) and exports bf16 from the same safetensors. With
`--types bf16,f16` (f16: both engines read the f16 GGUF), the 16-bit rows alone.

- In memory, 2 threads: decode tok/s per type, tierlm and llama.cpp (llama-cpp-python, its own
  build) interleaved round by round, the paired ratio, and the DRAM bound (weight bytes read
  per token / DRAM bandwidth measured in each round). bf16: tierlm's bf16 package against
  llama.cpp on a bf16 GGUF of the same weights. Then prefill tok/s of a 512-token prompt.
- Offloaded, host budget 50% and 25% of the Q4_K_M weights, page cache dropped before every
  decode step for every method (bench_offload's eviction: madvise on the process's mappings,
  fadvise): tierlm q4_k vs tierlm bf16 at the same budget vs llama.cpp reading the Q4_K_M file
  through mmap (its way to run a model larger than memory; budget-free; its load-time repacking
  into RAM is switched off so the weights stay in the mapping), with the disk bound (bytes read
  per token / the disk's random-read bandwidth, _common.DiskBound: the best of several fio
  jobs, all of them once, then the fastest few before and after each row).

Before any ratio, each type's greedy tokens and last logits are checked against llama.cpp's on
the same file; a check below its floor prints AGREEMENT FAILED and exits 1.

    pip install ".[bench]"                   # the baselines (llama-cpp-python: ~5 min build)
    python bench/bench_quant.py              # the 1.1B shape, ~10 minutes on 2 cores, ~10 GB disk
    python bench/bench_quant.py --layers 2 --hidden 512 --intermediate 1536 --heads 8 \\
        --kv-heads 2 --vocab 4096 --prefill 128      # a small shape to try it (~1 minute)
    python bench/bench_quant.py --types q4_k_m --skip memory --offload-rounds 2 --keep
                                             # the offloaded rows only (after the agreement check)
"""

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _llamacpp  # noqa: E402
import offload_baselines as ob  # noqa: E402
from _common import (  # noqa: E402
    DISK_BOUND,
    DiskBound,
    leading_equal,
    memory_bandwidth,
    pool_rounds,
    print_table,
    require_agreement,
    require_same_tokens,
)
from bench_decode import streamed_bytes  # noqa: E402
from bench_offload import tierlm_decode  # noqa: E402

# bf16: tierlm's bf16 package (from the safetensors) vs llama.cpp's bf16 GGUF of the same weights;
# f16: both engines read the f16 GGUF (tierlm imports it, bytes copied). Not in the default list
# (the 16-bit rows are another claim than the quantized ones): --types bf16,f16.
TYPES = ["q8_0", "q4_0", "q4_k_m", "bf16", "f16"]
DEFAULT_TYPES = ["q8_0", "q4_0", "q4_k_m", "bf16"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shape = ap.add_argument_group("model shape (default: TinyLlama-1.1B)")
    shape.add_argument("--hidden", type=int, default=2048)
    shape.add_argument("--layers", type=int, default=22)
    shape.add_argument("--intermediate", type=int, default=5632)
    shape.add_argument("--heads", type=int, default=32)
    shape.add_argument("--kv-heads", type=int, default=4)
    shape.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dir", default="/tmp/tierlm-bench-quant")
    ap.add_argument("--keep", action="store_true", help="keep the model files in --dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES), help=f"of {','.join(TYPES)}")
    ap.add_argument("--tokens", type=int, default=32, help="decode tokens per timed run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved decode rounds")
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens (0: no prefill)")
    ap.add_argument("--prefill-rounds", type=int, default=2)
    ap.add_argument("--budgets", default="0.5,0.25", help="fractions of the Q4_K_M weights")
    ap.add_argument("--offload-tokens", type=int, default=4, help="decode steps = this - 1")
    ap.add_argument(
        "--offload-rounds", type=int, default=1, help="interleaved rounds of the offloaded rows"
    )
    ap.add_argument(
        "--skip",
        default="",
        help="comma list: memory (the in-memory and prefill tables; the agreement checks run)",
    )
    ap.add_argument(
        "--ring-sections",
        type=int,
        default=0,
        help="tierlm's staging sections in the offloaded rows (0: auto)",
    )
    ap.add_argument("--fio-seconds", type=int, default=1, help="per fio job")
    ap.add_argument("--check-tokens", type=int, default=32, help="greedy tokens compared")
    ap.add_argument(
        "--min-top1",
        type=float,
        default=0.8,  # a random model's near-ties flip a few of 32 (94% seen on q4_k_m)
        help="floor: steps of llama.cpp's greedy run where tierlm's top-1 is llama.cpp's token",
    )
    ap.add_argument(
        "--max-logit-error",
        type=float,
        # On the 1.1B random model's q4_0 file both engines are 4.5 % (relative L2) from the
        # exact f32 forward of the dequantized weights (transformers), and 5.4 % from each
        # other: each rounds activations to int8 blocks, and 22 random layers amplify it.
        default=0.08,
        help="ceiling: relative L2 error of any step's logits against llama.cpp's",
    )
    args = ap.parse_args()
    args.types = [t for t in args.types.split(",") if t]
    unknown = sorted(set(args.types) - set(TYPES))
    if unknown:
        ap.error(f"--types: {unknown} are not among {TYPES}")
    if "q4_k_m" not in args.types and args.budgets:
        ap.error("the offloaded rows need q4_k_m in --types (or --budgets '')")
    args.skip = set(filter(None, args.skip.split(",")))
    if args.skip - {"memory"}:
        ap.error(f"--skip: {sorted(args.skip - {'memory'})} are not among ['memory']")
    if args.ring_sections < 0:
        ap.error("--ring-sections must be 0 (auto) or more")
    if args.offload_rounds < 1:
        ap.error("--offload-rounds must be at least 1")
    return args


def build_files(args, root):
    """The HF checkpoint, GGUF files (f16 source, llama.cpp's quantizations, bf16) and tierlm's
    packages: {type: (gguf path, package path)}. Files already in root are reused."""
    import tierlm

    started = time.perf_counter()
    hf = root / "hf"
    ob.make_random_llama(
        hf, args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab
    )

    def gguf(name, make):
        path = root / f"model-{name}.gguf"
        if not path.exists():
            make(str(path))
        return str(path)

    f16 = gguf("f16", lambda p: _llamacpp.convert(str(hf), p, "f16"))
    files = {}
    for t in args.types:
        if t == "bf16":
            path = gguf("bf16", lambda p: _llamacpp.convert(str(hf), p, "bf16"))
            source, dtype = str(hf), "bf16"
        elif t == "f16":
            path, source, dtype = f16, f16, None
        else:
            path = gguf(t, lambda p, t=t: _llamacpp.quantize(f16, p, t, args.threads))
            source, dtype = path, None
        pkg = root / f"pkg-{t}"
        if not (pkg / "manifest.json").exists():
            tierlm.export(source, str(pkg), dtype=dtype, progress=False, overwrite=True)
        files[t] = (path, str(pkg))
    print(f"files ready in {time.perf_counter() - started:.0f} s under {root}", flush=True)
    return files


def package_bytes(pkg):
    import json

    tensors = json.loads((Path(pkg) / "manifest.json").read_text())["tensors"]
    return sum(t["nbytes"] for t in tensors.values())


class Pair:
    """One type in memory: tierlm's package and llama.cpp's GGUF, loaded side by side."""

    def __init__(self, args, gguf, pkg):
        import tierlm

        context = max(args.prefill, len(PROMPT) + args.check_tokens + args.tokens + 2)
        self.ours = tierlm.load(pkg, threads=args.threads, max_context=context)
        self.why_no_repack = _llamacpp.repack_works(gguf)
        if self.why_no_repack:
            print(f"{self.why_no_repack}: running it with repacking off", flush=True)
        self.theirs = _llamacpp.LlamaCpp(
            gguf, args.threads, n_ctx=context, repack=self.why_no_repack is None
        )
        self.tokens = args.tokens

    def check(self, name, args):
        """Exits (require_agreement) unless both engines compute the same thing: tierlm is fed
        llama.cpp's greedy tokens and must pick the same next token at --min-top1 of the steps,
        with logits within --max-logit-error. Returns tierlm's own greedy tokens."""
        theirs = _llamacpp.require_same_as_tierlm(
            f"{name}: tierlm vs llama.cpp",
            self.ours,
            self.theirs,
            PROMPT,
            args.check_tokens,
            args.min_top1,
            args.max_logit_error,
        )
        ours = self.ours.generate(PROMPT, max_new_tokens=args.check_tokens, stop_at_eos=False)
        ours = list(ours.output_ids)
        print(
            f"  (free greedy runs: equal for the first {leading_equal(ours, theirs)} of "
            f"{len(theirs)} tokens; a random model's near-ties end them early)"
        )
        return {"tierlm": ours, "llama.cpp": theirs, "repack": self.why_no_repack is None}

    def decode(self, llama_first=False):
        """(tierlm, llama.cpp) decode tok/s of one generation each, in either order."""

        def ours():
            result = self.ours.generate(PROMPT, max_new_tokens=self.tokens + 1, stop_at_eos=False)
            return result.stats["decode_tokens_per_s"]

        def theirs():
            return self.tokens / self.theirs.greedy(PROMPT, self.tokens + 1)[1]

        if llama_first:
            b = theirs()
            return ours(), b
        return ours(), theirs()

    def prefill(self, prompt):
        """(tierlm, llama.cpp) prefill tok/s of prompt from an empty cache."""
        result = self.ours.generate(prompt, max_new_tokens=1, stop_at_eos=False)
        return result.stats["prefill_tokens_per_s"], len(prompt) / self.theirs.prefill_seconds(
            prompt
        )


PROMPT = [300 + 7 * i for i in range(16)]


def in_memory(args, files):
    """Rows of the in-memory table, and each type's greedy tokens (for the offload checks)."""
    rows, greedy, prefill_rows = [], {}, []
    for t in args.types:
        gguf, pkg = files[t]
        pair = Pair(args, gguf, pkg)
        greedy[t] = pair.check(t, args)
        pair.decode()  # warm up both
        rates, bandwidths = [], []
        for r in range(args.rounds):
            # who goes first alternates; the bandwidth is measured between rounds
            rates.append(pair.decode(llama_first=r % 2 == 1))
            bandwidths.append(memory_bandwidth(threads=args.threads)["bound"])
        ours = statistics.median(a for a, _ in rates)
        theirs = statistics.median(b for _, b in rates)
        paired = statistics.median(a / b for a, b in rates)
        nbytes = streamed_bytes(pkg)
        bound = statistics.median(bandwidths) / nbytes
        rows.append(
            [
                t,
                f"{nbytes / 1e6:.0f}",
                f"{ours:.2f}",
                f"{theirs:.2f}",
                f"{paired:.2f}x",
                f"{bound:.1f}",
                f"{ours / bound:.2f}",
                f"{theirs / bound:.2f}",
                f"{statistics.median(bandwidths) / 1e9:.1f}",
            ]
        )
        if args.prefill:
            prompt = [(300 + 11 * i) % args.vocab for i in range(args.prefill)]
            pair.prefill(prompt[:16])  # warm up
            speeds = [pair.prefill(prompt) for _ in range(args.prefill_rounds)]
            ours = statistics.median(a for a, _ in speeds)
            theirs = statistics.median(b for _, b in speeds)
            paired = statistics.median(a / b for a, b in speeds)
            prefill_rows.append([t, f"{ours:.1f}", f"{theirs:.1f}", f"{paired:.2f}x"])
        del pair
    return rows, prefill_rows, greedy


def offloaded(args, files, greedy):
    """Rows of the offloaded table, --offload-rounds interleaved rounds pooled: (method,
    budget, steps, note, fio bandwidths before and after each of its rounds)."""
    q4_gguf, q4_pkg = files["q4_k_m"]
    weights = package_bytes(q4_pkg)
    n = args.offload_tokens
    fio_file = max((str(p) for p in Path(q4_pkg).glob("*.bin")), key=os.path.getsize)

    fio = DiskBound(fio_file, seconds=args.fio_seconds)

    rows, refused = [], []
    for _ in range(args.offload_rounds):  # interleaved: a slow spell hits every row alike
        bw0 = fio()
        steps, ids = _llamacpp.mmap_decode(q4_gguf, args.threads, PROMPT, args.offload_tokens)
        if not greedy["q4_k_m"]["repack"]:  # the same kernels as in memory: the same tokens
            same = greedy["q4_k_m"]["llama.cpp"][:n]
            require_same_tokens("llama.cpp mmap vs llama.cpp in memory", ids, same, 1.0)
        note = "budget-free, repack off"
        rows.append(("llama.cpp mmap q4_k_m", None, steps, note, [bw0, fio()]))
        rows += tierlm_offloaded(args, files, greedy, weights, fio, refused)
    return pool_rounds(rows, (2, 4)), weights, refused, fio  # steps, bandwidths


def tierlm_offloaded(args, files, greedy, weights, fio, refused):
    """One round of tierlm's offloaded rows, each budget x type."""
    import tierlm

    n, rows = args.offload_tokens, []
    for frac in [float(f) for f in args.budgets.split(",") if f]:
        budget = int(weights * frac)
        for t in ("q4_k_m", "bf16"):
            if t not in files:
                continue
            pkg = files[t][1]
            bw0 = fio()
            try:
                steps, ids, info = tierlm_decode(
                    pkg,
                    budget,
                    PROMPT,
                    n,
                    [str(p) for p in Path(pkg).glob("*.bin")],
                    ring_sections=args.ring_sections,
                )
            except tierlm.BudgetError as error:
                why = f"tierlm {t} at {frac:.0%}: {error}"
                refused += [why] if why not in refused else []
                note = f"refused ({refused.index(why) + 1})"
                rows.append((f"tierlm {t}", frac, [], note, [bw0]))
                continue
            require_agreement(
                f"tierlm {t} offloaded at {frac:.0%} vs in memory",
                ids == greedy[t]["tierlm"][:n],
                f"tokens {ids} vs {greedy[t]['tierlm'][:n]}",
            )
            p = info["placement"]
            note = (
                f"{len(p['resident_layers'])}/{args.layers} layers resident, "
                f"{p['sections']} sections of {p['section_bytes'] / 1e6:.1f} MB, "
                f"peak {info['peak'] / 2**20:.0f} MiB"
                f"{', O_DIRECT' if info['direct'] else ''}"
            )
            rows.append((f"tierlm {t}", frac, steps, note, [bw0, fio()]))
    return rows


def offload_table(rows, weights, refused, fio):
    by_budget = {}
    for method, frac, steps, *_ in rows:
        if method == "tierlm q4_k_m" and steps:
            by_budget[frac] = ob.median([s[0] for s in steps])
    llama = next(ob.median([s[0] for s in r[2]]) for r in rows if r[1] is None)
    table = []
    for method, frac, steps, note, bws in rows:
        if not steps:
            table.append([method, f"{frac:.0%}", "-", "-", "-", "-", "-", "-", "-", note])
            continue
        t = ob.median([s[0] for s in steps])
        read = ob.median([s[1] for s in steps])
        bws = [b for b in bws if b]
        bw = sum(bws) / len(bws) if bws else float("nan")
        bound = read / bw
        q4 = by_budget.get(frac)
        table.append(
            [
                method,
                "-" if frac is None else f"{frac:.0%}",
                f"{t:.3f}",
                f"{read / 1e6:.0f}",
                f"{100 * max(s[2] for s in steps):.1f}",
                f"{bw / 1e9:.2f}",
                f"{bound / t:.2f}",
                "-" if q4 is None else f"{t / q4:.2f}",
                f"{t / llama:.2f}",
                note,
            ]
        )
    print(
        f"\noffloaded decode, host budget as a fraction of the Q4_K_M weights "
        f"({weights / 1e6:.0f} MB), page cache dropped before every step; s/token: median of "
        "the decode steps; MB read: the process's disk reads per step (/proc/self/io); "
        f"of disk bound: (MB read / fio GB/s) / s/token, fio GB/s: {DISK_BOUND} ("
        f"{fio.describe()} before and after each row); x: this row's "
        "s/token over tierlm q4_k_m's at the same budget, and over llama.cpp mmap's"
    )
    print_table(
        [
            "method",
            "budget",
            "s/token",
            "MB read",
            "cached%",
            "fio GB/s",
            "of disk bound",
            "x tierlm q4",
            "x llama mmap",
            "notes",
        ],
        table,
    )
    for i, why in enumerate(refused, 1):
        print(f"({i}) {why}")


def main():
    args = parse_args()
    why = _llamacpp.missing()
    if why:
        sys.exit(f"bench_quant needs llama.cpp as its baseline: {why}")
    root = Path(args.dir)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        files = build_files(args, root)
        if "memory" in args.skip:
            greedy = {t: Pair(args, *files[t]).check(t, args) for t in args.types}
        else:
            greedy = in_memory_tables(args, files)
        if args.budgets:
            offload_table(*offloaded(args, files, greedy))
    finally:
        if created and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def in_memory_tables(args, files):
    """Prints the in-memory and prefill tables; returns each type's greedy tokens."""
    rows, prefill_rows, greedy = in_memory(args, files)
    print(
        f"\nin-memory decode, {args.threads} threads, hidden {args.hidden}, {args.layers} "
        f"layers, ffn {args.intermediate}, vocab {args.vocab}: tok/s median of "
        f"{args.rounds} interleaved rounds of {args.tokens} tokens; x: median of the "
        "paired per-round ratios; DRAM bound = bandwidth (best of numpy copy and torch sum, "
        "measured after each round) / weight bytes read per token"
    )
    print_table(
        [
            "type",
            "MB/token",
            "tierlm tok/s",
            "llama.cpp tok/s",
            "x llama.cpp",
            "bound tok/s",
            "tierlm of bound",
            "llama.cpp of bound",
            "GB/s",
        ],
        rows,
    )
    if prefill_rows:
        print(f"\nprefill of {args.prefill} tokens, median of {args.prefill_rounds} runs")
        print_table(["type", "tierlm tok/s", "llama.cpp tok/s", "x llama.cpp"], prefill_rows)
    return greedy


if __name__ == "__main__":
    main()
