// The input-channel sparse linear's bodies per SIMD level (kernel_channel_sparse_linear_at
// picks one): each adds the kept columns to y, which holds the bias (or zeros) already, with
// row_bytes = the bytes of row_stride elements of rows.dtype. Arguments are checked before.
#pragma once

#include <cstddef>

#include "tierlm/kernels/channel_sparse.hpp"

namespace tierlm::detail {

void channel_sparse_avx2(const float* x, const ChannelRows& rows, float threshold, float* y,
                         size_t row_bytes);
void channel_sparse_avx512(const float* x, const ChannelRows& rows, float threshold, float* y,
                           size_t row_bytes);

}  // namespace tierlm::detail
