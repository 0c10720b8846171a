"""Claim: tierlm's fused AdamW steps float32 params at least as fast as torch's fused AdamW,
near the memory bound (28 bytes/param: read p, g, m, v; write p, m, v); bf16 moments
(20 bytes/param) go below that bound at a small accuracy cost.

    OMP_WAIT_POLICY=passive python bench/bench_adam.py [--sizes 1M,4M,16M,64M,256M]
        [--threads 1,2] [--reps 5]

(passive OpenMP waits: on a shared machine spinning workers of a descheduled peer make
torch's timings swing several-fold.)

One table: params/s of tierlm (f32 and bf16 moments) and torch AdamW foreach=True and
fused=True, each measured in the same run, the ratio to torch fused, and the bound at the
measured copy bandwidth. Then the accuracy cost of bf16 moments on a short fine-tune.
DeepSpeedCPUAdam is not measured: its CPU op compiles at first use (minutes, and a full
deepspeed install); see the note printed at the end.
"""

import argparse
import statistics
import sys
import time

import tierlm.train as tt
import torch
from tierlm import _core


def parse_count(text):
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
    if text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def median_time(fn, reps):
    fn()  # warm-up (first touch, state allocation)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(n, reps):
    """Peak bytes/s of a large f32 copy (read n*4 + write n*4) with torch's threads."""
    a = torch.randn(n)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(timed(lambda: b.copy_(a)) for _ in range(max(reps, 5)))  # the best, not typical
    return 8 * n / best


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_torch(n, reps, **flags):
    p = torch.randn(n, requires_grad=True)
    p.grad = torch.randn(n)
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, **flags)
    t = median_time(opt.step, reps)
    del opt, p
    return t


def bench_tierlm(n, reps, moments):
    p = torch.randn(n, requires_grad=True)
    p.grad = torch.randn(n)
    opt = tt.AdamW([p], lr=1e-3, weight_decay=0.01, moments_dtype=moments)
    t = median_time(opt.step, reps)
    del opt, p
    return t


def bf16_accuracy(steps=60):
    """Final loss of a small Llama fine-tune with f32 vs bf16 moments (same data, seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    data = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    out = {}
    for moments in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).float()
        opt = tt.AdamW(model.parameters(), lr=3e-3, moments_dtype=moments)
        for _ in range(steps):
            loss = model(input_ids=data, labels=data).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[moments] = loss.item()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,4M,16M,64M,256M")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-accuracy", action="store_true")
    args = ap.parse_args(argv)
    sizes = [parse_count(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"simd={_core.cpu_info()['simd_level']}  torch={torch.__version__}  reps={args.reps}")
    header = (
        f"{'params':>7} {'thr':>3} | {'tierlm f32':>11} {'tierlm bf16':>11} "
        f"{'torch fused':>11} {'torch foreach':>13} | {'x fused':>7} {'x foreach':>9} | "
        f"{'bound 28B/p':>11} {'f32 % bound':>11}"
    )
    print("params/s (G = 1e9), median; 'x' = tierlm f32 speed / baseline speed")
    print(header)
    print("-" * len(header))
    bandwidths = {}
    for n in sizes:
        reps = max(3, args.reps if n <= 64_000_000 else 3)
        for th in threads:
            torch.set_num_threads(th)
            _core.set_threads(th)
            if th not in bandwidths:  # 64M floats: well past the caches
                bandwidths[th] = copy_bandwidth(64_000_000, reps)
            bw = bandwidths[th]
            ours = bench_tierlm(n, reps, "float32")
            ours16 = bench_tierlm(n, reps, "bfloat16")
            fused = bench_torch(n, reps, fused=True)
            foreach = bench_torch(n, reps, foreach=True)
            bound = 28 * n / bw
            g = lambda t, n=n: f"{n / t / 1e9:9.3f} G"  # noqa: E731
            print(
                f"{n / 1e6:6.0f}M {th:>3} | {g(ours):>11} {g(ours16):>11} {g(fused):>11} "
                f"{g(foreach):>13} | {fused / ours:7.2f} {foreach / ours:9.2f} | "
                f"{bound * 1e3:8.1f} ms {bound / ours:10.0%}"
            )
            sys.stdout.flush()
    print("bound: 28 bytes/param at the measured copy bandwidth (same threads); bf16 moments")
    print("move 20 bytes/param, so they may pass the f32 bound.")
    if not args.no_accuracy:
        acc = bf16_accuracy()
        f32, b16 = acc["float32"], acc["bfloat16"]
        print(
            f"bf16 moments accuracy: 60-step Llama fine-tune final loss f32 {f32:.4f}, "
            f"bf16 {b16:.4f} ({(b16 - f32) / f32:+.2%})"
        )
    print("DeepSpeedCPUAdam: not measured (needs deepspeed + a JIT C++ build at first use).")


if __name__ == "__main__":
    main()
