// Input-channel sparse linear: argument checks and the kernel (an axpy per kept column; the
// column loop is contiguous, so the compiler vectorizes it at the wheel's baseline ISA).
#include "tierlm/kernels/channel_sparse.hpp"

#include <cmath>

#include "kernels/kernels_impl.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm {

namespace {

template <DType D>
void axpy_column(float a, const void* column, float* y, size_t out) {
  if constexpr (D == DType::kDTypeF32) {
    const float* w = static_cast<const float*>(column);
    for (size_t i = 0; i < out; ++i) y[i] = y[i] + a * w[i];
  } else {
    for (size_t i = 0; i < out; ++i) y[i] = y[i] + a * detail::load_weight(column, D, i);
  }
}

template <DType D>
void channel_rows(const float* x, const ChannelRows& rows, float threshold, float* y) {
  const size_t esize = D == DType::kDTypeF32 ? 4 : 2;
  const char* base = static_cast<const char*>(rows.rows);
  for (size_t r = 0; r < rows.n_rows; ++r) {
    const float a = x[rows.channels[r]];
    if (!(std::fabs(a) > threshold)) continue;
    axpy_column<D>(a, base + r * rows.row_stride * esize, y, rows.out);
  }
}

}  // namespace

void kernel_channel_sparse_linear(const float* x, const ChannelRows& rows, float threshold,
                                  const float* bias, float* y) {
  TIERLM_CHECK(x != nullptr && y != nullptr, kErrorInvalidArgument,
               "channel sparse linear: x and y must not be null");
  TIERLM_CHECK(rows.out > 0 && rows.row_stride >= rows.out, kErrorInvalidArgument,
               "channel sparse linear: row stride ", rows.row_stride, " is shorter than a column (",
               rows.out, " elements)");
  TIERLM_CHECK(rows.n_rows == 0 || (rows.rows != nullptr && rows.channels != nullptr),
               kErrorInvalidArgument, "channel sparse linear: rows or channels is null");
  TIERLM_CHECK(!std::isnan(threshold), kErrorInvalidArgument,
               "channel sparse linear: threshold is NaN");
  for (size_t r = 0; r < rows.n_rows; ++r) {
    TIERLM_CHECK(rows.channels[r] >= 0 && static_cast<size_t>(rows.channels[r]) < rows.n_channels,
                 kErrorInvalidArgument, "channel sparse linear: row ", r, " names channel ",
                 rows.channels[r], ", outside 0 .. ", rows.n_channels, "-1");
  }
  for (size_t i = 0; i < rows.out; ++i) y[i] = bias ? bias[i] : 0.0f;
  switch (rows.dtype) {
    case DType::kDTypeF32:
      return channel_rows<DType::kDTypeF32>(x, rows, threshold, y);
    case DType::kDTypeF16:
      return channel_rows<DType::kDTypeF16>(x, rows, threshold, y);
    case DType::kDTypeBF16:
      return channel_rows<DType::kDTypeBF16>(x, rows, threshold, y);
    TIERLM_CASE_BLOCK_DTYPES:
      break;
  }
  TIERLM_FAIL(kErrorUnsupported, 0, "channel sparse linear: columns of ", dtype_name(rows.dtype),
              " have no kernel (f32, f16, bf16); dequantize the bundles to 16 bits");
}

}  // namespace tierlm
