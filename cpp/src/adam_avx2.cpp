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

void adam_range_avx2(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  const bool bf16 = t.state_dtype == AdamStateDType::kAdamStateBf16;
  float* m32 = static_cast<float*>(t.exp_avg);
  float* v32 = static_cast<float*>(t.exp_avg_sq);
  uint16_t* m16 = static_cast<uint16_t*>(t.exp_avg);
  uint16_t* v16 = static_cast<uint16_t*>(t.exp_avg_sq);
  const __m256 decay = _mm256_set1_ps(s.decay);
  const __m256 w1 = _mm256_set1_ps(s.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(s.beta2);
  const __m256 w2 = _mm256_set1_ps(s.one_minus_beta2);
  const __m256 neg_step = _mm256_set1_ps(-s.step_size);
  const __m256 inv_bc2 = _mm256_set1_ps(s.inv_bc2_sqrt);
  const __m256 eps = _mm256_set1_ps(s.eps);
  size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 g = _mm256_loadu_ps(t.grad + i);
    __m256 m = bf16 ? load_bf16(m16 + i) : _mm256_loadu_ps(m32 + i);
    __m256 v = bf16 ? load_bf16(v16 + i) : _mm256_loadu_ps(v32 + i);
    const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(t.param + i), decay);
    m = _mm256_fmadd_ps(w1, _mm256_sub_ps(g, m), m);
    v = _mm256_fmadd_ps(_mm256_mul_ps(w2, g), g, _mm256_mul_ps(v, beta2));
    const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(v), inv_bc2, eps);
    const __m256 out = _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(neg_step, m), denom));
    _mm256_storeu_ps(t.param + i, out);
    if (bf16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(m16 + i), to_bf16(m));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(v16 + i), to_bf16(v));
    } else {
      _mm256_storeu_ps(m32 + i, m);
      _mm256_storeu_ps(v32 + i, v);
    }
    if (t.param_bf16) _mm_storeu_si128(reinterpret_cast<__m128i*>(t.param_bf16 + i), to_bf16(out));
  }
  if (i < end) adam_range_scalar(s, t, i, end);
}

}  // namespace tierlm::detail
