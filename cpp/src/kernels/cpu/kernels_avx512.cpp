// AVX-512 (F, BW, VL, DQ) kernels: 16-lane vectors with masked tails over the shared bodies of
// kernels_simd.hpp.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/kernels_simd_table.hpp"
#include "kernels/cpu/vec_avx512.hpp"
#include "kernels/kernels_impl.hpp"
#include "tierlm/core/simd.hpp"

namespace tierlm::detail {

namespace {

// bf16 matrix-matrix with AVX512-BF16 (VDPBF16PS: 32 bf16 products per instruction, f32
// accumulation). Per cache tile, activations are rounded to bf16 pairs (x[t][2p], x[t][2p+1])
// and a 32-row weight panel is repacked pair-interleaved, panel[p][row], so the inner loop
// broadcasts one activation pair and multiplies it with 16 rows at once: no horizontal sums,
// 2 loads + 12 broadcasts per 24 instructions. Activation rounding costs about 3 significant
// digits, as bf16 models computed in bf16 (transformers) have anyway. Tiles live on the stack
// (80 KiB), so the launcher still allocates nothing.
constexpr size_t kPackCols = 512;   // columns per chunk (256 pairs)
constexpr size_t kPackTokens = 64;  // tokens per activation tile: 64 KiB of bf16
constexpr size_t kPackRows = 32;    // rows per weight panel: two 16-row vectors, 32 KiB
constexpr size_t kPackPairs = kPackCols / 2;

// Transposes a 16x16 block of 32-bit elements held in r[0..16) in place.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// panel[v][p][i] = pair p of row r + 16 v + i over columns c0 .. c0 + kc (zero past the
// matrix), for v < 2.
void pack_panel(const uint16_t* w, size_t cols, size_t r, size_t nr, size_t c0, size_t kc,
                uint32_t* panel) {
  const size_t pairs = (kc + 1) / 2;
  for (size_t v = 0; v < 2; ++v) {
    uint32_t* out = panel + v * kPackPairs * 16;
    for (size_t p0 = 0; p0 < pairs; p0 += 16) {
      const size_t np = std::min<size_t>(16, pairs - p0);
      const size_t c = c0 + 2 * p0;
      const size_t elems = std::min<size_t>(32, c0 + kc - c);
      const __mmask32 m = elems == 32 ? ~__mmask32{0} : (__mmask32{1} << elems) - 1;
      __m512i block[16];
      for (size_t i = 0; i < 16; ++i) {
        const size_t row = 16 * v + i;
        const uint16_t* src = w + (r + row) * cols + c;
        block[i] = row < nr ? _mm512_maskz_loadu_epi16(m, src) : _mm512_setzero_si512();
        // The next panel streams in from DRAM while this one is multiplied.
        _mm_prefetch(reinterpret_cast<const char*>(src + kPackRows * cols), _MM_HINT_T0);
      }
      transpose16(block);
      for (size_t p = 0; p < np; ++p)
        _mm512_store_si512(reinterpret_cast<__m512i*>(out + (p0 + p) * 16), block[p]);
    }
  }
}

// y[t + j][r .. r + 32) (+)= sum over pairs of xb[j][p] * panel[.][p] for TB tokens.
template <size_t TB>
inline void packed_tile(const uint32_t* xb, const uint32_t* panel, size_t pairs, float* y,
                        size_t rows, size_t r, size_t nr, size_t t, const uint16_t* bias,
                        bool first) {
  __m512 acc[TB][2];
#pragma GCC unroll 16
  for (size_t j = 0; j < TB; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  const uint32_t* p1 = panel + kPackPairs * 16;
  for (size_t p = 0; p < pairs; ++p) {
    const __m512bh w0 =
        (__m512bh)_mm512_load_si512(reinterpret_cast<const __m512i*>(panel + p * 16));
    const __m512bh w1 = (__m512bh)_mm512_load_si512(reinterpret_cast<const __m512i*>(p1 + p * 16));
#pragma GCC unroll 16
    for (size_t j = 0; j < TB; ++j) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xb[j * kPackPairs + p]));
      acc[j][0] = _mm512_dpbf16_ps(acc[j][0], w0, xv);
      acc[j][1] = _mm512_dpbf16_ps(acc[j][1], w1, xv);
    }
  }
  for (size_t v = 0; v < 2; ++v) {
    const size_t r0 = r + 16 * v;
    if (16 * v >= nr) break;
    const size_t n = std::min<size_t>(16, nr - 16 * v);
    const __mmask16 m = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    __m512 b = _mm512_setzero_ps();
    if (first && bias) b = VecAvx512::load_bf16_n(bias + r0, n);
    for (size_t j = 0; j < TB; ++j) {
      float* out = y + (t + j) * rows + r0;
      const __m512 base = first ? b : _mm512_maskz_loadu_ps(m, out);
      _mm512_mask_storeu_ps(out, m, _mm512_add_ps(base, acc[j][v]));
    }
  }
}

void linear_bf16_packed(const float* x, const uint16_t* w, const uint16_t* bias, float* y, size_t n,
                        size_t rows, size_t cols, size_t r0, size_t r1) {
  alignas(64) uint32_t xb[kPackTokens * kPackPairs];
  alignas(64) uint32_t panel[2 * kPackPairs * 16];
  for (size_t t0 = 0; t0 < n; t0 += kPackTokens) {
    const size_t nt = std::min(kPackTokens, n - t0);
    for (size_t c0 = 0; c0 < cols; c0 += kPackCols) {
      const size_t kc = std::min(kPackCols, cols - c0);
      const size_t pairs = (kc + 1) / 2;
      for (size_t j = 0; j < nt; ++j) {
        const float* xr = x + (t0 + j) * cols + c0;
        for (size_t c = 0; c < kc; c += 32) {
          const size_t k = kc - c;
          const __m512 lo = VecAvx512::load_n(xr + c, std::min<size_t>(16, k));
          const __m512 hi = k > 16 ? VecAvx512::load_n(xr + c + 16, std::min<size_t>(16, k - 16))
                                   : _mm512_setzero_ps();
          _mm512_store_si512(reinterpret_cast<__m512i*>(xb + j * kPackPairs + c / 2),
                             (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
      }
      const bool first = c0 == 0;
      for (size_t r = r0; r < r1; r += kPackRows) {
        const size_t nr = std::min(kPackRows, r1 - r);
        pack_panel(w, cols, r, nr, c0, kc, panel);
        size_t t = 0;
        for (; t + 12 <= nt; t += 12)
          packed_tile<12>(xb + t * kPackPairs, panel, pairs, y, rows, r, nr, t0 + t, bias, first);
        for (; t + 4 <= nt; t += 4)
          packed_tile<4>(xb + t * kPackPairs, panel, pairs, y, rows, r, nr, t0 + t, bias, first);
        for (; t < nt; ++t)
          packed_tile<1>(xb + t * kPackPairs, panel, pairs, y, rows, r, nr, t0 + t, bias, first);
      }
    }
  }
}

// bf16 matrix-vector without widening shuffles. A 512-bit load holds 16 (even, odd) pairs of
// bf16 weights: a left shift turns the even ones into f32 and masking the low half turns the
// odd ones, each multiplied by the matching de-interleaved activations. Two ALU ops per 32
// weights instead of two cross-lane widenings per 16 keep the loop at memory speed.
template <size_t R>
void matvec_bf16_rows(const float* x, const uint16_t* w, const uint16_t* bias, float* y,
                      size_t cols, size_t r) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc_even[R], acc_odd[R];
  const uint16_t* rows[R];
  for (size_t i = 0; i < R; ++i) {
    acc_even[i] = acc_odd[i] = _mm512_setzero_ps();
    rows[i] = w + (r + i) * cols;
  }
  size_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    const __m512 lo = _mm512_loadu_ps(x + c);
    const __m512 hi = _mm512_loadu_ps(x + c + 16);
    const __m512 x_even = _mm512_permutex2var_ps(lo, even, hi);
    const __m512 x_odd = _mm512_permutex2var_ps(lo, odd, hi);
    for (size_t i = 0; i < R; ++i) {
      const __m512i pairs = _mm512_loadu_si512(rows[i] + c);
      acc_even[i] =
          _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)), x_even, acc_even[i]);
      acc_odd[i] =
          _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(pairs, high)), x_odd, acc_odd[i]);
    }
  }
  for (size_t i = 0; i < R; ++i) {
    float tail = 0.0f;
    for (size_t k = c; k < cols; ++k) tail += bf16_to_f32(rows[i][k]) * x[k];
    const float b = bias ? bf16_to_f32(bias[r + i]) : 0.0f;
    y[r + i] = VecAvx512::reduce_add(_mm512_add_ps(acc_even[i], acc_odd[i])) + tail + b;
  }
}

void matvec_bf16(const float* x, const uint16_t* w, const uint16_t* bias, float* y, size_t cols,
                 size_t r0, size_t r1) {
  constexpr size_t kRows = 8;
  size_t r = r0;
  for (; r + kRows <= r1; r += kRows) matvec_bf16_rows<kRows>(x, w, bias, y, cols, r);
  for (; r < r1; ++r) matvec_bf16_rows<1>(x, w, bias, y, cols, r);
}

// bf16 matrix-vector with AVX512-BF16: x is rounded to bf16 once per call (as the
// matrix-matrix path and llama.cpp do), then one VDPBF16PS takes 32 weights, so a row streams
// at load speed; kMatvecRows rows at a time with prefetch, as in matvec_rows.
constexpr size_t kDotMaxCols = 16384;  // the rounded x lives on the stack (32 KiB)

template <size_t R>
void matvec_bf16_dot_block(const uint16_t* xb, const uint16_t* w, const uint16_t* bias, float* y,
                           size_t cols, size_t r) {
  __m512 acc[R][2];
  const uint16_t* rows[R];
  for (size_t i = 0; i < R; ++i) {
    acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    rows[i] = w + (r + i) * cols;
  }
  auto xv = [&](size_t c) {
    return (__m512bh)_mm512_load_si512(reinterpret_cast<const __m512i*>(xb + c));
  };
  size_t c = 0;
  for (; c + 64 <= cols; c += 64) {
    const __m512bh x0 = xv(c), x1 = xv(c + 32);
    for (size_t i = 0; i < R; ++i) {
      prefetch_step<128>(rows[i] + c, 2 * c);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_loadu_si512(rows[i] + c), x0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)_mm512_loadu_si512(rows[i] + c + 32), x1);
    }
  }
  for (; c < cols; c += 32) {  // xb is zero past cols, so masked row tails add nothing
    const size_t k = std::min<size_t>(32, cols - c);
    const __mmask32 m = k == 32 ? ~__mmask32{0} : (__mmask32{1} << k) - 1;
    for (size_t i = 0; i < R; ++i)
      acc[i][0] =
          _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_maskz_loadu_epi16(m, rows[i] + c), xv(c));
  }
  for (size_t i = 0; i < R; ++i) {
    const float b = bias ? bf16_to_f32(bias[r + i]) : 0.0f;
    y[r + i] = VecAvx512::reduce_add(_mm512_add_ps(acc[i][0], acc[i][1])) + b;
  }
}

void matvec_bf16_dot(const float* x, const uint16_t* w, const uint16_t* bias, float* y, size_t cols,
                     size_t r0, size_t r1) {
  alignas(64) uint16_t xb[kDotMaxCols];
  for (size_t c = 0; c < cols; c += 32) {  // zero past cols, to the next multiple of 32
    const size_t k = cols - c;
    const __m512 lo = VecAvx512::load_n(x + c, std::min<size_t>(16, k));
    const __m512 hi =
        k > 16 ? VecAvx512::load_n(x + c + 16, std::min<size_t>(16, k - 16)) : _mm512_setzero_ps();
    _mm512_store_si512(reinterpret_cast<__m512i*>(xb + c), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
  size_t r = r0;
  for (; r + kMatvecRows <= r1; r += kMatvecRows)
    matvec_bf16_dot_block<kMatvecRows>(xb, w, bias, y, cols, r);
  for (; r < r1; ++r) matvec_bf16_dot_block<1>(xb, w, bias, y, cols, r);
}

void linear_avx512(const float* x, const void* w, const void* bias, DType w_dtype, float* y,
                   size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  if (w_dtype == DType::kDTypeBF16 && n > 1 && cpu_features().avx512_bf16)
    return linear_bf16_packed(x, static_cast<const uint16_t*>(w),
                              static_cast<const uint16_t*>(bias), y, n, rows, cols, r0, r1);
  if (w_dtype == DType::kDTypeBF16 && n == 1 && cols <= kDotMaxCols && cpu_features().avx512_bf16)
    return matvec_bf16_dot(x, static_cast<const uint16_t*>(w), static_cast<const uint16_t*>(bias),
                           y, cols, r0, r1);
  if (w_dtype == DType::kDTypeBF16 && n == 1)
    return matvec_bf16(x, static_cast<const uint16_t*>(w), static_cast<const uint16_t*>(bias), y,
                       cols, r0, r1);
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
