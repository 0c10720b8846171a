// Sparse FFN kernel (LLM in a flash): computes an FFN layer from a set of bundled neuron rows
// (the neuron cache's matrix) instead of the dense weights. Scalar reference plus AVX2 and
// AVX-512 variants picked at run time by simd_level().
#pragma once

#include <cstddef>
#include <cstdint>

#include "tierlm/core/export.hpp"
#include "tierlm/core/simd.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace tierlm {

// The bundled rows the sparse FFN reads: rows[r] = [up | gate (gated) | down], each dim
// elements of dtype, rows row_stride elements apart. neurons[r] is the neuron id of row r,
// used to index the biases (null: row r is neuron r). A block type (q8_0, q4_0, ...) stores
// each part as whole blocks (down as a row of down^T), so dim and row_stride are multiples of
// the block's elements; its up and gate dot products are the quantized linear's, on x rounded
// to int8 blocks once by kernel_sparse_ffn_prepare (x_blocks).
struct TIERLM_API SparseFfnRows {
  const void* rows = nullptr;
  DType dtype = DType::kDTypeF32;
  size_t n_rows = 0;
  size_t dim = 0;
  size_t row_stride = 0;  // elements; at least 2*dim (3*dim gated)
  bool gated = false;
  const int32_t* neurons = nullptr;
  const float* up_bias = nullptr;    // [n_neurons] or null
  const float* gate_bias = nullptr;  // [n_neurons] or null (gated only)
  // Gated only, thresholded SiLU sparsity (lossy): a neuron counts only when
  // |silu(x·gate + b_g)| > act_threshold; 0 keeps every neuron.
  float act_threshold = 0.0f;
  // Block types only: x's activation blocks, as kernel_sparse_ffn_prepare wrote them.
  const void* x_blocks = nullptr;
};

// Bytes of the workspace kernel_sparse_ffn_prepare fills for rows of dtype and width dim
// (0 for f32, f16 and bf16, which read x as it is).
TIERLM_API size_t kernel_sparse_ffn_workspace(DType dtype, size_t dim);
// x[dim] to the int8 activation blocks that block-type rows multiply with (the same bytes at
// every SIMD level); once per x, then any number of kernel_sparse_ffn calls (threads included)
// read them through rows.x_blocks.
TIERLM_API void kernel_sparse_ffn_prepare(const float* x, DType dtype, size_t dim, void* workspace);

// y[dim] = down_bias + sum over the chosen rows r of act_r * down_r with
//   act_r = relu(x·up_r + up_bias[n_r])                              (ReLU FFN)
//   act_r = silu(x·gate_r + gate_bias[n_r]) * (x·up_r + up_bias[n_r]) (gated SiLU FFN; 0 when
//           |silu(...)| <= rows.act_threshold, if that is > 0)
// The rows chosen are `slots` (n_slots row indices) or every row when slots is null. The
// sum does not depend on row order beyond f32 rounding. down_bias may be null. No allocation.
TIERLM_API void kernel_sparse_ffn(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                                  size_t n_slots, const float* down_bias, float* y);
// The same at a chosen SIMD level (tests compare every level with the scalar reference).
TIERLM_API void kernel_sparse_ffn_at(SimdLevel level, const float* x, const SparseFfnRows& rows,
                                     const int32_t* slots, size_t n_slots, const float* down_bias,
                                     float* y);

}  // namespace tierlm
