"""Decode matrix-vector (n = 1) at TinyLlama-1.1B's shapes, 16-bit and GGUF block types: tierlm's
kernel_linear against llama.cpp's own kernels (ggml's mul_mat, the `-march=native` build
llama-cpp-python ships, on the same bytes) and against the DRAM read bound, on 2 threads. Block
types are made by ggml's own quantizer (ggml_quantize_chunk) from random f32 weights; both
engines then read those bytes, each rounding x to int8 blocks its own way.

Each contender streams every copy of one shape in turn, enough copies (--working-set bytes)
that weights come from DRAM as in a model's decode step, not from the last-level cache; tierlm
runs one call per copy, ggml one graph with a mul_mat node per copy. The read bandwidth is a
torch sum over a buffer as large, on the same threads, timed interleaved with the contenders on
each row (rounds a, b, c, a, b, c, ...). The last row weighs each shape by its count in a
decode step (22 layers x q, k, v, o, gate, up, down, and the lm_head once).

    python bench/bench_matvec.py [--threads 2] [--dtypes bf16,f16,q8_0,q4_0,q4_k,q6_k]
                                 [--working-set 1GiB]
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import aligned, median_times, print_table, require_close  # noqa: E402
from _ggml_matvec import BLOCKS, MatvecGraph, quantize  # noqa: E402
from tierlm import _core  # noqa: E402
from tierlm.quant import dequantize  # noqa: E402
from tierlm.sizes import parse_size  # noqa: E402

K = _core.kernels
LAYERS = 22
# (name, rows, cols, matrices per decode step) of TinyLlama-1.1B
SHAPES = [
    ("q, o", 2048, 2048, 2 * LAYERS),
    ("k, v", 256, 2048, 2 * LAYERS),
    ("gate, up", 5632, 2048, 2 * LAYERS),
    ("down", 2048, 5632, LAYERS),
    ("lm_head", 32000, 2048, 1),
]
TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16}
BLOCK_TYPES = ["q8_0", "q4_0", "q4_k", "q6_k"]
DTYPES = [*TORCH_DTYPE, *BLOCK_TYPES]
# relative L2 error ceilings against x times the f32 (16-bit: widened; blocks: dequantized)
# weights: llama.cpp rounds x to the weight dtype (as tierlm's AVX512-BF16 path does for bf16);
# block types round x to int8 blocks (about 1e-2 seen at 2048 columns)
TOLERANCE = {"bf16": 1e-2, "f16": 2e-3, "q8_0": 2e-2, "q4_0": 2e-2, "q4_k": 2e-2, "q6_k": 2e-2}


def weight_copies(rows, cols, dtype, copies, rng):
    """copies of random weights as the kernels take them (16-bit: independent matrices; block
    types: one matrix quantized by ggml, copied) and the f32 values they stand for."""
    w = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
    if dtype in BLOCK_TYPES:
        blocks = quantize(dtype, w)
        return [aligned(blocks) for _ in range(copies)], dequantize(dtype, blocks, (rows, cols))
    ts = [torch.from_numpy(w).to(TORCH_DTYPE[dtype])]
    for _ in range(copies - 1):  # one f32 matrix at a time
        w = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        ts.append(torch.from_numpy(w).to(TORCH_DTYPE[dtype]))
    if dtype == "bf16":
        return [t.view(torch.int16).numpy().view(np.uint16) for t in ts], ts[0].float().numpy()
    return [t.numpy() for t in ts], ts[0].float().numpy()


def bench_shape(name, rows, cols, dtype, args, rng):
    """[seconds per matrix for tierlm, ggml, and the read bound], after the agreement checks."""
    nbytes = weight_bytes(rows, cols, dtype)
    copies = max(2, -(-args.working_set // nbytes))
    ws, w_ref = weight_copies(rows, cols, dtype, copies, rng)
    x = rng.standard_normal(cols, dtype=np.float32)
    graph = MatvecGraph(ws, dtype, {cols: x}, args.threads)
    graph.run()
    reference = w_ref @ x
    tolerance = TOLERANCE[dtype]
    require_close(f"{name} {dtype}: ggml vs f32 matvec", graph.outputs()[0], reference, tolerance)
    require_close(
        f"{name} {dtype}: tierlm vs f32 matvec",
        K.linear(x, ws[0], dtype=dtype),
        reference,
        tolerance,
    )
    sink = torch.empty(copies * nbytes // 4, dtype=torch.float32).fill_(1.0)

    def ours():
        for a in ws:
            K.linear(x, a, dtype=dtype)

    times = median_times([ours, graph.run, sink.sum], repeats=args.repeats)
    graph.close()
    return [t / copies for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--working-set", default="1GiB", help="bytes of weights per shape")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per shape")
    args = parser.parse_args()
    args.working_set = parse_size(args.working_set, "--working-set")
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = sorted(set(dtypes) - set(DTYPES))
    if bad:
        parser.error(f"--dtypes: {bad} are not among {DTYPES}")
    _core.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    info = _core.cpu_info()
    print(
        f"threads {args.threads}, tierlm SIMD {info['simd_level']}, working set "
        f"{args.working_set / 2**20:.0f} MiB per shape; GB/s of weights read, median of "
        f"{args.repeats} interleaved rounds; bound: torch sum over the same bytes"
    )
    rng = np.random.default_rng(0)
    table = []
    for dtype in dtypes:
        step = np.zeros(3)
        step_bytes = 0
        for name, rows, cols, count in SHAPES:
            t = np.array(bench_shape(name, rows, cols, dtype, args, rng))
            nbytes = weight_bytes(rows, cols, dtype)
            step += count * t
            step_bytes += count * nbytes
            table.append(row(f"{rows}x{cols} ({name})", dtype, nbytes, t))
        table.append(row("decode step", dtype, step_bytes, step))
    print_table(
        [
            "shape",
            "dtype",
            "tierlm GB/s",
            "llama.cpp GB/s",
            "x llama.cpp",
            "read GB/s",
            "tierlm of bound",
            "llama.cpp of bound",
        ],
        table,
    )


def weight_bytes(rows, cols, dtype):
    if dtype in BLOCK_TYPES:
        elems, nbytes = BLOCKS[dtype]
        return rows * cols // elems * nbytes
    return rows * cols * 2


def row(label, dtype, nbytes, t):
    rate = [nbytes / s / 1e9 for s in t]
    return [
        label,
        dtype,
        f"{rate[0]:.1f}",
        f"{rate[1]:.1f}",
        f"{t[1] / t[0]:.2f}",
        f"{rate[2]:.1f}",
        f"{t[2] / t[0]:.2f}",
        f"{t[2] / t[1]:.2f}",
    ]


if __name__ == "__main__":
    main()
