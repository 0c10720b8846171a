"""Replays the kept inputs of the Python fuzz targets (tests/fuzz/corpus/<target>/: seeds and
every fixed crasher) through each target's test_one_input, without atheris: an input may be
refused only with a TierlmError, so a crasher that comes back fails here."""

import importlib
import os
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz")
TARGETS = ("plan", "checkpoint", "gguf", "pypackage")


def corpus(target):
    folder = os.path.join(FUZZ, "corpus", target)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


@pytest.fixture(scope="module", autouse=True)
def fuzz_path():
    sys.path.insert(0, FUZZ)
    yield
    sys.path.remove(FUZZ)


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_cleanly(target):
    if target == "checkpoint":
        pytest.importorskip("transformers")
    module = importlib.import_module(f"fuzz_{target}")
    files = corpus(target)
    assert files, f"tests/fuzz/corpus/{target} is empty"
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            module.test_one_input(data)
        except Exception as error:  # any escape is the defect the input was kept for
            pytest.fail(f"{path}: {type(error).__name__}: {error}")
