// Input-channel sparse linear (training-free activation sparsity, TEAL / CATS style): a
// matrix stored by input channel (column j of W [out, in] is one contiguous row of `out`
// elements) is multiplied by an input whose near-zero entries are dropped, so only the
// columns of the kept channels are ever read.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tierlm/core/export.hpp"
#include "tierlm/core/simd.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace tierlm {

// Column rows as the channel cache holds them: rows[r] is column channels[r] of the matrix,
// `out` elements of dtype (f32, f16, bf16), rows row_stride elements apart.
struct TIERLM_API ChannelRows {
  const void* rows = nullptr;
  DType dtype = DType::kDTypeF32;
  size_t n_rows = 0;
  size_t out = 0;
  size_t row_stride = 0;              // elements; at least out
  const int32_t* channels = nullptr;  // [n_rows] input channel of each row
  size_t n_channels = 0;              // input width: every channel id is below it
};

// y[out] = bias + sum over rows r, in row order, of x[c_r] * rows[r] where |x[c_r]| >
// threshold (c_r = channels[r]); rows of dropped channels are skipped. threshold < 0 keeps
// every row. bias may be null, or y itself (the rows then continue y's sums). Each y[i] is
// accumulated in row order, so the result is the sequential f32 dot product over the kept
// channels in that order. No allocation.
TIERLM_API void kernel_channel_sparse_linear(const float* x, const ChannelRows& rows,
                                             float threshold, const float* bias, float* y);
// The same at a chosen SIMD level (simd_level() above). Every level rounds each product before
// its add, in the same order, so all are bit-identical to the scalar reference.
TIERLM_API void kernel_channel_sparse_linear_at(SimdLevel level, const float* x,
                                                const ChannelRows& rows, float threshold,
                                                const float* bias, float* y);

}  // namespace tierlm
