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
DeepSpeedCPUAdam (adamw_mode, f32 state) is an optional column: measured when `deepspeed`
is installed and its cpu_adam op builds (a JIT C++ build with ninja at first use, about a
minute; DS_ACCELERATOR=cpu is set for it), otherwise skipped with the reason printed. Its
result is checked against torch AdamW before it is timed. Not a tierlm dependency.
"""

import argparse
import os
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


def deepspeed_adam():
    """(DeepSpeedCPUAdam, "") when it imports, builds and matches torch AdamW, else
    (None, why not)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as e:  # not installed, or its import fails here
        return None, f"deepspeed does not import ({type(e).__name__}: {e})"
    n = 4097
    p0, g = torch.randn(n), torch.randn(n)
    try:
        p = torch.nn.Parameter(p0.clone())
        p.grad = g.clone()
        opt = DeepSpeedCPUAdam([p], lr=1e-3, weight_decay=0.01, adamw_mode=True)
        for _ in range(3):
            opt.step()
    except Exception as e:  # the JIT build of the cpu_adam op failed
        return None, f"DeepSpeedCPUAdam's cpu_adam op did not build/load ({type(e).__name__}: {e})"
    ref = torch.nn.Parameter(p0.clone())
    ref.grad = g.clone()
    topt = torch.optim.AdamW([ref], lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        topt.step()
    err = ((p.detach() - ref.detach()).abs().max() / ref.detach().abs().max()).item()
    if err > 1e-5:
        return None, f"DeepSpeedCPUAdam differs from torch AdamW by {err:.1e} (relative)"
    return DeepSpeedCPUAdam, ""


def bench_deepspeed(cls, n, reps):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = cls([p], lr=1e-3, weight_decay=0.01, adamw_mode=True)
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
    ap.add_argument("--no-deepspeed", action="store_true", help="skip DeepSpeedCPUAdam")
    args = ap.parse_args(argv)
    sizes = [parse_count(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"simd={_core.cpu_info()['simd_level']}  torch={torch.__version__}  reps={args.reps}")
    ds, ds_why = (None, "--no-deepspeed") if args.no_deepspeed else deepspeed_adam()
    if ds is None:
        print(f"DeepSpeedCPUAdam: skipped: {ds_why}")
    else:
        import deepspeed

        print(f"DeepSpeedCPUAdam: deepspeed {deepspeed.__version__}, cpu_adam op (JIT build)")
    header = (
        f"{'params':>7} {'thr':>3} | {'tierlm f32':>11} {'tierlm bf16':>11} "
        f"{'torch fused':>11} {'torch foreach':>13} {'deepspeed':>11} | {'x fused':>7} "
        f"{'x foreach':>9} {'x ds':>6} | {'bound 28B/p':>11} {'f32 % bound':>11}"
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
            dst = bench_deepspeed(ds, n, reps) if ds is not None else None
            bound = 28 * n / bw
            g = lambda t, n=n: f"{n / t / 1e9:9.3f} G"  # noqa: E731
            print(
                f"{n / 1e6:6.0f}M {th:>3} | {g(ours):>11} {g(ours16):>11} {g(fused):>11} "
                f"{g(foreach):>13} {g(dst) if dst else '-':>11} | {fused / ours:7.2f} "
                f"{foreach / ours:9.2f} {f'{dst / ours:6.2f}' if dst else '-':>6} | "
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


if __name__ == "__main__":
    main()
