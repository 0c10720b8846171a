// The input-channel sparse linear's SIMD body, written once over the vector type V of the
// including *_avx2.cpp / *_avx512.cpp file. The outputs go in tiles of 32 (one q8_0 / q4_0
// block) held in registers while up to kGroup kept columns are added, so y is loaded and
// stored once per group instead of once per column. Each y[i] still takes the columns in row
// order, and each product is rounded before its add (no FMA), exactly as the scalar reference
// computes `y + a * w` at the baseline ISA: every level is bit-identical to it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/quant_blocks.hpp"
#include "kernels/kernels_impl.hpp"
#include "tierlm/kernels/channel_sparse.hpp"

namespace tierlm::detail {
namespace {

template <class V>
struct ChannelSimd {
  using F = typename V::F;
  static constexpr size_t kTile = 32;
  static constexpr size_t kVecs = kTile / V::kWidth;
  static constexpr size_t kGroup = 16;

  // a * b rounded to f32 before any add: the empty asm keeps the compiler from fusing it
  // with the add that follows (GCC contracts vector mul + add into FMA under -mfma).
  static F product(F a, F b) {
    F p = V::mul(a, b);
    asm("" : "+v"(p));
    return p;
  }

  // kTile (or the tail's n) weights of a plain column from element o, as vector v of the tile.
  template <DType D>
  static F weights(const char* column, size_t o, size_t n) {
    if constexpr (D == DType::kDTypeF32) {
      const float* w = reinterpret_cast<const float*>(column) + o;
      return n == V::kWidth ? V::load(w) : V::load_n(w, n);
    } else if constexpr (D == DType::kDTypeF16) {
      const uint16_t* w = reinterpret_cast<const uint16_t*>(column) + o;
      return n == V::kWidth ? V::load_f16(w) : V::load_f16_n(w, n);
    } else {
      const uint16_t* w = reinterpret_cast<const uint16_t*>(column) + o;
      return n == V::kWidth ? V::load_bf16(w) : V::load_bf16_n(w, n);
    }
  }

  // Adds group columns w[k] * a[k] to y's tile at o (m <= kTile outputs), in k order.
  template <DType D>
  static void tile(const char* const* w, const float* a, size_t group, size_t o, size_t m,
                   float* y) {
    F acc[kVecs];
    size_t n[kVecs];
    for (size_t v = 0; v < kVecs; ++v) {
      n[v] = std::min(V::kWidth, m > v * V::kWidth ? m - v * V::kWidth : 0);
      acc[v] = n[v] == V::kWidth ? V::load(y + o + v * V::kWidth)
               : n[v] > 0        ? V::load_n(y + o + v * V::kWidth, n[v])
                                 : V::zero();
    }
    for (size_t k = 0; k < group; ++k) {
      if constexpr (D == DType::kDTypeQ8_0 || D == DType::kDTypeQ4_0) {
        // A block's 32 weights as floats (exact), then (a * d) * q as the reference does.
        alignas(64) float q[kTile];
        float d = 0.0f;
        if constexpr (D == DType::kDTypeQ8_0) {
          const auto* b = reinterpret_cast<const BlockQ8_0*>(w[k]) + o / kTile;
          d = f16_to_f32(b->d);
          for (size_t i = 0; i < kTile; ++i) q[i] = static_cast<float>(b->qs[i]);
        } else {
          const auto* b = reinterpret_cast<const BlockQ4_0*>(w[k]) + o / kTile;
          d = f16_to_f32(b->d);
          for (size_t i = 0; i < kTile / 2; ++i) {
            q[i] = static_cast<float>((b->qs[i] & 15) - 8);
            q[i + kTile / 2] = static_cast<float>((b->qs[i] >> 4) - 8);
          }
        }
        const F s = V::set1(a[k] * d);
        for (size_t v = 0; v < kVecs; ++v) {
          acc[v] = V::add(acc[v], product(s, V::load(q + v * V::kWidth)));
        }
      } else {
        const F s = V::set1(a[k]);
        for (size_t v = 0; v < kVecs; ++v) {
          if (n[v] == 0) continue;
          acc[v] = V::add(acc[v], product(s, weights<D>(w[k], o + v * V::kWidth, n[v])));
        }
      }
    }
    for (size_t v = 0; v < kVecs; ++v) {
      if (n[v] == V::kWidth) {
        V::store(y + o + v * V::kWidth, acc[v]);
      } else if (n[v] > 0) {
        V::store_n(y + o + v * V::kWidth, acc[v], n[v]);
      }
    }
  }

  template <DType D>
  static void rows(const float* x, const ChannelRows& rows, float threshold, float* y,
                   size_t row_bytes) {
    const char* base = static_cast<const char*>(rows.rows);
    const char* w[kGroup];
    float a[kGroup];
    size_t r = 0;
    while (r < rows.n_rows) {
      size_t group = 0;
      for (; r < rows.n_rows && group < kGroup; ++r) {
        const float v = x[rows.channels[r]];
        if (!(std::fabs(v) > threshold)) continue;
        w[group] = base + r * row_bytes;
        a[group++] = v;
      }
      for (size_t o = 0; o < rows.out && group > 0; o += kTile) {
        tile<D>(w, a, group, o, std::min(kTile, rows.out - o), y);
      }
    }
  }

  // y (holding the bias) += the kept columns; rows' dtype is f32, f16, bf16, q8_0 or q4_0.
  static void run(const float* x, const ChannelRows& r, float threshold, float* y,
                  size_t row_bytes) {
    switch (r.dtype) {
      case DType::kDTypeF32:
        return rows<DType::kDTypeF32>(x, r, threshold, y, row_bytes);
      case DType::kDTypeF16:
        return rows<DType::kDTypeF16>(x, r, threshold, y, row_bytes);
      case DType::kDTypeBF16:
        return rows<DType::kDTypeBF16>(x, r, threshold, y, row_bytes);
      case DType::kDTypeQ8_0:
        return rows<DType::kDTypeQ8_0>(x, r, threshold, y, row_bytes);
      case DType::kDTypeQ4_0:
        return rows<DType::kDTypeQ4_0>(x, r, threshold, y, row_bytes);
      default:
        return;  // refused by the caller's checks
    }
  }
};

}  // namespace
}  // namespace tierlm::detail
