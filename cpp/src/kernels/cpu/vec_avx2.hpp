// VecAvx2: 8-lane f32 vectors (AVX2, FMA, F16C), the V of the SIMD bodies written once
// (kernels/cpu/kernels_simd.hpp, train/adam_simd.hpp). Include only from *_avx2.cpp files: it sits
// in an anonymous namespace, one copy per translation unit compiled with AVX2 flags.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace tierlm::detail {
namespace {

struct VecAvx2 {
  using F = __m256;
  static constexpr size_t kWidth = 8;
  static constexpr size_t kLinearRows = 4;
  static constexpr size_t kLinearTokens = 3;
  static constexpr size_t kScoreVecs = 2;
  static constexpr size_t score_keys(size_t vecs) { return vecs == 1 ? 8 : 4; }
  static constexpr size_t kDotRows = 4;
  static constexpr size_t kPvRows = 2;
  static constexpr size_t kPvVecs = 4;
  static constexpr size_t kAdamGroup = 2;  // 2 x 4 streams + 7 constants of the 16 registers

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static __m256i mask(size_t n) {
    static const int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - n));
  }
  static F load_n(const float* p, size_t n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store_n(float* p, F v, size_t n) { _mm256_maskstore_ps(p, mask(n), v); }
  static F load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load_f16_n(const uint16_t* p, size_t n) {
    alignas(16) uint16_t b[8] = {};
    std::memcpy(b, p, n * 2);
    return load_f16(b);
  }
  static F load_bf16(const uint16_t* p) {
    const __m256i i = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(i, 16));
  }
  static F load_bf16_n(const uint16_t* p, size_t n) {
    alignas(16) uint16_t b[8] = {};
    std::memcpy(b, p, n * 2);
    return load_bf16(b);
  }
  // kWidth int8 values widened exactly; an f16 value in every lane (a q8_0 block's scale).
  static F load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static F set1_f16(uint16_t h) { return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h))); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F select_lt(F a, F b, F x, F y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }
  static F select_eq(F a, F b, F x, F y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
  }
  static float reduce_add(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // out[0..4) = horizontal sums of a, b, c, d.
  static void reduce4(F a, F b, F c, F d, float* out) {
    const F ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    const F cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const F abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xee));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
  static F load_n_zero_rest(F v, size_t n) {
    return _mm256_and_ps(v, _mm256_castsi256_ps(mask(n)));
  }
  static float reduce_max(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static F pow2i(F n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static F sqrt(F a) { return _mm256_sqrt_ps(a); }
  // Rounded to the nearest bf16, ties to even; a NaN stays a quiet NaN.
  static __m128i to_bf16(F x) {
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    r = _mm256_srli_epi32(r, 16);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(nan));
    // The low 16 bits of 8 lanes: packus works in 128-bit halves, then the order is fixed.
    const __m256i packed = _mm256_packus_epi32(r, r);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
  }
  static void store_bf16(uint16_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16(v));
  }
  static void store_bf16_n(uint16_t* p, F v, size_t n) {
    alignas(16) uint16_t b[8];
    store_bf16(b, v);
    std::memcpy(p, b, n * 2);
  }
};

}  // namespace
}  // namespace tierlm::detail
