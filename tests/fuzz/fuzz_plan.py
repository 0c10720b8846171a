"""atheris target: a stored plan file (plans/seq-<N>.json) read by tierlm.plan.store.load.

A damaged plan must raise a TierlmError (CorruptError) naming the file; any other exception
is a defect. test_one_input is also what tests/python/test_fuzz_corpus.py replays from
tests/fuzz/corpus/plan without atheris.
Run: python3 tests/fuzz/fuzz_plan.py CORPUS_DIR [-max_total_time=N]
"""

import os
import sys

from fuzz_python import instrumented, run_fuzzer, scratch_dir

with instrumented():
    from tierlm.errors import TierlmError
    from tierlm.plan import store

_PATH = os.path.join(scratch_dir("plan"), "seq-8.json")


def test_one_input(data):
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        plan = store.load(_PATH)
    except TierlmError:
        return
    # A plan load accepts must be one its own checker passes.
    assert plan.check() == plan.peak


if __name__ == "__main__":
    run_fuzzer(sys.argv, test_one_input)
