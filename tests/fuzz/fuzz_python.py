"""What the atheris targets share: code under tierlm/ is instrumented for coverage only when a
target runs as the fuzzer (not when pytest replays its corpus, where atheris need not be
installed), and the fuzzer's entry point."""

import atexit
import contextlib
import shutil
import sys
import tempfile


def _fuzzing():
    return sys.argv and sys.argv[0].endswith(".py") and "pytest" not in sys.modules


def instrumented():
    """A context for the imports of the code under test: atheris' import hook when fuzzing."""
    if not _fuzzing():
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["tierlm"])


def scratch_dir(name):
    """A temporary folder for the target's files, removed when the process exits."""
    path = tempfile.mkdtemp(prefix=f"tierlm-fuzz-{name}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def run_fuzzer(argv, test_one_input):
    import atheris

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
