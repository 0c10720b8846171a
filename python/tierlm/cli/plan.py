"""`tierlm plan INPUT`: place buffers in one arena and print peak, bound, ratio, time, solver.

INPUT is a JSON file {"sizes": [...], "starts": [...], "ends": [...]} (optional "names",
"align") or a model package directory, whose buffers for --seq come from
tierlm.load(PKG).memory_buffers(seq); for a package the plan is written to
PKG/plans/seq-<N>.json.
"""

import json
import os

from tierlm import plan as planner
from tierlm.errors import InvalidArgumentError, UnsupportedError
from tierlm.sizes import format_size


def add_parser(subparsers):
    parser = subparsers.add_parser("plan", help="plan activation memory (greedy or exact MIP)")
    parser.add_argument("input", help="a JSON file of buffers or a model package directory")
    parser.add_argument("--method", choices=planner.METHODS, default="best")
    parser.add_argument("--solver", choices=planner.SOLVERS, default=planner.DEFAULT_SOLVER)
    parser.add_argument("--time-limit", type=float, default=10.0, help="MIP seconds (10)")
    parser.add_argument("--seq", type=int, help="sequence length (required for a package)")
    parser.add_argument("--align", type=int, help="offset alignment in bytes (default 64)")
    parser.add_argument("--out", help="also write the plan file here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def _normalise(buffers, source):
    """memory_buffers() may give {"sizes", "starts", "ends", "names"?, "align"?} or a list of
    {"name", "size", "first", "last"}."""
    if isinstance(buffers, dict):
        try:
            sizes, starts, ends = buffers["sizes"], buffers["starts"], buffers["ends"]
        except KeyError as error:
            raise InvalidArgumentError(f"{source}: missing {error} in the buffer list") from error
        return list(sizes), list(starts), list(ends), buffers.get("names"), buffers.get("align")
    try:
        rows = list(buffers)
        return (
            [b["size"] for b in rows],
            [b["first"] for b in rows],
            [b["last"] for b in rows],
            [b["name"] for b in rows],
            None,
        )
    except (KeyError, TypeError) as error:
        raise InvalidArgumentError(
            f"{source}: expected a dict of sizes/starts/ends or a list of "
            f"{{name, size, first, last}} ({error})"
        ) from error


def _package_buffers(path, seq):
    import tierlm

    if seq is None:
        raise InvalidArgumentError(f"plan: {path} is a package; give --seq N")
    load = getattr(tierlm, "load", None)
    if load is None:
        raise UnsupportedError(
            "plan: this tierlm has no tierlm.load, so it cannot read the buffers of package "
            f"{path}; pass a JSON file of buffers instead"
        )
    model = load(path)
    buffers = getattr(model, "memory_buffers", None)
    if buffers is None:
        raise UnsupportedError(
            f"plan: the model loaded from {path} has no memory_buffers(seq) (the executor "
            "lists its buffers there); pass a JSON file of buffers instead"
        )
    return _normalise(buffers(seq), f"{path} memory_buffers({seq})")


def run(args):
    path = args.input
    if os.path.isdir(path):
        sizes, starts, ends, names, align = _package_buffers(path, args.seq)
        out = args.out or planner.plan_path(path, args.seq)
    elif os.path.isfile(path):
        with open(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as error:
                raise InvalidArgumentError(f"plan: {path} is not JSON ({error})") from error
        sizes, starts, ends, names, align = _normalise(doc, path)
        out = args.out
    else:
        raise FileNotFoundError(2, "no such file or package directory", path)
    align = args.align or align or 64
    plan = planner.solve(
        sizes,
        starts,
        ends,
        align=align,
        method=args.method,
        time_limit=args.time_limit,
        solver=args.solver,
    )
    plan.check()
    if out:
        planner.save(plan, names, out, seq=args.seq)
    result = {
        "buffers": len(plan.offsets),
        "peak": plan.peak,
        "lower_bound": plan.lower_bound,
        "ratio": round(plan.ratio, 6),
        "optimal": plan.optimal,
        "seconds": round(plan.seconds, 4),
        "method": plan.method,
        "solver": plan.solver,
        "no_reuse": int(sum(int(s) for s in sizes)),
        "written": out,
    }
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        ("buffers", result["buffers"]),
        ("peak", f"{format_size(plan.peak)} ({plan.peak} bytes)"),
        ("lower bound", f"{format_size(plan.lower_bound)} ({plan.lower_bound} bytes)"),
        ("ratio", f"{plan.ratio:.4f}" + (" (optimal)" if plan.optimal else "")),
        ("no reuse", format_size(result["no_reuse"])),
        ("time", f"{plan.seconds:.3f} s"),
        ("solver", f"{plan.method} ({plan.solver})"),
    ]
    if out:
        rows.append(("written", out))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
