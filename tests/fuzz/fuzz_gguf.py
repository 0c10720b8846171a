"""atheris target: a GGUF file opened as an export source (the `gguf` package's reader with
tierlm's checks, the config and tensor mapping, the tokenizer rebuilt from its vocabulary).

A damaged or unsupported file must raise a TierlmError naming it; any other exception is a
defect. Run: python3 tests/fuzz/fuzz_gguf.py CORPUS_DIR [-max_total_time=N]
"""

import os
import shutil
import sys

from fuzz_python import instrumented, run_fuzzer, scratch_dir

with instrumented():
    from tierlm.errors import TierlmError
    from tierlm.gguf.source import GGUFSource

_ROOT = scratch_dir("gguf")
_PATH = os.path.join(_ROOT, "model.gguf")


def test_one_input(data):
    with open(_PATH, "wb") as f:
        f.write(data)
    package = os.path.join(_ROOT, "package")
    shutil.rmtree(package, ignore_errors=True)
    os.makedirs(package)
    try:
        source = GGUFSource.open(_PATH)
        source.source_info()
        source.write_tokenizer(package)
    except TierlmError:
        return


if __name__ == "__main__":
    run_fuzzer(sys.argv, test_one_input)
