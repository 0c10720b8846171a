"""A deterministic sample of the package mutator's mutants (tests/fuzz/mutate_package.py: one
manifest or graph field set to a boundary value) run through `tierlm generate`: each must
succeed or end in a clean error naming the file, tensor or field, never a signal, a timeout, a
leaked Python exception or an error that names nothing. The full sweep runs from the script."""

import os
import re
import subprocess
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz")
SAMPLE = 24


@pytest.fixture(scope="module")
def mutator():
    pytest.importorskip("transformers")
    sys.path.insert(0, FUZZ)
    try:
        import mutate_package

        yield mutate_package
    finally:
        sys.path.remove(FUZZ)


def test_mutant_sample_ends_in_success_or_clean_errors(tmp_path):
    pytest.importorskip("transformers")
    # A fresh interpreter: the sweep forks a child per mutant, and a fork of this process (whose
    # earlier tests started tierlm's and torch's worker threads) would inherit a pool without its
    # workers and wait on them forever.
    script = os.path.join(FUZZ, "mutate_package.py")
    argv = [sys.executable, script, "--sample", str(SAMPLE), "--out", str(tmp_path)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = re.search(r"(\d+) mutants of \d+: (\d+) success, (\d+) clean", run.stdout)
    assert summary, run.stdout
    total, success, clean = map(int, summary.groups())
    # The sweep saw both ends: some mutants still run, most are refused; nothing else.
    assert total == SAMPLE and success > 0 and clean > 0 and success + clean == total


def test_classifier_tells_defects_from_clean_errors(mutator):
    m = mutator.Mutant("manifest.json", ("config", "head_dim"), 0)
    pkg = "/tmp/pkg"
    clean = "tierlm.errors.CorruptError: /tmp/pkg/manifest.json: config.head_dim is 0"
    assert mutator.classify(m, pkg, 1, "Traceback ...\n" + clean, False).kind == "clean"
    assert mutator.classify(m, pkg, 1, "KeyError: 'head_dim'", False).kind == "defect"
    assert mutator.classify(m, pkg, 1, "tierlm.errors.CorruptError: bad", False).kind == "unclear"
    assert mutator.classify(m, pkg, -11, "", False).kind == "defect"
    assert mutator.classify(m, pkg, None, "", True).kind == "defect"
    assert mutator.classify(m, pkg, 0, "", False).kind == "success"
