"""Fused attention (tierlm._core.kernels.attention) vs torch SDPA with enable_gqa=True, prefill
(causal, n_q = kv_len) and decode (n_q = 1), 32 query heads, 8 KV heads, head_dim 128, f32.
Decode reads the whole KV cache once: its bound is the KV bytes over the DRAM bandwidth, a
numpy copy (read + write bytes) timed interleaved with both contenders on each row. Decode
rotates over several layers' caches (> 256 MiB in all) so the KV comes from DRAM, as in a
model, not from the last-level cache.

    python bench/bench_attention.py [--threads 2] [--prefill 512,1024,2048,4096]
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
H, HKV, D = 32, 8, 128


def prefill_row(n, rng):
    q = rng.standard_normal((n, H, D), dtype=np.float32)
    kc = rng.standard_normal((HKV, n, D), dtype=np.float32)
    vc = rng.standard_normal((HKV, n, D), dtype=np.float32)
    ws = np.zeros(K.attention_workspace(n, H, HKV, D, n, n, 0), dtype=np.uint8)
    scale = D**-0.5
    qt = torch.from_numpy(q).transpose(0, 1).contiguous()[None]
    kt, vt = torch.from_numpy(kc)[None], torch.from_numpy(vc)[None]

    def ref():
        return F.scaled_dot_product_attention(
            qt, kt, vt, is_causal=True, scale=scale, enable_gqa=True
        )

    require_close(
        f"prefill {n}: tierlm attention vs torch SDPA",
        np.asarray(K.attention(q, kc, vc, n, 0, scale, workspace=ws)).reshape(-1),
        ref()[0].transpose(0, 1).numpy().reshape(-1),
        1e-5,
    )
    ours, theirs = median_times(
        [lambda: K.attention(q, kc, vc, n, 0, scale, workspace=ws), ref], repeats=5
    )
    flops = 4 * H * D * n * (n + 1) / 2
    return [
        "prefill",
        n,
        n,
        f"{ours * 1e3:.2f}",
        f"{theirs * 1e3:.2f}",
        f"{theirs / ours:.2f}",
        f"{flops / ours / 1e9:.0f} GFLOP/s",
        "",
        "",
        "",
    ]


def decode_row(kv, rng, copy):
    kv_bytes = 2 * HKV * kv * D * 4
    layers = max(2, (256 << 20) // kv_bytes + 1)
    caches = [
        (
            rng.standard_normal((HKV, kv, D), dtype=np.float32),
            rng.standard_normal((HKV, kv, D), dtype=np.float32),
        )
        for _ in range(layers)
    ]
    q = rng.standard_normal((1, H, D), dtype=np.float32)
    ws = np.zeros(K.attention_workspace(1, H, HKV, D, kv, kv, kv - 1), dtype=np.uint8)
    scale = D**-0.5

    def ours():
        for kc, vc in caches:
            K.attention(q, kc, vc, kv, kv - 1, scale, workspace=ws)

    qt = torch.from_numpy(q).transpose(0, 1).contiguous()[None]
    tcaches = [(torch.from_numpy(kc)[None], torch.from_numpy(vc)[None]) for kc, vc in caches]

    def theirs():
        for kt, vt in tcaches:
            F.scaled_dot_product_attention(qt, kt, vt, scale=scale, enable_gqa=True)

    kc, vc = caches[0]
    kt, vt = tcaches[0]
    require_close(
        f"decode {kv}: tierlm attention vs torch SDPA",
        np.asarray(K.attention(q, kc, vc, kv, kv - 1, scale, workspace=ws)).reshape(-1),
        F.scaled_dot_product_attention(qt, kt, vt, scale=scale, enable_gqa=True)[0]
        .transpose(0, 1)
        .numpy()
        .reshape(-1),
        1e-5,
    )

    t_ours, t_theirs, t_copy = median_times([ours, theirs, copy], repeats=7)
    t_ours, t_theirs = t_ours / layers, t_theirs / layers
    bandwidth = copy.bytes / t_copy
    bound = kv_bytes / bandwidth
    return [
        "decode",
        1,
        kv,
        f"{t_ours * 1e3:.3f}",
        f"{t_theirs * 1e3:.3f}",
        f"{t_theirs / t_ours:.2f}",
        f"{kv_bytes / t_ours / 1e9:.1f} GB/s",
        f"{bandwidth / 1e9:.1f}",
        f"{bound * 1e3:.3f}",
        f"{bound / t_ours:.2f}",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefill", default="512,1024,2048,4096")
    parser.add_argument("--decode", default="512,1024,2048,4096,8192,16384")
    args = parser.parse_args()
    info = start_kernel_bench(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"threads {args.threads}, SIMD {info['simd_level']}, heads {H}/{HKV} kv, head_dim {D}, "
        f"f32; torch {torch.__version__}"
    )
    rows = [prefill_row(int(n), rng) for n in args.prefill.split(",") if n]
    copy = CopyBandwidth()
    rows += [decode_row(int(kv), rng, copy) for kv in args.decode.split(",") if kv]
    print_table(
        [
            "phase",
            "n_q",
            "kv_len",
            "tierlm ms",
            "torch ms",
            "speedup",
            "rate",
            "copy GB/s",
            "DRAM bound ms",
            "of bound",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
