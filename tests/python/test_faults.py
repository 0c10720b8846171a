"""Fault injection on every I/O path (TIERLM_FAULT): a bounded sample of fault_sweep.py's cases
(the full sweep over N: `python tests/python/fault_sweep.py`). Each case runs in a subprocess
with a time limit and must end in one clear error naming the file the fault hit (or, for a
short count, in the fault-free result), with the previous package or checkpoint unchanged."""

import os
import subprocess
import sys

import fault_sweep
import pytest

pytest.importorskip("transformers")

# (scenario, op, errno, n): each fires (checked), early and later in its scenario's calls.
# Reads of packages (and of the KV cache's scratch file, and its writes) run on each I/O back
# end.
PER_BACKEND = [
    ("resident_load", "read", "EIO", 1),
    ("resident_load", "read", "EIO", 12),
    ("resident_load", "read", "short", 5),
    ("streaming_decode", "read", "EIO", 2),
    ("streaming_decode", "read", "EIO", 60),
    ("streaming_decode", "read", "short", 40),
    ("sparse_decode", "read", "EIO", 3),
    ("sparse_decode", "read", "EIO", 40),
    ("sparse_decode", "read", "short", 30),
    ("sparse_decode", "read", "EIO", 59),  # the first token's rows of a bundle file
    ("sparse_decode", "read", "short", 58),
    # the KV cache's scratch file: blocks written at the first spill and later, read back
    # whole (copy on write) or a layer at a time
    ("kv_spill_decode", "write", "EIO", 1),
    ("kv_spill_decode", "write", "ENOSPC", 30),
    ("kv_spill_decode", "write", "short", 7),
    ("kv_spill_decode", "read", "EIO", 1),
    ("kv_spill_decode", "read", "EIO", 50),
    ("kv_spill_decode", "read", "short", 20),
    # the generation's last read: its last step read the next step's first layers ahead, and
    # no step comes (Model::settle_reads reports it)
    ("kv_spill_decode", "read", "EIO", 106),
    # eviction's rewrite of the spilled blocks (a window policy, two of four blocks on disk):
    # reading a layer's slices, writing them back, a short write continued; the sequence is
    # cleared and the next generation gives the fault-free tokens
    ("kv_spill_evict", "read", "EIO", 43),
    ("kv_spill_evict", "write", "EIO", 29),
    ("kv_spill_evict", "write", "short", 43),
]
# Python's writers (not the engine), and the trainer (20 s a case, most of it importing torch).
ONCE = [
    ("export", "write", "ENOSPC", 1),
    ("export", "write", "EIO", 9),
    ("export", "fsync", "EIO", 2),
    ("export", "write", "short", 3),
    ("trainer_swaps", "write", "ENOSPC", 3),
    ("trainer_swaps", "fallocate", "ENOSPC", 2),
    ("checkpoint_save", "write", "ENOSPC", 2),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("faults"))
    return path, fault_sweep.prepare(path)


def check(work, scenario, op, err, n):
    path, info = work
    case = fault_sweep.run_case(path, info, scenario, op, err, n)
    assert case["fired"], f"the sample case never fired; pick a smaller n: {case}"
    assert "defect" not in case, case


@pytest.mark.parametrize("scenario,op,err,n", PER_BACKEND)
def test_read_fault_ends_in_a_clear_error(work, backend, scenario, op, err, n):
    check(work, scenario, op, err, n)


@pytest.mark.parametrize("scenario,op,err,n", ONCE)
def test_write_fault_ends_in_a_clear_error_and_keeps_the_previous_copy(work, scenario, op, err, n):
    check(work, scenario, op, err, n)


def test_bad_spec_is_refused_naming_the_variable(work):
    _, info = work
    env = dict(os.environ, TIERLM_FAULT="op=read,errno=EBUSY,nth=1")
    code = "import tierlm, sys; tierlm.load(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", code, info["pkg"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "TIERLM_FAULT='op=read,errno=EBUSY,nth=1': unknown errno 'EBUSY'" in proc.stderr
