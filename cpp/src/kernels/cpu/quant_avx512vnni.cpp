// AVX512-VNNI quantized kernels: one VPDPBUSD per u8 x s8 dot and one VPDPWSSD per scaled i16
// sum, on 256-bit vectors (AVX512VL; why not 512, see quant_simd.hpp), with the 32 registers
// taking larger token tiles; the k-types' matrix-matrix path runs 512-bit outer products
// (quant_panel_avx512.hpp). Picked only on CPUs with VNNI (cpu_features().avx512_vnni).
#include <immintrin.h>

#include "kernels/cpu/quant_matmul_simd.hpp"
#include "kernels/cpu/quant_panel_avx512.hpp"
#include "kernels/quant_impl.hpp"

namespace tierlm::detail {

namespace {

struct QuantVnni {
  static constexpr size_t kTokens32 = 8;
  static constexpr size_t kTokensK = 4;
  // From this many tokens the k-types unpack 16-row panels (the unpacking pays for itself).
  static constexpr size_t kPanelMinTokens = 8;
  template <class B>
  static void linear_k(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                       size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
    linear_k_panels<B>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
  }
  static __m256i dot(__m256i acc, __m256i u, __m256i x) { return _mm256_dpbusd_epi32(acc, u, x); }
  static __m256i dot16(__m256i acc, __m256i p, __m256i s) { return _mm256_dpwssd_epi32(acc, p, s); }
};

}  // namespace

const QuantKernels& quant_kernels_avx512() {
  static const QuantKernels kTable = make_quant_kernels<QuantVnni>();
  return kTable;
}

}  // namespace tierlm::detail
