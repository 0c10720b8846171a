// The quantized linear over the tile bodies of quant_simd.hpp: tokens in cache tiles, each weight
// row unpacked once per tile of I::kTokens32 / I::kTokensK tokens, and the dispatch per block
// type. Kept apart from quant_simd.hpp so that the matrix-matrix (prefill) path and the
// matrix-vector bodies change independently.
#pragma once

#include <algorithm>
#include <cstddef>

#include "kernels/cpu/quant_decode_32.hpp"
#include "kernels/cpu/quant_decode_k.hpp"
#include "kernels/cpu/quant_simd.hpp"
#include "kernels/quant_impl.hpp"

namespace tierlm::detail {
namespace {

template <class I, class B>
struct Tile32 {
  static constexpr size_t kTokens = I::kTokens32;
  template <size_t T>
  static void run(const void* row, const char* x, size_t stride, size_t nb, float* out) {
    tile32<I, B, T>(static_cast<const B*>(row), x, stride, nb, out);
  }
};
// The nibble types decode R = 1 or 2 rows per pass (rows32); q8_0 decodes through tile32.
template <class I, class B>
requires(!Ops32<B>::kSigned) struct Tile32<I, B> {
  static constexpr size_t kTokens = I::kTokens32;
  template <size_t T>
  static void run(const void* row, const char* x, size_t stride, size_t nb, float* out) {
    tile32<I, B, T>(static_cast<const B*>(row), x, stride, nb, out);
  }
  template <size_t R>
  static void decode(const char* const (&rows)[R], const char* x, size_t nb, float (&out)[R]) {
    const B* w[R];
    for (size_t r = 0; r < R; ++r) w[r] = reinterpret_cast<const B*>(rows[r]);
    rows32<I, B, R>(w, x, nb, out);
  }
};
template <class I, class B>
struct TileK4 {
  static constexpr size_t kTokens = I::kTokensK;
  template <size_t T>
  static void run(const void* row, const char* x, size_t stride, size_t nb, float* out) {
    if constexpr (T == 1)
      out[0] = row_k4<I, B>(static_cast<const B*>(row), act256(x, 0, stride), nb);
    else
      tile_k4<I, B, T>(static_cast<const B*>(row), x, stride, nb, out);
  }
};
template <class I>
struct TileQ6K {
  static constexpr size_t kTokens = I::kTokensK;
  template <size_t T>
  static void run(const void* row, const char* x, size_t stride, size_t nb, float* out) {
    tile_q6k<I, T>(static_cast<const BlockQ6_K*>(row), x, stride, nb, out);
  }
};

// Tokens per cache tile of the matrix-matrix path: their activations stay in L2 while the rows
// stream past (as kLinearTokenTile for the 16-bit types).
constexpr size_t kQuantTokenTile = 64;

template <class Tile>
void linear_tiles(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                  size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  constexpr size_t kT = Tile::kTokens;
  const size_t row_bytes = dtype_row_bytes(w_dtype, cols);
  const size_t nb = cols / dtype_block(w_dtype).elems;
  const size_t act_bytes = quant_act_row_bytes(w_dtype, cols);
  const auto* x = static_cast<const char*>(xq);
  const auto* wb = static_cast<const char*>(w);
  if constexpr (requires(const char* const(&rows)[1], float(&o)[1]) {
                  Tile::template decode<1>(rows, x, nb, o);
                }) {
    if (n == 1) {
      for (size_t r = r0; r < r1; ++r) {
        const char* const row[1] = {wb + r * row_bytes};
        float o[1];
        Tile::template decode<1>(row, x, nb, o);
        y[r] = o[0] + (bias ? bias[r] : 0.0f);
      }
      return;
    }
  }
  float out[kT];
  for (size_t t0 = 0; t0 < n; t0 += kQuantTokenTile) {
    const size_t t1 = std::min(n, t0 + kQuantTokenTile);
    for (size_t r = r0; r < r1; ++r) {
      const void* row = static_cast<const char*>(w) + r * row_bytes;
      const float b = bias ? bias[r] : 0.0f;
      size_t t = t0;
      for (; t + kT <= t1; t += kT) {
        Tile::template run<kT>(row, x + t * act_bytes, act_bytes, nb, out);
        for (size_t j = 0; j < kT; ++j) y[(t + j) * rows + r] = out[j] + b;
      }
      for (; t < t1; ++t) {
        Tile::template run<1>(row, x + t * act_bytes, act_bytes, nb, out);
        y[t * rows + r] = out[0] + b;
      }
    }
  }
}

// A k-type: n tokens go to the level's own matrix-matrix kernel (I::linear_k, where
// I::kPanelMinTokens > 0 and n reaches it), else to the row tiles.
template <class I, class B, class Tile>
void linear_k(const void* xq, const void* w, const float* bias, DType w_dtype, float* y, size_t n,
              size_t rows, size_t cols, size_t r0, size_t r1) {
  if constexpr (I::kPanelMinTokens > 0)
    if (n >= I::kPanelMinTokens)
      return I::template linear_k<B>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
  linear_tiles<Tile>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
}

template <class I>
void linear_quant(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                  size_t n, size_t rows, size_t cols, size_t r0, size_t r1) {
  switch (w_dtype) {
    case DType::kDTypeQ8_0:
      return linear_tiles<Tile32<I, BlockQ8_0>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ4_0:
      return linear_tiles<Tile32<I, BlockQ4_0>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ4_1:
      return linear_tiles<Tile32<I, BlockQ4_1>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ5_0:
      return linear_tiles<Tile32<I, BlockQ5_0>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ5_1:
      return linear_tiles<Tile32<I, BlockQ5_1>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeQ4_K:
      return linear_k<I, BlockQ4_K, TileK4<I, BlockQ4_K>>(xq, w, bias, w_dtype, y, n, rows, cols,
                                                          r0, r1);
    case DType::kDTypeQ5_K:
      return linear_k<I, BlockQ5_K, TileK4<I, BlockQ5_K>>(xq, w, bias, w_dtype, y, n, rows, cols,
                                                          r0, r1);
    case DType::kDTypeQ6_K:
      return linear_k<I, BlockQ6_K, TileQ6K<I>>(xq, w, bias, w_dtype, y, n, rows, cols, r0, r1);
    case DType::kDTypeF32:
    case DType::kDTypeF16:
    case DType::kDTypeBF16:
      break;
  }
  fail_not_block_dtype("quantized linear", w_dtype);
}

template <class I>
QuantKernels make_quant_kernels() {
  return QuantKernels{quantize_rows_simd, linear_quant<I>, axpy_quant};
}

}  // namespace
}  // namespace tierlm::detail
