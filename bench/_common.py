"""Shared helpers of the bench scripts: timing and the machine's memory bandwidth."""

import statistics
import time

import numpy as np


def median_time(fn, repeats=7, warmup=1):
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_times(fns, repeats=7, warmup=1):
    """Median wall time of each fn in seconds, the runs interleaved (a, b, a, b, ...) so that
    load from other processes on a shared machine hits every contender alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


class CopyBandwidth:
    """numpy copy of arrays far larger than the caches, as a contender in median_times: its
    bytes moved (read + write) over its median time is the DRAM bandwidth under the same
    conditions as the other contenders."""

    def __init__(self, nbytes=256 << 20):
        self.src = np.ones(nbytes // 4, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        self.bytes = 2 * self.src.nbytes

    def __call__(self):
        np.copyto(self.dst, self.src)


def memory_bandwidth(nbytes=256 << 20, threads=2):
    """DRAM bandwidth in bytes/s, measured now: the best of numpy copy (read + write bytes)
    and a torch sum on `threads` threads (read bytes), over arrays far larger than the caches."""
    import torch

    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy = 2 * src.nbytes / median_time(lambda: np.copyto(dst, src), repeats=5)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    t = torch.from_numpy(src)
    read = src.nbytes / median_time(lambda: t.sum(), repeats=5)
    torch.set_num_threads(before)
    return {"copy": copy, "read": read, "bound": max(copy, read)}


def start_kernel_bench(threads):
    """Sets tierlm's and torch's threads and prints the bandwidth measured now (the kernel
    benches' preamble); returns _core.cpu_info()."""
    import torch
    from tierlm import _core

    _core.set_threads(threads)
    torch.set_num_threads(threads)
    bw = memory_bandwidth(threads=threads)
    print(
        f"bandwidth at start: numpy copy {bw['copy'] / 1e9:.1f} GB/s (read+write), torch sum "
        f"{bw['read'] / 1e9:.1f} GB/s (read); bounds below use the copy timed on each row"
    )
    return _core.cpu_info()


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
