#!/usr/bin/env bash
# Builds and runs every fuzz target for SECONDS each (default 60), two at a time, niced:
# the C++ parsers with libFuzzer + ASan + UBSan (clang-14, libclang-rt-14-dev), the Python ones
# with atheris (pip install ".[fuzz]"). New crashers land in build/fuzz/crashers/<target>/;
# copy them into tests/fuzz/corpus/<target>/ once fixed, so CI replays them.
# Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]   (targets: json safetensors package plan
# checkpoint gguf pypackage; default all). Then the package mutator sweep: tests/fuzz/mutate_package.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(json safetensors package plan checkpoint gguf pypackage)
out=build/fuzz
mkdir -p "$out/logs"

cpp_targets=()
for t in "${targets[@]}"; do
  [ -f "tests/fuzz/fuzz_$t.cpp" ] && cpp_targets+=("fuzz_$t")
done
if [ ${#cpp_targets[@]} -gt 0 ]; then
  command -v clang++-14 >/dev/null || {
    echo "tests/fuzz/run.sh: clang++-14 not found; apt-get install clang-14 libclang-rt-14-dev" >&2
    exit 1
  }
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$out/build" -DTIERLM_BUILD_FUZZERS=ON \
    -DTIERLM_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all" \
    >/dev/null
  nice -n 19 cmake --build "$out/build" -j2 --target "${cpp_targets[@]}"
fi

# One target: a fresh working corpus seeded from the kept one, crashers apart.
run_one() {
  local t="$1" work="$out/corpus/$1" crashers="$out/crashers/$1"
  mkdir -p "$work" "$crashers"
  cp -n tests/fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  local dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  if [ -f "tests/fuzz/fuzz_$t.cpp" ]; then
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
      nice -n 19 "$out/build/fuzz_$t" "$work" "${dict[@]}" -max_total_time="$seconds" \
      -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$crashers/" -print_final_stats=1
  else
    nice -n 19 python3 "tests/fuzz/fuzz_$t.py" "$work" "${dict[@]}" -max_total_time="$seconds" \
      -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$crashers/" -print_final_stats=1
  fi >"$out/logs/$t.log" 2>&1 && echo "$t: no crash in ${seconds}s" ||
    echo "$t: CRASH (see $out/logs/$t.log, inputs in $crashers)"
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$out/logs/$t.log" | tail -1 || true
}

running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge 2 ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
