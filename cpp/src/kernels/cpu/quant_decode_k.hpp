// The k-types' matrix-vector body (decode, one token): one q4_k / q5_k weight row against one
// token's activation blocks, over the integer-dot trait I of quant_simd.hpp (AVX2 and
// AVX512-VNNI). The same sums as tile_k4 with T = 1, so results equal quant_scalar.cpp's up to
// the order of the f32 sums; what differs is the shape of the loop, for a row streamed once:
// - the next super-block's scales and mins are decoded while this one is multiplied: decoded in
//   place, their latency (load, shuffles, store) held back every product of the block and,
//   with the one-row dependency chains, left the core idle (1.09x in L1, one core);
// - each sub-block's scale reaches the dot product as a 32-bit broadcast from a small buffer
//   (a load, where a register broadcast is a shuffle on the ports the products use);
// - each 32 bytes of nibbles are loaded once (the compiler otherwise folds the load into both
//   the low- and the high-nibble operation, two loads, often split across cache lines).
// q6_k has no row body of its own: tile_q6k took the parts that helped it (docs/kernels.md).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/quant_simd.hpp"

namespace tierlm::detail {
namespace {

// k4_scale_min on one vector: bytes 0-7 the eight 6-bit scales, bytes 8-15 the eight mins.
// Reads 16 bytes at packed (the 4 after the 12 are the block's next field).
inline __m128i k4_scale_min_vec(const uint8_t* packed) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));
  // a[0:4] c[0:4] b[0:4] c[0:4]: the low six bits of a and b, the nibbles of c.
  const __m128i abc =
      _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i low =
      _mm_and_si128(abc, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
  const __m128i c_high = _mm_and_si128(
      _mm_srli_epi16(abc, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15));
  // The top two bits of a (b) as bits 4-5 of sub-blocks 4-7's scales (mins).
  const __m128i top = _mm_and_si128(
      _mm_srli_epi16(_mm_shuffle_epi8(
                         v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7)),
                     2),
      _mm_set1_epi8(0x30));
  return _mm_or_si128(_mm_or_si128(low, c_high), top);
}

template <class I, class B>
inline float row_k4(const B* w, const ActBlock256* xa, size_t nb) {
  constexpr bool kQ5 = std::is_same_v<B, BlockQ5_K>;
  // From k4_scale_min_vec's bytes: dword i = scale i in both i16 halves (the VPDPWSSD operand
  // of sub-block i); i16 lane i = the min of sub-block i.
  const __m256i to_pairs = _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,
                                            4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1);
  const __m128i to_mins =
      _mm_setr_epi8(8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1);
  alignas(32) int32_t pairs[2][8];
  __m256 acc = _mm256_setzero_ps();
  __m128 acc_min = _mm_setzero_ps();
  __m256i scale_min = _mm256_broadcastsi128_si256(k4_scale_min_vec(w[0].scales));
  for (size_t b = 0; b < nb; ++b) {
    const B& blk = w[b];
    prefetch_span(&blk, sizeof(B));
    int32_t* pair = pairs[b % 2];
    _mm256_store_si256(reinterpret_cast<__m256i*>(pair), _mm256_shuffle_epi8(scale_min, to_pairs));
    const __m128i mins = _mm_shuffle_epi8(_mm256_castsi256_si128(scale_min), to_mins);
    if (b + 1 < nb) scale_min = _mm256_broadcastsi128_si256(k4_scale_min_vec(w[b + 1].scales));
    // The pairs are read back from memory: without this the compiler extracts them from the
    // register it stored, one shuffle each.
    asm("" : "+m"(pairs));
    __m256i high = _mm256_setzero_si256();
    if constexpr (kQ5) high = load32(blk.qh);
    __m256i isum = _mm256_setzero_si256(), isum2 = _mm256_setzero_si256();  // as in tile_k4
    const int8_t* xq = xa[b].q;
    for (int j = 0; j < 4; ++j) {
      __m256i q = load32(blk.qs + 32 * j);
      asm("" : "+v"(q));  // one load, in a register (see above)
      __m256i lo, hi;
      unpack_k4<kQ5>(q, &high, &lo, &hi);
      isum = I::dot16(isum, _mm256_maddubs_epi16(lo, load32(xq + 64 * j)),
                      _mm256_set1_epi32(pair[2 * j]));
      isum2 = I::dot16(isum2, _mm256_maddubs_epi16(hi, load32(xq + 64 * j + 32)),
                       _mm256_set1_epi32(pair[2 * j + 1]));
    }
    // (d d_x, dmin d_x) from the two f16 fields at once.
    uint32_t d_dmin;
    std::memcpy(&d_dmin, &blk.d, 4);
    const __m256 scales = _mm256_castps128_ps256(_mm_mul_ps(
        _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(d_dmin))), _mm_set1_ps(xa[b].d)));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(isum, isum2)),
                          _mm256_permutevar8x32_ps(scales, _mm256_setzero_si256()), acc);
    // The mins against the sums per 32 in four lanes, as tile_k4: decode sums in the same order
    // as before (on a random 22-layer model a 2e-7 change of one matvec moved 6 % of the greedy
    // tokens: the int8 rounding of the next layer's activations amplifies it).
    const __m128i sums32 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xa[b].sums32));
    acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(_mm_madd_epi16(mins, sums32)),
                           _mm_permute_ps(_mm256_castps256_ps128(scales), 0x55), acc_min);
  }
  return hsum(acc) - hsum(acc_min);
}

}  // namespace
}  // namespace tierlm::detail
