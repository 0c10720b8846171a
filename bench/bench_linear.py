"""kernel_linear: decode matrix-vector (n = 1) throughput in GB/s of weights streamed, for f32,
bf16 and f16 weights of Llama-1B-ish projection shapes, vs numpy and torch on the same
threads and vs the DRAM bound (weight bytes / bandwidth measured in the same run); plus the
prefill matrix-matrix path (n = 128) in GFLOP/s vs torch. Each timed call rotates over enough
weight copies (> 192 MiB) that weights come from DRAM, as in a model; the bandwidth is a numpy
copy (read + write bytes) timed interleaved with the contenders on each row.

    python bench/bench_linear.py [--threads 2]
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    CopyBandwidth,
    median_times,
    print_table,
    require_close,
    start_kernel_bench,
)
from tierlm import _core

K = _core.kernels
SHAPES = [(5632, 2048), (2048, 5632)]
TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def weights(rows, cols, dtype, rng, copies):
    out = []
    for _ in range(copies):
        w = torch.from_numpy(rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        w = w.to(TORCH_DTYPE[dtype])
        arr = w.view(torch.int16).numpy().view(np.uint16) if dtype == "bf16" else w.numpy()
        out.append((arr, w))
    return out


def bench(rows, cols, dtype, rng, copy, n):
    nbytes = rows * cols * K.dtype_size(dtype)
    copies = max(2, (192 << 20) // nbytes + 1) if n == 1 else 2
    ws = weights(rows, cols, dtype, rng, copies)
    x = rng.standard_normal((n, cols), dtype=np.float32)
    xt = torch.from_numpy(x).to(TORCH_DTYPE[dtype])

    def ours():
        for arr, _ in ws:
            K.linear(x, arr, dtype=dtype)

    # the same weights widened to f32; 16-bit paths may round x to the weight dtype
    require_close(
        f"{rows}x{cols} {dtype} n={n}: tierlm linear vs f32 matmul",
        np.asarray(K.linear(x, ws[0][0], dtype=dtype)),
        x @ ws[0][1].float().numpy().T,
        1e-5 if dtype == "f32" else 1e-2,
    )

    def theirs():
        for _, w in ws:
            F.linear(xt, w)

    fns = [ours, theirs, copy]
    if dtype == "f32":
        fns.append(lambda: [x @ arr.T for arr, _ in ws])
    times = median_times(fns, repeats=7)
    bandwidth = copy.bytes / times[2]
    t_ours, t_torch = times[0] / copies, times[1] / copies
    t_np = times[3] / copies if dtype == "f32" else None
    if n == 1:  # GB/s of weights, and the DRAM bound
        rate = lambda t: f"{nbytes / t / 1e9:.1f}"  # noqa: E731
        bound = [f"{bandwidth / 1e9:.1f}", f"{nbytes / bandwidth / t_ours:.2f}"]
    else:  # GFLOP/s; compute bound, no DRAM column
        rate = lambda t: f"{2 * n * rows * cols / t / 1e9:.0f}"  # noqa: E731
        bound = ["-", "-"]
    return [
        f"{rows}x{cols}",
        dtype,
        n,
        rate(t_ours),
        rate(t_torch),
        rate(t_np) if t_np else "-",
        f"{t_torch / t_ours:.2f}",
        *bound,
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill", type=int, default=128)
    args = parser.parse_args()
    info = start_kernel_bench(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"threads {args.threads}, SIMD {info['simd_level']}, torch {torch.__version__} "
        f"(torch runs x in the weight dtype), numpy {np.__version__}"
    )
    copy = CopyBandwidth()
    rows = []
    for rows_cols in SHAPES:
        for dtype in ("f32", "bf16", "f16"):
            rows.append(bench(*rows_cols, dtype, rng, copy, 1))
    print("n = 1 (decode): GB/s of weights read")
    print_table(
        ["shape", "dtype", "n", "tierlm", "torch", "numpy", "vs torch", "copy GB/s", "of bound"],
        rows,
    )
    rows = []
    for rows_cols in SHAPES:
        for dtype in ("f32", "bf16", "f16"):
            rows.append(bench(*rows_cols, dtype, rng, copy, args.prefill))
    print(f"n = {args.prefill} (prefill): GFLOP/s")
    print_table(["shape", "dtype", "n", "tierlm", "torch", "numpy", "vs torch", "-", "-"], rows)


if __name__ == "__main__":
    main()
