// SIMD variants of the sparse FFN kernel; each lives in a file compiled with its ISA flags.
#pragma once

#include "kernels/kernels_impl.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"

namespace tierlm::detail {

void sparse_ffn_scalar(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, float* y);
void sparse_ffn_avx2(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                     size_t n_slots, float* y);
void sparse_ffn_avx512(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, float* y);

// Activation of one row from its dot products, shared by every variant.
inline float sparse_ffn_activation(const SparseFfnRows& rows, size_t r, float up_dot,
                                   float gate_dot) {
  const int32_t neuron = rows.neurons ? rows.neurons[r] : static_cast<int32_t>(r);
  const float up = up_dot + (rows.up_bias ? rows.up_bias[neuron] : 0.0f);
  if (!rows.gated) return up > 0.0f ? up : 0.0f;
  const float gate = gate_dot + (rows.gate_bias ? rows.gate_bias[neuron] : 0.0f);
  const float s = gate / (1.0f + __builtin_expf(-gate));
  if (rows.act_threshold > 0.0f && __builtin_fabsf(s) <= rows.act_threshold) return 0.0f;
  return s * up;
}

// The row loop every variant shares: up (and gate) dot products, activation, down axpy.
// Isa supplies dot<D>(x, w, dim) and axpy<D>(a, w, y, dim) for its vector width.
template <class Isa, DType D>
void sparse_ffn_rows(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                     size_t n_slots, float* y) {
  const size_t dim = rows.dim;
  const size_t esize = D == DType::kDTypeF32 ? 4 : 2;
  const size_t down_at = (rows.gated ? 2 * dim : dim) * esize;
  for (size_t j = 0; j < n_slots; ++j) {
    const size_t r = slots ? static_cast<size_t>(slots[j]) : j;
    const char* row = static_cast<const char*>(rows.rows) + r * rows.row_stride * esize;
    const float up = Isa::template dot<D>(x, row, dim);
    const float gate = rows.gated ? Isa::template dot<D>(x, row + dim * esize, dim) : 0.0f;
    const float a = sparse_ffn_activation(rows, r, up, gate);
    if (a != 0.0f) Isa::template axpy<D>(a, row + down_at, y, dim);
  }
}

template <class Isa>
void sparse_ffn_run(const float* x, const SparseFfnRows& rows, const int32_t* slots, size_t n_slots,
                    float* y) {
  switch (rows.dtype) {
    case DType::kDTypeF32:
      return sparse_ffn_rows<Isa, DType::kDTypeF32>(x, rows, slots, n_slots, y);
    case DType::kDTypeF16:
      return sparse_ffn_rows<Isa, DType::kDTypeF16>(x, rows, slots, n_slots, y);
    case DType::kDTypeBF16:
      return sparse_ffn_rows<Isa, DType::kDTypeBF16>(x, rows, slots, n_slots, y);
    case DType::kDTypeQ8_0:
    case DType::kDTypeQ4_0:
    case DType::kDTypeQ4_1:
    case DType::kDTypeQ5_0:
    case DType::kDTypeQ5_1:
    case DType::kDTypeQ4_K:
    case DType::kDTypeQ5_K:
    case DType::kDTypeQ6_K:
      break;
  }
  fail_block_dtype("sparse_ffn_run", rows.dtype);
}

}  // namespace tierlm::detail
