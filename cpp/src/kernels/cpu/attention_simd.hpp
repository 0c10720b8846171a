// The fused attention body (tiled, online softmax, causal, grouped-query, reading the KV cache in
// place) written once over a vector type V, on top of the shared loads and math of
// kernels_simd.hpp; like it, everything sits in an anonymous namespace per ISA translation unit.
#pragma once

#include "kernels/cpu/attention_decode_simd.hpp"
#include "kernels/cpu/kernels_simd.hpp"

namespace tierlm::detail {
namespace {

// ---- attention --------------------------------------------------------------------------------
//
// The bodies read one key tile of keys and values at a time as f32 rows (kv_tile): in place
// when the cache is f32 and the tile sits in one block, else widened from f16 / bf16 / q8_0
// (and gathered across blocks) into a tile-sized stage in the scratch, so a compact or paged
// cache is never copied whole.
//
// Scores are kept transposed, st[key][row] (rows padded to whole vectors), so the online
// softmax (max, exp, sum per row) runs down the key axis with full vectors, and the queries are
// transposed and pre-scaled once per tile call, qt[c][row]. A few rows (decode) take the body
// of attention_decode_simd.hpp instead, which reads the cache without a stage.

// st[j][v*W ..] for keys j0..j0+KB and row vectors v0..v0+RV: sum_c k[j][c] * qt[c][rows].
template <class V, size_t KB, size_t RV>
inline void scores_tile(const float* k, size_t d, const float* qt, size_t rp, float* st) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  F acc[KB][RV];
  for (size_t i = 0; i < KB; ++i)
    for (size_t v = 0; v < RV; ++v) acc[i][v] = V::zero();
  for (size_t c = 0; c < d; ++c) {
    F q[RV];
    for (size_t v = 0; v < RV; ++v) q[v] = V::load(qt + c * rp + v * kW);
    for (size_t i = 0; i < KB; ++i) {
      const F kb = V::set1(k[i * d + c]);
      for (size_t v = 0; v < RV; ++v) acc[i][v] = V::fma(kb, q[v], acc[i][v]);
    }
  }
  for (size_t i = 0; i < KB; ++i)
    for (size_t v = 0; v < RV; ++v) V::store(st + i * rp + v * kW, acc[i][v]);
}

template <class V, size_t RV>
inline void scores_rows(const float* k, size_t d, size_t nk, const float* qt, size_t rp,
                        float* st) {
  constexpr size_t kKB = V::score_keys(RV);
  size_t j = 0;
  for (; j + kKB <= nk; j += kKB) scores_tile<V, kKB, RV>(k + j * d, d, qt, rp, st + j * rp);
  for (; j < nk; ++j) scores_tile<V, 1, RV>(k + j * d, d, qt, rp, st + j * rp);
}

template <class V>
void scores_transposed(const float* k, size_t d, size_t nk, const float* qt, size_t rp, float* st) {
  constexpr size_t kW = V::kWidth;
  const size_t nv = rp / kW;
  for (size_t v0 = 0; v0 < nv; v0 += V::kScoreVecs) {
    const size_t rv = std::min(V::kScoreVecs, nv - v0);
    const float* q = qt + v0 * kW;
    float* s = st + v0 * kW;
    // Only the widths V can hold in registers are instantiated.
    if constexpr (V::kScoreVecs >= 4)
      if (rv == 4) {
        scores_rows<V, 4>(k, d, nk, q, rp, s);
        continue;
      }
    if constexpr (V::kScoreVecs >= 3)
      if (rv == 3) {
        scores_rows<V, 3>(k, d, nk, q, rp, s);
        continue;
      }
    if (rv == 2)
      scores_rows<V, 2>(k, d, nk, q, rp, s);
    else
      scores_rows<V, 1>(k, d, nk, q, rp, s);
  }
}

// acc[r][c..] += sum_j p[j * sj + r * sr] * v[j][c..] for RB rows and DV vectors of head_dim
// (the last possibly partial: `tail` lanes).
template <class V, size_t RB, size_t DV>
inline void pv_tile(const float* p, size_t sj, size_t sr, const float* v, size_t d, size_t nk,
                    float* acc, size_t tail) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  F a[RB][DV];
  for (size_t i = 0; i < RB; ++i)
    for (size_t u = 0; u < DV; ++u)
      a[i][u] = (u + 1 == DV && tail) ? V::load_n(acc + i * d + u * kW, tail)
                                      : V::load(acc + i * d + u * kW);
  for (size_t j = 0; j < nk; ++j) {
    F vv[DV];
    for (size_t u = 0; u < DV; ++u)
      vv[u] =
          (u + 1 == DV && tail) ? V::load_n(v + j * d + u * kW, tail) : V::load(v + j * d + u * kW);
    for (size_t i = 0; i < RB; ++i) {
      const F pb = V::set1(p[j * sj + i * sr]);
      for (size_t u = 0; u < DV; ++u) a[i][u] = V::fma(pb, vv[u], a[i][u]);
    }
  }
  for (size_t i = 0; i < RB; ++i)
    for (size_t u = 0; u < DV; ++u) {
      if (u + 1 == DV && tail)
        V::store_n(acc + i * d + u * kW, a[i][u], tail);
      else
        V::store(acc + i * d + u * kW, a[i][u]);
    }
}

template <class V, size_t RB>
inline void pv_rows(const float* p, size_t sj, size_t sr, const float* v, size_t d, size_t nk,
                    float* acc) {
  constexpr size_t kW = V::kWidth;
  constexpr size_t kDV = V::kPvVecs;
  size_t c = 0;
  for (; c + kDV * kW <= d; c += kDV * kW) pv_tile<V, RB, kDV>(p, sj, sr, v + c, d, nk, acc + c, 0);
  for (; c + kW <= d; c += kW) pv_tile<V, RB, 1>(p, sj, sr, v + c, d, nk, acc + c, 0);
  if (c < d) pv_tile<V, RB, 1>(p, sj, sr, v + c, d, nk, acc + c, d - c);
}

// acc[0..rows) += P · V over nk keys.
template <class V>
inline void pv(const float* p, size_t sj, size_t sr, const float* v, size_t d, size_t nk,
               size_t rows, float* acc) {
  constexpr size_t kRB = V::kPvRows;
  size_t r = 0;
  for (; r + kRB <= rows; r += kRB) pv_rows<V, kRB>(p + r * sr, sj, sr, v, d, nk, acc + r * d);
  for (; r < rows; ++r) pv_rows<V, 1>(p + r * sr, sj, sr, v, d, nk, acc + r * d);
}

inline void scale_acc_row(float* a, size_t d, float c) {
  for (size_t i = 0; i < d; ++i) a[i] *= c;
}

// Rows t0 .. t0 + nk of one KV head as f32 rows of d floats (see above).
template <class V>
const float* kv_tile(const KvHeadRows& h, size_t t0, size_t nk, size_t d, float* stage) {
  constexpr size_t kW = V::kWidth;
  const size_t b = h.block_tokens;
  if (h.dtype == DType::kDTypeF32 && t0 / b == (t0 + nk - 1) / b)
    return reinterpret_cast<const float*>(h.row(t0));
  for_runs(h, t0, nk, [&](size_t i, const uint8_t* src, size_t run) {
    float* dst = stage + i * d;
    if (h.dtype != DType::kDTypeQ8_0) return convert<V>(src, h.dtype, dst, run * d);
    // Whole blocks per row: a partial last block writes its zero padding into the next row,
    // which that row then overwrites (the stage has a block of slack for the last).
    const size_t nb = h.row_bytes / sizeof(BlockQ8_0);
    for (size_t r = 0; r < run; ++r) {
      const auto* blk = reinterpret_cast<const BlockQ8_0*>(src + r * h.row_bytes);
      for (size_t k = 0; k < nb; ++k) {
        const typename V::F scale = V::set1_f16(blk[k].d);
        float* o = dst + r * d + k * kBlock32;
        for (size_t j = 0; j < kBlock32; j += kW)
          V::store(o + j, V::mul(scale, V::load_i8(blk[k].qs + j)));
      }
    }
  });
  return stage;
}

inline float* kv_stage(const AttentionTile& t, size_t rows) {
  return t.scratch + attention_scratch_floats(rows, t.head_dim) -
         2 * attention_stage_floats(t.head_dim);
}

template <class V>
void attention(const AttentionTile& t) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const size_t rows = t.n_queries * t.group;
  if (rows <= V::kDotRows) return attention_decode<V>(t);
  const size_t d = t.head_dim;
  const size_t rp = (rows + kW - 1) / kW * kW;
  const size_t nv = rp / kW;
  float* qt = t.scratch;  // [d][rp], scaled
  float* st = qt + rp * d;
  float* lim = st + kAttentionKeyTile * rp;
  float* m = lim + rp;
  float* l = m + rp;
  float* corr = l + rp;
  float* k_stage = kv_stage(t, rows);
  float* v_stage = k_stage + attention_stage_floats(d);

  for (size_t r = 0; r < rows; ++r) {
    const float* qr = t.q + (r / t.group) * t.q_stride + (r % t.group) * d;
    for (size_t c = 0; c < d; ++c) qt[c * rp + r] = qr[c] * t.scale;
    lim[r] = static_cast<float>(std::min(t.key_end, t.q_pos + r / t.group + 1));
  }
  for (size_t r = rows; r < rp; ++r) {
    for (size_t c = 0; c < d; ++c) qt[c * rp + r] = 0.0f;
    lim[r] = static_cast<float>(t.key_end);
  }
  for (size_t r = 0; r < rp; ++r) {
    m[r] = -kInf;
    l[r] = 0.0f;
  }
  std::fill(t.acc, t.acc + rows * d, 0.0f);

  const size_t end = std::min(t.key_end, t.q_pos + t.n_queries);
  const size_t lim_min = std::min(t.key_end, t.q_pos + 1);
  for (size_t t0 = t.key_begin; t0 < end; t0 += kAttentionKeyTile) {
    const size_t nk = std::min(kAttentionKeyTile, end - t0);
    scores_transposed<V>(kv_tile<V>(t.k, t0, nk, d, k_stage), d, nk, qt, rp, st);
    const bool masked = t0 + nk > lim_min;
    for (size_t v = 0; v < nv; ++v) {
      const size_t o = v * kW;
      const F vlim = V::load(lim + o);
      F mx = V::set1(-kInf);
      for (size_t j = 0; j < nk; ++j) {
        F sc = V::load(st + j * rp + o);
        if (masked) {
          // Key t0 + j is visible to rows whose limit exceeds it.
          sc = V::select_lt(V::set1(static_cast<float>(t0 + j)), vlim, sc, V::set1(-kInf));
          V::store(st + j * rp + o, sc);
        }
        mx = V::max(mx, sc);
      }
      const F m_old = V::load(m + o);
      const F m_new = V::max(m_old, mx);
      // Rows with no visible key yet keep m = -inf; subtract 0 there to avoid inf - inf.
      const F m_sub = V::select_eq(m_new, V::set1(-kInf), V::zero(), m_new);
      const F c = vexp<V>(V::sub(m_old, m_sub));
      F sum = V::zero();
      for (size_t j = 0; j < nk; ++j) {
        const F p = vexp<V>(V::sub(V::load(st + j * rp + o), m_sub));
        V::store(st + j * rp + o, p);
        sum = V::add(sum, p);
      }
      V::store(l + o, V::fma(V::load(l + o), c, sum));
      V::store(m + o, m_new);
      V::store(corr + o, c);
    }
    if (t0 != t.key_begin)
      for (size_t r = 0; r < rows; ++r)
        if (corr[r] != 1.0f) scale_acc_row(t.acc + r * d, d, corr[r]);
    pv<V>(st, rp, 1, kv_tile<V>(t.v, t0, nk, d, v_stage), d, nk, rows, t.acc);
  }
  for (size_t r = 0; r < rows; ++r) {
    t.m[r] = m[r];
    t.l[r] = l[r];
  }
}

}  // namespace
}  // namespace tierlm::detail
