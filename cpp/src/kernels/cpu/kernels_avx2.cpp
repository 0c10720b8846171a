// AVX2 + FMA + F16C kernels: 8-lane vectors over the shared bodies of kernels_simd.hpp.
#include <immintrin.h>

#include "kernels/cpu/kernels_simd_table.hpp"
#include "kernels/cpu/vec_avx2.hpp"
#include "kernels/kernels_impl.hpp"

namespace tierlm::detail {

const KernelTable& kernels_avx2() {
  static const KernelTable kTable = make_table<VecAvx2>();
  return kTable;
}

}  // namespace tierlm::detail
