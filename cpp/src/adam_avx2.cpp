// AVX2 + FMA AdamW: 8 lanes; the tail goes to the scalar reference.
#include <immintrin.h>

#include "tierlm/detail/adam_kernels.hpp"

namespace tierlm::detail {

namespace {

inline __m256 load_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Round to nearest even; NaN keeps a quiet NaN.
inline __m128i to_bf16(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  r = _mm256_srli_epi32(r, 16);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(nan));
  // Pack the low 16 bits of 8 lanes: packus works in 128-bit halves, then fix the order.
  const __m256i packed = _mm256_packus_epi32(r, r);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

}  // namespace

namespace {

// As in adam_avx512.cpp: formats as template parameters (no branches in the loop), pointers as
// locals (the intrinsics' stores may alias `t`), four independent vectors per iteration.
template <bool kBf16State, bool kBf16Out>
void adam_range(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  float* __restrict param = t.param;
  const float* __restrict grad = t.grad;
  float* __restrict m32 = static_cast<float*>(t.exp_avg);
  float* __restrict v32 = static_cast<float*>(t.exp_avg_sq);
  uint16_t* __restrict m16 = static_cast<uint16_t*>(t.exp_avg);
  uint16_t* __restrict v16 = static_cast<uint16_t*>(t.exp_avg_sq);
  uint16_t* __restrict out16 = t.param_bf16;
  const __m256 decay = _mm256_set1_ps(s.decay);
  const __m256 w1 = _mm256_set1_ps(s.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(s.beta2);
  const __m256 w2 = _mm256_set1_ps(s.one_minus_beta2);
  const __m256 neg_step = _mm256_set1_ps(-s.step_size);
  const __m256 inv_bc2 = _mm256_set1_ps(s.inv_bc2_sqrt);
  const __m256 eps = _mm256_set1_ps(s.eps);
  auto step8 = [&](size_t i) __attribute__((always_inline)) {
    const __m256 g = _mm256_loadu_ps(grad + i);
    __m256 m = kBf16State ? load_bf16(m16 + i) : _mm256_loadu_ps(m32 + i);
    __m256 v = kBf16State ? load_bf16(v16 + i) : _mm256_loadu_ps(v32 + i);
    const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(param + i), decay);
    m = _mm256_fmadd_ps(w1, _mm256_sub_ps(g, m), m);
    v = _mm256_fmadd_ps(_mm256_mul_ps(w2, g), g, _mm256_mul_ps(v, beta2));
    const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(v), inv_bc2, eps);
    const __m256 out = _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(neg_step, m), denom));
    _mm256_storeu_ps(param + i, out);
    if (kBf16State) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(m16 + i), to_bf16(m));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(v16 + i), to_bf16(v));
    } else {
      _mm256_storeu_ps(m32 + i, m);
      _mm256_storeu_ps(v32 + i, v);
    }
    if (kBf16Out) _mm_storeu_si128(reinterpret_cast<__m128i*>(out16 + i), to_bf16(out));
  };
  size_t i = begin;
  for (; i + 32 <= end; i += 32) {
    step8(i);
    step8(i + 8);
    step8(i + 16);
    step8(i + 24);
  }
  for (; i + 8 <= end; i += 8) step8(i);
  if (i < end) adam_range_scalar(s, t, i, end);
}

}  // namespace

void adam_range_avx2(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  const bool bf16 = t.state_dtype == AdamStateDType::kAdamStateBf16;
  if (bf16) {
    if (t.param_bf16)
      adam_range<true, true>(s, t, begin, end);
    else
      adam_range<true, false>(s, t, begin, end);
  } else {
    if (t.param_bf16)
      adam_range<false, true>(s, t, begin, end);
    else
      adam_range<false, false>(s, t, begin, end);
  }
}

}  // namespace tierlm::detail
