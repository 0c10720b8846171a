// Quantized linear bodies written once over an integer-dot trait I on 256-bit vectors
// (quant_avx2.cpp and quant_avx512vnni.cpp define I and include quant_matmul_simd.hpp, which
// includes this file and adds the row x token tiling of the linear). Everything sits in
// an anonymous namespace: each ISA translation unit gets its own copy compiled with its flags.
//
// A weight block is unpacked to unsigned bytes once and multiplied with the int8 activation
// blocks of up to T tokens (T = 1: decode). Results equal quant_scalar.cpp's up to the order of
// the f32 sums: the integer parts are exact, and the activation blocks are bit-identical.
// The AVX-512 level stays on 256-bit vectors: a 32-block is one ymm, and on Zen 4 a zmm op
// costs two ymm ops, so VNNI's fused dot products (one op for u8 x s8 -> i32 where AVX2 needs
// two) are the gain, not the width.
//
// I provides: dot(acc, u, x) = acc + per i32 lane the sum of four products u8 * s8 (u <= 128);
// dot16(acc, p, s) = acc + per i32 lane p[2i] * s[2i] + p[2i+1] * s[2i+1] (i16);
// kTokens32 / kTokensK, the tokens per matrix-matrix tile of the 32-block and k-types.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/kernels_impl.hpp"
#include "kernels/quant_impl.hpp"

namespace tierlm::detail {
namespace {

inline float f16(uint16_t h) { return _cvtsh_ss(h); }
inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m256i bytes(int8_t v) { return _mm256_set1_epi8(v); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hsum(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// Weight rows stream from DRAM. Their lines are asked for twice: kQuantPrefetchBytes ahead into
// L2 (T1), then kQuantNearBytes ahead into L1. Measured against one L1 prefetch 4 KiB ahead
// (docs/kernels.md), the far L2 prefetch alone reads 1.15-1.24x the bytes per CPU second and the
// near L1 one adds 1-7 %: likely because far L1 prefetches hold the core's few L1 fill buffers
// for a whole DRAM latency, which the loop's own loads then wait for.
constexpr size_t kQuantPrefetchBytes = 3072;
constexpr size_t kQuantNearBytes = 384;
inline void prefetch_span(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  for (size_t o = 0; o < n; o += 64) {
    _mm_prefetch(c + kQuantPrefetchBytes + o, _MM_HINT_T1);
    _mm_prefetch(c + kQuantNearBytes + o, _MM_HINT_T0);
  }
}

// ---- activations ------------------------------------------------------------------------------

inline float abs_max(const float* x, size_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (size_t j = 0; j < n; j += 8)
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 floats times id, rounded half to even (the MXCSR default, as nearbyint), as int8; the
// sums of elements 0-15 and 16-31 as i32 lanes.
inline __m256i round_span32(const float* x, float id, __m256i* sum_lo, __m256i* sum_hi) {
  const __m256 s = _mm256_set1_ps(id);
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), s));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), s));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), s));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), s));
  *sum_lo = _mm256_add_epi32(i0, i1);
  *sum_hi = _mm256_add_epi32(i2, i3);
  // packs works per 128-bit lane: the dwords come out as i0a i1a i2a i3a i0b i1b i2b i3b.
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

inline void store32(void* p, __m256i v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }

void quantize_rows_simd(const float* x, DType w_dtype, void* xq, size_t n, size_t cols) {
  __m256i lo, hi;
  if (quant_is_k_type(w_dtype)) {
    auto* out = static_cast<ActBlock256*>(xq);
    for (size_t i = 0; i < n * (cols / kBlock256); ++i) {
      const float* xb = x + i * kBlock256;
      ActBlock256& a = out[i];
      const float id = quant_act_inverse(abs_max(xb, kBlock256), &a.d);
      for (size_t c = 0; c < kBlock256 / 32; ++c) {
        store32(a.q + 32 * c, round_span32(xb + 32 * c, id, &lo, &hi));
        a.sums[2 * c] = static_cast<int16_t>(hsum_i32(lo));
        a.sums[2 * c + 1] = static_cast<int16_t>(hsum_i32(hi));
        a.sums32[c] = static_cast<int16_t>(a.sums[2 * c] + a.sums[2 * c + 1]);
      }
    }
    return;
  }
  const size_t nb = cols / kBlock32;
  for (size_t t = 0; t < n; ++t) {
    Act32Row<false> a(static_cast<char*>(xq) + t * act32_row_bytes(nb), nb);
    const float* xt = x + t * cols;
    auto block = [&](size_t b) {
      const float id = quant_act_inverse(abs_max(xt + b * kBlock32, kBlock32), &a.d[b]);
      const __m256i q = round_span32(xt + b * kBlock32, id, &lo, &hi);
      a.s[b] = a.d[b] * static_cast<float>(hsum_i32(_mm256_add_epi32(lo, hi)));
      return q;
    };
    size_t b = 0;
    for (; b + 2 <= nb; b += 2) {  // pairs interleaved by halves (act32_index)
      const __m256i q0 = block(b), q1 = block(b + 1);
      store32(a.q + 32 * b, _mm256_permute2x128_si256(q0, q1, 0x20));
      store32(a.q + 32 * b + 32, _mm256_permute2x128_si256(q0, q1, 0x31));
    }
    if (b < nb) store32(a.q + 32 * b, block(b));
  }
}

// ---- 32-blocks --------------------------------------------------------------------------------

// The 32 nibbles of 16 bytes: low nibbles (elements 0-15), then high nibbles (16-31).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), bytes(0x0f));
}

// 16 in each byte j whose bit j % 8 is set in byte index[j] of bits (per 128-bit lane).
inline __m256i spread_bits(__m256i bits, __m256i index) {
  const __m256i bit_of_byte = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i picked = _mm256_and_si256(_mm256_shuffle_epi8(bits, index), bit_of_byte);
  return _mm256_and_si256(_mm256_cmpeq_epi8(picked, bit_of_byte), bytes(0x10));
}

// 16 in byte j where bit j of the four bytes at qh is set.
inline __m256i unpack_high_bits(const uint8_t* qh) {
  int32_t bits;
  std::memcpy(&bits, qh, 4);
  const __m256i byte_of_bit = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                               2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  return spread_bits(_mm256_set1_epi32(bits), byte_of_bit);
}

// Two blocks' 16-byte halves side by side: [a[0:16] b[0:16]].
inline __m256i pair16(const void* a, const void* b) {
  return _mm256_set_m128i(_mm_loadu_si128(static_cast<const __m128i*>(b)),
                          _mm_loadu_si128(static_cast<const __m128i*>(a)));
}

// The nibbles of two blocks' qs as the paired activations hold them: [a lo, b lo], [a hi, b hi].
inline void unpack_nibble_pair(const uint8_t* a, const uint8_t* b, __m256i* lo, __m256i* hi) {
  const __m256i q = pair16(a, b);
  *lo = _mm256_and_si256(q, bytes(0x0f));
  *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), bytes(0x0f));
}

// The high bits (as 16) of two q5 blocks in the same order: bits 0-15 of a, then of b; bits
// 16-31 of a, then of b.
inline void unpack_high_bit_pair(const uint8_t* qh_a, const uint8_t* qh_b, __m256i* lo,
                                 __m256i* hi) {
  uint32_t a, b;
  std::memcpy(&a, qh_a, 4);
  std::memcpy(&b, qh_b, 4);
  const __m256i bits = _mm256_set1_epi64x(static_cast<int64_t>(uint64_t{b} << 32 | a));
  *lo = _mm256_or_si256(
      *lo, spread_bits(bits, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4,
                                              4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5)));
  *hi = _mm256_or_si256(
      *hi, spread_bits(bits, _mm256_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 6, 6,
                                              6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7)));
}

// Per type: unpack (one block's stored integers as bytes, in order), unpack_pair (two blocks'
// as the paired activations hold them), value = (q - kOffset) * d or q * d + m.
template <class B>
struct Ops32;
template <>
struct Ops32<BlockQ8_0> {
  static constexpr bool kSigned = true, kMin = false;
  static constexpr float kOffset = 0.0f;
  static __m256i unpack(const BlockQ8_0& b) { return load32(b.qs); }
  static void unpack_pair(const BlockQ8_0& a, const BlockQ8_0& b, __m256i* lo, __m256i* hi) {
    *lo = pair16(a.qs, b.qs);
    *hi = pair16(a.qs + 16, b.qs + 16);
  }
};
template <>
struct Ops32<BlockQ4_0> {
  static constexpr bool kSigned = false, kMin = false;
  static constexpr float kOffset = 8.0f;
  static __m256i unpack(const BlockQ4_0& b) { return unpack_nibbles(b.qs); }
  static void unpack_pair(const BlockQ4_0& a, const BlockQ4_0& b, __m256i* lo, __m256i* hi) {
    unpack_nibble_pair(a.qs, b.qs, lo, hi);
  }
};
template <>
struct Ops32<BlockQ4_1> {
  static constexpr bool kSigned = false, kMin = true;
  static constexpr float kOffset = 0.0f;
  static __m256i unpack(const BlockQ4_1& b) { return unpack_nibbles(b.qs); }
  static void unpack_pair(const BlockQ4_1& a, const BlockQ4_1& b, __m256i* lo, __m256i* hi) {
    unpack_nibble_pair(a.qs, b.qs, lo, hi);
  }
};
template <>
struct Ops32<BlockQ5_0> {
  static constexpr bool kSigned = false, kMin = false;
  static constexpr float kOffset = 16.0f;
  static __m256i unpack(const BlockQ5_0& b) {
    return _mm256_or_si256(unpack_nibbles(b.qs), unpack_high_bits(b.qh));
  }
  static void unpack_pair(const BlockQ5_0& a, const BlockQ5_0& b, __m256i* lo, __m256i* hi) {
    unpack_nibble_pair(a.qs, b.qs, lo, hi);
    unpack_high_bit_pair(a.qh, b.qh, lo, hi);
  }
};
template <>
struct Ops32<BlockQ5_1> {
  static constexpr bool kSigned = false, kMin = true;
  static constexpr float kOffset = 0.0f;
  static __m256i unpack(const BlockQ5_1& b) {
    return _mm256_or_si256(unpack_nibbles(b.qs), unpack_high_bits(b.qh));
  }
  static void unpack_pair(const BlockQ5_1& a, const BlockQ5_1& b, __m256i* lo, __m256i* hi) {
    unpack_nibble_pair(a.qs, b.qs, lo, hi);
    unpack_high_bit_pair(a.qh, b.qh, lo, hi);
  }
};

// u (unsigned weight bytes) or w (signed, q8_0) times the activation bytes x, per i32 lane.
template <class I, bool kSigned>
inline __m256i dot32(__m256i acc, __m256i w, __m256i x) {
  if constexpr (kSigned)
    return I::dot(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
  else
    return I::dot(acc, w, x);
}

// The f16 field of G consecutive blocks (G <= 4) in the low lanes of an f32 vector. The first is
// read with the two bytes after it, which every block type has, and overwritten lane by lane.
template <size_t G, class B>
inline __m128 f16_group(const B* w, uint16_t B::*field) {
  int32_t first;
  std::memcpy(&first, &(w[0].*field), 4);
  __m128i v = _mm_cvtsi32_si128(first);
  v = _mm_insert_epi16(v, w[1].*field, 1);
  if constexpr (G == 4) {
    v = _mm_insert_epi16(v, w[2].*field, 2);
    v = _mm_insert_epi16(v, w[3].*field, 3);
  }
  return _mm_cvtph_ps(v);
}

template <size_t G>
inline __m128 load_group(const float* p) {
  if constexpr (G == 4)
    return _mm_loadu_ps(p);
  else
    // _mm_loadl_epi64 reads through an unaligned type; _mm_load_sd dereferences a double*,
    // which a float pointer (4-byte aligned) does not satisfy.
    return _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// G blocks b .. b + G (G = 2 or 4, in pairs) into T tokens' accumulators. One i32 vector holds a
// pair's dot products (lanes 0-3 and 4-7), scaled by [d_w d_x of the first x4, of the second
// x4]; the scales of the G blocks are converted and multiplied together.
template <class I, class B, size_t G, size_t T>
__attribute__((always_inline)) inline void group32(const B* w, size_t b, const char* x,
                                                   size_t x_stride, size_t nb, __m256 (&acc)[T],
                                                   __m128 (&off)[T]) {
  using O = Ops32<B>;
  __m256i lo[G / 2], hi[G / 2];
  for (size_t p = 0; p < G / 2; ++p) O::unpack_pair(w[b + 2 * p], w[b + 2 * p + 1], &lo[p], &hi[p]);
  const __m128 d = f16_group<G>(w + b, &B::d);
  __m128 m;
  if constexpr (O::kMin)
    m = f16_group<G>(w + b, &B::m);
  else
    m = _mm_mul_ps(d, _mm_set1_ps(-O::kOffset));
  for (size_t t = 0; t < T; ++t) {
    const Act32Row<true> xa(x + t * x_stride, nb);
    const __m256 dd = _mm256_castps128_ps256(_mm_mul_ps(d, load_group<G>(xa.d + b)));
    for (size_t p = 0; p < G / 2; ++p) {
      const int8_t* xq = xa.q + 32 * (b + 2 * p);
      const __m256i dot = dot32<I, O::kSigned>(
          dot32<I, O::kSigned>(_mm256_setzero_si256(), lo[p], load32(xq)), hi[p], load32(xq + 32));
      const int i = static_cast<int>(2 * p);
      const __m256 scale =
          _mm256_permutevar8x32_ps(dd, _mm256_setr_epi32(i, i, i, i, i + 1, i + 1, i + 1, i + 1));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t]);
    }
    if constexpr (O::kMin || O::kOffset != 0.0f)
      off[t] = _mm_fmadd_ps(m, load_group<G>(xa.s + b), off[t]);
  }
}

// The blocks b .. nb of a row that the main loops leave (groups of four, a pair, a last unpaired
// block) into T tokens' sums, then y[t] = the sums of acc, acc2 + those of off, off2 + the
// unpaired block's product.
template <class I, class B, size_t T>
inline void finish32(const B* w, size_t b, const char* x, size_t x_stride, size_t nb,
                     __m256 (&acc)[T], const __m256 (&acc2)[T], __m128 (&off)[T],
                     const __m128 (&off2)[T], float* out) {
  using O = Ops32<B>;
  for (; b + 4 <= nb; b += 4) {
    prefetch_span(w + b, 4 * sizeof(B));
    group32<I, B, 4, T>(w, b, x, x_stride, nb, acc, off);
  }
  if (b + 2 <= nb) {
    group32<I, B, 2, T>(w, b, x, x_stride, nb, acc, off);
    b += 2;
  }
  float lone[T] = {};
  if (b < nb) {  // an unpaired last block, stored in order
    const B& blk = w[b];
    const __m256i q = O::unpack(blk);
    const float d = f16(blk.d);
    float m = 0.0f;
    if constexpr (O::kMin)
      m = f16(blk.m);
    else
      m = -O::kOffset * d;
    for (size_t t = 0; t < T; ++t) {
      const Act32Row<true> xa(x + t * x_stride, nb);
      const __m256i dot = dot32<I, O::kSigned>(_mm256_setzero_si256(), q, load32(xa.q + 32 * b));
      lone[t] = hsum(_mm256_cvtepi32_ps(dot)) * (d * xa.d[b]) + m * xa.s[b];
    }
  }
  for (size_t t = 0; t < T; ++t)
    out[t] = hsum(_mm256_add_ps(acc[t], acc2[t])) + hsum(_mm_add_ps(off[t], off2[t])) + lone[t];
}

// y[t] for T tokens of one weight row: per block (d_w * d_x) * sum(q_w * q_x) + m_w * s_x, with
// m_w = -offset * d_w for the offset types (as row_dot32 in quant_scalar.cpp), four blocks at a
// time; decode (T = 1) keeps two groups in flight on separate accumulators (q8_0; the nibble
// types decode through rows32 in quant_decode_32.hpp, with the same sums).
template <class I, class B, size_t T>
inline void tile32(const B* w, const char* x, size_t x_stride, size_t nb, float* out) {
  __m256 acc[T], acc2[T];
  __m128 off[T], off2[T];
  for (size_t t = 0; t < T; ++t) {
    acc[t] = acc2[t] = _mm256_setzero_ps();
    off[t] = off2[t] = _mm_setzero_ps();
  }
  size_t b = 0;
  if constexpr (T == 1)
    for (; b + 8 <= nb; b += 8) {
      prefetch_span(w + b, 8 * sizeof(B));
      group32<I, B, 4, T>(w, b, x, x_stride, nb, acc, off);
      group32<I, B, 4, T>(w, b + 4, x, x_stride, nb, acc2, off2);
    }
  finish32<I, B, T>(w, b, x, x_stride, nb, acc, acc2, off, off2, out);
}

// ---- k-types ----------------------------------------------------------------------------------

// Token t's activation blocks.
inline const ActBlock256* act256(const char* x, size_t t, size_t stride) {
  return reinterpret_cast<const ActBlock256*>(x + t * stride);
}

// shuffle_epi8 masks: the i16 lane k of each 128-bit half in all its lanes (q4_k / q5_k scales).
inline __m256i pick_i16(int k) {
  return _mm256_set1_epi16(static_cast<int16_t>((2 * k + 1) << 8 | 2 * k));
}
// shuffle_epi8 mask: i16 lane w in every lane of the low 128 bits, lane w + 1 in the high ones
// (q6_k's two group scales of one 32-byte vector).
inline __m256i pick_words(int w) {
  const __m128i lo = _mm_set1_epi16(static_cast<int16_t>((2 * w + 1) << 8 | 2 * w));
  const __m128i hi = _mm_set1_epi16(static_cast<int16_t>((2 * w + 3) << 8 | (2 * w + 2)));
  return _mm256_set_m128i(hi, lo);
}

// Sub-blocks 2 j and 2 j + 1 of a q4_k / q5_k super-block as bytes (lo, hi) from the 32 bytes q
// of nibbles; q5_k adds bit 2 j, then 2 j + 1, of each qh byte (*high, shifted two per call) as
// bit 4.
template <bool kQ5>
inline void unpack_k4(__m256i q, __m256i* high, __m256i* lo, __m256i* hi) {
  *lo = _mm256_and_si256(q, bytes(0x0f));
  *hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), bytes(0x0f));
  if constexpr (kQ5) {
    *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_slli_epi16(*high, 4), bytes(0x10)));
    *high = _mm256_srli_epi16(*high, 1);
    *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_slli_epi16(*high, 4), bytes(0x10)));
    *high = _mm256_srli_epi16(*high, 1);
  }
}

// q4_k / q5_k: (d d_x) * sum_s scale_s * sum(q_w q_x) - (dmin d_x) * sum_s min_s * sum_s(q_x).
template <class I, class B, size_t T>
inline void tile_k4(const B* w, const char* x, size_t x_stride, size_t nb, float* out) {
  constexpr bool kQ5 = std::is_same_v<B, BlockQ5_K>;
  __m256 acc[T];
  __m128 acc_min[T];
  for (size_t t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    acc_min[t] = _mm_setzero_ps();
  }
  for (size_t b = 0; b < nb; ++b) {
    const B& blk = w[b];
    prefetch_span(&blk, sizeof(B));
    uint64_t sc, mn;
    k4_scale_min(blk.scales, &sc, &mn);
    const __m256i scales =
        _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc))));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn)));
    __m256i high = _mm256_setzero_si256();
    if constexpr (kQ5) high = load32(blk.qh);
    // Two sums per token (low and high sub-blocks): VPDPWSSD accumulates in place, so one sum
    // would chain all eight of a super-block's products on its latency.
    __m256i isum[T], isum2[T];
    for (size_t t = 0; t < T; ++t) isum[t] = isum2[t] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      __m256i lo, hi;
      unpack_k4<kQ5>(load32(blk.qs + 32 * j), &high, &lo, &hi);
      const __m256i s_lo = _mm256_shuffle_epi8(scales, pick_i16(2 * j));
      const __m256i s_hi = _mm256_shuffle_epi8(scales, pick_i16(2 * j + 1));
      for (size_t t = 0; t < T; ++t) {
        const int8_t* xq = act256(x, t, x_stride)[b].q + 64 * j;
        isum[t] = I::dot16(isum[t], _mm256_maddubs_epi16(lo, load32(xq)), s_lo);
        isum2[t] = I::dot16(isum2[t], _mm256_maddubs_epi16(hi, load32(xq + 32)), s_hi);
      }
    }
    const float d = f16(blk.d), dmin = f16(blk.dmin);
    for (size_t t = 0; t < T; ++t) {
      const ActBlock256& xa = act256(x, t, x_stride)[b];
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(isum[t], isum2[t])),
                               _mm256_set1_ps(d * xa.d), acc[t]);
      const __m128i sums32 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xa.sums32));
      acc_min[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(_mm_madd_epi16(mins, sums32)),
                                _mm_set1_ps(dmin * xa.d), acc_min[t]);
    }
  }
  for (size_t t = 0; t < T; ++t) out[t] = hsum(acc[t]) - hsum(acc_min[t]);
}

// q6_k: (d d_x) * sum_g scale_g * (sum(q_w q_x) - 32 sum_g(q_x)). Each 32-byte vector of ql / qh
// is loaded once into a register, and a product's two group scales come from one byte shuffle of
// the half's eight scales as i16 (instead of a shuffle and a widening each). With the aligned
// activations 1.14x the bytes per CPU second of before in L1 and L2, 1.00x from DRAM
// (docs/kernels.md); loading the next block's scales ahead as row_k4 does read 0.93x from DRAM
// at 2048 x 5632 (that load runs past the L1 prefetch).
template <class I, size_t T>
inline void tile_q6k(const BlockQ6_K* w, const char* x, size_t x_stride, size_t nb, float* out) {
  __m256 acc[T];
  for (size_t t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (size_t b = 0; b < nb; ++b) {
    const BlockQ6_K& blk = w[b];
    prefetch_span(&blk, sizeof(BlockQ6_K));
    const __m256i scales16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales)));
    // The eight scales of half h (groups 8 h .. 8 h + 7) as i16 in both 128-bit lanes.
    const __m256i half_scales[2] = {_mm256_permute4x64_epi64(scales16, 0x44),
                                    _mm256_permute4x64_epi64(scales16, 0xee)};
    __m256i isum[T], isum2[T];  // two chains, as in tile_k4
    for (size_t t = 0; t < T; ++t) isum[t] = isum2[t] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      __m256i ql0 = load32(blk.ql + 64 * h), ql1 = load32(blk.ql + 64 * h + 32);
      __m256i qh = load32(blk.qh + 32 * h);
      asm("" : "+v"(ql0), "+v"(ql1), "+v"(qh));  // one load each (see row_k4)
      const __m256i m4 = bytes(0x0f), m2 = bytes(0x30);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, m4),
                          _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)),
          _mm256_or_si256(_mm256_and_si256(ql1, m4),
                          _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                          _mm256_and_si256(qh, m2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)),
      };
      for (int k = 0; k < 4; ++k) {
        const __m256i s = _mm256_shuffle_epi8(half_scales[h], pick_words(2 * k));
        for (size_t t = 0; t < T; ++t) {
          const int8_t* xq = act256(x, t, x_stride)[b].q + 128 * h + 32 * k;
          __m256i& sum = k % 2 ? isum2[t] : isum[t];
          sum = I::dot16(sum, _mm256_maddubs_epi16(q[k], load32(xq)), s);
        }
      }
    }
    const float d = f16(blk.d);
    for (size_t t = 0; t < T; ++t) {
      const ActBlock256& xa = act256(x, t, x_stride)[b];
      const __m256i offset = _mm256_madd_epi16(scales16, load32(xa.sums));
      isum[t] = _mm256_sub_epi32(_mm256_add_epi32(isum[t], isum2[t]), _mm256_slli_epi32(offset, 5));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * xa.d), acc[t]);
    }
  }
  for (size_t t = 0; t < T; ++t) out[t] = hsum(acc[t]);
}

// ---- axpy (the sparse FFN's down part) ---------------------------------------------------------

// y[0:32] += a * (q * d + m) over one 32-block's stored integers (m = -offset * d, or the min).
template <class B>
inline void axpy_block32(float a, const B& blk, float* y) {
  using O = Ops32<B>;
  const __m256i q = O::unpack(blk);
  const float d = f16(blk.d);
  float m;
  if constexpr (O::kMin)
    m = f16(blk.m);
  else
    m = -O::kOffset * d;
  const __m256 ad = _mm256_set1_ps(a * d), am = _mm256_set1_ps(a * m);
  auto add8 = [&](__m128i q8, float* out) {
    const __m256i q32 = O::kSigned ? _mm256_cvtepi8_epi32(q8) : _mm256_cvtepu8_epi32(q8);
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(out), am);
    _mm256_storeu_ps(out, _mm256_fmadd_ps(ad, _mm256_cvtepi32_ps(q32), v));
  };
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  add8(lo, y);
  add8(_mm_srli_si128(lo, 8), y + 8);
  add8(hi, y + 16);
  add8(_mm_srli_si128(hi, 8), y + 24);
}

template <class B>
void axpy_blocks32(float a, const void* w, float* y, size_t cols) {
  const auto* blocks = static_cast<const B*>(w);
  for (size_t b = 0; b < cols / kBlock32; ++b) axpy_block32(a, blocks[b], y + kBlock32 * b);
}

// k-types: each super-block dequantized by the scalar reference, then added.
void axpy_blocks256(float a, const void* w, DType w_dtype, float* y, size_t cols) {
  const size_t block_bytes = dtype_block(w_dtype).bytes;
  alignas(32) float v[kBlock256];
  const __m256 va = _mm256_set1_ps(a);
  for (size_t b = 0; b < cols / kBlock256; ++b) {
    dequantize_row(static_cast<const char*>(w) + b * block_bytes, w_dtype, v, kBlock256);
    float* out = y + kBlock256 * b;
    for (size_t j = 0; j < kBlock256; j += 8)
      _mm256_storeu_ps(out + j,
                       _mm256_fmadd_ps(va, _mm256_load_ps(v + j), _mm256_loadu_ps(out + j)));
  }
}

void axpy_quant(float a, const void* w, DType w_dtype, float* y, size_t cols) {
  switch (w_dtype) {
    case DType::kDTypeQ8_0:
      return axpy_blocks32<BlockQ8_0>(a, w, y, cols);
    case DType::kDTypeQ4_0:
      return axpy_blocks32<BlockQ4_0>(a, w, y, cols);
    case DType::kDTypeQ4_1:
      return axpy_blocks32<BlockQ4_1>(a, w, y, cols);
    case DType::kDTypeQ5_0:
      return axpy_blocks32<BlockQ5_0>(a, w, y, cols);
    case DType::kDTypeQ5_1:
      return axpy_blocks32<BlockQ5_1>(a, w, y, cols);
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      return axpy_blocks256(a, w, w_dtype, y, cols);
    case DType::kDTypeF32:
    case DType::kDTypeF16:
    case DType::kDTypeBF16:
      break;
  }
  fail_not_block_dtype("quantized axpy", w_dtype);
}

}  // namespace
}  // namespace tierlm::detail
