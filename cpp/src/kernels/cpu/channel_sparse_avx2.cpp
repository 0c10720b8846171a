// AVX2 (8 floats per vector, 4 to a tile) variant of the input-channel sparse linear: the body of
// channel_sparse_simd.hpp over VecAvx2.
#include "kernels/channel_sparse_impl.hpp"
#include "kernels/cpu/channel_sparse_simd.hpp"
#include "kernels/cpu/vec_avx2.hpp"

namespace tierlm::detail {

void channel_sparse_avx2(const float* x, const ChannelRows& rows, float threshold, float* y,
                         size_t row_bytes) {
  ChannelSimd<VecAvx2>::run(x, rows, threshold, y, row_bytes);
}

}  // namespace tierlm::detail
