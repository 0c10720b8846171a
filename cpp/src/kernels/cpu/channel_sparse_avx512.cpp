// AVX-512 (16 floats per vector, 2 to a tile) variant of the input-channel sparse linear: the body
// of channel_sparse_simd.hpp over VecAvx512.
#include "kernels/channel_sparse_impl.hpp"
#include "kernels/cpu/channel_sparse_simd.hpp"
#include "kernels/cpu/vec_avx512.hpp"

namespace tierlm::detail {

void channel_sparse_avx512(const float* x, const ChannelRows& rows, float threshold, float* y,
                           size_t row_bytes) {
  ChannelSimd<VecAvx512>::run(x, rows, threshold, y, row_bytes);
}

}  // namespace tierlm::detail
