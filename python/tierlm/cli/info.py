"""`tierlm info`: version, build options, SIMD level, I/O back end and default budgets."""

import json

from tierlm import _core
from tierlm.budgets import default_budgets
from tierlm.sizes import format_size


def add_parser(subparsers):
    parser = subparsers.add_parser("info", help="show build options and machine capabilities")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def collect():
    build = _core.build_info()
    cpu = _core.cpu_info()
    io = _core.io_probe()
    return {
        "version": build["version"],
        "build": {
            "cuda": build["cuda"],
            "io_uring": build["io_uring"],
            "compiler": build["compiler"],
        },
        "cpu": cpu,
        "io": io,
        "gpus": _core.device_count(),
        "memlock_limit": _core.memlock_limit(),
        "default_budgets": default_budgets(),
    }


def run(args):
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    build, cpu, io = info["build"], info["cpu"], info["io"]
    memlock = info["memlock_limit"]
    rows = [
        ("version", info["version"]),
        ("CUDA", "built" if build["cuda"] else "not built"),
        ("GPUs", info["gpus"] or _core.device_unavailable_reason()),
        ("io_uring", "built" if build["io_uring"] else "not built"),
        ("SIMD", f"{cpu['simd_level']} (CPU supports {cpu['simd_detected']})"),
        ("threads", cpu["threads"]),
        ("I/O back end", f"{io['chosen']} ({io['reason']})"),
        ("memlock limit", "unlimited" if memlock >= 2**63 else format_size(memlock)),
    ]
    rows += [
        (f"{tier} budget", format_size(size)) for tier, size in info["default_budgets"].items()
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
