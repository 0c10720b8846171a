// AVX-512 AdamW: 16 lanes, the tail under a mask (no scalar loop).
#include <immintrin.h>

#include "tierlm/detail/adam_kernels.hpp"

namespace tierlm::detail {

namespace {

inline __m512 load_bf16(__mmask16 k, const uint16_t* p) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Round to nearest even; NaN keeps a quiet NaN. (No AVX512-BF16 needed.)
inline __m256i to_bf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, bits, _mm512_set1_epi32(0x400000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

}  // namespace

namespace {

// The state and output formats are template parameters so the hot loop carries no branches,
// and the pointers are locals: the intrinsics' stores may alias anything, so fields read
// through `t` would be reloaded after every store.
template <bool kBf16State, bool kBf16Out>
void adam_range(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  float* __restrict param = t.param;
  const float* __restrict grad = t.grad;
  float* __restrict m32 = static_cast<float*>(t.exp_avg);
  float* __restrict v32 = static_cast<float*>(t.exp_avg_sq);
  uint16_t* __restrict m16 = static_cast<uint16_t*>(t.exp_avg);
  uint16_t* __restrict v16 = static_cast<uint16_t*>(t.exp_avg_sq);
  uint16_t* __restrict out16 = t.param_bf16;
  const __m512 decay = _mm512_set1_ps(s.decay);
  const __m512 w1 = _mm512_set1_ps(s.one_minus_beta1);
  const __m512 beta2 = _mm512_set1_ps(s.beta2);
  const __m512 w2 = _mm512_set1_ps(s.one_minus_beta2);
  const __m512 neg_step = _mm512_set1_ps(-s.step_size);
  const __m512 inv_bc2 = _mm512_set1_ps(s.inv_bc2_sqrt);
  const __m512 eps = _mm512_set1_ps(s.eps);
  // Full vectors unmasked (masked stores are slow on some cores), the tail under a mask.
  auto step16 = [&](size_t i, __mmask16 k, bool full) __attribute__((always_inline)) {
    auto ld = [&](const float* q) {
      return full ? _mm512_loadu_ps(q) : _mm512_maskz_loadu_ps(k, q);
    };
    auto st = [&](float* q, __m512 x) {
      if (full)
        _mm512_storeu_ps(q, x);
      else
        _mm512_mask_storeu_ps(q, k, x);
    };
    auto st16 = [&](uint16_t* q, __m256i x) {
      if (full)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), x);
      else
        _mm256_mask_storeu_epi16(q, k, x);
    };
    const __m512 g = ld(grad + i);
    __m512 m = kBf16State ? load_bf16(k, m16 + i) : ld(m32 + i);
    __m512 v = kBf16State ? load_bf16(k, v16 + i) : ld(v32 + i);
    const __m512 p = _mm512_mul_ps(ld(param + i), decay);
    m = _mm512_fmadd_ps(w1, _mm512_sub_ps(g, m), m);
    v = _mm512_fmadd_ps(_mm512_mul_ps(w2, g), g, _mm512_mul_ps(v, beta2));
    const __m512 denom = _mm512_fmadd_ps(_mm512_sqrt_ps(v), inv_bc2, eps);
    const __m512 out = _mm512_add_ps(p, _mm512_div_ps(_mm512_mul_ps(neg_step, m), denom));
    st(param + i, out);
    if (kBf16State) {
      st16(m16 + i, to_bf16(m));
      st16(v16 + i, to_bf16(v));
    } else {
      st(m32 + i, m);
      st(v32 + i, v);
    }
    if (kBf16Out) st16(out16 + i, to_bf16(out));
  };
  constexpr __mmask16 kAll = static_cast<__mmask16>(0xffff);
  size_t i = begin;
  // Four independent vectors per iteration: the sqrt and divide latencies overlap.
  for (; i + 64 <= end; i += 64) {
    step16(i, kAll, true);
    step16(i + 16, kAll, true);
    step16(i + 32, kAll, true);
    step16(i + 48, kAll, true);
  }
  for (; i + 16 <= end; i += 16) step16(i, kAll, true);
  if (i < end) step16(i, static_cast<__mmask16>((1u << (end - i)) - 1), false);
}

}  // namespace

void adam_range_avx512(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
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
