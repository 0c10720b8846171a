// AVX2 + FMA AdamW: 8 lanes, the tail through masked loads and stores.
#include "kernels/cpu/vec_avx2.hpp"
#include "train/adam_simd.hpp"

namespace tierlm::detail {

void adam_range_avx2(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  adam_range_formats<VecAvx2>(s, t, begin, end);
}

}  // namespace tierlm::detail
