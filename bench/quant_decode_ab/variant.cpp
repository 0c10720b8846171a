// One build of the quantized linear (cpp/src/kernels/cpu/quant_matmul_simd.hpp of whichever tree
// comes first on the include path) under the symbol names VNAME and VNAME_prepare, so that
// run.sh links an old and a new tree's kernels into one harness. LEVEL 2: the AVX512-VNNI trait
// (as quant_avx512vnni.cpp, without its panel kernels), 1: the AVX2 one (as quant_avx2.cpp).
#include <immintrin.h>

#include <cstdlib>

#include "kernels/cpu/quant_matmul_simd.hpp"

namespace tierlm::detail {
namespace {
#if LEVEL == 2
struct Trait {
  static constexpr size_t kTokens32 = 8;
  static constexpr size_t kTokensK = 4;
  static constexpr size_t kPanelMinTokens = 0;
  template <class B>
  static void linear_k(const void*, const void*, const float*, DType, float*, size_t, size_t,
                       size_t, size_t, size_t) {}
  static __m256i dot(__m256i acc, __m256i u, __m256i x) { return _mm256_dpbusd_epi32(acc, u, x); }
  static __m256i dot16(__m256i acc, __m256i p, __m256i s) { return _mm256_dpwssd_epi32(acc, p, s); }
};
#else
struct Trait {
  static constexpr size_t kTokens32 = 4;
  static constexpr size_t kTokensK = 2;
  static constexpr size_t kPanelMinTokens = 0;
  static __m256i dot(__m256i acc, __m256i u, __m256i x) {
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
  }
  static __m256i dot16(__m256i acc, __m256i p, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
  }
};
#endif
}  // namespace
}  // namespace tierlm::detail

using tierlm::DType;
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

// n tokens of x as this tree's activation rows (64-byte aligned; never freed: one per run).
void* CAT(VNAME, _prepare)(const float* x, DType dt, size_t n, size_t cols) {
  const size_t bytes = (n * tierlm::detail::quant_act_row_bytes(dt, cols) + 127) / 64 * 64;
  void* xq = std::aligned_alloc(64, bytes);
  tierlm::detail::quantize_rows_simd(x, dt, xq, n, cols);
  return xq;
}

void VNAME(const void* xq, const void* w, DType dt, float* y, size_t n, size_t rows, size_t cols,
           size_t r0, size_t r1) {
  tierlm::detail::linear_quant<tierlm::detail::Trait>(xq, w, nullptr, dt, y, n, rows, cols, r0, r1);
}
