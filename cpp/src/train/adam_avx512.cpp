// AVX-512 AdamW: 16 lanes, the tail under a mask.
#include "kernels/cpu/vec_avx512.hpp"
#include "train/adam_simd.hpp"

namespace tierlm::detail {

void adam_range_avx512(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  adam_range_formats<VecAvx512>(s, t, begin, end);
}

}  // namespace tierlm::detail
