// AVX-512 (F, BW, VL, DQ) kernels: 16-lane vectors with masked tails over the shared bodies of
// detail/kernels_simd.hpp.
#include <immintrin.h>

#include "detail/kernels_impl.hpp"

namespace tierlm::detail {
namespace {

struct VecAvx512 {
  using F = __m512;
  static constexpr size_t kWidth = 16;
  static constexpr size_t kLinearRows = 4;
  static constexpr size_t kLinearTokens = 4;
  static constexpr size_t kScoreVecs = 4;
  static constexpr size_t score_keys(size_t vecs) { return vecs == 1 ? 16 : vecs == 4 ? 4 : 8; }
  static constexpr size_t kDotRows = 8;
  static constexpr size_t kPvRows = 4;
  static constexpr size_t kPvVecs = 4;

  static __mmask16 mask(size_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F load_n(const float* p, size_t n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store_n(float* p, F v, size_t n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static F load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load_f16_n(const uint16_t* p, size_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p));
  }
  static F bf16_bits(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static F load_bf16(const uint16_t* p) {
    return bf16_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load_bf16_n(const uint16_t* p, size_t n) {
    return bf16_bits(_mm256_maskz_loadu_epi16(mask(n), p));
  }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F round(F a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static F select_lt(F a, F b, F x, F y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x);
  }
  static F select_eq(F a, F b, F x, F y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), y, x);
  }
  static float reduce_add(F v) { return _mm512_reduce_add_ps(v); }
  // out[0..4) = horizontal sums of a, b, c, d.
  static void reduce4(F a, F b, F c, F d, float* out) {
    const F ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const F cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const F abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xee));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  static F load_n_zero_rest(F v, size_t n) { return _mm512_maskz_mov_ps(mask(n), v); }
  static float reduce_max(F v) { return _mm512_reduce_max_ps(v); }
  static F pow2i(F n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
};

}  // namespace
}  // namespace tierlm::detail

#include "detail/kernels_simd.hpp"

namespace tierlm::detail {

const KernelTable& kernels_avx512() {
  static const KernelTable kTable = make_table<VecAvx512>();
  return kTable;
}

}  // namespace tierlm::detail
