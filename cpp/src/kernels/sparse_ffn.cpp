// Sparse FFN kernel: argument checks, run-time dispatch and the scalar reference.
#include "tierlm/kernels/sparse_ffn.hpp"

#include <cstring>

#include "kernels/quant_impl.hpp"
#include "kernels/sparse_ffn_impl.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm {

namespace detail {

void sparse_ffn_scalar(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, float* y) {
  const size_t dim = rows.dim;
  const size_t esize = rows.dtype == DType::kDTypeF32 ? 4 : 2;
  const size_t down_at = rows.gated ? 2 * dim : dim;
  for (size_t j = 0; j < n_slots; ++j) {
    const size_t r = slots ? static_cast<size_t>(slots[j]) : j;
    const char* row = static_cast<const char*>(rows.rows) + r * rows.row_stride * esize;
    float up = 0.0f, gate = 0.0f;
    for (size_t i = 0; i < dim; ++i) up += x[i] * load_weight(row, rows.dtype, i);
    if (rows.gated) {
      for (size_t i = 0; i < dim; ++i) gate += x[i] * load_weight(row, rows.dtype, dim + i);
    }
    const float a = sparse_ffn_activation(rows, r, up, gate);
    if (a == 0.0f) continue;
    for (size_t i = 0; i < dim; ++i) y[i] += a * load_weight(row, rows.dtype, down_at + i);
  }
}

}  // namespace detail

namespace {

// Block-type rows: the up (and gate) dot products are the quantized linear's on x's activation
// blocks, the down part an axpy of its dequantized blocks.
void sparse_ffn_quant(const detail::QuantKernels& q, const SparseFfnRows& rows,
                      const int32_t* slots, size_t n_slots, float* y) {
  const size_t dim = rows.dim;
  const size_t part = dtype_row_bytes(rows.dtype, dim);
  const size_t stride = dtype_row_bytes(rows.dtype, rows.row_stride);
  const size_t down_at = (rows.gated ? 2 : 1) * part;
  for (size_t j = 0; j < n_slots; ++j) {
    const size_t r = slots ? static_cast<size_t>(slots[j]) : j;
    const char* row = static_cast<const char*>(rows.rows) + r * stride;
    float up = 0.0f, gate = 0.0f;
    q.linear(rows.x_blocks, row, nullptr, rows.dtype, &up, 1, 1, dim, 0, 1);
    if (rows.gated)
      q.linear(rows.x_blocks, row + part, nullptr, rows.dtype, &gate, 1, 1, dim, 0, 1);
    const float a = detail::sparse_ffn_activation(rows, r, up, gate);
    if (a != 0.0f) q.axpy(a, row + down_at, rows.dtype, y, dim);
  }
}

void check_block_rows(const SparseFfnRows& rows) {
  const size_t block = dtype_block(rows.dtype).elems;
  TIERLM_CHECK(rows.dim % block == 0 && rows.row_stride % block == 0, kErrorInvalidArgument,
               "sparse ffn: rows of ", dtype_name(rows.dtype), " need dim (", rows.dim,
               ") and row stride (", rows.row_stride, ") in whole ", block, "-element blocks");
  TIERLM_CHECK(rows.x_blocks != nullptr, kErrorInvalidArgument, "sparse ffn: rows of ",
               dtype_name(rows.dtype),
               " need x's activation blocks (rows.x_blocks, from kernel_sparse_ffn_prepare)");
}

void check_args(const float* x, const SparseFfnRows& rows, const int32_t* slots, size_t n_slots,
                float* y) {
  TIERLM_CHECK(x != nullptr && y != nullptr, kErrorInvalidArgument,
               "sparse ffn: x and y must not be null");
  TIERLM_CHECK(rows.dim > 0, kErrorInvalidArgument, "sparse ffn: dim must be > 0");
  if (dtype_is_quantized(rows.dtype)) check_block_rows(rows);
  const size_t need = (rows.gated ? 3 : 2) * rows.dim;
  TIERLM_CHECK(rows.row_stride >= need, kErrorInvalidArgument, "sparse ffn: row stride ",
               rows.row_stride, " is shorter than a bundled row (", need, " elements)");
  TIERLM_CHECK(rows.rows != nullptr || rows.n_rows == 0, kErrorInvalidArgument,
               "sparse ffn: rows is null");
  if (slots == nullptr) {
    TIERLM_CHECK(n_slots == rows.n_rows, kErrorInvalidArgument, "sparse ffn: n_slots ", n_slots,
                 " must equal n_rows ", rows.n_rows, " when slots is null");
  } else {
    for (size_t j = 0; j < n_slots; ++j) {
      TIERLM_CHECK(slots[j] >= 0 && static_cast<size_t>(slots[j]) < rows.n_rows,
                   kErrorInvalidArgument, "sparse ffn: slot ", slots[j], " is outside 0 .. ",
                   rows.n_rows, "-1");
    }
  }
}

}  // namespace

void kernel_sparse_ffn_at(SimdLevel level, const float* x, const SparseFfnRows& rows,
                          const int32_t* slots, size_t n_slots, const float* down_bias, float* y) {
  check_args(x, rows, slots, n_slots, y);
  TIERLM_CHECK(level <= simd_detected(), kErrorUnsupported, "sparse ffn: SIMD level ",
               simd_level_name(level), " is not supported by this CPU");
  for (size_t i = 0; i < rows.dim; ++i) y[i] = down_bias ? down_bias[i] : 0.0f;
  if (dtype_is_quantized(rows.dtype))
    return sparse_ffn_quant(detail::quant_kernels_at(level), rows, slots, n_slots, y);
  switch (level) {
    case SimdLevel::kSimdAvx512:
      return detail::sparse_ffn_avx512(x, rows, slots, n_slots, y);
    case SimdLevel::kSimdAvx2:
      return detail::sparse_ffn_avx2(x, rows, slots, n_slots, y);
    case SimdLevel::kSimdScalar:
      break;
  }
  detail::sparse_ffn_scalar(x, rows, slots, n_slots, y);
}

size_t kernel_sparse_ffn_workspace(DType dtype, size_t dim) {
  if (!dtype_is_quantized(dtype)) return 0;
  const size_t block = dtype_block(dtype).elems;
  TIERLM_CHECK(dim % block == 0, kErrorInvalidArgument, "sparse ffn: rows of ", dtype_name(dtype),
               " need dim (", dim, ") in whole ", block, "-element blocks");
  return detail::quant_act_row_bytes(dtype, dim);
}

void kernel_sparse_ffn_prepare(const float* x, DType dtype, size_t dim, void* workspace) {
  if (kernel_sparse_ffn_workspace(dtype, dim) == 0) return;
  TIERLM_CHECK(x != nullptr && workspace != nullptr, kErrorInvalidArgument,
               "sparse ffn: x and the workspace must not be null");
  detail::quant_kernels_at(simd_level()).quantize_rows(x, dtype, workspace, 1, dim);
}

void kernel_sparse_ffn(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, const float* down_bias, float* y) {
  kernel_sparse_ffn_at(simd_level(), x, rows, slots, n_slots, down_bias, y);
}

}  // namespace tierlm
