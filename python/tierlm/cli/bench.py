"""`tierlm bench <what>`: measurements of this machine and this build.

Each benchmark is a module with add_parser(subparsers) that sets `run`; append yours to
BENCHES (e.g. python/tierlm/cli/bench_<what>.py).
"""

from tierlm.cli import bench_io

BENCHES = [bench_io]


def add_parser(subparsers):
    parser = subparsers.add_parser("bench", help="measure I/O and kernels on this machine")
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for bench in BENCHES:
        bench.add_parser(benches)
