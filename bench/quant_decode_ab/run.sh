#!/bin/bash
# Old-vs-new quantized matrix-vector (decode) kernels in one binary: the kernel headers of git
# ref OLD (cpp/src/kernels, extracted with git archive) against this checkout's, both on the
# AVX512-VNNI trait (LEVEL=1: AVX2), linked with this checkout's libtierlm_internal.a. Prints,
# per type, old / new thread CPU time per byte in L1 (16x2048, one thread) and from DRAM
# (1.2 GiB of copies, 5632x2048 and 2048x5632, two threads) with each kernel's fraction of a
# plain read of the same bytes. About 1 minute per type on 2 cores.
#   bench/quant_decode_ab/run.sh OLD_REF [TYPES=q4_0] [LEVEL=2]
# Needs the C++ test build (cmake -S . -B build/cpp-tests -DTIERLM_BUILD_TESTS=ON
# -DCMAKE_BUILD_TYPE=Release && cmake --build build/cpp-tests -j2).
set -euo pipefail
old=${1:?usage: run.sh OLD_GIT_REF [types, e.g. q4_0,q4_1] [level: 2 = AVX512-VNNI, 1 = AVX2]}
types=${2:-q4_0}
level=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
lib=$root/build/cpp-tests/libtierlm_internal.a
[ -f "$lib" ] || { echo "run.sh: $lib is missing: build the C++ tests first (see the header)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$root" archive "$old" cpp/src/kernels | tar -x -C "$tmp"
if [ "$level" = 2 ]; then
  flags="-O3 -std=c++20 -mavx2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c"
else
  flags="-O3 -std=c++20 -mavx2 -mfma -mf16c"
fi
inc="-I$root/cpp/src -I$root/cpp/include"
g++ $flags -DLEVEL="$level" -I"$tmp/cpp/src" $inc -DVNAME=va -c "$here/variant.cpp" -o "$tmp/va.o"
g++ $flags -DLEVEL="$level" $inc -DVNAME=vb -c "$here/variant.cpp" -o "$tmp/vb.o"
g++ -O2 -mavx2 -std=c++20 $inc -c "$here/harness.cpp" -o "$tmp/harness.o"
g++ "$tmp/harness.o" "$tmp/va.o" "$tmp/vb.o" "$lib" -lpthread -o "$tmp/ab"
echo "A = $old ($(git -C "$root" rev-parse --short "$old")), B = this checkout; B/A > 1: B is faster"
for t in ${types//,/ }; do
  "$tmp/ab" hot "$t" 16 2048 1000 60
  "$tmp/ab" dram "$t" 5632 2048 1200 20
  "$tmp/ab" dram "$t" 2048 5632 1200 20
done
