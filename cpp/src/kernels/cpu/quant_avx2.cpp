// AVX2 quantized kernels: u8 x s8 products through maddubs (i16 pairs, exact for the ranges the
// block types have) and madd, over the shared bodies of quant_simd.hpp.
#include <immintrin.h>

#include "kernels/cpu/quant_matmul_simd.hpp"
#include "kernels/quant_impl.hpp"

namespace tierlm::detail {

namespace {

struct QuantAvx2 {
  // 16 registers: four tokens of 32-blocks (accumulator each) or two of k-types (three each).
  static constexpr size_t kTokens32 = 4;
  static constexpr size_t kTokensK = 2;
  static constexpr size_t kPanelMinTokens = 0;  // no matrix-matrix kernel of its own
  static __m256i dot(__m256i acc, __m256i u, __m256i x) {
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
  }
  static __m256i dot16(__m256i acc, __m256i p, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
  }
};

}  // namespace

const QuantKernels& quant_kernels_avx2() {
  static const QuantKernels kTable = make_quant_kernels<QuantAvx2>();
  return kTable;
}

}  // namespace tierlm::detail
