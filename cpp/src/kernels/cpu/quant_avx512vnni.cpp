// AVX512-VNNI quantized kernels: one VPDPBUSD per u8 x s8 dot and one VPDPWSSD per scaled i16
// sum, on 256-bit vectors (AVX512VL; why not 512, see quant_simd.hpp), with the 32 registers
// taking larger token tiles. Picked only on CPUs with VNNI (cpu_features().avx512_vnni).
#include <immintrin.h>

#include "kernels/cpu/quant_matmul_simd.hpp"
#include "kernels/quant_impl.hpp"

namespace tierlm::detail {

namespace {

struct QuantVnni {
  static constexpr size_t kTokens32 = 8;
  static constexpr size_t kTokensK = 4;
  static __m256i dot(__m256i acc, __m256i u, __m256i x) { return _mm256_dpbusd_epi32(acc, u, x); }
  static __m256i dot16(__m256i acc, __m256i p, __m256i s) { return _mm256_dpwssd_epi32(acc, p, s); }
};

}  // namespace

const QuantKernels& quant_kernels_avx512() {
  static const QuantKernels kTable = make_quant_kernels<QuantVnni>();
  return kTable;
}

}  // namespace tierlm::detail
