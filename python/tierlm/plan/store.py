"""The plan file a package stores for the executor: plans/seq-<N>.json.

{"format": "tierlm-plan", "version": 1, "seq": N, "align": A, "method": "mip", "solver": ...,
 "peak": P, "lower_bound": B, "optimal": true, "seconds": S,
 "buffers": [{"name": ..., "size": ..., "first": ..., "last": ..., "offset": ...}, ...]}

The executor allocates one arena of `peak` bytes (aligned to `align`) and places buffer
`name` at `offset`; buffers whose [first, last] op ranges meet never share bytes.
"""

import json
import os
import re

import numpy as np

from tierlm.errors import CorruptError, InvalidArgumentError
from tierlm.plan.solve import Plan

FORMAT = "tierlm-plan"
VERSION = 1


def plan_path(package_dir, seq):
    return os.path.join(os.fspath(package_dir), "plans", f"seq-{int(seq)}.json")


def save(plan, names, path, seq=None):
    """Writes `plan` (buffer i named names[i]) to `path` atomically; returns the path."""
    names = list(names) if names is not None else plan.names
    if names is None:
        names = [f"buffer{i}" for i in range(len(plan.offsets))]
    if len(names) != len(plan.offsets):
        raise InvalidArgumentError(
            f"plan: {len(names)} names for {len(plan.offsets)} buffers; give one per buffer"
        )
    if len(set(names)) != len(names):
        raise InvalidArgumentError("plan: buffer names must be unique")
    if seq is None:
        seq = plan.seq
    if seq is None:
        match = re.fullmatch(r"seq-(\d+)\.json", os.path.basename(os.fspath(path)))
        seq = int(match.group(1)) if match else None
    plan.check()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "seq": seq,
        "align": int(plan.align),
        "method": plan.method,
        "solver": plan.solver,
        "peak": int(plan.peak),
        "lower_bound": int(plan.lower_bound),
        "optimal": bool(plan.optimal),
        "seconds": round(float(plan.seconds), 6),
        "buffers": [
            {
                "name": str(name),
                "size": int(plan.sizes[i]),
                "first": int(plan.starts[i]),
                "last": int(plan.ends[i]),
                "offset": int(plan.offsets[i]),
            }
            for i, name in enumerate(names)
        ],
    }
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load(path):
    """Reads a plan file; the Plan has .names and .seq. A damaged file raises CorruptError
    naming it (and the buffer at fault), including a plan that fails the checker."""
    path = os.fspath(path)
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as error:
            raise CorruptError(f"plan file {path}: not JSON ({error})") from error
    if not isinstance(doc, dict) or doc.get("format", FORMAT) != FORMAT:
        raise CorruptError(f"plan file {path}: not a tierlm plan")
    if int(doc.get("version", 1)) > VERSION:
        raise CorruptError(
            f"plan file {path}: version {doc['version']} is newer than this tierlm reads "
            f"({VERSION}); upgrade tierlm or re-plan"
        )
    try:
        buffers = doc["buffers"]
        names = [b["name"] for b in buffers]
        sizes = np.array([int(b["size"]) for b in buffers], dtype=np.int64)
        starts = np.array([int(b["first"]) for b in buffers], dtype=np.int64)
        ends = np.array([int(b["last"]) for b in buffers], dtype=np.int64)
        offsets = np.array([int(b["offset"]) for b in buffers], dtype=np.int64)
        plan = Plan(
            offsets=offsets,
            peak=int(doc["peak"]),
            lower_bound=int(doc["lower_bound"]),
            optimal=bool(doc.get("optimal", False)),
            seconds=float(doc.get("seconds", 0.0)),
            method=str(doc["method"]),
            solver=str(doc.get("solver", doc["method"])),
            align=int(doc["align"]),
            sizes=sizes,
            starts=starts,
            ends=ends,
            names=names,
            seq=doc.get("seq"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptError(f"plan file {path}: missing or malformed field ({error})") from error
    try:
        peak = plan.check()
    except InvalidArgumentError as error:
        raise CorruptError(f"plan file {path}: {error}") from error
    if peak != plan.peak:
        raise CorruptError(f"plan file {path}: says peak {plan.peak} but its buffers reach {peak}")
    return plan
