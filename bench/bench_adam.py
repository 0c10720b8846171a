"""Claim: tierlm's fused AdamW steps float32 params at least as fast as torch's fused AdamW,
near the memory bound (28 bytes/param: read p, g, m, v; write p, m, v); bf16 moments
(20 bytes/param) go below that bound at a small accuracy cost.

    OMP_WAIT_POLICY=passive python bench/bench_adam.py [--sizes 1M,4M,16M,64M,256M]
        [--threads 1,2] [--reps 48]      (about 12 minutes)

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
import gc
import os
import statistics
import sys
import time

import tierlm.train as tt
import torch
from tierlm import _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import relative_error, require_close  # noqa: E402

HYPER = dict(lr=1e-3, weight_decay=0.01)


def parse_count(text):
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
    if text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def contenders(ds):
    """(name, state bytes per param, make(param) -> step function), in the order they are
    grouped under the memory cap (at 256M params and the default 13G: the three f32 contenders
    in the same rounds, then tierlm bf16 + foreach)."""
    hyper = HYPER
    out = [
        ("tierlm f32", 8, lambda p: tt.AdamW([p], **hyper).step),
        ("torch fused", 8, lambda p: torch.optim.AdamW([p], fused=True, **hyper).step),
    ]
    if ds is not None:
        out.append(("deepspeed", 8, lambda p: ds([p], adamw_mode=True, **hyper).step))
    out += [
        ("tierlm bf16", 4, lambda p: tt.AdamW([p], moments_dtype="bfloat16", **hyper).step),
        # foreach keeps temporaries of the size of the state
        ("torch foreach", 16, lambda p: torch.optim.AdamW([p], foreach=True, **hyper).step),
    ]
    return out


def balanced_orders(m):
    """Orders of m contenders in which each directly follows every other equally often
    (a Williams design: m rows for even m, 2m for odd). What ran just before sets the cache
    state a step starts in (the copy probe leaves the cache full of dirty lines); plain
    rotation keeps the cyclic order, so each contender would always follow the same one."""
    first, lo, hi = [0], 1, m - 1
    while len(first) < m:
        first.append(lo)
        lo += 1
        if len(first) < m:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % m for x in first] for r in range(m)]
    return rows if m % 2 == 0 else rows + [row[::-1] for row in rows]


def bench_row(n, reps, entries, max_state, copy):
    """{name: (group index, seconds per step in each round)} at n params, each contender with
    its own param, grad and moments. Within a group that fits max_state bytes they run in turn,
    one step each per round, so load from other processes hits them alike.
    copy: (src, dst) f32 tensors whose copy measures the memory bandwidth in the same rounds
    (out["copy_bw"], bytes/s)."""
    groups, used = [[]], 0
    for entry in entries:
        nbytes = (entry[1] + 8) * n  # state + its own param and grad
        if groups[-1] and used + nbytes > max_state:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += nbytes
    out = {}
    for index, group in enumerate(groups):
        steps = []
        for name, _, make in group:
            p = torch.nn.Parameter(torch.randn(n))
            p.grad = torch.randn(n)
            steps.append((name, make(p)))
        del p
        for _, step in steps:
            step()  # warm-up: state allocation, first touch
        if not out:  # the copy-bandwidth probe rides along in the first group
            steps.append(("copy", lambda: copy[1].copy_(copy[0])))
        times = {name: [] for name, _ in steps}
        orders = balanced_orders(len(steps))
        for r in range(reps):
            for name, step in (steps[i] for i in orders[r % len(orders)]):
                times[name].append(timed(step))
        if "copy" in times:  # the best copy, not the typical one: the bound is what is possible
            # 12 bytes cross the memory bus per copied f32: the source read, the destination's
            # line read for ownership (write-allocate) and its write-back. AdamW's writes go to
            # lines it has just read, so its 28 bytes/param carry no such extra read.
            out["copy_bw"] = 12 * copy[0].numel() / min(times.pop("copy"))
        out.update({name: (index, t) for name, t in times.items()})
        del steps, step
        gc.collect()
    return out


def speedup(row, ours, base):
    """How much faster `ours` steps than `base`: the median over rounds of the two steps'
    ratio when both ran in the same rounds (each round's pair saw the same machine, so a
    neighbour's load that comes and goes cancels out), else the ratio of the medians."""
    (group_ours, t_ours), (group_base, t_base) = row[ours], row[base]
    if group_ours == group_base:
        return statistics.median(b / a for a, b in zip(t_ours, t_base, strict=True))
    return statistics.median(t_base) / statistics.median(t_ours)


def format_row(n, threads, row):
    """One table line from bench_row's result."""
    bound = 28 * n / row.pop("copy_bw")
    med = {name: statistics.median(times) for name, (_, times) in row.items()}
    x = {name: f"{speedup(row, 'tierlm f32', name):.2f}" for name in row}

    def g(name):
        return f"{n / med[name] / 1e9:9.3f} G" if name in med else "-"

    return (
        f"{n / 1e6:6.0f}M {threads:>3} | {g('tierlm f32'):>11} {g('tierlm bf16'):>11} "
        f"{g('torch fused'):>11} {g('torch foreach'):>13} {g('deepspeed'):>11} | "
        f"{x['torch fused']:>7} {x['torch foreach']:>9} {x.get('deepspeed', '-'):>6} | "
        f"{bound * 1e3:8.1f} ms {bound / med['tierlm f32']:10.0%}"
    )


def after_steps(make, n=4097, steps=3):
    """A parameter of n values after `steps` steps of the optimizer make([p]) builds, from a
    fixed start and gradient: the agreement check of each contender against torch AdamW."""
    generator = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, generator=generator))
    p.grad = torch.randn(n, generator=generator)
    optimizer = make([p])
    for _ in range(steps):
        optimizer.step()
    return p.detach().numpy()


def deepspeed_adam():
    """(DeepSpeedCPUAdam, "") when it imports, builds and matches torch AdamW, else
    (None, why not)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as e:  # not installed, or its import fails here
        return None, f"deepspeed does not import ({type(e).__name__}: {e})"
    try:
        p = after_steps(lambda ps: DeepSpeedCPUAdam(ps, adamw_mode=True, **HYPER))
    except Exception as e:  # the JIT build of the cpu_adam op failed
        return None, f"DeepSpeedCPUAdam's cpu_adam op did not build/load ({type(e).__name__}: {e})"
    err = relative_error(p, after_steps(lambda ps: torch.optim.AdamW(ps, **HYPER)))
    if err > 1e-5:
        return None, f"DeepSpeedCPUAdam differs from torch AdamW by {err:.1e} (relative)"
    return DeepSpeedCPUAdam, ""


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
    ap.add_argument(
        "--reps",
        type=int,
        default=48,
        help="rounds at 256M params; n params get 256M/n times as many (up to 4080), so every "
        "row takes about as long; multiples of 12 balance the 6-way Williams order",
    )
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--no-deepspeed", action="store_true", help="skip DeepSpeedCPUAdam")
    ap.add_argument(
        "--max-state", default="13G", help="bytes (params, grads, state) interleaved at once"
    )
    args = ap.parse_args(argv)
    sizes = [parse_count(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(
        f"simd={_core.cpu_info()['simd_level']}  torch={torch.__version__}  "
        f"rounds={args.reps} at 256M params, 256M/n times as many at n"
    )
    require_close(
        "tierlm AdamW (f32 moments) vs torch AdamW, 3 steps",
        after_steps(lambda ps: tt.AdamW(ps, **HYPER)),
        after_steps(lambda ps: torch.optim.AdamW(ps, **HYPER)),
        1e-6,
    )
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
    print("params/s (G = 1e9), median over rounds; 'x' = how much faster tierlm f32 steps than the")
    print("baseline: the median of the per-round ratios (the same round's steps, paired)")
    print(header)
    print("-" * len(header))
    entries = contenders(ds)
    copy = (torch.randn(64_000_000), torch.empty(64_000_000))  # well past the caches
    max_state = parse_count(args.max_state)
    for n in sizes:
        reps = min(4080, args.reps * max(1, 256_000_000 // n))
        for th in threads:
            torch.set_num_threads(th)
            _core.set_threads(th)
            print(format_row(n, th, bench_row(n, reps, entries, max_state, copy)))
            sys.stdout.flush()
    print("bound: 28 bytes/param at the best copy bandwidth (256 MB f32 torch copy, same threads,")
    print("counted as 12 bytes per element: read, read for ownership, write-back;")
    print("measured in the same rounds as the optimizers); bf16 moments")
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
