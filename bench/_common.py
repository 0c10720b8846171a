"""Shared helpers of the bench scripts: timing, the machine's memory and disk bandwidth, and
the agreement checks that stop a bench before it prints a ratio over different computations."""

import json
import os
import shutil
import statistics
import subprocess
import sys
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


# The disk bound's fio jobs: block sizes x queue depths, none with more than
# DISK_MAX_IN_FLIGHT bytes queued. One job understates some disks (a single 8 MiB QD32 job read
# ~1 GB/s where tierlm read its experts at ~2 GB/s; a sweep on the quiet machine peaked at
# 1.7-2.6 GB/s with 256-512 KiB blocks at QD 8-32, where the 1/8/64 MiB jobs alone gave
# ~1.4), so the bound is the best of them.
DISK_BLOCKS = (256 << 10, 512 << 10, 1 << 20, 8 << 20, 64 << 20)
DISK_DEPTHS = (4, 8, 16, 32, 64)
DISK_MAX_IN_FLIGHT = 512 << 20
# DiskBound re-measures only this many of its first sweep's best jobs.
DISK_RECHECKED = 3
DISK_BOUND = (
    "fio randread, io_uring, O_DIRECT, on the bench's own file: the best of "
    + "/".join(f"{b >> 10}K" if b < 1 << 20 else f"{b >> 20}M" for b in DISK_BLOCKS)
    + " blocks x QD "
    + "/".join(map(str, DISK_DEPTHS))
)


def fio_read(path, block, depth, seconds):
    """Bytes/s of one fio job reading `block`-byte blocks of path at random offsets (io_uring,
    O_DIRECT, `depth` requests queued) for `seconds`; None where fio is missing or fails."""
    job = fio_job(path, block, depth, seconds)
    return None if job is None else job["read"]["bw_bytes"]


def fio_job(path, block, depth, seconds):
    """fio_read's job as fio reports it in JSON (["read"]["bw_bytes"], ["read"]["total_ios"],
    ["ctx"]: its context switches), or None."""
    if shutil.which("fio") is None:
        return None
    out = subprocess.run(
        [
            "fio",
            "--name=bound",
            f"--filename={path}",
            "--rw=randread",
            f"--bs={block}",
            f"--iodepth={depth}",
            "--ioengine=io_uring",
            "--direct=1",
            "--norandommap",
            "--randrepeat=0",
            "--time_based",
            f"--runtime={seconds}",
            "--output-format=json",
            "--readonly",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    return json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]


def disk_jobs(path, blocks=DISK_BLOCKS, depths=DISK_DEPTHS):
    """The (block, depth) fio jobs of the bound on path: blocks over half the file are left out
    (the largest power of two that fits stands in when none does), and depths queueing over
    DISK_MAX_IN_FLIGHT bytes (the smallest depth stays)."""
    size = os.path.getsize(path)
    fitting = [b for b in blocks if 2 * b <= size]
    if not fitting:
        fitting = [max(4096, 1 << max(0, (size // 2).bit_length() - 1))]
    return [
        (block, depth)
        for block in fitting
        for depth in [d for d in depths if block * d <= DISK_MAX_IN_FLIGHT] or [min(depths)]
    ]


def fio_sweep(path, jobs, seconds):
    """[(bytes/s, block, depth)] of the jobs that ran, fastest first."""
    runs = [(fio_read(path, b, d, seconds), b, d) for b, d in jobs]
    return sorted(((bw, b, d) for bw, b, d in runs if bw), reverse=True)


def disk_bandwidth(path, seconds=1, blocks=DISK_BLOCKS, depths=DISK_DEPTHS):
    """The disk's random-read bandwidth (bytes/s) under path, a file the bench reads: the best
    of fio jobs over blocks x depths (disk_jobs), each for `seconds`. None where fio is missing
    or every job failed."""
    runs = fio_sweep(path, disk_jobs(path, blocks, depths), seconds)
    return runs[0][0] if runs else None


class DiskBound:
    """disk_bandwidth measured again and again next to a bench's rows, at a few jobs' cost: the
    first call sweeps every job (disk_jobs), later calls re-run the DISK_RECHECKED fastest of
    that sweep and return the best of them. None where fio is missing or every job failed."""

    def __init__(self, path, seconds=1, blocks=DISK_BLOCKS, depths=DISK_DEPTHS):
        self.path, self.seconds = path, seconds
        self.jobs = disk_jobs(path, blocks, depths)
        self.best = None  # the sweep's fastest jobs, once swept

    def __call__(self):
        if self.best is None:
            runs = fio_sweep(self.path, self.jobs, self.seconds)
            self.best = [(b, d) for _, b, d in runs[:DISK_RECHECKED]]
            return runs[0][0] if runs else None
        runs = fio_sweep(self.path, self.best, self.seconds)
        return runs[0][0] if runs else None

    def describe(self):
        """The re-measured jobs, e.g. "256K QD32, 512K QD16"."""
        return ", ".join(
            f"{b >> 10}K QD{d}" if b < 1 << 20 else f"{b >> 20}M QD{d}" for b, d in self.best or []
        )


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


def pool_rounds(rows, pooled):
    """Rows of the same method and budget (their first two fields; one row per round) as one:
    the list fields at indices `pooled` (steps, bandwidths) concatenated, the others the first
    round's."""
    merged = {}
    for row in rows:
        if (row[0], row[1]) in merged:
            for i in pooled:
                merged[(row[0], row[1])][i] += row[i]
        else:
            merged[(row[0], row[1])] = [list(f) if i in pooled else f for i, f in enumerate(row)]
    return list(merged.values())


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))


def leading_equal(ours, theirs):
    """How many tokens two greedy continuations share before they first differ."""
    n = min(len(ours), len(theirs))
    return next((i for i in range(n) if ours[i] != theirs[i]), n)


def aligned(a):
    """a copied into a 64-byte aligned buffer (as ggml's kernels need)."""
    raw = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def relative_error(ours, theirs):
    """||ours - theirs|| / ||theirs|| (L2, as float64)."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def require_agreement(what, ok, detail):
    """Prints one line on how `what` (e.g. "q4_0: tierlm vs llama.cpp") agrees with its
    baseline; when it does not (ok is False) prints "AGREEMENT FAILED" and exits with status 1,
    so a bench never prints a ratio over two different computations."""
    print(f"agreement {what}: {detail}", flush=True)
    if not ok:
        print(
            f"AGREEMENT FAILED: {what}: {detail}; the two do not compute the same thing, so no "
            "ratio is printed (rerun with a looser floor only if the difference is understood)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)


def require_same_tokens(what, ours, theirs, min_fraction):
    """Greedy tokens of a contender against its baseline's: the leading run of equal tokens
    must cover at least min_fraction of them (require_agreement's exit otherwise)."""
    same = leading_equal(ours, theirs)
    need = min_fraction * len(theirs)
    require_agreement(
        what,
        len(ours) == len(theirs) and same >= need,
        f"greedy tokens equal for the first {same} of {len(theirs)} (floor {need:.0f})",
    )
    return same


def require_close(what, ours, theirs, max_error):
    """Outputs (logits, parameters, ...) of a contender against its baseline's: the relative
    L2 error must be at most max_error (require_agreement's exit otherwise)."""
    error = relative_error(ours, theirs)
    require_agreement(
        what, error <= max_error, f"relative L2 error {error:.2e} (ceiling {max_error:.2g})"
    )
    return error


def require_teacher_forced(what, ours, theirs, tokens, min_top1, max_error):
    """Logits of a contender and its baseline at each step of the baseline's greedy run (both
    fed the same tokens, so one near-tie does not end the comparison as it ends a free greedy
    run): the contender's top-1 must equal the baseline's token at min_top1 of the steps, and
    every step's relative L2 error must be at most max_error (require_agreement's exit
    otherwise). Returns (top-1 fraction, largest error)."""
    top1 = float(np.mean([int(np.argmax(a)) == t for a, t in zip(ours, tokens, strict=True)]))
    error = max(relative_error(a, b) for a, b in zip(ours, theirs, strict=True))
    require_agreement(
        what,
        top1 >= min_top1 and error <= max_error,
        f"teacher-forced top-1 equal at {top1:.0%} of {len(tokens)} steps (floor "
        f"{min_top1:.0%}), largest relative L2 logit error {error:.2e} (ceiling {max_error:.2g})",
    )
    return top1, error
