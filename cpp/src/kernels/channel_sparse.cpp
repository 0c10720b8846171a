// Input-channel sparse linear: argument checks, the scalar reference (an axpy per kept column)
// and the pick of a SIMD body (kernels/cpu/channel_sparse_simd.hpp) by level.
#include "tierlm/kernels/channel_sparse.hpp"

#include <cmath>

#include "kernels/channel_sparse_impl.hpp"
#include "kernels/cpu/quant_blocks.hpp"
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

// Block columns (transposed blocking: blocks of 32 run along the outputs): y += (a * d) * q.
void axpy_q8_0(float a, const void* column, float* y, size_t out) {
  const auto* b = static_cast<const detail::BlockQ8_0*>(column);
  for (size_t k = 0; k < out / 32; ++k) {
    const float s = a * detail::f16_to_f32(b[k].d);
    float* yk = y + k * 32;
    for (size_t i = 0; i < 32; ++i) yk[i] += s * static_cast<float>(b[k].qs[i]);
  }
}

void axpy_q4_0(float a, const void* column, float* y, size_t out) {
  const auto* b = static_cast<const detail::BlockQ4_0*>(column);
  for (size_t k = 0; k < out / 32; ++k) {
    const float s = a * detail::f16_to_f32(b[k].d);
    float* yk = y + k * 32;
    for (size_t i = 0; i < 16; ++i) {
      yk[i] += s * static_cast<float>((b[k].qs[i] & 15) - 8);
      yk[i + 16] += s * static_cast<float>((b[k].qs[i] >> 4) - 8);
    }
  }
}

template <class Axpy>
void channel_rows(const float* x, const ChannelRows& rows, float threshold, float* y,
                  size_t row_bytes, Axpy axpy) {
  const char* base = static_cast<const char*>(rows.rows);
  for (size_t r = 0; r < rows.n_rows; ++r) {
    const float a = x[rows.channels[r]];
    if (!(std::fabs(a) > threshold)) continue;
    axpy(a, base + r * row_bytes, y, rows.out);
  }
}

}  // namespace

void kernel_channel_sparse_linear(const float* x, const ChannelRows& rows, float threshold,
                                  const float* bias, float* y) {
  kernel_channel_sparse_linear_at(simd_level(), x, rows, threshold, bias, y);
}

void kernel_channel_sparse_linear_at(SimdLevel level, const float* x, const ChannelRows& rows,
                                     float threshold, const float* bias, float* y) {
  TIERLM_CHECK(level <= simd_detected(), kErrorUnsupported, "channel sparse linear: SIMD level ",
               simd_level_name(level), " is not supported by this CPU");
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
  const bool blocks = rows.dtype == DType::kDTypeQ8_0 || rows.dtype == DType::kDTypeQ4_0;
  TIERLM_CHECK(!blocks || (rows.out % 32 == 0 && rows.row_stride % 32 == 0), kErrorInvalidArgument,
               "channel sparse linear: ", dtype_name(rows.dtype), " columns of ", rows.out,
               " (stride ", rows.row_stride, ") elements are not whole blocks of 32");
  const bool simd = rows.dtype == DType::kDTypeF32 || rows.dtype == DType::kDTypeF16 ||
                    rows.dtype == DType::kDTypeBF16 || blocks;
  for (size_t i = 0; i < rows.out; ++i) y[i] = bias ? bias[i] : 0.0f;
  const size_t row_bytes = dtype_row_bytes(rows.dtype, rows.row_stride);
  if (simd && level == SimdLevel::kSimdAvx512) {
    return detail::channel_sparse_avx512(x, rows, threshold, y, row_bytes);
  }
  if (simd && level == SimdLevel::kSimdAvx2) {
    return detail::channel_sparse_avx2(x, rows, threshold, y, row_bytes);
  }
  switch (rows.dtype) {
    case DType::kDTypeF32:
      return channel_rows(x, rows, threshold, y, row_bytes, axpy_column<DType::kDTypeF32>);
    case DType::kDTypeF16:
      return channel_rows(x, rows, threshold, y, row_bytes, axpy_column<DType::kDTypeF16>);
    case DType::kDTypeBF16:
      return channel_rows(x, rows, threshold, y, row_bytes, axpy_column<DType::kDTypeBF16>);
    case DType::kDTypeQ8_0:
      return channel_rows(x, rows, threshold, y, row_bytes, axpy_q8_0);
    case DType::kDTypeQ4_0:
      return channel_rows(x, rows, threshold, y, row_bytes, axpy_q4_0);
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  TIERLM_FAIL(kErrorUnsupported, 0, "channel sparse linear: columns of ", dtype_name(rows.dtype),
              " have no kernel (f32, f16, bf16, q8_0, q4_0); write the channel files in one of "
              "them");
}

}  // namespace tierlm
