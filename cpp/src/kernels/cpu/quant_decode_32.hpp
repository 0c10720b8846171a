// The nibble 32-block types' matrix-vector body (decode, one token): q4_0 / q4_1 / q5_0 / q5_1
// weight rows against one token's activation row, over the integer-dot trait I of
// quant_simd.hpp. The same f32 operations, lane by lane and in the same order, as
// tile32<I, B, 1>, so outputs are bit-identical to it; what differs is the shape of the loop:
// - two rows per pass: each activation load serves both, and the per-row work (set-up, loop
//   exit, the final sums: 13 % of a 2048-column row in L1) is paid once per two rows;
// - the f16 scales of eight blocks are gathered and converted at once, one step ahead of the
//   products that use them; for q4_0 from four 32-byte loads (f16_group8), where one
//   vpinsrw per block held back the whole loop (docs/kernels.md).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/quant_simd.hpp"

namespace tierlm::detail {
namespace {

// The f16 field of the eight blocks at g, as f32 in block order.
template <class B>
inline __m256 f16_group8(const B* g, uint16_t B::*field) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  if constexpr (std::is_same_v<B, BlockQ4_0>) {
    // d of block k sits at byte 18 k. The 32 bytes at 0, 32, 64, 96 hold d_2j (j = 0-3) in the
    // low half of dword j and d_2j+1 in the high half of dword 4 + j: one dword blend picks
    // each load's two, one word permute puts the eight in order.
    const auto* c = reinterpret_cast<const char*>(g);
    const __m256i d01 = _mm256_blend_epi32(load32(c), load32(c + 32), 0x22);
    const __m256i d23 = _mm256_blend_epi32(load32(c + 64), load32(c + 96), 0x88);
    const __m256i words = _mm256_permutexvar_epi16(
        _mm256_setr_epi16(0, 9, 2, 11, 4, 13, 6, 15, 0, 0, 0, 0, 0, 0, 0, 0),
        _mm256_blend_epi32(d01, d23, 0xcc));
    return _mm256_cvtph_ps(_mm256_castsi256_si128(words));
  }
#endif
  return _mm256_set_m128(f16_group<4>(g + 4, field), f16_group<4>(g, field));
}

// One row's state in rows32: tile32's acc / acc2, and its off | off2 as one vector.
struct Row32Sums {
  __m256 acc = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), off = _mm256_setzero_ps();
  __m256 d, m;  // the scales and offsets (m_w of tile32) of the next eight blocks
};

template <class B>
inline void load_scales8(const B* g, Row32Sums* s) {
  using O = Ops32<B>;
  s->d = f16_group8(g, &B::d);
  if constexpr (O::kMin)
    s->m = f16_group8(g, &B::m);
  else
    s->m = _mm256_mul_ps(s->d, _mm256_set1_ps(-O::kOffset));
}

// y[r] for R rows w[r] (same nb) against one token's activations x.
template <class I, class B, size_t R>
inline void rows32(const B* const (&w)[R], const char* x, size_t nb, float (&out)[R]) {
  using O = Ops32<B>;
  const Act32Row<true> xa(x, nb);
  const size_t n8 = nb / 8 * 8;
  Row32Sums s[R];
  if (n8 > 0)
    for (size_t r = 0; r < R; ++r) load_scales8(w[r], &s[r]);
  for (size_t b = 0; b < n8; b += 8) {
    const __m256 dx = _mm256_loadu_ps(xa.d + b), sx = _mm256_loadu_ps(xa.s + b);
    for (size_t r = 0; r < R; ++r) {
      const B* g = w[r] + b;
      prefetch_span(g, 8 * sizeof(B));
      const __m256 dd = _mm256_mul_ps(s[r].d, dx);
      s[r].off = _mm256_fmadd_ps(s[r].m, sx, s[r].off);
      if (b + 8 < n8) load_scales8(g + 8, &s[r]);
      for (int p = 0; p < 4; ++p) {
        __m256i lo, hi;
        O::unpack_pair(g[2 * p], g[2 * p + 1], &lo, &hi);
        const int8_t* xq = xa.q + 32 * (b + 2 * p);
        const __m256i dot = dot32<I, false>(dot32<I, false>(_mm256_setzero_si256(), lo, load32(xq)),
                                            hi, load32(xq + 32));
        const __m256 scale =
            _mm256_permutevar8x32_ps(dd, _mm256_setr_epi32(2 * p, 2 * p, 2 * p, 2 * p, 2 * p + 1,
                                                           2 * p + 1, 2 * p + 1, 2 * p + 1));
        __m256& acc = p < 2 ? s[r].acc : s[r].acc2;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc);
      }
    }
  }
  for (size_t r = 0; r < R; ++r) {
    __m256 acc[1] = {s[r].acc};
    const __m256 acc2[1] = {s[r].acc2};
    __m128 off[1] = {_mm256_castps256_ps128(s[r].off)};
    const __m128 off2[1] = {_mm256_extractf128_ps(s[r].off, 1)};
    finish32<I, B, 1>(w[r], n8, x, 0, nb, acc, acc2, off, off2, &out[r]);
  }
}

}  // namespace
}  // namespace tierlm::detail
