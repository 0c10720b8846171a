// The decode body of the fused attention (few query rows: one token's heads of a KV group, the
// step of a long context that reads the whole cache): it widens the cache's rows from their
// storage type (f32, f16, bf16, q8_0) in registers, with no staged f32 copy, reads each key and
// value vector once for all the rows, and prefetches the next key tile. Written once over a
// vector type V, like attention_simd.hpp, which dispatches to it.
#pragma once

#include "kernels/cpu/kernels_simd.hpp"

namespace tierlm::detail {
namespace {

// kWidth elements at column c of a cached row in kDType, as f32 lanes.
template <class V, DType kDType>
struct KvLoad {
  using F = typename V::F;
  static F load(const uint8_t* row, size_t c) {
    if constexpr (kDType == DType::kDTypeF32) {
      return V::load(reinterpret_cast<const float*>(row) + c);
    } else if constexpr (kDType == DType::kDTypeF16) {
      return V::load_f16(reinterpret_cast<const uint16_t*>(row) + c);
    } else if constexpr (kDType == DType::kDTypeBF16) {
      return V::load_bf16(reinterpret_cast<const uint16_t*>(row) + c);
    } else {  // q8_0: kWidth divides the block of 32, so the lanes share one scale
      const auto* b = reinterpret_cast<const BlockQ8_0*>(row) + c / kBlock32;
      return V::mul(V::set1_f16(b->d), V::load_i8(b->qs + c % kBlock32));
    }
  }
  // The last n < kWidth columns, the other lanes 0.
  static F load_n(const uint8_t* row, size_t c, size_t n) {
    if constexpr (kDType == DType::kDTypeF32) {
      return V::load_n(reinterpret_cast<const float*>(row) + c, n);
    } else if constexpr (kDType == DType::kDTypeF16) {
      return V::load_f16_n(reinterpret_cast<const uint16_t*>(row) + c, n);
    } else if constexpr (kDType == DType::kDTypeBF16) {
      return V::load_bf16_n(reinterpret_cast<const uint16_t*>(row) + c, n);
    } else {  // a row's last block is zero-padded past head_dim
      return load(row, c);
    }
  }
};

// fn(i, row, n) for each run of rows t0 + i .. t0 + i + n contiguous in one block.
template <class Fn>
inline void for_runs(const KvHeadRows& h, size_t t0, size_t nk, Fn&& fn) {
  for (size_t i = 0; i < nk;) {
    const size_t t = t0 + i;
    const size_t run = std::min(nk - i, h.block_tokens - t % h.block_tokens);
    fn(i, h.row(t), run);
    i += run;
  }
}

// Where row t + kAttentionKeyTile sits relative to row t, for a run of n rows from t that the
// next key tile's run mirrors in one block (paged blocks of a size dividing the tile, or one
// contiguous block); 0 where it does not, or where it passes row end.
inline ptrdiff_t tile_ahead(const KvHeadRows& h, size_t t, size_t n, size_t end) {
  const size_t a = t + kAttentionKeyTile;
  const size_t b = h.block_tokens;
  if (a + n > end || a / b != (a + n - 1) / b) return 0;
  return h.row(a) - h.row(t);
}

// Prefetches one row ahead bytes past row (both lines of an f16 row of 64, and the up to 3 a
// q8_0 row may straddle). Spread over the tile's rows as they are read, the next tile streams
// in while this one computes; a burst of a whole tile's lines at once stalled the core on its
// line-fill buffers instead. The hardware prefetchers alone do not overlap the stream with the
// arithmetic: on a 16k-token cache of 8 layers in the model's 32-token blocks (one thread,
// AVX-512, CPU time per byte against a plain read of the same bytes) the kernel read f16 at
// 0.48 of the plain read's rate and q8_0 at 0.27 without prefetches, 0.61 and 0.43 with them
// one key tile ahead (2 and 4 KiB ahead did no better for f16, 16 and 32 KiB worse for both).
// Forced inline: as a call, GCC deleted it (a prefetch counts as no side effect, so it found
// the function pure, and its result unused), and the kernel ran without any prefetch.
__attribute__((always_inline)) inline void prefetch_row(const uint8_t* row, size_t bytes,
                                                        ptrdiff_t ahead) {
  if (ahead == 0) return;
  const uint8_t* p = row + ahead;
  for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
  __builtin_prefetch(p + bytes - 1, 0, 3);
}

// body.operator()<RB>(r) over rows 0 .. rows in chunks of kMax rows, the rest as one chunk.
template <size_t N, class Body>
inline void rows_rest(size_t n, size_t r, Body& body) {
  if constexpr (N > 0) {
    if (n == N) return body.template operator()<N>(r);
    rows_rest<N - 1>(n, r, body);
  }
}
template <size_t kMax, class Body>
inline void by_rows(size_t rows, Body&& body) {
  size_t r = 0;
  for (; r + kMax <= rows; r += kMax) body.template operator()<kMax>(r);
  rows_rest<kMax - 1>(rows - r, r, body);
}

// s[i * kAttentionKeyTile + j] = q[i] . k[j] for RB rows and nk keys at k + j * rb (row bytes),
// 4 keys at a time reduced together.
template <class V, class L, size_t RB>
inline void scores_run(const float* q, size_t d, const uint8_t* k, size_t rb, size_t nk, float* s,
                       ptrdiff_t ahead) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  size_t j = 0;
  for (; j + 4 <= nk; j += 4) {
    F a[RB][4];
    for (size_t i = 0; i < RB; ++i)
      for (size_t u = 0; u < 4; ++u) a[i][u] = V::zero();
    const uint8_t* kj = k + j * rb;
    for (size_t u = 0; u < 4; ++u) prefetch_row(kj + u * rb, rb, ahead);
    size_t c = 0;
    for (; c + kW <= d; c += kW) {
      F kv[4];
      for (size_t u = 0; u < 4; ++u) kv[u] = L::load(kj + u * rb, c);
      for (size_t i = 0; i < RB; ++i) {
        const F qv = V::load(q + i * d + c);
        for (size_t u = 0; u < 4; ++u) a[i][u] = V::fma(qv, kv[u], a[i][u]);
      }
    }
    if (c < d) {
      F kv[4];
      for (size_t u = 0; u < 4; ++u) kv[u] = L::load_n(kj + u * rb, c, d - c);
      for (size_t i = 0; i < RB; ++i) {
        const F qv = V::load_n(q + i * d + c, d - c);
        for (size_t u = 0; u < 4; ++u) a[i][u] = V::fma(qv, kv[u], a[i][u]);
      }
    }
    for (size_t i = 0; i < RB; ++i)
      V::reduce4(a[i][0], a[i][1], a[i][2], a[i][3], s + i * kAttentionKeyTile + j);
  }
  for (; j < nk; ++j) {
    F a[RB];
    for (size_t i = 0; i < RB; ++i) a[i] = V::zero();
    for (size_t c = 0; c < d; c += kW) {
      const size_t n = std::min(kW, d - c);
      const F kv = n == kW ? L::load(k + j * rb, c) : L::load_n(k + j * rb, c, n);
      for (size_t i = 0; i < RB; ++i) a[i] = V::fma(V::load_n(q + i * d + c, n), kv, a[i]);
    }
    for (size_t i = 0; i < RB; ++i) s[i * kAttentionKeyTile + j] = V::reduce_add(a[i]);
  }
}

// acc[i][c ..] += sum_j p[i * kAttentionKeyTile + j] * v[j][c ..] for RB rows and DV vectors of
// columns from c (the last possibly partial: `tail` lanes), nk values at v + j * rb.
template <class V, class L, size_t RB, size_t DV>
inline void pv_run_tile(const float* p, const uint8_t* v, size_t rb, size_t nk, float* acc,
                        size_t d, size_t c, size_t tail, ptrdiff_t ahead) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  auto last = [&](size_t u) { return u + 1 == DV && tail; };
  F a[RB][DV];
  for (size_t i = 0; i < RB; ++i)
    for (size_t u = 0; u < DV; ++u)
      a[i][u] =
          last(u) ? V::load_n(acc + i * d + c + u * kW, tail) : V::load(acc + i * d + c + u * kW);
  for (size_t j = 0; j < nk; ++j) {
    prefetch_row(v + j * rb, rb, ahead);
    F vv[DV];
    for (size_t u = 0; u < DV; ++u)
      vv[u] = last(u) ? L::load_n(v + j * rb, c + u * kW, tail) : L::load(v + j * rb, c + u * kW);
    for (size_t i = 0; i < RB; ++i) {
      const F pb = V::set1(p[i * kAttentionKeyTile + j]);
      for (size_t u = 0; u < DV; ++u) a[i][u] = V::fma(pb, vv[u], a[i][u]);
    }
  }
  for (size_t i = 0; i < RB; ++i)
    for (size_t u = 0; u < DV; ++u) {
      if (last(u))
        V::store_n(acc + i * d + c + u * kW, a[i][u], tail);
      else
        V::store(acc + i * d + c + u * kW, a[i][u]);
    }
}

// (The first column tile prefetches the run's next-tile rows, the others pass 0.)
template <class V, class L, size_t RB>
inline void pv_run(const float* p, const uint8_t* v, size_t rb, size_t nk, float* acc, size_t d,
                   ptrdiff_t ahead) {
  constexpr size_t kW = V::kWidth;
  constexpr size_t kDV = V::kPvVecs;
  size_t c = 0;
  for (; c + kDV * kW <= d; c += kDV * kW, ahead = 0)
    pv_run_tile<V, L, RB, kDV>(p, v, rb, nk, acc, d, c, 0, ahead);
  for (; c + kW <= d; c += kW, ahead = 0)
    pv_run_tile<V, L, RB, 1>(p, v, rb, nk, acc, d, c, 0, ahead);
  if (c < d) pv_run_tile<V, L, RB, 1>(p, v, rb, nk, acc, d, c, d - c, ahead);
}

template <class V, DType kDType>
void attention_decode_typed(const AttentionTile& t) {
  using F = typename V::F;
  using L = KvLoad<V, kDType>;
  constexpr size_t kW = V::kWidth;
  constexpr size_t kT = kAttentionKeyTile;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const size_t d = t.head_dim;
  const size_t rows = t.n_queries * t.group;
  float* q = t.scratch;     // [rows][d], scaled
  float* s = q + rows * d;  // [rows][kT]
  float* m = t.m;
  float* l = t.l;
  for (size_t r = 0; r < rows; ++r) {
    const float* qr = t.q + (r / t.group) * t.q_stride + (r % t.group) * d;
    for (size_t c = 0; c < d; ++c) q[r * d + c] = qr[c] * t.scale;
    m[r] = -kInf;
    l[r] = 0.0f;
  }
  std::fill(t.acc, t.acc + rows * d, 0.0f);
  const size_t end = std::min(t.key_end, t.q_pos + t.n_queries);
  for (size_t t0 = t.key_begin; t0 < end; t0 += kT) {
    const size_t nk = std::min(kT, end - t0);
    for_runs(t.k, t0, nk, [&](size_t i, const uint8_t* k, size_t run) {
      ptrdiff_t ahead = tile_ahead(t.k, t0 + i, run, end);
      by_rows<4>(rows, [&]<size_t RB>(size_t r) {
        scores_run<V, L, RB>(q + r * d, d, k, t.k.row_bytes, run, s + r * kT + i, ahead);
        ahead = 0;
      });
    });
    for (size_t r = 0; r < rows; ++r) {
      float* sr = s + r * kT;
      const size_t lim = std::min(t.key_end, t.q_pos + r / t.group + 1);
      const size_t valid = lim > t0 ? std::min(nk, lim - t0) : 0;
      if (valid == 0) {
        std::fill(sr, sr + nk, 0.0f);
        continue;
      }
      F mx = V::set1(-kInf);
      size_t j = 0;
      for (; j + kW <= valid; j += kW) mx = V::max(mx, V::load(sr + j));
      float row_max = V::reduce_max(mx);
      for (; j < valid; ++j) row_max = std::max(row_max, sr[j]);
      const float m_new = std::max(m[r], row_max);
      const float corr = std::exp(m[r] - m_new);  // 0 on the first visible key
      const F vm = V::set1(m_new);
      F sum = V::zero();
      for (j = 0; j < valid; j += kW) {
        const size_t n = std::min(kW, valid - j);
        const F p = vexp<V>(V::sub(V::load_n(sr + j, n), vm));
        // Lanes past `valid` loaded 0 and became exp(-m_new): keep them out of the sum.
        const F pz = n == kW ? p : V::load_n_zero_rest(p, n);
        V::store_n(sr + j, pz, n);
        sum = V::add(sum, pz);
      }
      std::fill(sr + valid, sr + nk, 0.0f);
      if (corr != 1.0f && t0 != t.key_begin)
        for (size_t c = 0; c < d; ++c) t.acc[r * d + c] *= corr;
      l[r] = l[r] * corr + V::reduce_add(sum);
      m[r] = m_new;
    }
    for_runs(t.v, t0, nk, [&](size_t i, const uint8_t* v, size_t run) {
      ptrdiff_t ahead = tile_ahead(t.v, t0 + i, run, end);
      by_rows<V::kPvRows>(rows, [&]<size_t RB>(size_t r) {
        pv_run<V, L, RB>(s + r * kT + i, v, t.v.row_bytes, run, t.acc + r * d, d, ahead);
        ahead = 0;
      });
    });
  }
}

template <class V>
void attention_decode(const AttentionTile& t) {
  switch (t.k.dtype) {
    case DType::kDTypeF32:
      return attention_decode_typed<V, DType::kDTypeF32>(t);
    case DType::kDTypeF16:
      return attention_decode_typed<V, DType::kDTypeF16>(t);
    case DType::kDTypeBF16:
      return attention_decode_typed<V, DType::kDTypeBF16>(t);
    case DType::kDTypeQ8_0:
      return attention_decode_typed<V, DType::kDTypeQ8_0>(t);
    default:  // kernel_kv_row_bytes refused every other type
      break;
  }
  fail_block_dtype("attention", t.k.dtype);
}

}  // namespace
}  // namespace tierlm::detail
