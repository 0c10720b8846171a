"""atheris target: a package's manifest.json and graph.json read by the Python Package reader
(tierlm.Package.open: what `tierlm plan`, `tierlm sparse` and the exporters' checks use), then
every tensor mapped. The input is the two texts separated by "\n---\n", as the C++ target
fuzz_package takes them (its seeds fit: the weight file here has the tiny package's size).
A refusal must be a TierlmError; any other exception is a defect.
Run: python3 tests/fuzz/fuzz_pypackage.py CORPUS_DIR [-max_total_time=N]
"""

import os
import sys

from fuzz_python import instrumented, run_fuzzer, scratch_dir

with instrumented():
    from tierlm.errors import TierlmError
    from tierlm.package import Package

_DIR = scratch_dir("pypackage")
_WEIGHT_BYTES = 85472  # weights-0.bin of tests/cpp/tiny_package.hpp, which the seeds describe
with open(os.path.join(_DIR, "weights-0.bin"), "wb") as f:
    f.write(bytes(_WEIGHT_BYTES))


def test_one_input(data):
    manifest, _, graph = data.partition(b"\n---\n")
    graph = graph.partition(b"\n---\n")[0]
    for name, text in (("manifest.json", manifest), ("graph.json", graph)):
        with open(os.path.join(_DIR, name), "wb") as f:
            f.write(text)
    try:
        package = Package.open(_DIR)
        for name in package.tensors:
            package.array(name)
    except TierlmError:
        return


if __name__ == "__main__":
    run_fuzzer(sys.argv, test_one_input)
