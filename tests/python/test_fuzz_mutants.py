"""A deterministic sample of the package mutator's mutants (tests/fuzz/mutate_package.py: one
manifest or graph field set to a boundary value) run through `tierlm generate`: each must
succeed or end in a clean error naming the file, tensor or field, never a signal, a timeout, a
leaked Python exception or an error that names nothing. The full sweep runs from the script."""

import os
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


def test_mutant_sample_ends_in_success_or_clean_errors(mutator, tmp_path):
    base = mutator.make_base(str(tmp_path / "base"))
    everything = mutator.mutants(*mutator.load_documents(base).values())
    selected = mutator.sample(everything, SAMPLE)
    assert len(selected) == SAMPLE
    outcomes = mutator.sweep(base, selected, str(tmp_path), jobs=2)
    bad = [o for o in outcomes if o.kind not in ("success", "clean")]
    assert not bad, "\n".join(f"{o.mutant.name}: {o.kind}: {o.detail}" for o in bad)
    # The classifier saw both ends: some mutants still run, most are refused.
    kinds = {o.kind for o in outcomes}
    assert kinds == {"success", "clean"}, kinds


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
