"""kernel_linear on GGUF block types: decode matrix-vector (n = 1) GB/s of weights streamed
per type, against the DRAM bound (weight bytes / read bandwidth measured interleaved on the
same row) and against bf16 / f16 weights of the same shape in the same run; plus prefill
(n = 128) GFLOP/s. "tok/s 1B" is the decode rate of a 1B-parameter model whose every weight
streams at that speed (GB/s / bytes per weight). Each timed call rotates over enough weight
copies (> 192 MiB) that weights come from DRAM, as in a model. The weights are random blocks
with moderate f16 scales (speed does not depend on the values).

With --in-cache, a second table gives each type's compute ceiling: matvec GB/s of one thread on
a ~900 KB matrix that stays in L2, timed in thread CPU time (best of many short runs, so other
processes on a shared machine cost little); a type reaches the DRAM bound only where this
ceiling is well above the bandwidth per thread.

    python bench/bench_quant_linear.py [--threads 2] [--prefill 128] [--in-cache]
"""

import argparse
import time

import numpy as np
import torch
from _common import (
    CopyBandwidth,
    median_times,
    print_table,
    require_close,
    start_kernel_bench,
)
from tierlm import _core
from tierlm.quant import dequantize

K = _core.kernels
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
# (elements, bytes) per block and the byte offsets of the f16 scales in a block.
BLOCKS = {
    "q8_0": (32, 34, [0]),
    "q4_0": (32, 18, [0]),
    "q4_1": (32, 20, [0, 2]),
    "q5_0": (32, 22, [0]),
    "q5_1": (32, 24, [0, 2]),
    "q4_k": (256, 144, [0, 2]),
    "q5_k": (256, 176, [0, 2]),
    "q6_k": (256, 210, [208]),
    "bf16": (1, 2, []),
    "f16": (1, 2, []),
}
TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "bf16", "f16"]


def weight(rows, cols, dtype, rng):
    elems, nbytes, scales = BLOCKS[dtype]
    if dtype == "f16":
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
    if dtype == "bf16":
        w = torch.from_numpy(rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        return w.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    blocks = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    for at in scales:
        d = rng.uniform(1e-3, 1e-2, blocks.shape[0]).astype(np.float16)
        blocks[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // elems * nbytes)


class ReadBandwidth:
    """torch sum over an array far larger than the caches: read bytes over its median time is
    the DRAM read bandwidth under the same conditions as the contenders."""

    def __init__(self, nbytes=256 << 20):
        self.src = torch.ones(nbytes // 4, dtype=torch.float32)
        self.bytes = nbytes

    def __call__(self):
        self.src.sum()


def bench(rows, cols, dtype, rng, copy, read, n):
    w0 = weight(rows, cols, dtype, rng)
    nbytes = w0.nbytes
    copies = max(2, (192 << 20) // nbytes + 1) if n == 1 else 2
    ws = [w0] + [w0.copy() for _ in range(copies - 1)]
    x = rng.standard_normal((n, cols), dtype=np.float32)
    name = None if dtype == "f16" else dtype

    def ours():
        for w in ws:
            K.linear(x, w, dtype=name)

    check(w0, x, dtype)
    times = median_times([ours, copy, read], repeats=7)
    bandwidth = max(copy.bytes / times[1], read.bytes / times[2])
    t = times[0] / copies
    if n == 1:
        gbs = nbytes / t / 1e9
        per_weight = nbytes / (rows * cols)
        return (
            dtype,
            [
                f"{rows}x{cols}",
                dtype,
                f"{per_weight * 8:.2f}",
                f"{gbs:.1f}",
                f"{gbs / per_weight:.1f}",
                f"{bandwidth / 1e9:.1f}",
                f"{nbytes / bandwidth / t:.2f}",
            ],
            t,
        )
    return dtype, [f"{rows}x{cols}", dtype, n, f"{2 * n * rows * cols / t / 1e9:.0f}"], t


def check(w, x, dtype, rows=61):
    """The kernel on the first rows against x times those rows dequantized by tierlm.quant's
    numpy reference (16-bit: widened): within 2% (the activations go to int8 blocks)."""
    w = w[:rows]
    if dtype == "bf16":
        ref = (w.astype(np.uint32) << 16).view(np.float32)
    elif dtype == "f16":
        ref = w.astype(np.float32)
    else:
        ref = dequantize(dtype, w, (rows, x.shape[1]))
    require_close(
        f"{dtype} n={x.shape[0]}: tierlm linear vs the dequantized reference",
        np.asarray(K.linear(x, w, dtype=None if dtype == "f16" else dtype)),
        x @ ref.T,
        2e-2,
    )


def in_cache(dtype, rng, cols=4096, target=900_000):
    """GB/s of one thread's matvec on an L2-resident matrix, in thread CPU time."""
    row_bytes = weight(1, cols, dtype, rng).nbytes
    w = weight(max(16, target // row_bytes), cols, dtype, rng)
    x = rng.standard_normal((1, cols), dtype=np.float32)
    name = None if dtype == "f16" else dtype
    best = float("inf")
    for _ in range(200):
        t0 = time.thread_time()
        for _ in range(10):
            K.linear(x, w, dtype=name)
        best = min(best, (time.thread_time() - t0) / 10)
    return w.nbytes / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill", type=int, default=128)
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--in-cache", action="store_true")
    args = parser.parse_args()
    types = args.types.split(",")
    info = start_kernel_bench(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"threads {args.threads}, SIMD {info['simd_level']}, AVX512-VNNI "
        f"{info.get('avx512_vnni', False)}"
    )
    copy, read = CopyBandwidth(), ReadBandwidth()
    table = []
    for rows, cols in SHAPES:
        results = {d: bench(rows, cols, d, rng, copy, read, 1) for d in types}
        base = results.get("bf16")
        for d in types:
            row = results[d][1]
            row.append(f"{base[2] / results[d][2]:.2f}" if base else "-")
            table.append(row)
    print("n = 1 (decode): GB/s of weights read; of bound = (weight bytes / bandwidth) / time")
    print_table(
        ["shape", "dtype", "bits/w", "GB/s", "tok/s 1B", "bound GB/s", "of bound", "vs bf16"],
        table,
    )
    if args.prefill > 1:
        table = []
        for rows, cols in SHAPES[:2]:
            results = {d: bench(rows, cols, d, rng, copy, read, args.prefill) for d in types}
            base = results.get("bf16")
            for d in types:
                row = results[d][1]
                row.append(f"{base[2] / results[d][2]:.2f}" if base else "-")
                table.append(row)
        print(f"n = {args.prefill} (prefill): GFLOP/s")
        print_table(["shape", "dtype", "n", "GFLOP/s", "vs bf16"], table)
    if args.in_cache:
        _core.set_threads(1)
        rates = {d: in_cache(d, rng) for d in types}
        base = rates.get("bf16")
        table = [
            [d, f"{r:.1f}", f"{r / (BLOCKS[d][1] * 8 / BLOCKS[d][0]) * 8:.1f}"]
            + ([f"{r / base:.2f}"] if base else ["-"])
            for d, r in rates.items()
        ]
        print("in cache, 1 thread, CPU time: matvec GB/s (compute ceiling) and Gweights/s")
        print_table(["dtype", "GB/s", "Gweights/s", "vs bf16"], table)


if __name__ == "__main__":
    main()
