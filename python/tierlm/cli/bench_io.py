"""`tierlm bench io FILE`: random-read bandwidth and IOPS of the I/O engine on FILE.

Reads block-aligned random blocks with O_DIRECT (when the file system allows) at the given
queue depth, after dropping the file's pages from the page cache.
"""

import json
import os

import numpy as np

from tierlm import _core
from tierlm.io import File
from tierlm.sizes import format_size, parse_size


def add_parser(subparsers):
    parser = subparsers.add_parser("io", help="random-read bandwidth and IOPS of a file")
    parser.add_argument("file", metavar="FILE", help="file to read (use --create to make one)")
    parser.add_argument("--block", default="64KiB", help="bytes per read (default 64KiB)")
    parser.add_argument("--qd", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--backend", default="auto", choices=["auto", "uring", "threads"])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration (default 5)")
    parser.add_argument(
        "--create", metavar="SIZE", help="first write FILE with SIZE random bytes if missing"
    )
    parser.add_argument("--buffered", action="store_true", help="do not use O_DIRECT")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def create_file(path, size, chunk=8 << 20):
    """Writes size pseudo-random bytes to path through the engine."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=min(chunk, size), dtype=np.uint8)
    with File(path, "w") as file:
        for offset in range(0, size, chunk):
            file.write(data[: min(chunk, size - offset)], offset)
        file.sync()


def measure(path, block, qd, backend="auto", seconds=5.0, direct=True, seed=None):
    """Random reads of `block` bytes at `qd` in flight; a fresh random offset sequence per call
    (unless seed is given), so no cache below the page cache can replay an earlier run."""
    seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
    result = _core.io_bench_read(str(path), block, qd, backend, seconds, direct, seed)
    result.update(
        file=str(path),
        block=block,
        queue_depth=qd,
        mb_per_s=result["bytes_per_second"] / 1e6,
        gib_per_s=result["bytes_per_second"] / 2**30,
    )
    return result


def run(args):
    block = parse_size(args.block, "--block")
    if args.create and not os.path.exists(args.file):
        create_file(args.file, parse_size(args.create, "--create"))
    r = measure(args.file, block, args.qd, args.backend, args.seconds, not args.buffered)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    mode = "O_DIRECT" if r["direct"] else "buffered"
    print(
        f"{r['file']}: random {format_size(block)} reads, QD {args.qd}, {r['backend']}, {mode}"
        f"{', registered buffers' if r['registered'] else ''}"
    )
    print(
        f"  {r['mb_per_s']:.1f} MB/s ({r['gib_per_s']:.3f} GiB/s), {r['iops']:.0f} IOPS, "
        f"{r['requests']} reads in {r['seconds']:.2f} s"
    )
