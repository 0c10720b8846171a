// AVX-512 (F, BW, VL, DQ) kernels: 16-lane vectors with masked tails over the shared bodies of
// detail/kernels_simd.hpp.
#include <immintrin.h>

// GCC 12's _mm512_castps512_ps256 reads an "undefined" register it declares as self-initialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "detail/kernels_impl.hpp"

namespace tierlm::detail {
namespace {

struct VecAvx512 {
  using F = __m512;
  static constexpr size_t kWidth = 16;
  static constexpr size_t kMatvecRows = 8;
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
  static float reduce_add(F v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  // out[0..4) = horizontal sums of a, b, c, d.
  static void reduce4(F a, F b, F c, F d, float* out) {
    const F ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const F cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const F abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xee));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  static F load_n_zero_rest(F v, size_t n) { return _mm512_maskz_mov_ps(mask(n), v); }
  static float reduce_max(F v) {
    const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static F pow2i(F n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
};

}  // namespace
}  // namespace tierlm::detail

#include "detail/kernels_simd.hpp"
#include "tierlm/simd.hpp"

namespace tierlm::detail {

namespace {

// bf16 matrix-matrix with AVX512-BF16: activations are rounded to bf16 once per cache tile
// and multiplied by the bf16 weights as stored with VDPBF16PS (32 products per instruction,
// f32 accumulation, no weight conversion). Activation rounding costs about 3 significant
// digits, as bf16 models computed in bf16 (transformers) have anyway.
constexpr size_t kDotCols = 1024;  // columns per chunk
constexpr size_t kDotTokens = 32;  // tokens per tile: a 64 KiB bf16 activation tile

template <size_t RB, size_t TB>
inline void bf16_dot_tile(const uint16_t* w, size_t cols, const uint16_t* xb, size_t kc,
                          const uint16_t* bias, float* y, size_t rows, size_t r, size_t t,
                          bool first) {
  __m512 acc[RB][TB];
#pragma GCC unroll 8
  for (size_t i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (size_t j = 0; j < TB; ++j) acc[i][j] = _mm512_setzero_ps();
  // Past kc the activation tile holds zeros; weights past the row are masked off, so the
  // last chunk may run as a whole one.
  const size_t chunks = (kc + 31) / 32;
  const __mmask32 last = kc % 32 ? (__mmask32{1} << (kc % 32)) - 1 : ~__mmask32{0};
  for (size_t k = 0; k < chunks; ++k) {
    const size_t c = k * 32;
    const __mmask32 m = k + 1 == chunks ? last : ~__mmask32{0};
    __m512bh xv[TB];
#pragma GCC unroll 8
    for (size_t j = 0; j < TB; ++j)
      xv[j] = (__m512bh)_mm512_load_si512(reinterpret_cast<const __m512i*>(xb + j * kDotCols + c));
#pragma GCC unroll 8
    for (size_t i = 0; i < RB; ++i) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + i * cols + c);
#pragma GCC unroll 8
      for (size_t j = 0; j < TB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv, xv[j]);
    }
  }
  float sums[RB][TB];
#pragma GCC unroll 8
  for (size_t i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (size_t j = 0; j < TB; ++j) sums[i][j] = VecAvx512::reduce_add(acc[i][j]);
  for (size_t i = 0; i < RB; ++i) {
    const float b = first && bias ? bf16_to_f32(bias[r + i]) : 0.0f;
    for (size_t j = 0; j < TB; ++j) {
      float& out = y[(t + j) * rows + r + i];
      const float sum = sums[i][j];
      out = first ? sum + b : out + sum;
    }
  }
}

void linear_bf16_dot(const float* x, const uint16_t* w, const uint16_t* bias, float* y, size_t n,
                     size_t rows, size_t cols, size_t r0, size_t r1) {
  alignas(64) uint16_t xb[kDotTokens * kDotCols];
  for (size_t t0 = 0; t0 < n; t0 += kDotTokens) {
    const size_t nt = std::min(kDotTokens, n - t0);
    for (size_t c0 = 0; c0 < cols; c0 += kDotCols) {
      const size_t kc = std::min(kDotCols, cols - c0);
      for (size_t j = 0; j < nt; ++j) {
        const float* xr = x + (t0 + j) * cols + c0;
        for (size_t c = 0; c < kc; c += 32) {
          const size_t k = kc - c;
          const __m512 lo = VecAvx512::load_n(xr + c, std::min<size_t>(16, k));
          const __m512 hi = k > 16 ? VecAvx512::load_n(xr + c + 16, std::min<size_t>(16, k - 16))
                                   : _mm512_setzero_ps();
          _mm512_store_si512(reinterpret_cast<__m512i*>(xb + j * kDotCols + c),
                             (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
      }
      const bool first = c0 == 0;
      const uint16_t* wc = w + c0;
      size_t r = r0;
      for (; r + 4 <= r1; r += 4) {
        size_t t = 0;
        for (; t + 4 <= nt; t += 4)
          bf16_dot_tile<4, 4>(wc + r * cols, cols, xb + t * kDotCols, kc, bias, y, rows, r, t0 + t,
                              first);
        for (; t < nt; ++t)
          bf16_dot_tile<4, 1>(wc + r * cols, cols, xb + t * kDotCols, kc, bias, y, rows, r, t0 + t,
                              first);
      }
      for (; r < r1; ++r) {
        size_t t = 0;
        for (; t + 4 <= nt; t += 4)
          bf16_dot_tile<1, 4>(wc + r * cols, cols, xb + t * kDotCols, kc, bias, y, rows, r, t0 + t,
                              first);
        for (; t < nt; ++t)
          bf16_dot_tile<1, 1>(wc + r * cols, cols, xb + t * kDotCols, kc, bias, y, rows, r, t0 + t,
                              first);
      }
    }
  }
}

void linear_avx512(const float* x, const void* w, const void* bias, DType w_dtype, float* y,
                   size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  if (w_dtype == DType::kDTypeBF16 && n > 1 && cpu_features().avx512_bf16)
    return linear_bf16_dot(x, static_cast<const uint16_t*>(w), static_cast<const uint16_t*>(bias),
                           y, n, rows, cols, r0, r1);
  linear<VecAvx512>(x, w, bias, w_dtype, y, n, rows, cols, r0, r1);
}

}  // namespace

const KernelTable& kernels_avx512() {
  static const KernelTable kTable = [] {
    KernelTable t = make_table<VecAvx512>();
    t.linear = linear_avx512;
    return t;
  }();
  return kTable;
}

}  // namespace tierlm::detail
