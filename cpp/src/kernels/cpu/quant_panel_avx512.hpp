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

#include "kernels/cpu/quant_simd.hpp"

namespace tierlm::detail {
namespace {

constexpr size_t kPanelRows = 16;
constexpr size_t kPanelTokens = 8;  // token accumulators in flight (VPDPBUSD latency 5)
constexpr size_t kPanelActBytes = 1 << 20;

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

// Per type: kUnit (elements per scale) and unpack(block, row, q256, panel): the block's stored
// integers in element order to q256 (as bytes) and its scales to the panel's row.
template <class B>
struct PanelOps;

template <class B>
struct PanelOpsK4 {
  static constexpr size_t kUnit = 32;
  static void unpack(const B& blk, size_t row, uint8_t* q, KPanel* p) {
    uint64_t sc, mn;
    k4_scale_min(blk.scales, &sc, &mn);
    const float d = f16(blk.d);
    for (size_t s = 0; s < 8; ++s) {
      p->scale[s][row] = d * static_cast<float>((sc >> (8 * s)) & 0xff);
      const auto m = static_cast<int16_t>((mn >> (8 * s)) & 0xff);
      p->c[s][row][0] = p->c[s][row][1] = m;  // groups 2s and 2s + 1 share sub-block s's min
    }
    p->corr_scale[row] = f16(blk.dmin);
    __m256i high = _mm256_setzero_si256();
    if constexpr (std::is_same_v<B, BlockQ5_K>) high = load32(blk.qh);
    for (int j = 0; j < 4; ++j) {
      const __m256i qs = load32(blk.qs + 32 * j);
      __m256i lo = _mm256_and_si256(qs, bytes(0x0f));
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), bytes(0x0f));
      if constexpr (std::is_same_v<B, BlockQ5_K>) {  // bit 2j, then 2j + 1, of each qh byte
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(high, 4), bytes(0x10)));
        high = _mm256_srli_epi16(high, 1);
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(high, 4), bytes(0x10)));
        high = _mm256_srli_epi16(high, 1);
      }
      store32(q + 64 * j, lo);
      store32(q + 64 * j + 32, hi);
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
  static void unpack(const BlockQ6_K& blk, size_t row, uint8_t* q, KPanel* p) {
    const float d = f16(blk.d);
    for (size_t g = 0; g < 16; ++g) {
      p->scale[g][row] = d * static_cast<float>(blk.scales[g]);
      p->c[g / 2][row][g % 2] = static_cast<int16_t>(32 * blk.scales[g]);
    }
    p->corr_scale[row] = d;
    const __m256i m4 = bytes(0x0f), m2 = bytes(0x30);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load32(blk.ql + 64 * h), ql1 = load32(blk.ql + 64 * h + 32);
      const __m256i qh = load32(blk.qh + 32 * h);
      uint8_t* out = q + 128 * h;
      store32(out, _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)));
      store32(out + 32, _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)));
      store32(out + 64, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                        _mm256_and_si256(qh, m2)));
      store32(out + 96, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)));
    }
  }
};

// Super-block b of rows r0 .. r0 + 16 (rows past r1 repeat the last one; their lanes are never
// stored) into p.
template <class B>
void panel_unpack(const char* w, size_t row_bytes, size_t b, size_t r0, size_t r1, KPanel* p) {
  alignas(64) uint8_t q[kPanelRows][kBlock256];
  for (size_t i = 0; i < kPanelRows; ++i) {
    const auto* row = reinterpret_cast<const B*>(w + std::min(r0 + i, r1 - 1) * row_bytes);
    PanelOps<B>::unpack(row[b], i, q[i], p);
  }
  const __m512i rows =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(kBlock256));
  for (size_t k = 0; k < kBlock256 / 4; ++k)
    _mm512_store_si512(p->q[k], _mm512_i32gather_epi32(rows, &q[0][4 * k], 1));
}

// i32 to f32 lanes (maskz: GCC 12 warns on _mm512_cvtepi32_ps's undefined source).
inline __m512 to_f32(__m512i v) { return _mm512_maskz_cvtepi32_ps(0xffff, v); }

inline __m512i broadcast4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// y[t][0:16] += the panel times super-block b of T tokens (xa[t]), lanes in mask.
template <size_t kUnit, size_t T>
__attribute__((always_inline)) inline void panel_tokens(const KPanel& p,
                                                        const ActBlock256* const (&xa)[T],
                                                        float* const (&y)[T], __mmask16 mask) {
  __m512 acc[T];
  for (size_t t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (size_t u = 0; u < kBlock256 / kUnit; ++u) {
    __m512i sum[T];
    for (size_t t = 0; t < T; ++t) sum[t] = _mm512_setzero_si512();
    for (size_t k = 0; k < kUnit / 4; ++k) {
      const size_t e = u * kUnit + 4 * k;
      const __m512i wq = _mm512_load_si512(p.q[e / 4]);
      for (size_t t = 0; t < T; ++t)
        sum[t] = _mm512_dpbusd_epi32(sum[t], wq, broadcast4(xa[t]->q + e));
    }
    const __m512 s = _mm512_load_ps(p.scale[u]);
    for (size_t t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(to_f32(sum[t]), s, acc[t]);
  }
  __m512i corr[T];
  for (size_t t = 0; t < T; ++t) corr[t] = _mm512_setzero_si512();
  for (size_t g = 0; g < 8; ++g) {
    const __m512i c = _mm512_load_si512(p.c[g]);
    for (size_t t = 0; t < T; ++t)
      corr[t] = _mm512_dpwssd_epi32(corr[t], c, broadcast4(xa[t]->sums + 2 * g));
  }
  const __m512 cs = _mm512_load_ps(p.corr_scale);
  for (size_t t = 0; t < T; ++t) {
    acc[t] = _mm512_fnmadd_ps(to_f32(corr[t]), cs, acc[t]);
    const __m512 yt = _mm512_maskz_loadu_ps(mask, y[t]);
    _mm512_mask_storeu_ps(y[t], mask, _mm512_fmadd_ps(acc[t], _mm512_set1_ps(xa[t]->d), yt));
  }
}

template <size_t kUnit, size_t T>
void panel_token_group(const KPanel& p, const char* x, size_t act_bytes, size_t b, size_t t0,
                       float* y, size_t rows, __mmask16 mask) {
  const ActBlock256* xa[T];
  float* yt[T];
  for (size_t t = 0; t < T; ++t) {
    xa[t] = act256(x, t0 + t, act_bytes) + b;
    yt[t] = y + (t0 + t) * rows;
  }
  panel_tokens<kUnit, T>(p, xa, yt, mask);
}

// The last n % kPanelTokens tokens, one instantiation per count.
template <size_t kUnit, size_t T = kPanelTokens - 1>
void panel_token_tail(size_t count, const KPanel& p, const char* x, size_t act_bytes, size_t b,
                      size_t t0, float* y, size_t rows, __mmask16 mask) {
  if constexpr (T > 0) {
    if (count == T) return panel_token_group<kUnit, T>(p, x, act_bytes, b, t0, y, rows, mask);
    panel_token_tail<kUnit, T - 1>(count, p, x, act_bytes, b, t0, y, rows, mask);
  }
}

// Y[:, r0:r1] = X W^T (+ bias) for a k-type W, panel by panel.
template <class B>
void linear_k_panels(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                     size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  constexpr size_t kUnit = PanelOps<B>::kUnit;
  const size_t row_bytes = dtype_row_bytes(w_dtype, cols);
  const size_t nb = cols / kBlock256;
  const size_t act_bytes = quant_act_row_bytes(w_dtype, cols);
  const auto* x = static_cast<const char*>(xq);
  // Each panel sweeps the activations of a token tile once per super-block: tiles of at most
  // kPanelActBytes stay in L2 (the down projection's 512 tokens would not).
  const size_t tile =
      std::max(kPanelTokens, kPanelActBytes / act_bytes / kPanelTokens * kPanelTokens);
  KPanel p;
  for (size_t t0 = 0; t0 < n; t0 += tile) {
    const size_t t1 = std::min(n, t0 + tile);
    for (size_t p0 = r0; p0 < r1; p0 += kPanelRows) {
      const size_t live = std::min(kPanelRows, r1 - p0);
      const auto mask = static_cast<__mmask16>((1u << live) - 1);
      const __m512 init = bias ? _mm512_maskz_loadu_ps(mask, bias + p0) : _mm512_setzero_ps();
      for (size_t t = t0; t < t1; ++t) _mm512_mask_storeu_ps(y + t * rows + p0, mask, init);
      for (size_t b = 0; b < nb; ++b) {
        panel_unpack<B>(static_cast<const char*>(w), row_bytes, b, p0, r1, &p);
        size_t t = t0;
        for (; t + kPanelTokens <= t1; t += kPanelTokens)
          panel_token_group<kUnit, kPanelTokens>(p, x, act_bytes, b, t, y + p0, rows, mask);
        panel_token_tail<kUnit>(t1 - t, p, x, act_bytes, b, t, y + p0, rows, mask);
      }
    }
  }
}

}  // namespace
}  // namespace tierlm::detail
