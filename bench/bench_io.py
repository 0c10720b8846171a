"""Claim: tierlm's io_uring back end reads as fast as fio (io_uring, O_DIRECT) at 4 KiB, 64 KiB
and 1 MiB random reads, queue depth 32 (target >= 0.95x); the thread pool is shown beside it.
tierlm keeps the queue full the way its callers do: a batch of QD requests in the ring and the
next batch in the engine's backlog, refilled a whole batch at a time.

One table: block size x queue depth; the median MB/s of several interleaved runs of each
back end and of fio on the same file, same block size and queue depth; the ratios; and the
context switches per read of each (this process's threads, all of them, from getrusage; fio's
own count), where small random reads lose their time: a thread that sleeps and is woken per
few reads. fio is the bound: what the device gives a tuned C tool. Installs fio with apt when
missing.

    python bench/bench_io.py [--dir DIR] [--size 2GiB] [--seconds 3] [--runs 3]
"""

import argparse
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import tierlm
from tierlm.cli.bench_io import create_file, measure
from tierlm.sizes import format_size, parse_size

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fio_job, require_agreement  # noqa: E402


def ensure_fio():
    if shutil.which("fio"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("fio missing: installing it with apt", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "fio"], check=True, env=env)


def switches():
    """Context switches (voluntary and not) of every thread of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_nvcsw + r.ru_nivcsw


def check_reads(path, block, backend, count=8):
    """The back end's batched reads of `count` random aligned blocks (page-aligned buffers, so
    O_DIRECT applies as in the timed runs) must return the file's bytes, as os.pread reads
    them; otherwise the bench exits before timing reads that are wrong."""
    size = os.path.getsize(path)
    rng = np.random.default_rng(block)
    offsets = [int(o) * block for o in rng.integers(0, size // block, count)]
    areas = [mmap.mmap(-1, block) for _ in offsets]
    bufs = [np.frombuffer(a, dtype=np.uint8) for a in areas]
    f = tierlm.io.File(path, backend=backend)
    for future in f.pread_batch(zip(bufs, offsets, strict=True)):
        future.result()
    fd = os.open(path, os.O_RDONLY)
    try:
        wrong = [
            o for b, o in zip(bufs, offsets, strict=True) if bytes(b) != os.pread(fd, block, o)
        ]
    finally:
        os.close(fd)
    require_agreement(
        f"{backend} reads of {format_size(block)} blocks vs os.pread",
        not wrong,
        f"{count - len(wrong)} of {count} blocks equal" + (f" (wrong at {wrong})" if wrong else ""),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the test file goes")
    parser.add_argument("--size", default="2GiB", help="test file size (default 2GiB)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per point (default 3)")
    parser.add_argument("--blocks", default="4KiB,64KiB,1MiB")
    parser.add_argument("--qds", default="1,32")
    parser.add_argument("--keep", action="store_true", help="keep the test file")
    args = parser.parse_args()

    ensure_fio()
    probe = tierlm.io.probe()
    backends = ["uring", "threads"] if probe["uring_available"] else ["threads"]
    size = parse_size(args.size)
    path = os.path.join(args.dir, "tierlm-bench-io.bin")
    if not os.path.exists(path) or os.path.getsize(path) != size:
        print(f"writing {format_size(size)} test file {path}", file=sys.stderr)
        create_file(path, size)
    blocks = [parse_size(b) for b in args.blocks.split(",")]
    qds = [int(q) for q in args.qds.split(",")]

    rows = []
    try:
        for block in blocks:
            for name in backends:
                check_reads(path, block, name)
            for qd in qds:
                samples = {name: [] for name in [*backends, "fio"]}
                ctx = {name: [] for name in samples}  # context switches per read
                direct = True
                for _ in range(args.runs):  # interleaved, so drift hits every column alike
                    for name in backends:
                        before = switches()
                        r = measure(path, block, qd, name, args.seconds)
                        ctx[name].append((switches() - before) / r["requests"])
                        direct = direct and r["direct"]
                        samples[name].append(r["bytes_per_second"])
                    fio = fio_job(path, block, qd, args.seconds)
                    if fio is None:
                        sys.exit(f"fio failed reading {path}: run it by hand to see why")
                    samples["fio"].append(fio["read"]["bw_bytes"])
                    ctx["fio"].append(fio["ctx"] / max(1, fio["read"]["total_ios"]))
                require_agreement(
                    f"{format_size(block)} QD {qd}: tierlm reads O_DIRECT like fio",
                    direct,
                    "O_DIRECT" if direct else "tierlm read through the page cache, fio did not",
                )
                med = {name: statistics.median(v) / 1e6 for name, v in samples.items()}
                med_ctx = {name: statistics.median(v) for name, v in ctx.items()}
                rows.append((block, qd, med, med_ctx, direct))
                print(f"done {format_size(block)} QD {qd}: {med} {med_ctx}", file=sys.stderr)
    finally:
        if not args.keep:
            os.unlink(path)

    print(
        f"random reads of a {format_size(size)} file in {args.dir}, O_DIRECT, "
        f"median of {args.runs} x {args.seconds:g} s; io_uring: {probe['reason']}"
    )
    head = ["block", "QD"] + [f"{b} MB/s" for b in backends] + ["fio MB/s"]
    head += [f"{b}/fio" for b in backends] + [f"{b} ctx/read" for b in [*backends, "fio"]]
    head += ["direct"]
    table = []
    for block, qd, med, ctx, direct in rows:
        line = [format_size(block), str(qd)] + [f"{med[b]:.1f}" for b in backends]
        line += [f"{med['fio']:.1f}"] + [f"{med[b] / med['fio']:.2f}x" for b in backends]
        line += [f"{ctx[b]:.3f}" for b in [*backends, "fio"]]
        table.append(line + ["yes" if direct else "no"])
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    for r in [head, *table]:
        print("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
    print("bound: fio (io_uring, O_DIRECT, same file, block size and queue depth)")


if __name__ == "__main__":
    main()
