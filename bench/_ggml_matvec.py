"""llama.cpp's own matrix-vector kernels as a bench baseline: ggml (the libraries that
llama-cpp-python ships, its `-march=native` build) called through ctypes on weights that numpy
owns, so both engines read the same bytes. One ggml graph holds a mul_mat node per weight
matrix, as a decode step's graph does, and runs on ggml's own thread pool (created once per
graph run, as llama.cpp's decode does per step).

    pip install llama-cpp-python    # bench-only
"""

import ctypes
import os

import numpy as np

# enum ggml_type, and each type's (elements, bytes) per block
GGML_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q4_0": 2, "q8_0": 8, "q4_k": 12, "q6_k": 14}
BLOCKS = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q4_0": (32, 18),
    "q8_0": (32, 34),
    "q4_k": (256, 144),
    "q6_k": (256, 210),
}


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


def _libraries():
    import llama_cpp

    lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    base = ctypes.CDLL(os.path.join(lib, "libggml-base.so"))
    cpu = ctypes.CDLL(os.path.join(lib, "libggml-cpu.so"))
    p, sz = ctypes.c_void_p, ctypes.c_size_t
    i64 = ctypes.c_int64
    signatures = {
        (base, "ggml_init"): (p, [_InitParams]),
        (base, "ggml_free"): (None, [p]),
        (base, "ggml_tensor_overhead"): (sz, []),
        (base, "ggml_graph_overhead_custom"): (sz, [sz, ctypes.c_bool]),
        (base, "ggml_new_tensor_1d"): (p, [p, ctypes.c_int, i64]),
        (base, "ggml_new_tensor_2d"): (p, [p, ctypes.c_int, i64, i64]),
        (base, "ggml_get_data"): (p, [p]),
        (base, "ggml_mul_mat"): (p, [p, p, p]),
        (base, "ggml_new_graph_custom"): (p, [p, sz, ctypes.c_bool]),
        (base, "ggml_build_forward_expand"): (None, [p, p]),
        (base, "ggml_backend_cpu_buffer_from_ptr"): (p, [p, sz]),
        (base, "ggml_backend_buffer_free"): (None, [p]),
        (base, "ggml_backend_tensor_alloc"): (ctypes.c_int, [p, p, p]),
        (base, "ggml_quantize_chunk"): (sz, [ctypes.c_int, p, p, i64, i64, i64, p]),
        (cpu, "ggml_cpu_init"): (None, []),
        (cpu, "ggml_graph_compute_with_ctx"): (ctypes.c_int, [p, p, ctypes.c_int]),
    }
    for (library, name), (restype, argtypes) in signatures.items():
        fn = getattr(library, name)
        fn.restype, fn.argtypes = restype, argtypes
    base.ggml_cpu_init = cpu.ggml_cpu_init
    base.ggml_graph_compute_with_ctx = cpu.ggml_graph_compute_with_ctx
    return base


def quantize(dtype, w):
    """ggml's own quantizer (ggml_quantize_chunk, as llama.cpp's quantize tool runs it, no
    importance matrix) on an f32 [rows, cols] array: [rows, row bytes] uint8 in dtype's blocks."""
    elems, nbytes = BLOCKS[dtype]
    rows, cols = w.shape
    if elems == 1 or cols % elems:
        raise ValueError(f"quantize: {cols} columns are not whole {dtype} blocks of {elems}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.empty((rows, cols // elems * nbytes), dtype=np.uint8)
    written = _libraries().ggml_quantize_chunk(
        GGML_TYPES[dtype], w.ctypes.data, out.ctypes.data, 0, rows, cols, None
    )
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.nbytes}")
    return out


class MatvecGraph:
    """y_i = W_i x for weight arrays W_i (2-D, C-contiguous: rows x cols, bf16 as uint16 bit
    patterns; block types as [rows, row bytes] uint8) sharing one f32 vector x per column count.
    run() computes every product on `threads` threads; outputs() returns them. The arrays must
    outlive the graph."""

    def __init__(self, weights, dtype, x_by_cols, threads):
        g = _libraries()
        self.g, self.threads = g, threads
        g.ggml_cpu_init()
        n = len(weights)
        tensor_bytes = g.ggml_tensor_overhead()
        self.ctx_w = g.ggml_init(_InitParams(tensor_bytes * (n + 1), None, True))
        self.buffers, self.ys = [], []
        outputs = sum(w.shape[0] for w in weights) * 4
        inputs = sum(x.size for x in x_by_cols.values()) * 4
        nodes = n + len(x_by_cols) + 8
        # room for the graph, x, y and the work buffer graph_compute_with_ctx adds per run
        size = (
            tensor_bytes * (2 * n + len(x_by_cols) + 64)
            + g.ggml_graph_overhead_custom(4 * nodes, False)
            + outputs
            + inputs
            + (256 << 20)
        )
        self.ctx = g.ggml_init(_InitParams(size, None, False))
        xs = {}
        for cols, x in x_by_cols.items():
            t = g.ggml_new_tensor_1d(self.ctx, GGML_TYPES["f32"], cols)
            ctypes.memmove(g.ggml_get_data(t), x.ctypes.data, x.nbytes)
            xs[cols] = t
        self.graph = g.ggml_new_graph_custom(self.ctx, 4 * nodes, False)
        elems, block_bytes = BLOCKS[dtype]
        for w in weights:
            rows, row_bytes = w.shape[0], w.shape[1] * w.itemsize
            cols = row_bytes // block_bytes * elems
            if not w.flags["C_CONTIGUOUS"] or w.ndim != 2 or row_bytes % block_bytes:
                raise ValueError(
                    f"MatvecGraph: a {w.shape} {w.dtype} array is not C-contiguous {dtype} rows"
                )
            if w.ctypes.data % 64:
                raise ValueError(
                    "MatvecGraph: ggml needs weights 64-byte aligned (torch allocates so)"
                )
            t = g.ggml_new_tensor_2d(self.ctx_w, GGML_TYPES[dtype], cols, rows)
            buffer = g.ggml_backend_cpu_buffer_from_ptr(w.ctypes.data, w.nbytes)
            if g.ggml_backend_tensor_alloc(buffer, t, w.ctypes.data) != 0:
                raise RuntimeError("ggml_backend_tensor_alloc failed")
            self.buffers.append(buffer)
            y = g.ggml_mul_mat(self.ctx, t, xs[cols])
            g.ggml_build_forward_expand(self.graph, y)
            self.ys.append((y, rows))
        self.runs, self.max_runs = 0, 64  # the work buffer of each run stays in ctx

    def run(self):
        if self.runs >= self.max_runs:
            raise RuntimeError("MatvecGraph: more runs than its context has room for")
        self.runs += 1
        status = self.g.ggml_graph_compute_with_ctx(self.ctx, self.graph, self.threads)
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute failed ({status})")

    def outputs(self):
        return [
            np.ctypeslib.as_array(
                ctypes.cast(self.g.ggml_get_data(y), ctypes.POINTER(ctypes.c_float)), (rows,)
            ).copy()
            for y, rows in self.ys
        ]

    def close(self):
        for b in self.buffers:
            self.g.ggml_backend_buffer_free(b)
        self.buffers = []
        for attr in ("ctx", "ctx_w"):
            if getattr(self, attr):
                self.g.ggml_free(getattr(self, attr))
                setattr(self, attr, None)

    def __del__(self):
        self.close()
