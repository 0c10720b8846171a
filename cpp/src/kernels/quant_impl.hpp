// Per-ISA bodies of the quantized linear kernel behind kernel_linear (tierlm/kernels.hpp):
// kernels.cpp quantizes the activation rows into int8 blocks once per op (in the workspace)
// and splits the weight rows across the pool; quant_scalar.cpp is the reference,
// quant_avx2.cpp / quant_avx512.cpp the fast paths.
#pragma once

#include <cstddef>

#include "kernels/cpu/quant_blocks.hpp"
#include "tierlm/core/dtype.hpp"
#include "tierlm/core/simd.hpp"

namespace tierlm::detail {

struct QuantKernels {
  // x[n, cols] to the activations of w_dtype's kind (quant_act_row_bytes per row).
  void (*quantize_rows)(const float* x, DType w_dtype, void* xq, size_t n, size_t cols);
  // Y[:, r0:r1] = X · W^T (+ bias, f32) from X's activation blocks, for a block-type W.
  void (*linear)(const void* xq, const void* w, const float* bias, DType w_dtype, float* y,
                 size_t n, size_t rows, size_t cols, size_t r0, size_t r1);
  // y[0:cols] += a * w for one block-type row w of cols elements (the sparse FFN's down part).
  void (*axpy)(float a, const void* w, DType w_dtype, float* y, size_t cols);
};

const QuantKernels& quant_kernels_scalar();
const QuantKernels& quant_kernels_avx2();
// AVX512-VNNI; only for CPUs with it (cpu_features().avx512_vnni).
const QuantKernels& quant_kernels_avx512();
// The bodies a SIMD level runs (AVX-512 without VNNI runs the AVX2 ones).
const QuantKernels& quant_kernels_at(SimdLevel level);

inline bool quant_is_k_type(DType dtype) { return dtype_block(dtype).elems == kBlock256; }

// Bytes of one activation row of cols elements for w_dtype's dot products.
inline size_t quant_act_row_bytes(DType w_dtype, size_t cols) {
  return quant_is_k_type(w_dtype) ? cols / kBlock256 * sizeof(ActBlock256)
                                  : act32_row_bytes(cols / kBlock32);
}

// The scalar dequantizer, ggml's dequantize_row_* to the bit: n elements (whole blocks) of
// dtype from src to f32. Embedding rows and the tests use it at every SIMD level.
void dequantize_row(const void* src, DType dtype, float* dst, size_t n);

// The activation rule every level shares, so that all levels see the same int8 values:
// d = max|x| / 127 and q = round-half-even(x / d) computed as x * (1 / d).
inline float quant_act_inverse(float amax, float* d) {
  *d = amax / 127.0f;
  return *d != 0.0f ? 1.0f / *d : 0.0f;
}

}  // namespace tierlm::detail
