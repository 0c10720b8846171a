"""Claim: planned buffer reuse puts peak activation memory at (or within 1% of) the lower
bound, far below no reuse and below PyTorch's caching allocator.

Instances:
  infer-*   the buffers a layer-by-layer Llama executor allocates for one prefill (f32
            [tokens, width] values, one new buffer per op output: hidden states, norms, q/k/v,
            attention output and its O(n) scratch, FFN gate/up/act/down, last-token logits)
  train-*   torch trace (tierlm.plan.trace_torch) of one transformers LlamaDecoderLayer,
            forward + backward, random weights, hidden 256, 4 heads (2 kv), SDPA attention
  rand-*    random lifetimes (program-like: short, geometric) and log-uniform sizes
  stress-*  long random lifetimes (a third of the run): where the bound is far from tight
  chain-*   a random 24-buffer layer x 400, chained by residuals: one 10,000-buffer piece
            for the MIP, planned first as one repeated layer (MEMO)
  *-100k    100,000 buffers, greedy only (the native planner's speed)
Rows: no reuse (sum of sizes); greedy (native, median of 5 runs); MIP with CP-SAT and with
HiGHS (one run each, --time-limit s); for train-*: PyTorch's CUDA caching allocator replayed
on the same trace (SIMULATED: no GPU here; its block rounding, 2/20 MiB segments, best-fit
and splitting rules, peak reserved). The physical bound is the lower bound column: no plan
can beat the largest total of buffers live at one op.

Usage: python bench/bench_plan.py [--quick] [--time-limit 10] [--json out.json]
"""

import argparse
import bisect
import json
import statistics
import time

import numpy as np
from tierlm import plan

MiB = 1 << 20

MODELS = {
    # name: hidden, heads, kv_heads, head_dim, intermediate, layers, vocab
    "qwen2-0.5b": (896, 14, 2, 64, 4864, 24, 151936),
    "llama-1b": (2048, 32, 4, 64, 5632, 22, 32000),
    "llama-7b": (4096, 32, 32, 128, 11008, 32, 32000),
    "llama3-8b": (4096, 32, 8, 128, 14336, 32, 128256),
}


class Program:
    """Records a straight-line program's buffers: first op = producer, last op = last use."""

    def __init__(self):
        self.op = -1
        self.sizes, self.starts, self.ends, self.names = [], [], [], []

    def new(self, name, nbytes):
        self.sizes.append(int(nbytes))
        self.starts.append(self.op)
        self.ends.append(self.op)
        self.names.append(name)
        return len(self.sizes) - 1

    def step(self, out_name, out_bytes, *inputs):
        self.op += 1
        for i in inputs:
            self.ends[i] = self.op
        return self.new(out_name, out_bytes) if out_name else None

    def arrays(self):
        return np.array(self.sizes), np.array(self.starts), np.array(self.ends), self.names


def inference_buffers(model, seq, layers=None):
    hidden, heads, kv, hd, inter, n_layers, vocab = MODELS[model]
    n_layers = layers or n_layers
    f = 4 * seq  # f32 [tokens, width] bytes per column
    p = Program()
    p.op = 0
    tokens = p.new("tokens", 4 * seq)
    positions = p.new("positions", 4 * seq)
    h = p.step("embed.out", f * hidden, tokens)
    threads, block_q, block_k = 8, 64, 256
    for layer in range(n_layers):
        n = f"layers.{layer}."
        x = p.step(n + "attn_norm", f * hidden, h)
        q = p.step(n + "q", f * heads * hd, x)
        k = p.step(n + "k", f * kv * hd, x)
        v = p.step(n + "v", f * kv * hd, x)
        p.step(None, 0, q, positions)  # rope in place
        p.step(None, 0, k, positions)
        # Fused attention: running max/sum per (head, token), a score tile per thread.
        scratch = p.step(n + "attn_scratch", 8 * heads * seq + 4 * threads * block_q * block_k)
        a = p.step(n + "attn_out", f * heads * hd, q, k, v, scratch)
        o = p.step(n + "o", f * hidden, a)
        h2 = p.step(n + "resid1", f * hidden, h, o)
        x2 = p.step(n + "ffn_norm", f * hidden, h2)
        g = p.step(n + "gate", f * inter, x2)
        u = p.step(n + "up", f * inter, x2)
        act = p.step(n + "act", f * inter, g, u)
        d = p.step(n + "down", f * hidden, act)
        h = p.step(n + "resid2", f * hidden, h2, d)
    xf = p.step("final_norm", f * hidden, h)
    logits = p.step("logits", 4 * vocab, xf)  # last token only
    p.step(None, 0, logits)
    return p.arrays()


def torch_block_trace(batch, seq):
    return stack_trace(batch, seq, 1)


def training_stack(layers):
    """Training-shaped buffers at scale: forward saves activations until the layer's
    backward, which frees them (hidden 1024, seq 512)."""
    p = Program()
    f = 4 * 512
    saved = []
    h = p.step("x", f * 1024)
    for layer in range(layers):
        keep = [p.step(f"f{layer}.{k}", f * w, h) for k, w in enumerate((1024, 1024, 256, 256))]
        t = p.step(f"f{layer}.tmp", f * 2816, *keep)
        keep += [p.step(f"f{layer}.{k}", f * w, t) for k, w in enumerate((2816, 2816), 4)]
        h = p.step(f"f{layer}.out", f * 1024, *keep)
        saved.append(keep)
    grad = p.step("grad", f * 1024, h)
    for layer in reversed(range(layers)):
        keep = saved[layer]
        g1 = p.step(f"b{layer}.g1", f * 2816, grad, keep[4], keep[5])
        g2 = p.step(f"b{layer}.g2", f * 2816, g1, keep[5])
        g3 = p.step(f"b{layer}.g3", f * 1024, g2, *keep[:4])
        grad = p.step(f"b{layer}.grad", f * 1024, g3, grad)
    return p.arrays()


def random_instance(n, seed):
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(1024), np.log(16 * MiB), n)).astype(np.int64)
    starts = rng.integers(0, n, n)
    ends = starts + rng.geometric(1 / 6, n) - 1
    return sizes, starts, ends, [f"r{i}" for i in range(n)]


class _Block:
    __slots__ = ("addr", "size", "free", "prev", "next", "small")

    def __init__(self, addr, size, small, prev=None, nxt=None):
        self.addr, self.size, self.small = addr, size, small
        self.free, self.prev, self.next = False, prev, nxt

    def key(self):
        return (self.size, self.addr)


def caching_allocator_peak(sizes, starts, ends):
    """Replays alloc/free events through PyTorch's CUDA caching allocator rules
    (c10/cuda/CUDACachingAllocator.cpp, defaults, one stream, no empty_cache): sizes round
    up to 512 B; <= 1 MiB comes from the small pool in 2 MiB segments; larger from the large
    pool in 20 MiB segments (< 10 MiB) or its size rounded to 2 MiB; best fit by (size,
    address); a block splits when the rest is >= 512 B (small) or > 1 MiB (large); a freed
    block merges with free neighbours in its segment. Returns peak reserved bytes."""
    k_min, k_small, k_small_buf, k_large_buf, k_min_large, k_round = (
        512,
        MiB,
        2 * MiB,
        20 * MiB,
        10 * MiB,
        2 * MiB,
    )
    pools = {True: [], False: []}  # small? -> sorted [(size, addr)]
    by_addr = {}
    reserved = peak = next_addr = 0
    held = {}
    events = sorted(
        [(int(s), 1, i) for i, s in enumerate(starts) if sizes[i]]
        + [(int(e) + 1, 0, i) for i, e in enumerate(ends) if sizes[i]]
    )
    for _, kind, i in events:
        if kind == 1:
            size = max(k_min, -(-int(sizes[i]) // k_min) * k_min)
            small = size <= k_small
            pool = pools[small]
            j = bisect.bisect_left(pool, (size, -1))
            if j < len(pool):
                block = by_addr[pool.pop(j)[1]]
            else:
                seg = k_small_buf if small else (k_large_buf if size < k_min_large else 0)
                seg = seg or -(-size // k_round) * k_round
                block = _Block(next_addr, seg, small)
                by_addr[block.addr] = block
                next_addr += seg + k_large_buf  # segments are not adjacent
                reserved += seg
                peak = max(peak, reserved)
            rest = block.size - size
            if rest >= k_min if small else rest > k_small:
                tail = _Block(block.addr + size, rest, small, block, block.next)
                if block.next:
                    block.next.prev = tail
                block.next, block.size = tail, size
                tail.free = True
                by_addr[tail.addr] = tail
                bisect.insort(pool, tail.key())
            block.free = False
            held[i] = block
        else:
            block = held.pop(i)
            pool = pools[block.small]
            for other in (block.next, block.prev):
                if other is None or not other.free:
                    continue
                pool.remove(other.key())
                del by_addr[other.addr]
                if other is block.next:
                    block.size += other.size
                    block.next = other.next
                    if other.next:
                        other.next.prev = block
                else:
                    del by_addr[block.addr]
                    block.addr, block.size = other.addr, block.size + other.size
                    block.prev = other.prev
                    if other.prev:
                        other.prev.next = block
                    by_addr[block.addr] = block
            block.free = True
            bisect.insort(pool, block.key())
    return peak


def timed_greedy(sizes, starts, ends, runs=5):
    """Median wall and CPU seconds of `runs` greedy solves (the CPU time is what the 1 s
    claim is about: this 2-core machine is shared, so wall time includes waiting)."""
    walls, cpus, p = [], [], None
    for _ in range(runs):
        c0 = time.process_time()
        p = plan.solve(sizes, starts, ends, method="greedy")
        cpus.append(time.process_time() - c0)
        walls.append(p.seconds)
    p.seconds = statistics.median(walls)
    p.cpu_seconds = statistics.median(cpus)
    return p


def stack_trace(batch, seq, blocks):
    """trace_torch of `blocks` LlamaDecoderLayers, forward + backward."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=8192,
        attn_implementation="sdpa",
    )
    layers = [LlamaDecoderLayer(config, layer_idx=i) for i in range(blocks)]
    rope = LlamaRotaryEmbedding(config)
    x = torch.randn(batch, seq, config.hidden_size, requires_grad=True)

    def step():
        pos = torch.arange(seq).unsqueeze(0).expand(batch, -1)
        cos, sin = rope(x, pos)
        h = x
        for layer in layers:
            h = layer(h, position_embeddings=(cos, sin), position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        h.float().pow(2).mean().backward()

    trace = plan.trace_torch(step)
    return trace.sizes, trace.starts, trace.ends, trace.names


def chained_layers(layers, seed, n=24, span=30):
    """A random 24-buffer layer repeated every 30 ops, each layer handing a residual buffer
    to the next (so no piece of time splits off): one big piece for the MIP."""
    rng = np.random.default_rng(seed)
    sz = rng.integers(1, 64, n) * 4096
    st = rng.integers(0, span - 4, n)
    en = np.minimum(st + rng.integers(0, 8, n) + 6, span + 2)
    sizes, starts, ends = [], [], []
    for k in range(layers):
        sizes += sz.tolist() + [64 * 4096]
        starts += (st + span * k).tolist() + [span * k + 1]
        ends += (en + span * k).tolist() + [span * (k + 1) + 3]
    return np.array(sizes), np.array(starts), np.array(ends), [f"c{i}" for i in range(len(sizes))]


def dense_random_instance(n, seed):
    """Stress case: long random lifetimes (a third of the run), uniform sizes."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5000, n) * 64
    starts = rng.integers(0, n, n)
    return sizes, starts, starts + rng.integers(0, n // 3 + 1, n), [f"d{i}" for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer instances")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--solvers", default="cpsat,highs")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    solvers = args.solvers.split(",")

    instances = []
    seqs = [128, 2048] if args.quick else [128, 512, 2048, 8192]
    models = ["qwen2-0.5b", "llama-7b"] if args.quick else list(MODELS)
    for model in models:
        for seq in seqs:
            instances.append(
                (f"infer-{model}-s{seq}", "infer", lambda m=model, s=seq: inference_buffers(m, s))
            )
    shapes = (
        [(1, 512), (8, 1024)]
        if args.quick
        else [(1, 512), (8, 512), (2, 2048), (1, 4096), (8, 4096)]
    )
    for b, s in shapes:
        instances.append(
            (f"train-block-b{b}-s{s}", "train", lambda b=b, s=s: torch_block_trace(b, s))
        )
    instances.append(("train-4blocks-b8-s512", "train", lambda: stack_trace(8, 512, 4)))
    for n in [100, 300, 1000]:
        instances.append((f"rand-{n}", "rand", lambda n=n: random_instance(n, n)))
    instances.append(("stress-dense-300", "rand", lambda: dense_random_instance(300, 0)))
    for seed in range(3):
        instances.append(
            (f"chain-400L-{seed}", "chain", lambda seed=seed: chained_layers(400, seed))
        )
    big = [
        ("infer-llama-7b-7142L-s128-100k", lambda: inference_buffers("llama-7b", 128, layers=7142)),
        ("train-stack-100k", lambda: training_stack(100_000 // 12)),
        ("rand-100k", lambda: random_instance(100_000, 7)),
    ]
    for name, make in big:
        instances.append((name, "big", make))

    rows = []

    def row(inst, n, what, peak, bound, seconds, optimal="", cpu=None):
        rows.append(
            dict(
                instance=inst,
                buffers=n,
                row=what,
                peak=int(peak),
                bound=int(bound),
                ratio=peak / bound if bound else 1.0,
                seconds=seconds,
                cpu_seconds=cpu,
                optimal=optimal,
            )
        )
        r = rows[-1]
        sec = "" if seconds is None else f"{seconds:8.3f}"
        cpu = "" if cpu is None else f"{cpu:7.3f}"
        print(
            f"{inst:32s} {n:7d} {what:26s} {peak / MiB:11.2f} {bound / MiB:11.2f} "
            f"{r['ratio']:7.4f} {sec:>8s} {cpu:>7s} {optimal!s:>7s}",
            flush=True,
        )

    print(
        f"{'instance':32s} {'buffers':>7s} {'row':26s} {'peak MiB':>11s} {'bound MiB':>11s} "
        f"{'ratio':>7s} {'solve s':>8s} {'cpu s':>7s} {'proven':>7s}"
    )
    for name, kind, make in instances:
        sizes, starts, ends, _ = make()
        n = len(sizes)
        bound = plan.lower_bound(sizes, starts, ends)
        row(name, n, "no reuse", int(np.sum(sizes)), bound, None)
        g = timed_greedy(sizes, starts, ends)
        g.check()
        row(name, n, f"greedy ({g.solver})", g.peak, bound, g.seconds, g.optimal, g.cpu_seconds)
        if kind != "big":
            for solver in solvers:
                m = plan.solve(
                    sizes, starts, ends, method="mip", time_limit=args.time_limit, solver=solver
                )
                m.check()
                what = f"MIP {solver}"
                if m.stats.get("layer_buffers"):
                    what += f" (layer of {m.stats['layer_buffers']})"
                row(name, n, what, m.peak, bound, m.seconds, m.optimal)
        if kind == "train":
            peak = caching_allocator_peak(sizes, starts, ends)
            row(name, n, "torch caching alloc (sim)", peak, bound, None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)

    # Targets
    print()
    mips = [r for r in rows if r["row"].startswith("MIP")]
    greedy = [r for r in rows if r["row"].startswith("greedy")]
    for solver in solvers:
        mine = [r for r in mips if r["row"].split(" (")[0] == f"MIP {solver}"]
        worst = max(mine, key=lambda r: r["ratio"])
        slow = max((r for r in mine if r["buffers"] <= 1000), key=lambda r: r["seconds"])
        print(
            f"MIP {solver}: worst ratio {worst['ratio']:.4f} ({worst['instance']}), "
            f"instances <= 1.01x: {sum(r['ratio'] <= 1.01 for r in mine)}/{len(mine)}, "
            f"slowest (<= 1000 buffers) {slow['seconds']:.2f} s ({slow['instance']})"
        )
    worst = max(greedy, key=lambda r: r["ratio"])
    print(
        f"greedy: worst ratio {worst['ratio']:.4f} ({worst['instance']}), "
        f"<= 1.10x: {sum(r['ratio'] <= 1.10 for r in greedy)}/{len(greedy)}; "
        f"100k-buffer times: "
        + ", ".join(
            f"{r['instance']} {r['seconds']:.3f} s wall, {r['cpu_seconds']:.3f} s cpu"
            for r in greedy
            if r["buffers"] >= 90_000
        )
    )
    for r in rows:
        if r["row"].startswith("torch"):
            best = min(
                x["peak"]
                for x in rows
                if x["instance"] == r["instance"] and x["row"].startswith(("MIP", "greedy"))
            )
            print(
                f"{r['instance']}: planned {best / MiB:.1f} MiB vs caching allocator (sim) "
                f"{r['peak'] / MiB:.1f} MiB: {100 * (1 - best / r['peak']):.1f}% below"
            )


if __name__ == "__main__":
    main()
