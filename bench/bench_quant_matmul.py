"""Quantized prefill matrix-matrix kernels at TinyLlama-1.1B's shapes: tierlm's kernel_linear
against llama.cpp's own (ggml's mul_mat from the `-march=native` build llama-cpp-python ships,
called through ctypes) on the same weight bytes and the same f32 activations, n tokens at once.

Both run on one thread and are timed in thread CPU time, interleaved (a, b, a, b, ...), the
median of --repeats pairs: on a shared machine CPU time is what a kernel costs, and ggml's
OpenMP threads spin-wait and collapse on busy cores. Rows: each Q4_K_M tensor kind (q4_k for
q, k, o, gate, up and half the v / down; q6_k for the other v / down), then a prefill step of
the whole model weighted by count (22 layers; lm_head left out: prefill computes its logits
for the last token only). The weights are random blocks with moderate f16 scales.

    python bench/bench_quant_matmul.py [--tokens 512] [--repeats 7] [--types q4_k,q6_k]
"""

import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import aligned, print_table, require_close  # noqa: E402
from _ggml_matvec import _InitParams, _libraries  # noqa: E402
from bench_quant_linear import weight  # noqa: E402
from tierlm import _core  # noqa: E402

K = _core.kernels
LAYERS = 22
# (name, rows, cols, matrices per prefill of each type in Q4_K_M: q4_k, q6_k). llama.cpp's
# recipe puts v and down at q6_k in the first and last eighth of the layers and every third
# layer between (use_more_bits): 11 of TinyLlama's 22.
SHAPES = [
    ("q, o", 2048, 2048, {"q4_k": 2 * LAYERS, "q6_k": 0}),
    ("k, v", 256, 2048, {"q4_k": LAYERS + LAYERS // 2, "q6_k": LAYERS // 2}),
    ("gate, up", 5632, 2048, {"q4_k": 2 * LAYERS, "q6_k": 0}),
    ("down", 2048, 5632, {"q4_k": LAYERS // 2, "q6_k": LAYERS // 2}),
]
GGML_TYPE = {"q4_k": 12, "q6_k": 14}


class GgmlMatmul:
    """Y = X W^T for one block-type weight (rows x row_bytes uint8, 64-byte aligned) and
    X (n x cols f32), as one ggml graph with a single mul_mat node."""

    def __init__(self, w, dtype, cols, x):
        g = self.g = _libraries()
        g.ggml_cpu_init()
        rows, n = w.shape[0], x.shape[0]
        if w.ctypes.data % 64:
            raise ValueError("GgmlMatmul: ggml needs the weights 64-byte aligned")
        over = g.ggml_tensor_overhead()
        self.ctx_w = g.ggml_init(_InitParams(over * 2, None, True))
        # room for x, y, the graph and the work buffer (x converted to q8_K) of each run
        size = over * 16 + g.ggml_graph_overhead_custom(16, False) + 8 * n * (rows + cols)
        self.runs, self.max_runs = 0, 32
        work = (n * cols * 5) // 4 + 4096  # x as q8_K blocks (292 bytes per 256)
        self.ctx = g.ggml_init(_InitParams(size + self.max_runs * work + (16 << 20), None, False))
        tx = g.ggml_new_tensor_2d(self.ctx, 0, cols, n)
        ctypes.memmove(g.ggml_get_data(tx), x.ctypes.data, x.nbytes)
        tw = g.ggml_new_tensor_2d(self.ctx_w, GGML_TYPE[dtype], cols, rows)
        self.buffer = g.ggml_backend_cpu_buffer_from_ptr(w.ctypes.data, w.nbytes)
        if g.ggml_backend_tensor_alloc(self.buffer, tw, w.ctypes.data) != 0:
            raise RuntimeError("ggml_backend_tensor_alloc failed")
        self.y = g.ggml_mul_mat(self.ctx, tw, tx)
        self.graph = g.ggml_new_graph_custom(self.ctx, 16, False)
        g.ggml_build_forward_expand(self.graph, self.y)
        self.shape = (n, rows)

    def __call__(self):
        if self.runs >= self.max_runs:
            raise RuntimeError("GgmlMatmul: more runs than its context has room for")
        self.runs += 1
        if self.g.ggml_graph_compute_with_ctx(self.ctx, self.graph, 1) != 0:
            raise RuntimeError("ggml_graph_compute failed")

    def output(self):
        ptr = ctypes.cast(self.g.ggml_get_data(self.y), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, self.shape).copy()

    def close(self):
        self.g.ggml_backend_buffer_free(self.buffer)
        self.g.ggml_free(self.ctx)
        self.g.ggml_free(self.ctx_w)


def cpu_times(fns, repeats):
    """Median thread CPU time of each fn, the runs interleaved."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            t0 = time.thread_time()
            fn()
            t.append(time.thread_time() - t0)
    return [statistics.median(t) for t in times]


def bench(name, rows, cols, dtype, n, repeats, rng):
    w = aligned(weight(rows, cols, dtype, rng))
    x = rng.standard_normal((n, cols), dtype=np.float32)
    ggml = GgmlMatmul(w, dtype, cols, x)
    out = {}

    def ours():
        out["y"] = K.linear(x, w, dtype=dtype)

    try:
        ours()
        ggml()
        require_close(
            f"{dtype} {name} n={n}: tierlm vs ggml", np.asarray(out["y"]), ggml.output(), 2e-3
        )
        t_ours, t_ggml = cpu_times([ours, ggml], repeats)
    finally:
        ggml.close()
    return t_ours, t_ggml


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--types", default="q4_k,q6_k")
    args = parser.parse_args()
    if not 1 <= args.repeats <= 30:
        parser.error("--repeats: 1 to 30 (each ggml graph has room for 32 runs)")
    _core.set_threads(1)
    rng = np.random.default_rng(0)
    print(
        f"1 thread, thread CPU time, n = {args.tokens} tokens, "
        f"SIMD {_core.cpu_info()['simd_level']}"
    )
    table, total_ours, total_ggml = [], 0.0, 0.0
    for dtype in args.types.split(","):
        for name, rows, cols, counts in SHAPES:
            if not counts[dtype]:
                continue
            t_ours, t_ggml = bench(name, rows, cols, dtype, args.tokens, args.repeats, rng)
            total_ours += counts[dtype] * t_ours
            total_ggml += counts[dtype] * t_ggml
            gmac = rows * cols * args.tokens / 1e9
            table.append(
                [
                    dtype,
                    name,
                    f"{rows}x{cols}",
                    counts[dtype],
                    f"{gmac / t_ours:.1f}",
                    f"{gmac / t_ggml:.1f}",
                    f"{t_ggml / t_ours:.2f}",
                ]
            )
    table.append(["all", "prefill step", "", "", "", "", f"{total_ggml / total_ours:.2f}"])
    print_table(
        ["dtype", "matrix", "shape", "count", "tierlm GMAC/s", "ggml GMAC/s", "x ggml"], table
    )
    print(
        f"one prefill step of {args.tokens} tokens on one core: tierlm {total_ours:.2f} s, "
        f"ggml {total_ggml:.2f} s (matrices only)"
    )


if __name__ == "__main__":
    main()
