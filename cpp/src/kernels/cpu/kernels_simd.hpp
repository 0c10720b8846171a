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

// Matrix-vector, kMatvecRows rows at a time, each with kMatvecUnroll accumulators: a thread
// reads kMatvecRows sequential streams at once, and the hardware prefetchers keep lines of each
// in flight. On the 2-core Xeon (Sapphire Rapids class) the benches run on, four streams per
// thread read 15-25 % faster than one, for f16 and bf16 at every TinyLlama-1.1B shape (2
// threads, CPU time per byte over 60-100 interleaved trials); one stream at a time had been
// chosen on a Zen 5, where 8 interleaved rows streamed slower. Every cache line is also
// prefetched kMatvecPrefetchBytes ahead, through the end of the row into the next block:
// without it the four streams read up to 11 % slower (never faster). The prefetch goes to L2
// (T1), not L1: far L1 prefetches hold the core's few L1 fill buffers for a DRAM latency each
// (as the quantized kernels found, quant_simd.hpp). f16 2048x2048 and 8192x2048 from DRAM, 2
// threads, 1.2 GiB of copies: 1.05-1.06x the bytes per CPU second of the L1 prefetch (median of
// 12-20 interleaved pairs, three runs at load average 8), 0.94 of a plain read's rate in CPU
// time against 0.88; an added L1 prefetch 384 B ahead (0.98x) or L2 2 KiB ahead (0.90x) was
// slower. The AVX512-BF16 dot path (kernels_avx512.cpp) shares it: 1.04-1.05x the same way.
constexpr size_t kMatvecRows = 4;
constexpr size_t kMatvecUnroll = 2;
constexpr size_t kMatvecPrefetchBytes = 4096;

inline void prefetch_ahead(const void* p) {
  __builtin_prefetch(static_cast<const char*>(p) + kMatvecPrefetchBytes, 0, 2);  // T1
}

// One prefetch per cache line of a row's step of kStepBytes, starting offset bytes into the row.
template <size_t kStepBytes>
inline void prefetch_step(const void* p, size_t offset) {
  if constexpr (kStepBytes >= 64) {
    for (size_t b = 0; b < kStepBytes; b += 64) prefetch_ahead(static_cast<const char*>(p) + b);
  } else if (offset % 64 == 0) {
    prefetch_ahead(p);
  }
}

// y[r .. r + R) = rows r .. r + R of w times x (+ bias).
template <class V, class W, size_t R>
inline void matvec_block(const float* x, const typename W::Storage* w,
                         const typename W::Storage* bias, float* y, size_t cols, size_t r) {
  using F = typename V::F;
  using S = typename W::Storage;
  constexpr size_t kW = V::kWidth;
  constexpr size_t kU = kMatvecUnroll;
  F acc[R][kU];
  const S* wr[R];
  for (size_t i = 0; i < R; ++i) {
    wr[i] = w + (r + i) * cols;
    for (size_t u = 0; u < kU; ++u) acc[i][u] = V::zero();
  }
  size_t c = 0;
  for (; c + kU * kW <= cols; c += kU * kW) {
    F xv[kU];
    for (size_t u = 0; u < kU; ++u) xv[u] = V::load(x + c + u * kW);
    for (size_t i = 0; i < R; ++i) {
      prefetch_step<kU * kW * sizeof(S)>(wr[i] + c, c * sizeof(S));
      for (size_t u = 0; u < kU; ++u)
        acc[i][u] = V::fma(load_w<V, W>(wr[i] + c + u * kW), xv[u], acc[i][u]);
    }
  }
  for (; c < cols; c += kW) {
    const size_t rest = std::min(kW, cols - c);
    const F xv = V::load_n(x + c, rest);
    for (size_t i = 0; i < R; ++i)
      acc[i][0] = V::fma(load_w_n<V, W>(wr[i] + c, rest), xv, acc[i][0]);
  }
  for (size_t i = 0; i < R; ++i) {
    F sum = acc[i][0];
    for (size_t u = 1; u < kU; ++u) sum = V::add(sum, acc[i][u]);
    y[r + i] = V::reduce_add(sum) + (bias ? load_w1<W>(bias, r + i) : 0.0f);
  }
}

template <class V, class W>
inline void matvec_rows(const float* x, const typename W::Storage* w,
                        const typename W::Storage* bias, float* y, size_t cols, size_t r0,
                        size_t r1) {
  size_t r = r0;
  for (; r + kMatvecRows <= r1; r += kMatvecRows)
    matvec_block<V, W, kMatvecRows>(x, w, bias, y, cols, r);
  for (; r < r1; ++r) matvec_block<V, W, 1>(x, w, bias, y, cols, r);
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
    TIERLM_CASE_BLOCK_DTYPES:
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
    TIERLM_CASE_BLOCK_DTYPES:
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
    TIERLM_CASE_BLOCK_DTYPES:
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
    TIERLM_CASE_BLOCK_DTYPES:
      break;
  }
  fail_block_dtype("convert", dtype);
}

}  // namespace
}  // namespace tierlm::detail
