// Matrix-matrix (prefill) for the k-types on AVX512-VNNI, as outer products: one super-block of
// 16 weight rows is unpacked once into a panel whose 64-byte vectors hold four consecutive
// elements of each of the 16 rows, and every token of the op is then multiplied with it, one
// VPDPBUSD per four elements with the token's four activation bytes broadcast from memory. The
// 16 lanes are 16 rows, so the super-block's sub-block scales become per-lane f32 vectors (one
// FMA per sub-block and token) and nothing is summed across lanes. Only quant_avx512vnni.cpp
// includes this file (zmm registers); the matrix-vector path (n = 1) stays in quant_simd.hpp.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kernels/cpu/quant_simd.hpp"

// GCC 12's 512-bit intrinsics read an "undefined" register they declare as self-initialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace tierlm::detail {
namespace {

constexpr size_t kPanelRows = 16;
constexpr size_t kPanelTokens = 8;  // token accumulators in flight (VPDPBUSD latency 5)
constexpr size_t kPanelActBytes = 1 << 20;
// Super-blocks unpacked at a time (8 x 5.6 KiB): each token's sums stay in registers across them.
constexpr size_t kPanelRun = 8;

// One super-block of 16 rows. An element e of the super-block sits at q[e / 4][row][e % 4]. Per
// unit u (q4_k / q5_k: the 8 sub-blocks of 32, q6_k: the 16 groups of 16) scale[u][row] = d *
// the unit's scale; value = scale * q - corr_scale * c with the i16 c[g] of each group g of 16
// (a k4 type's min, q6_k's 32 * scale), applied through the activations' group sums.
struct KPanel {
  alignas(64) uint8_t q[kBlock256 / 4][kPanelRows][4];
  alignas(64) float scale[16][kPanelRows];
  alignas(64) int16_t c[8][kPanelRows][2];
  alignas(64) float corr_scale[kPanelRows];
};

// The unpacking reads each field of the 16 rows' blocks as one gather of a 32-bit word per row
// (lane i: row i), so that every step below works on all 16 rows at once and writes whole panel
// vectors: no per-row scalar code and no transposition.
struct PanelRows {
  const char* block;  // super-block b of the panel's first row
  __m512i offsets;    // byte offset of row i's block from it (rows past r1 repeat the last row)
  __m512i word(size_t at) const { return _mm512_i32gather_epi32(offsets, block + at, 1); }
};

inline __m512i splat(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline __m512i bits_at(__m512i v, unsigned shift, uint32_t mask) {
  return _mm512_and_si512(_mm512_srli_epi32(v, shift), splat(mask));
}
// The f16 in the low (high = false) or high 16 bits of each lane, as f32.
inline __m512 half_of(__m512i v, bool high) {
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(high ? _mm512_srli_epi32(v, 16) : v));
}

// Per type: kUnit (elements per scale) and unpack(rows, panel).
template <class B>
struct PanelOps;

template <class B>
struct PanelOpsK4 {
  static constexpr size_t kUnit = 32;
  static constexpr bool kQ5 = std::is_same_v<B, BlockQ5_K>;
  static void unpack(const PanelRows& rows, KPanel* p) {
    const __m512i dd = rows.word(0);
    const __m512 d = half_of(dd, false);
    _mm512_store_ps(p->corr_scale, half_of(dd, true));
    // k4_scale_min on 16 rows: sub-blocks 0-3 in the low six bits of the bytes of a (scales) and
    // b (mins); 4-7 in the nibbles of c's bytes with their top two bits in the top of a's / b's.
    const __m512i a = rows.word(4), b = rows.word(8), c = rows.word(12);
    for (unsigned s = 0; s < 8; ++s) {
      const unsigned t = 8 * (s % 4);
      __m512i sc, mn;
      if (s < 4) {
        sc = bits_at(a, t, 0x3f);
        mn = bits_at(b, t, 0x3f);
      } else {
        sc = _mm512_or_si512(bits_at(c, t, 0x0f), _mm512_slli_epi32(bits_at(a, t + 6, 3), 4));
        mn = _mm512_or_si512(bits_at(c, t + 4, 0x0f), _mm512_slli_epi32(bits_at(b, t + 6, 3), 4));
      }
      _mm512_store_ps(p->scale[s], _mm512_mul_ps(_mm512_cvtepi32_ps(sc), d));
      // groups 2s and 2s + 1 share sub-block s's min
      _mm512_store_si512(p->c[s], _mm512_or_si512(mn, _mm512_slli_epi32(mn, 16)));
    }
    // Word k of qs chunk j holds elements 64 j + 4 k .. + 3 (low nibbles) and 64 j + 32 + 4 k ..
    // (high); q5_k adds bit 2 j (resp. 2 j + 1) of qh word k as bit 4.
    constexpr size_t kQs = kQ5 ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
    const __m512i nibble = splat(0x0f0f0f0f);
    for (size_t k = 0; k < 8; ++k) {
      __m512i high = _mm512_setzero_si512();
      if constexpr (kQ5) high = rows.word(offsetof(BlockQ5_K, qh) + 4 * k);
      for (unsigned j = 0; j < 4; ++j) {
        const __m512i q = rows.word(kQs + 32 * j + 4 * k);
        __m512i lo = _mm512_and_si512(q, nibble);
        __m512i hi = bits_at(q, 4, 0x0f0f0f0f);
        if constexpr (kQ5) {
          lo = _mm512_or_si512(lo, _mm512_slli_epi32(bits_at(high, 2 * j, 0x01010101), 4));
          hi = _mm512_or_si512(hi, _mm512_slli_epi32(bits_at(high, 2 * j + 1, 0x01010101), 4));
        }
        _mm512_store_si512(p->q[16 * j + k], lo);
        _mm512_store_si512(p->q[16 * j + 8 + k], hi);
      }
    }
  }
};
template <>
struct PanelOps<BlockQ4_K> : PanelOpsK4<BlockQ4_K> {};
template <>
struct PanelOps<BlockQ5_K> : PanelOpsK4<BlockQ5_K> {};

template <>
struct PanelOps<BlockQ6_K> {
  static constexpr size_t kUnit = 16;
  static void unpack(const PanelRows& rows, KPanel* p) {
    // d is the block's last two bytes: read with the two scale bytes before it.
    const __m512 d = half_of(rows.word(offsetof(BlockQ6_K, d) - 2), true);
    _mm512_store_ps(p->corr_scale, d);
    for (size_t w = 0; w < 4; ++w) {  // scales 4 w .. 4 w + 3, sign-extended from their bytes
      const __m512i v = rows.word(offsetof(BlockQ6_K, scales) + 4 * w);
      __m512i sc[4];
      for (unsigned i = 0; i < 4; ++i) {
        sc[i] = _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * i), 24);
        _mm512_store_ps(p->scale[4 * w + i], _mm512_mul_ps(_mm512_cvtepi32_ps(sc[i]), d));
      }
      for (unsigned i = 0; i < 2; ++i) {  // the i16 pair (32 sc_2g, 32 sc_2g+1)
        const __m512i lo = _mm512_and_si512(_mm512_slli_epi32(sc[2 * i], 5), splat(0xffff));
        _mm512_store_si512(p->c[2 * w + i],
                           _mm512_or_si512(lo, _mm512_slli_epi32(sc[2 * i + 1], 21)));
      }
    }
    // Word i of each half h: elements 128 h + 32 k + 4 i .. + 3 take nibble k / 2 of ql word
    // (64 h + 32 (k % 2)) / 4 + i and bits 2k, 2k + 1 of qh word 32 h / 4 + i.
    const __m512i m4 = splat(0x0f0f0f0f), m2 = splat(0x30303030);
    for (size_t h = 0; h < 2; ++h)
      for (size_t i = 0; i < 8; ++i) {
        const __m512i l0 = rows.word(64 * h + 4 * i), l1 = rows.word(64 * h + 32 + 4 * i);
        const __m512i qh = rows.word(offsetof(BlockQ6_K, qh) + 32 * h + 4 * i);
        auto& q = p->q;
        _mm512_store_si512(q[32 * h + i],
                           _mm512_or_si512(_mm512_and_si512(l0, m4),
                                           _mm512_and_si512(_mm512_slli_epi32(qh, 4), m2)));
        _mm512_store_si512(q[32 * h + 8 + i],
                           _mm512_or_si512(_mm512_and_si512(l1, m4),
                                           _mm512_and_si512(_mm512_slli_epi32(qh, 2), m2)));
        _mm512_store_si512(q[32 * h + 16 + i],
                           _mm512_or_si512(bits_at(l0, 4, 0x0f0f0f0f), _mm512_and_si512(qh, m2)));
        _mm512_store_si512(q[32 * h + 24 + i],
                           _mm512_or_si512(bits_at(l1, 4, 0x0f0f0f0f),
                                           _mm512_and_si512(_mm512_srli_epi32(qh, 2), m2)));
      }
  }
};

// Super-block b of rows r0 .. r0 + 16 (rows past r1 repeat the last one; their lanes are never
// stored) into p.
template <class B>
void panel_unpack(const char* w, size_t row_bytes, size_t b, size_t r0, size_t r1, KPanel* p) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i row = _mm512_min_epi32(lane, splat(static_cast<uint32_t>(r1 - 1 - r0)));
  const PanelRows rows{w + r0 * row_bytes + b * sizeof(B),
                       _mm512_mullo_epi32(row, splat(static_cast<uint32_t>(row_bytes)))};
  PanelOps<B>::unpack(rows, p);
}

inline __m512i broadcast4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// A run of super-blocks c0 .. c0 + count of one panel, unpacked, and how its results are stored:
// y = init + the run's sum for the first run of the row, y += it for the others.
struct PanelRun {
  const KPanel* panels;
  size_t c0, count;
  __mmask16 mask;
  bool first;
  __m512 init;
};

// y[t][0:16] (lanes in mask) gets the run times T tokens (xa[t]: their activation rows). The
// tokens' sums stay in registers across the run's super-blocks.
template <size_t kUnit, size_t T>
__attribute__((always_inline)) inline void panel_tokens(const PanelRun& run,
                                                        const ActBlock256* const (&xa)[T],
                                                        float* const (&y)[T]) {
  __m512 total[T];
  for (size_t t = 0; t < T; ++t) total[t] = _mm512_setzero_ps();
  for (size_t i = 0; i < run.count; ++i) {
    const KPanel& p = run.panels[i];
    const size_t b = run.c0 + i;
    __m512 acc[T];
    for (size_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (size_t u = 0; u < kBlock256 / kUnit; ++u) {
      __m512i sum[T];
      for (size_t t = 0; t < T; ++t) sum[t] = _mm512_setzero_si512();
      for (size_t k = 0; k < kUnit / 4; ++k) {
        const size_t e = u * kUnit + 4 * k;
        const __m512i wq = _mm512_load_si512(p.q[e / 4]);
        for (size_t t = 0; t < T; ++t)
          sum[t] = _mm512_dpbusd_epi32(sum[t], wq, broadcast4(xa[t][b].q + e));
      }
      const __m512 s = _mm512_load_ps(p.scale[u]);
      for (size_t t = 0; t < T; ++t)
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), s, acc[t]);
    }
    __m512i corr[T];
    for (size_t t = 0; t < T; ++t) corr[t] = _mm512_setzero_si512();
    for (size_t g = 0; g < 8; ++g) {
      const __m512i c = _mm512_load_si512(p.c[g]);
      for (size_t t = 0; t < T; ++t)
        corr[t] = _mm512_dpwssd_epi32(corr[t], c, broadcast4(xa[t][b].sums + 2 * g));
    }
    const __m512 cs = _mm512_load_ps(p.corr_scale);
    for (size_t t = 0; t < T; ++t) {
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(corr[t]), cs, acc[t]);
      total[t] = _mm512_fmadd_ps(acc[t], _mm512_set1_ps(xa[t][b].d), total[t]);
    }
  }
  for (size_t t = 0; t < T; ++t) {
    const __m512 base = run.first ? run.init : _mm512_maskz_loadu_ps(run.mask, y[t]);
    _mm512_mask_storeu_ps(y[t], run.mask, _mm512_add_ps(base, total[t]));
  }
}

template <size_t kUnit, size_t T>
void panel_token_group(const PanelRun& run, const char* x, size_t act_bytes, size_t t0, float* y,
                       size_t rows) {
  const ActBlock256* xa[T];
  float* yt[T];
  for (size_t t = 0; t < T; ++t) {
    xa[t] = act256(x, t0 + t, act_bytes);
    yt[t] = y + (t0 + t) * rows;
  }
  panel_tokens<kUnit, T>(run, xa, yt);
}

// The last n % kPanelTokens tokens, one instantiation per count.
template <size_t kUnit, size_t T = kPanelTokens - 1>
void panel_token_tail(size_t count, const PanelRun& run, const char* x, size_t act_bytes, size_t t0,
                      float* y, size_t rows) {
  if constexpr (T > 0) {
    if (count == T) return panel_token_group<kUnit, T>(run, x, act_bytes, t0, y, rows);
    panel_token_tail<kUnit, T - 1>(count, run, x, act_bytes, t0, y, rows);
  }
}

// Y[:, r0:r1] = X W^T (+ bias) for a k-type W, panel by panel, kPanelRun super-blocks at a time.
template <class B>
void linear_k_panels(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                     size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  constexpr size_t kUnit = PanelOps<B>::kUnit;
  const size_t row_bytes = dtype_row_bytes(w_dtype, cols);
  const size_t nb = cols / kBlock256;
  const size_t act_bytes = quant_act_row_bytes(w_dtype, cols);
  const auto* x = static_cast<const char*>(xq);
  // Each panel sweeps the activations of a token tile once per run: tiles of at most about
  // kPanelActBytes stay in L2 (the down projection's 512 tokens would not), in equal parts (each
  // tile unpacks every panel once more).
  const size_t tiles = (n * act_bytes + kPanelActBytes - 1) / kPanelActBytes;
  const size_t tile = ((n + tiles - 1) / tiles + kPanelTokens - 1) / kPanelTokens * kPanelTokens;
  KPanel panels[kPanelRun];
  for (size_t t0 = 0; t0 < n; t0 += tile) {
    const size_t t1 = std::min(n, t0 + tile);
    for (size_t p0 = r0; p0 < r1; p0 += kPanelRows) {
      PanelRun run{panels, 0,
                   0,      static_cast<__mmask16>((1u << std::min(kPanelRows, r1 - p0)) - 1),
                   true,   _mm512_setzero_ps()};
      if (bias) run.init = _mm512_maskz_loadu_ps(run.mask, bias + p0);
      for (run.c0 = 0; run.c0 < nb; run.c0 += kPanelRun, run.first = false) {
        run.count = std::min(kPanelRun, nb - run.c0);
        for (size_t i = 0; i < run.count; ++i)
          panel_unpack<B>(static_cast<const char*>(w), row_bytes, run.c0 + i, p0, r1, &panels[i]);
        size_t t = t0;
        for (; t + kPanelTokens <= t1; t += kPanelTokens)
          panel_token_group<kUnit, kPanelTokens>(run, x, act_bytes, t, y + p0, rows);
        panel_token_tail<kUnit>(t1 - t, run, x, act_bytes, t, y + p0, rows);
      }
    }
  }
}

}  // namespace
}  // namespace tierlm::detail
