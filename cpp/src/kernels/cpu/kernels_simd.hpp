// SIMD kernel bodies written once over a vector type V (see kernels_avx2.cpp and
// kernels_avx512.cpp, which define V and include this file). Everything here sits in an
// anonymous namespace: each ISA translation unit gets its own copy compiled with its flags,
// so no AVX-512 instance can be picked by the linker for the AVX2 path.
//
// V provides: F (register type), kWidth, kLinearRows / kLinearTokens (matrix-matrix register
// tile), kScoreVecs (score tile width in vectors) and score_keys(vecs) (its height),
// kDotRows (at most this many rows use dot-product scores), kPvRows / kPvVecs (P·V tile), and
// static zero, set1, load, store, load_n, store_n (first n lanes, rest zero), load_f16(_n),
// load_bf16(_n), add, sub, mul, div, fma (a * b + c), max, min, round, select_lt
// (a < b ? x : y), select_eq, reduce_add, reduce_max, pow2i (2^n for integral-valued n).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/kernels_impl.hpp"

namespace tierlm::detail {
namespace {

// ---- loads by weight type -------------------------------------------------------------------

struct WF32 {
  using Storage = float;
};
struct WF16 {
  using Storage = uint16_t;
};
struct WBF16 {
  using Storage = uint16_t;
};

template <class V, class W>
inline typename V::F load_w(const typename W::Storage* p) {
  if constexpr (std::is_same_v<W, WF32>)
    return V::load(p);
  else if constexpr (std::is_same_v<W, WF16>)
    return V::load_f16(p);
  else
    return V::load_bf16(p);
}

template <class V, class W>
inline typename V::F load_w_n(const typename W::Storage* p, size_t n) {
  if constexpr (std::is_same_v<W, WF32>)
    return V::load_n(p, n);
  else if constexpr (std::is_same_v<W, WF16>)
    return V::load_f16_n(p, n);
  else
    return V::load_bf16_n(p, n);
}

template <class W>
inline float load_w1(const typename W::Storage* p, size_t i) {
  if constexpr (std::is_same_v<W, WF32>)
    return p[i];
  else if constexpr (std::is_same_v<W, WF16>)
    return f16_to_f32(p[i]);
  else
    return bf16_to_f32(p[i]);
}

// ---- math -----------------------------------------------------------------------------------

// exp(x) to about 2 ulp (Cephes expf: range reduction by ln 2, degree-6 polynomial); 0 below
// -87.3 (so exp(-inf) = 0), clamped to exp(88) above.
template <class V>
inline typename V::F vexp(typename V::F x) {
  using F = typename V::F;
  const F lo = V::set1(-87.3365447504f);
  const F xc = V::max(V::min(x, V::set1(88.0f)), lo);
  const F n = V::round(V::mul(xc, V::set1(1.44269504088896341f)));
  F r = V::fma(n, V::set1(-0.693359375f), xc);
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  F p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  const F r2 = V::mul(r, r);
  const F y = V::add(V::fma(p, r2, r), V::set1(1.0f));
  return V::select_lt(x, lo, V::zero(), V::mul(y, V::pow2i(n)));
}

// erf(x) with absolute error below 2e-7 (Abramowitz & Stegun 7.1.26 refined: erfc by a
// rational fit times exp(-x^2)); odd extension for negative x.
template <class V>
inline typename V::F verf(typename V::F x) {
  using F = typename V::F;
  const F ax = V::max(x, V::sub(V::zero(), x));
  const F t = V::div(V::set1(1.0f), V::fma(V::set1(0.5f), ax, V::set1(1.0f)));
  // Numerical Recipes erfcc (fractional error < 1.2e-7 everywhere).
  F p = V::set1(0.17087277f);
  p = V::fma(p, t, V::set1(-0.82215223f));
  p = V::fma(p, t, V::set1(1.48851587f));
  p = V::fma(p, t, V::set1(-1.13520398f));
  p = V::fma(p, t, V::set1(0.27886807f));
  p = V::fma(p, t, V::set1(-0.18628806f));
  p = V::fma(p, t, V::set1(0.09678418f));
  p = V::fma(p, t, V::set1(0.37409196f));
  p = V::fma(p, t, V::set1(1.00002368f));
  p = V::fma(p, t, V::set1(-1.26551223f));
  const F erfc = V::mul(t, vexp<V>(V::sub(p, V::mul(ax, ax))));
  const F e = V::sub(V::set1(1.0f), erfc);
  return V::select_lt(x, V::zero(), V::sub(V::zero(), e), e);
}

// ---- linear ---------------------------------------------------------------------------------

// y[t, r..r+RB) for tokens t..t+TB: RB weight rows times TB token rows, reduced over cols.
template <class V, class W, size_t RB, size_t TB>
inline void linear_tile(const float* x, const typename W::Storage* w,
                        const typename W::Storage* bias, float* y, size_t rows, size_t cols,
                        size_t r, size_t t) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  F acc[RB][TB];
  for (size_t i = 0; i < RB; ++i)
    for (size_t j = 0; j < TB; ++j) acc[i][j] = V::zero();
  const typename W::Storage* wr[RB];
  for (size_t i = 0; i < RB; ++i) wr[i] = w + (r + i) * cols;
  const float* xt[TB];
  for (size_t j = 0; j < TB; ++j) xt[j] = x + (t + j) * cols;
  size_t c = 0;
  for (; c + kW <= cols; c += kW) {
    F xv[TB];
    for (size_t j = 0; j < TB; ++j) xv[j] = V::load(xt[j] + c);
    for (size_t i = 0; i < RB; ++i) {
      const F wv = load_w<V, W>(wr[i] + c);
      for (size_t j = 0; j < TB; ++j) acc[i][j] = V::fma(wv, xv[j], acc[i][j]);
    }
  }
  if (c < cols) {
    const size_t rest = cols - c;
    F xv[TB];
    for (size_t j = 0; j < TB; ++j) xv[j] = V::load_n(xt[j] + c, rest);
    for (size_t i = 0; i < RB; ++i) {
      const F wv = load_w_n<V, W>(wr[i] + c, rest);
      for (size_t j = 0; j < TB; ++j) acc[i][j] = V::fma(wv, xv[j], acc[i][j]);
    }
  }
  for (size_t i = 0; i < RB; ++i) {
    const float b = bias ? load_w1<W>(bias, r + i) : 0.0f;
    for (size_t j = 0; j < TB; ++j) y[(t + j) * rows + r + i] = V::reduce_add(acc[i][j]) + b;
  }
}

// Matrix-vector, one row at a time with kMatvecUnroll independent accumulators. Consecutive
// rows are contiguous, so each thread reads one sequential stream that the hardware prefetcher
// follows from row to row. Interleaving rows instead (8 streams, each one row of a few KiB)
// streamed 20-25 % slower for 2-byte weights on Zen 5, where the conversions are not free.
// Every cache line is also prefetched kMatvecPrefetchBytes ahead, through the end of the row
// into the next one: 3-10 % more bandwidth with two threads, most for long rows.
constexpr size_t kMatvecUnroll = 4;
constexpr size_t kMatvecPrefetchBytes = 4096;

inline void prefetch_ahead(const void* p) {
  __builtin_prefetch(static_cast<const char*>(p) + kMatvecPrefetchBytes, 0, 3);
}

template <class V, class W>
inline void matvec_rows(const float* x, const typename W::Storage* w,
                        const typename W::Storage* bias, float* y, size_t cols, size_t r0,
                        size_t r1) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  constexpr size_t kU = kMatvecUnroll;
  for (size_t r = r0; r < r1; ++r) {
    const typename W::Storage* wr = w + r * cols;
    F acc[kU];
    for (size_t u = 0; u < kU; ++u) acc[u] = V::zero();
    size_t c = 0;
    constexpr size_t kVecBytes = kW * sizeof(typename W::Storage);
    for (; c + kU * kW <= cols; c += kU * kW)
      for (size_t u = 0; u < kU; ++u) {
        if ((u * kVecBytes) % 64 == 0) prefetch_ahead(wr + c + u * kW);
        acc[u] = V::fma(load_w<V, W>(wr + c + u * kW), V::load(x + c + u * kW), acc[u]);
      }
    for (; c < cols; c += kW) {
      const size_t rest = std::min(kW, cols - c);
      acc[0] = V::fma(load_w_n<V, W>(wr + c, rest), V::load_n(x + c, rest), acc[0]);
    }
    const float b = bias ? load_w1<W>(bias, r) : 0.0f;
    y[r] = V::reduce_add(V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3]))) + b;
  }
}

// Tokens per cache tile of the matrix-matrix path: each weight row block is read once per tile
// and reused across its tokens from L1/L2.
constexpr size_t kLinearTokenTile = 64;

template <class V, class W>
void linear_typed(const float* x, const void* w_raw, const void* bias_raw, float* y, size_t n,
                  size_t rows, size_t cols, size_t r0, size_t r1) {
  const auto* w = static_cast<const typename W::Storage*>(w_raw);
  const auto* bias = static_cast<const typename W::Storage*>(bias_raw);
  if (n == 1) return matvec_rows<V, W>(x, w, bias, y, cols, r0, r1);
  constexpr size_t kRB = V::kLinearRows;
  constexpr size_t kTB = V::kLinearTokens;
  for (size_t t0 = 0; t0 < n; t0 += kLinearTokenTile) {
    const size_t t1 = std::min(n, t0 + kLinearTokenTile);
    size_t r = r0;
    for (; r + kRB <= r1; r += kRB) {
      size_t t = t0;
      for (; t + kTB <= t1; t += kTB) linear_tile<V, W, kRB, kTB>(x, w, bias, y, rows, cols, r, t);
      for (; t < t1; ++t) linear_tile<V, W, kRB, 1>(x, w, bias, y, rows, cols, r, t);
    }
    for (; r < r1; ++r) {
      size_t t = t0;
      for (; t + kTB <= t1; t += kTB) linear_tile<V, W, 1, kTB>(x, w, bias, y, rows, cols, r, t);
      for (; t < t1; ++t) linear_tile<V, W, 1, 1>(x, w, bias, y, rows, cols, r, t);
    }
  }
}

template <class V>
void linear(const float* x, const void* w, const void* bias, DType w_dtype, float* y, size_t n,
            size_t rows, size_t cols, size_t r0, size_t r1) {
  switch (w_dtype) {
    case DType::kDTypeF32:
      return linear_typed<V, WF32>(x, w, bias, y, n, rows, cols, r0, r1);
    case DType::kDTypeF16:
      return linear_typed<V, WF16>(x, w, bias, y, n, rows, cols, r0, r1);
    case DType::kDTypeBF16:
      return linear_typed<V, WBF16>(x, w, bias, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ8_0:
    case DType::kDTypeQ4_0:
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  fail_block_dtype("linear", w_dtype);
}

// ---- norms and elementwise --------------------------------------------------------------------

template <class V>
inline float sum_squares(const float* x, size_t n) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  F a0 = V::zero(), a1 = V::zero();
  size_t c = 0;
  for (; c + 2 * kW <= n; c += 2 * kW) {
    const F v0 = V::load(x + c), v1 = V::load(x + c + kW);
    a0 = V::fma(v0, v0, a0);
    a1 = V::fma(v1, v1, a1);
  }
  for (; c < n; c += kW) {
    const F v = V::load_n(x + c, std::min(kW, n - c));
    a0 = V::fma(v, v, a0);
  }
  return V::reduce_add(V::add(a0, a1));
}

// y = (x - shift) * mul * weight + bias over one row; weight/bias may be null.
template <class V, class W>
inline void scale_row(const float* x, const void* weight_raw, const void* bias_raw, float* y,
                      size_t dim, float shift, float mul) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  const auto* weight = static_cast<const typename W::Storage*>(weight_raw);
  const auto* bias = static_cast<const typename W::Storage*>(bias_raw);
  const F vs = V::set1(shift), vm = V::set1(mul);
  for (size_t c = 0; c < dim; c += kW) {
    const size_t k = std::min(kW, dim - c);
    F v = V::mul(V::sub(k == kW ? V::load(x + c) : V::load_n(x + c, k), vs), vm);
    if (weight) v = V::mul(v, k == kW ? load_w<V, W>(weight + c) : load_w_n<V, W>(weight + c, k));
    if (bias) v = V::add(v, k == kW ? load_w<V, W>(bias + c) : load_w_n<V, W>(bias + c, k));
    if (k == kW)
      V::store(y + c, v);
    else
      V::store_n(y + c, v, k);
  }
}

template <class V, class W>
void norm_typed(const float* x, const void* weight, const void* bias, float* y, size_t n,
                size_t dim, float eps, bool layer) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  for (size_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    float* yi = y + i * dim;
    if (!layer) {
      const float inv = 1.0f / std::sqrt(sum_squares<V>(xi, dim) / static_cast<float>(dim) + eps);
      scale_row<V, W>(xi, weight, nullptr, yi, dim, 0.0f, inv);
      continue;
    }
    F s = V::zero();
    for (size_t c = 0; c < dim; c += kW) s = V::add(s, V::load_n(xi + c, std::min(kW, dim - c)));
    const float mean = V::reduce_add(s) / static_cast<float>(dim);
    const F vm = V::set1(mean);
    F q = V::zero();
    for (size_t c = 0; c < dim; c += kW) {
      const F d = V::sub(V::load_n(xi + c, std::min(kW, dim - c)), vm);
      q = V::fma(d, d, q);
    }
    // Lanes past the row loaded 0 and added mean^2 each; take them out.
    const size_t pad = (kW - dim % kW) % kW;
    const float var =
        (V::reduce_add(q) - static_cast<float>(pad) * mean * mean) / static_cast<float>(dim);
    const float inv = 1.0f / std::sqrt(std::max(var, 0.0f) + eps);
    scale_row<V, W>(xi, weight, bias, yi, dim, mean, inv);
  }
}

template <class V>
void rmsnorm(const float* x, const void* weight, DType w_dtype, float* y, size_t n, size_t dim,
             float eps) {
  switch (w_dtype) {
    case DType::kDTypeF32:
      return norm_typed<V, WF32>(x, weight, nullptr, y, n, dim, eps, false);
    case DType::kDTypeF16:
      return norm_typed<V, WF16>(x, weight, nullptr, y, n, dim, eps, false);
    case DType::kDTypeBF16:
      return norm_typed<V, WBF16>(x, weight, nullptr, y, n, dim, eps, false);
    case DType::kDTypeQ8_0:
    case DType::kDTypeQ4_0:
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  fail_block_dtype("rmsnorm", w_dtype);
}

template <class V>
void layernorm(const float* x, const void* weight, const void* bias, DType w_dtype, float* y,
               size_t n, size_t dim, float eps) {
  switch (w_dtype) {
    case DType::kDTypeF32:
      return norm_typed<V, WF32>(x, weight, bias, y, n, dim, eps, true);
    case DType::kDTypeF16:
      return norm_typed<V, WF16>(x, weight, bias, y, n, dim, eps, true);
    case DType::kDTypeBF16:
      return norm_typed<V, WBF16>(x, weight, bias, y, n, dim, eps, true);
    case DType::kDTypeQ8_0:
    case DType::kDTypeQ4_0:
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  fail_block_dtype("layernorm", w_dtype);
}

template <class V>
void rope(float* x, const float* cos, const float* sin, size_t n_heads, size_t head_dim) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  const size_t half = head_dim / 2;
  for (size_t h = 0; h < n_heads; ++h) {
    float* a = x + h * head_dim;
    float* b = a + half;
    for (size_t i = 0; i < half; i += kW) {
      const size_t k = std::min(kW, half - i);
      const F va = V::load_n(a + i, k), vb = V::load_n(b + i, k);
      const F c = V::load_n(cos + i, k), s = V::load_n(sin + i, k);
      V::store_n(a + i, V::sub(V::mul(va, c), V::mul(vb, s)), k);
      V::store_n(b + i, V::fma(va, s, V::mul(vb, c)), k);
    }
  }
}

// Applies f to each vector of x (in place or into out), tail by partial loads.
template <class V, class Fn>
inline void map1(const float* x, float* out, size_t n, Fn f) {
  constexpr size_t kW = V::kWidth;
  size_t i = 0;
  for (; i + kW <= n; i += kW) V::store(out + i, f(V::load(x + i), i));
  if (i < n) V::store_n(out + i, f(V::load_n(x + i, n - i), i), n - i);
}

template <class V>
void silu_mul(const float* gate, const float* up, float* out, size_t n) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  const F one = V::set1(1.0f);
  map1<V>(gate, out, n, [&](F g, size_t i) {
    const F u = i + kW <= n ? V::load(up + i) : V::load_n(up + i, n - i);
    const F e = vexp<V>(V::sub(V::zero(), g));
    return V::mul(V::div(g, V::add(one, e)), u);
  });
}

template <class V>
void relu(float* x, size_t n) {
  using F = typename V::F;
  map1<V>(x, x, n, [](F v, size_t) { return V::max(v, V::zero()); });
}

template <class V>
void gelu(float* x, size_t n) {
  using F = typename V::F;
  map1<V>(x, x, n, [](F v, size_t) {
    const F e = verf<V>(V::mul(v, V::set1(0.70710678118654752f)));
    return V::mul(V::mul(V::set1(0.5f), v), V::add(V::set1(1.0f), e));
  });
}

template <class V>
void add(float* y, const float* x, size_t n) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  map1<V>(y, y, n, [&](F v, size_t i) {
    return V::add(v, i + kW <= n ? V::load(x + i) : V::load_n(x + i, n - i));
  });
}

template <class V>
void add_scaled(float* y, const float* x, float scale, size_t n) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  const F s = V::set1(scale);
  map1<V>(y, y, n, [&](F v, size_t i) {
    return V::fma(s, i + kW <= n ? V::load(x + i) : V::load_n(x + i, n - i), v);
  });
}

template <class V, class W>
void convert_typed(const void* src_raw, float* dst, size_t n) {
  constexpr size_t kW = V::kWidth;
  const auto* src = static_cast<const typename W::Storage*>(src_raw);
  size_t i = 0;
  for (; i + kW <= n; i += kW) V::store(dst + i, load_w<V, W>(src + i));
  if (i < n) V::store_n(dst + i, load_w_n<V, W>(src + i, n - i), n - i);
}

template <class V>
void convert(const void* src, DType dtype, float* dst, size_t n) {
  switch (dtype) {
    case DType::kDTypeF32:
      return convert_typed<V, WF32>(src, dst, n);
    case DType::kDTypeF16:
      return convert_typed<V, WF16>(src, dst, n);
    case DType::kDTypeBF16:
      return convert_typed<V, WBF16>(src, dst, n);
    case DType::kDTypeQ8_0:
    case DType::kDTypeQ4_0:
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  fail_block_dtype("convert", dtype);
}

inline void prefetch(const float* p) { __builtin_prefetch(p, 0, 3); }

// ---- attention --------------------------------------------------------------------------------
//
// Scores are kept transposed, st[key][row] (rows padded to whole vectors), so the online
// softmax (max, exp, sum per row) runs down the key axis with full vectors, and the queries are
// transposed and pre-scaled once per tile call, qt[c][row]. For a few rows (decode) the scores
// are plain dot products over head_dim instead.

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
                    float* acc, size_t tail, bool ahead) {
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
    if (ahead)
      for (size_t u = 0; u < DV; ++u) prefetch(v + (j + kAttentionKeyTile) * d + u * kW);
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
                    float* acc, bool ahead) {
  constexpr size_t kW = V::kWidth;
  constexpr size_t kDV = V::kPvVecs;
  size_t c = 0;
  for (; c + kDV * kW <= d; c += kDV * kW)
    pv_tile<V, RB, kDV>(p, sj, sr, v + c, d, nk, acc + c, 0, ahead);
  for (; c + kW <= d; c += kW) pv_tile<V, RB, 1>(p, sj, sr, v + c, d, nk, acc + c, 0, ahead);
  if (c < d) pv_tile<V, RB, 1>(p, sj, sr, v + c, d, nk, acc + c, d - c, ahead);
}

// acc[0..rows) += P · V over nk keys.
template <class V>
inline void pv(const float* p, size_t sj, size_t sr, const float* v, size_t d, size_t nk,
               size_t rows, float* acc) {
  constexpr size_t kRB = V::kPvRows;
  size_t r = 0;
  for (; r + kRB <= rows; r += kRB)
    pv_rows<V, kRB>(p + r * sr, sj, sr, v, d, nk, acc + r * d, r == 0);
  for (; r < rows; ++r) pv_rows<V, 1>(p + r * sr, sj, sr, v, d, nk, acc + r * d, r == 0);
}

inline void scale_acc_row(float* a, size_t d, float c) {
  for (size_t i = 0; i < d; ++i) a[i] *= c;
}

// Decode body (few rows): scores s[r][j] (row-major, one key tile per row) as dot products
// of RB rows with 4 keys at once, reduced 4 at a time; the softmax then runs along keys.
template <class V, size_t RB, bool kPrefetch>
inline void scores_dot4(const float* q, const float* k, size_t d, size_t nk, float* s) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  size_t j = 0;
  for (; j + 4 <= nk; j += 4) {
    F a[RB][4];
    for (size_t i = 0; i < RB; ++i)
      for (size_t u = 0; u < 4; ++u) a[i][u] = V::zero();
    const float* kj = k + j * d;
    size_t c = 0;
    for (; c + kW <= d; c += kW) {
      F kv[4];
      for (size_t u = 0; u < 4; ++u) kv[u] = V::load(kj + u * d + c);
      // The next key tile streams from DRAM while this one computes.
      if (kPrefetch)
        for (size_t u = 0; u < 4; ++u) prefetch(kj + (kAttentionKeyTile + u) * d + c);
      for (size_t i = 0; i < RB; ++i) {
        const F qv = V::load(q + i * d + c);
        for (size_t u = 0; u < 4; ++u) a[i][u] = V::fma(qv, kv[u], a[i][u]);
      }
    }
    if (c < d) {
      F kv[4];
      for (size_t u = 0; u < 4; ++u) kv[u] = V::load_n(kj + u * d + c, d - c);
      for (size_t i = 0; i < RB; ++i) {
        const F qv = V::load_n(q + i * d + c, d - c);
        for (size_t u = 0; u < 4; ++u) a[i][u] = V::fma(qv, kv[u], a[i][u]);
      }
    }
    for (size_t i = 0; i < RB; ++i)
      V::reduce4(a[i][0], a[i][1], a[i][2], a[i][3], s + i * kAttentionKeyTile + j);
  }
  for (; j < nk; ++j) {
    const float* kj = k + j * d;
    for (size_t i = 0; i < RB; ++i) {
      F a = V::zero();
      for (size_t c = 0; c < d; c += kW) {
        const size_t n = std::min(kW, d - c);
        a = V::fma(V::load_n(q + i * d + c, n), V::load_n(kj + c, n), a);
      }
      s[i * kAttentionKeyTile + j] = V::reduce_add(a);
    }
  }
}

template <class V>
void attention_decode(const AttentionTile& t) {
  using F = typename V::F;
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
    const float* k = t.k + t0 * d;
    size_t r = 0;
    for (; r + 4 <= rows; r += 4)
      if (r == 0)
        scores_dot4<V, 4, true>(q + r * d, k, d, nk, s + r * kT);
      else
        scores_dot4<V, 4, false>(q + r * d, k, d, nk, s + r * kT);
    for (; r < rows; ++r)
      if (r == 0)
        scores_dot4<V, 1, true>(q + r * d, k, d, nk, s + r * kT);
      else
        scores_dot4<V, 1, false>(q + r * d, k, d, nk, s + r * kT);
    for (r = 0; r < rows; ++r) {
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
      if (corr != 1.0f && t0 != t.key_begin) scale_acc_row(t.acc + r * d, d, corr);
      l[r] = l[r] * corr + V::reduce_add(sum);
      m[r] = m_new;
    }
    pv<V>(s, 1, kT, t.v + t0 * d, d, nk, rows, t.acc);
  }
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
    scores_transposed<V>(t.k + t0 * d, d, nk, qt, rp, st);
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
    pv<V>(st, rp, 1, t.v + t0 * d, d, nk, rows, t.acc);
  }
  for (size_t r = 0; r < rows; ++r) {
    t.m[r] = m[r];
    t.l[r] = l[r];
  }
}

template <class V>
KernelTable make_table() {
  return KernelTable{linear<V>, rmsnorm<V>, layernorm<V>,  rope<V>,    silu_mul<V>, relu<V>,
                     gelu<V>,   add<V>,     add_scaled<V>, convert<V>, attention<V>};
}

}  // namespace
}  // namespace tierlm::detail
