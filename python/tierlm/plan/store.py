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


def _integer(value, what, path):
    """A JSON integer (not a bool, float or string) or CorruptError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorruptError(f"plan file {path}: {what} is {value!r}, not an integer")
    if not -(2**63) <= value < 2**63:
        raise CorruptError(f"plan file {path}: {what} {value} is outside 64-bit integers")
    return value


def _field(doc, key, what, path):
    if key not in doc:
        raise CorruptError(f'plan file {path}: {what} lacks "{key}"')
    return doc[key]


def _buffers(doc, path):
    """(names, sizes, starts, ends, offsets) of the plan's buffer records, each checked."""
    buffers = _field(doc, "buffers", "the plan", path)
    if not isinstance(buffers, list):
        raise CorruptError(f'plan file {path}: "buffers" is not a list')
    columns = ([], [], [], [], [])
    for i, b in enumerate(buffers):
        what = f"buffers[{i}]"
        if not isinstance(b, dict):
            raise CorruptError(f"plan file {path}: {what} is not an object")
        name = _field(b, "name", what, path)
        if not isinstance(name, str):
            raise CorruptError(f"plan file {path}: {what}.name is {name!r}, not a string")
        columns[0].append(name)
        for column, key in zip(columns[1:], ("size", "first", "last", "offset"), strict=True):
            column.append(_integer(_field(b, key, what, path), f"{what}.{key}", path))
    names, *numbers = columns
    return names, *(np.array(c, dtype=np.int64) for c in numbers)


def load(path):
    """Reads a plan file; the Plan has .names and .seq. A damaged file raises CorruptError
    naming it (and the field or buffer at fault), including a plan that fails the checker."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CorruptError(f"plan file {path}: not JSON ({error})") from error
    if not isinstance(doc, dict) or doc.get("format", FORMAT) != FORMAT:
        raise CorruptError(f"plan file {path}: not a tierlm plan")
    version = _integer(doc.get("version", 1), "version", path)
    if version > VERSION:
        raise CorruptError(
            f"plan file {path}: version {version} is newer than this tierlm reads "
            f"({VERSION}); upgrade tierlm or re-plan"
        )
    names, sizes, starts, ends, offsets = _buffers(doc, path)
    seq = doc.get("seq")
    if seq is not None:
        seq = _integer(seq, "seq", path)
    method = _field(doc, "method", "the plan", path)
    optimal, seconds = doc.get("optimal", False), doc.get("seconds", 0.0)
    if not isinstance(optimal, bool) or isinstance(seconds, bool):
        raise CorruptError(f'plan file {path}: "optimal" or "seconds" has the wrong type')
    if not isinstance(seconds, int | float) or not isinstance(method, str):
        raise CorruptError(f'plan file {path}: "seconds" or "method" has the wrong type')
    solver = doc.get("solver", method)
    plan = Plan(
        offsets=offsets,
        peak=_integer(_field(doc, "peak", "the plan", path), "peak", path),
        lower_bound=_integer(_field(doc, "lower_bound", "the plan", path), "lower_bound", path),
        optimal=optimal,
        seconds=float(seconds),
        method=method,
        solver=str(solver),
        align=_integer(_field(doc, "align", "the plan", path), "align", path),
        sizes=sizes,
        starts=starts,
        ends=ends,
        names=names,
        seq=seq,
    )
    try:
        peak = plan.check()
    except InvalidArgumentError as error:
        raise CorruptError(f"plan file {path}: {error}") from error
    if peak != plan.peak:
        raise CorruptError(f"plan file {path}: says peak {plan.peak} but its buffers reach {peak}")
    return plan
