// The AdamW kernel body written once over a vector type V (detail/vec_avx2.hpp,
// detail/vec_avx512.hpp); adam_avx2.cpp and adam_avx512.cpp instantiate it. Like the vector
// types it sits in an anonymous namespace: one copy per translation unit, with that unit's ISA.
//
// V provides: F, kWidth, kAdamGroup (vectors of each stream per group, as many as fit the
// registers), set1, load, store, load_n, store_n (first n lanes), load_bf16(_n),
// store_bf16(_n) (round to nearest even), sub, mul, add, div, fma (a * b + c), sqrt.
#pragma once

#include <cstddef>
#include <cstdint>

#include "train/adam_kernels.hpp"

namespace tierlm::detail {
namespace {

// The state and output formats are template parameters so the loop carries no branches, and
// the pointers are locals: the intrinsics' stores may alias anything, so fields read through
// `t` would be reloaded after every store.
template <class V, bool kBf16State, bool kBf16Out>
void adam_range_simd(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  using F = typename V::F;
  constexpr size_t kW = V::kWidth;
  float* __restrict param = t.param;
  const float* __restrict grad = t.grad;
  float* __restrict m32 = static_cast<float*>(t.exp_avg);
  float* __restrict v32 = static_cast<float*>(t.exp_avg_sq);
  uint16_t* __restrict m16 = static_cast<uint16_t*>(t.exp_avg);
  uint16_t* __restrict v16 = static_cast<uint16_t*>(t.exp_avg_sq);
  uint16_t* __restrict out16 = t.param_bf16;
  const F decay = V::set1(s.decay);
  const F w1 = V::set1(s.one_minus_beta1);
  const F beta2 = V::set1(s.beta2);
  const F w2 = V::set1(s.one_minus_beta2);
  const F neg_step = V::set1(-s.step_size);
  const F inv_bc2 = V::set1(s.inv_bc2_sqrt);
  const F eps = V::set1(s.eps);
  // kVectors consecutive vectors of every stream, stream after stream: all grad loads, then
  // the moments', then param's, the arithmetic, then the stores the same way, so each stream
  // is touched as a run of cache lines (as DeepSpeed does). Interleaving the streams vector by
  // vector ran up to 25% slower on some memory layouts of the same tensors; groups larger than
  // the registers hold spill, and ran 25% slower with AVX2. Full vectors go unmasked (masked
  // stores are slow on some cores); n < kW is the tail.
  auto group = [&]<size_t kVectors>(size_t i, size_t n) __attribute__((always_inline)) {
    const bool full = n == kW;
    auto ld = [&](const float* q) { return full ? V::load(q) : V::load_n(q, n); };
    auto ld16 = [&](const uint16_t* q) { return full ? V::load_bf16(q) : V::load_bf16_n(q, n); };
    auto st = [&](float* q, F x) { full ? V::store(q, x) : V::store_n(q, x, n); };
    auto st16 = [&](uint16_t* q, F x) { full ? V::store_bf16(q, x) : V::store_bf16_n(q, x, n); };
    // A moment stream (exp_avg or exp_avg_sq) in the state format, as a whole group.
    auto load_state = [&](const uint16_t* q16, const float* q32, F* x) {
      for (size_t j = 0; j < kVectors; ++j)
        x[j] = kBf16State ? ld16(q16 + i + kW * j) : ld(q32 + i + kW * j);
    };
    auto store_state = [&](uint16_t* q16, float* q32, const F* x) {
      for (size_t j = 0; j < kVectors; ++j) {
        if constexpr (kBf16State)
          st16(q16 + i + kW * j, x[j]);
        else
          st(q32 + i + kW * j, x[j]);
      }
    };
    F g[kVectors], m[kVectors], v[kVectors], p[kVectors];
    for (size_t j = 0; j < kVectors; ++j) g[j] = ld(grad + i + kW * j);
    load_state(m16, m32, m);
    load_state(v16, v32, v);
    for (size_t j = 0; j < kVectors; ++j) p[j] = ld(param + i + kW * j);
    for (size_t j = 0; j < kVectors; ++j) {
      m[j] = V::fma(w1, V::sub(g[j], m[j]), m[j]);  // exp_avg.lerp_(grad, 1 - beta1)
      v[j] = V::fma(V::mul(w2, g[j]), g[j], V::mul(v[j], beta2));
      const F denom = V::fma(V::sqrt(v[j]), inv_bc2, eps);
      p[j] = V::add(V::mul(p[j], decay), V::div(V::mul(neg_step, m[j]), denom));
    }
    for (size_t j = 0; j < kVectors; ++j) st(param + i + kW * j, p[j]);
    store_state(m16, m32, m);
    store_state(v16, v32, v);
    if (kBf16Out)
      for (size_t j = 0; j < kVectors; ++j) st16(out16 + i + kW * j, p[j]);
  };
  constexpr size_t kGroup = kW * V::kAdamGroup;
  size_t i = begin;
  for (; i + kGroup <= end; i += kGroup) group.template operator()<V::kAdamGroup>(i, kW);
  for (; i + kW <= end; i += kW) group.template operator()<1>(i, kW);
  if (i < end) group.template operator()<1>(i, end - i);
}

// Picks the instance for the tensors' state format and bf16 param copy.
template <class V>
void adam_range_formats(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  const bool bf16_state = t.state_dtype == AdamStateDType::kAdamStateBf16;
  if (bf16_state) {
    if (t.param_bf16)
      adam_range_simd<V, true, true>(s, t, begin, end);
    else
      adam_range_simd<V, true, false>(s, t, begin, end);
  } else {
    if (t.param_bf16)
      adam_range_simd<V, false, true>(s, t, begin, end);
    else
      adam_range_simd<V, false, false>(s, t, begin, end);
  }
}

}  // namespace
}  // namespace tierlm::detail
