"""Structure-aware mutator for model packages: one field of manifest.json or graph.json set to a
boundary value (0, -1, 2^31, 2^32, 2^63, NaN, a wrong type, a missing key, a swapped dtype, a
shape with a zero dimension, ...), each mutant run through `tierlm generate` (load + generate)
in a forked process (the CLI's entry point) with a time and memory limit, and classified:

- success: exit 0;
- clean: a non-zero exit whose error is a tierlm error (or an OSError) naming the file, tensor
  or field at fault;
- unclear: a tierlm error that names none of them;
- defect: a signal, a timeout, or another Python exception type leaking out.

The base package is a tiny random Llama made with transformers (tests/python/models.py) with a
tokenizer. Usage: python3 tests/fuzz/mutate_package.py [--sample N] [--jobs 2] [--out DIR]
(the full sweep; tests/python/test_fuzz_mutants.py runs a deterministic sample in CI).
"""

import argparse
import copy
import json
import math
import os
import re
import resource
import signal
import sys
import tempfile
import traceback
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
MISSING = "<missing>"  # the key is deleted
BOUNDARY = (0, -1, 2**31, 2**32, 2**63, math.nan, 1.5, "7", None, MISSING)
WRONG_TYPE = (MISSING, None, 7, [])  # for fields that are names or structures
DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_1", "q6_k")  # one of each block layout
TIMEOUT_S = 60
MEMORY_LIMIT = 6 << 30  # address space of a mutant's process: far above the budget it gets
BUDGET = "host=256MiB"


@dataclass
class Mutant:
    file: str  # manifest.json or graph.json
    path: tuple  # keys and indices to the field
    value: object

    @property
    def name(self):
        where = ".".join(str(p) for p in self.path) or "<document>"
        return f"{self.file}:{where}={_short(self.value)}"


@dataclass
class Outcome:
    mutant: Mutant
    kind: str  # success, clean, unclear, defect
    detail: str


def _short(value):
    text = value if value is MISSING else json.dumps(value, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def make_base(root):
    """Exports the tiny random Llama with a tokenizer under root; returns the package dir."""
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    import models

    _, pkg = models.package(
        "llama",
        root,
        tokenizer=True,
        hidden_size=40,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return pkg


def _shape_values(shape):
    n = shape[0]
    values = [[0] + shape[1:], shape[:-1] + [0], [], [n], shape + [1], shape[::-1]]
    values += [[-1] + shape[1:], [2**31] + shape[1:], [2**32 + n] + shape[1:], [2**62, 4]]
    return values + [[n * 2] + shape[1:], ["7"] + shape[1:], 7]


def _tensor_mutants(name, info):
    path = ("tensors", name)
    out = [Mutant("manifest.json", path + ("dtype",), d) for d in DTYPES if d != info["dtype"]]
    out += [Mutant("manifest.json", path + ("shape",), s) for s in _shape_values(info["shape"])]
    for key in ("offset", "nbytes", "crc32", "layer"):
        out += [Mutant("manifest.json", path + (key,), v) for v in BOUNDARY]
    for key in ("dtype", "file"):
        out += [Mutant("manifest.json", path + (key,), v) for v in WRONG_TYPE]
    for f in ("../manifest.json", "missing.bin", "/etc/passwd", ""):
        out.append(Mutant("manifest.json", path + ("file",), f))
    out.append(Mutant("manifest.json", path, MISSING))
    return out


def _op_mutants(index, op):
    """The numbers an op carries set to boundary values, its names to wrong ones."""
    path = ("ops", index)
    out = []
    for key, value in op.items():
        values = BOUNDARY if isinstance(value, int | float) else WRONG_TYPE + ("nope",)
        out += [Mutant("graph.json", path + (key,), v) for v in values]
    if op.get("op") in ("rope", "attention"):
        out += [Mutant("graph.json", path + ("kv_heads",), v) for v in (0, 2, 3, 2**31)]
    out.append(Mutant("graph.json", path + ("in",), [op["in"][0]] * 4 if op["in"] else ["x"]))
    out.append(Mutant("graph.json", path, MISSING))
    return out


def mutants(manifest, graph):
    """Every mutant of the package's two documents, in a fixed order."""
    out = []
    config = [k for k, v in manifest["config"].items() if isinstance(v, int | float | list)]
    for key in config:
        out += [Mutant("manifest.json", ("config", key), v) for v in BOUNDARY]
    for key in manifest:
        if key != "config":
            out += [Mutant("manifest.json", (key,), v) for v in WRONG_TYPE + ("x", {})]
    out += [Mutant("manifest.json", ("format_version",), v) for v in BOUNDARY]
    for key in ("name", "size"):
        out += [Mutant("manifest.json", ("files", 0, key), v) for v in BOUNDARY]
    for bad in ("../weights-0.bin", "", "/etc/passwd", ".", "manifest.json"):
        out.append(Mutant("manifest.json", ("files", 0, "name"), bad))
    names = list(manifest["tensors"])
    picks = [n for n in names if "embed" in n or n.endswith("q.weight")]
    for name in dict.fromkeys(picks[:2] + names[-1:]):
        out += _tensor_mutants(name, manifest["tensors"][name])
    if manifest.get("tokenizer"):
        for bad in ("..", "/", "", "tokenizer/../..", "/etc", "missing", 7, None):
            out.append(Mutant("manifest.json", ("tokenizer", "dir"), bad))
        out.append(Mutant("manifest.json", ("tokenizer", "files"), ["../../etc/passwd"]))
    for key in list(graph["values"])[:4]:
        out += [Mutant("graph.json", ("values", key), v) for v in BOUNDARY]
    out += [Mutant("graph.json", ("output",), v) for v in ("nope", 7, None, MISSING)]
    out += [Mutant("graph.json", ("ops",), v) for v in ([], {}, None, MISSING)]
    seen = set()
    for i, op in enumerate(graph["ops"]):
        if op["op"] not in seen:  # the first op of each kind
            seen.add(op["op"])
            out += _op_mutants(i, op)
    return out


def apply(document, mutant):
    doc = copy.deepcopy(document)
    parent = doc
    for key in mutant.path[:-1]:
        parent = parent[key]
    last = mutant.path[-1]
    if mutant.value is MISSING:
        del parent[last]
    else:
        parent[last] = copy.deepcopy(mutant.value)
    return doc


def write_mutant(base, documents, mutant, dest):
    """The mutant package at dest: links to base's weight files and tokenizer, the mutated
    document, the other one as it was."""
    os.makedirs(dest)
    for entry in os.listdir(base):
        if entry not in documents:
            os.symlink(os.path.join(base, entry), os.path.join(dest, entry))
    for name, doc in documents.items():
        if name == mutant.file:
            doc = apply(doc, mutant)
        with open(os.path.join(dest, name), "w") as f:
            json.dump(doc, f, allow_nan=True)


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$")
_CLEAN_TYPES = ("BudgetError", "CorruptError", "InvalidArgumentError", "NotFoundError")
_CLEAN_TYPES += ("UnsupportedError", "FileNotFoundError", "NotADirectoryError")
_CLEAN_TYPES += ("IsADirectoryError", "PermissionError", "OSError")


def _names_the_fault(kind, message, mutant, package):
    if kind == "BudgetError":  # names the tier, what needs how much, and what to lower
        return True
    words = ["manifest.json", "graph.json", package, mutant.file]
    words += [p for p in mutant.path if isinstance(p, str)]
    return any(w and w in message for w in words)


def classify(mutant, package, returncode, stderr, timed_out):
    if timed_out:
        return Outcome(mutant, "defect", f"timeout after {TIMEOUT_S}s")
    if returncode == 0:
        return Outcome(mutant, "success", "")
    if returncode < 0:
        return Outcome(mutant, "defect", f"killed by signal {-returncode}")
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    match = _ERROR_LINE.match(last)
    if not match:
        return Outcome(mutant, "defect", f"exit {returncode} without an error line: {last[:200]}")
    kind, message = match.group(1).rsplit(".", 1)[-1], match.group(2)
    if kind not in _CLEAN_TYPES or (kind == "OSError" and package not in message):
        return Outcome(mutant, "defect", f"{kind} leaked: {message[:200]}")
    if not _names_the_fault(kind, message, mutant, package):
        return Outcome(mutant, "unclear", f"{kind}: {message[:200]}")
    return Outcome(mutant, "clean", f"{kind}: {message[:200]}")


def command(package):
    """The command a mutant runs, as a shell would type it (to rerun one by hand)."""
    run = ["--max-new-tokens", "4", "--budget", BUDGET, "--threads", "1"]
    return ["tierlm", "--debug", "generate", package, "--ids", "1,2,3", *run]


def _child(argv, log):
    """In the forked process: `tierlm generate` through the CLI's own entry point, as
    `python -m tierlm` runs it (an uncaught exception prints its traceback, exit 1), with
    a memory limit and an alarm as the time limit."""
    from tierlm import cli

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # New text streams on the descriptors: a host like pytest may have pointed sys.stderr
    # at its own capture file rather than at descriptor 2.
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.alarm(TIMEOUT_S)  # SIGALRM's default action ends the process, even in native code
    try:
        code = cli.main(argv)
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _outcome(mutant, dest, status):
    with open(os.path.join(dest, "output.txt"), errors="replace") as f:
        output = f.read()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGALRM:
            return classify(mutant, dest, None, output, True)
        return classify(mutant, dest, -sig, output, False)
    return classify(mutant, dest, os.WEXITSTATUS(status), output, False)


def load_documents(base):
    documents = {}
    for name in ("manifest.json", "graph.json"):
        with open(os.path.join(base, name)) as f:
            documents[name] = json.load(f)
    return documents


def sweep(base, selected, work, jobs):
    """Runs the mutants (with their indices), each in a process forked from this one (so the
    imports are paid once), jobs at a time; returns the outcomes in order."""
    import tierlm.cli  # noqa: F401  (imported before forking)

    documents = load_documents(base)
    outcomes, running = {}, {}
    pending = list(selected)
    while pending or running:
        while pending and len(running) < jobs:
            i, mutant = pending.pop(0)
            dest = os.path.join(work, f"mutant-{i:04d}")
            write_mutant(base, documents, mutant, dest)
            pid = os.fork()
            if pid == 0:
                _child(command(dest)[1:], os.path.join(dest, "output.txt"))
            running[pid] = (i, mutant, dest)
        pid, status = os.wait()
        i, mutant, dest = running.pop(pid)
        outcomes[i] = outcome = _outcome(mutant, dest, status)
        if outcome.kind in ("defect", "unclear"):
            print(f"{outcome.kind}: mutant {i} {mutant.name}: {outcome.detail}", flush=True)
    return [outcomes[i] for i, _ in selected]


def sample(all_mutants, count):
    """A deterministic sample spread over the whole list: every k-th mutant."""
    step = max(1, len(all_mutants) // count)
    return [(i, all_mutants[i]) for i in range(0, len(all_mutants), step)][:count]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=0, help="run N mutants spread evenly")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--out", help="keep the mutant packages here (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.out or tempfile.mkdtemp(prefix="tierlm-mutants-")
    base = make_base(os.path.join(work, "base"))
    everything = mutants(*load_documents(base).values())
    selected = sample(everything, args.sample) if args.sample else list(enumerate(everything))
    outcomes = sweep(base, selected, work, args.jobs)
    counts = {}
    for outcome in outcomes:
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    print(
        f"{len(outcomes)} mutants of {len(everything)}: "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("success", "clean", "unclear", "defect"))
    )
    print(f"mutant packages in {work}; rerun one: {' '.join(command(work + '/mutant-NNNN'))}")
    return 1 if counts.get("defect") or counts.get("unclear") else 0


if __name__ == "__main__":
    sys.exit(main())
