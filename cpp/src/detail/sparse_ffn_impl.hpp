// SIMD variants of the sparse FFN kernel; each lives in a file compiled with its ISA flags.
#pragma once

#include <cstring>

#include "tierlm/sparse_ffn.hpp"

namespace tierlm::detail {

void sparse_ffn_scalar(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, float* y);
void sparse_ffn_avx2(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                     size_t n_slots, float* y);
void sparse_ffn_avx512(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, float* y);

// One element of a row as f32 (the scalar path and the SIMD tails).
inline float load_elem(const void* base, DType dtype, size_t i) {
  if (dtype == DType::kDTypeF32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  if (dtype == DType::kDTypeBF16) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  // IEEE half -> float, subnormals and inf/nan included.
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Activation of one row from its dot products, shared by every variant.
inline float sparse_ffn_activation(const SparseFfnRows& rows, size_t r, float up_dot,
                                   float gate_dot) {
  const int32_t neuron = rows.neurons ? rows.neurons[r] : static_cast<int32_t>(r);
  const float up = up_dot + (rows.up_bias ? rows.up_bias[neuron] : 0.0f);
  if (!rows.gated) return up > 0.0f ? up : 0.0f;
  const float gate = gate_dot + (rows.gate_bias ? rows.gate_bias[neuron] : 0.0f);
  return gate / (1.0f + __builtin_expf(-gate)) * up;
}

}  // namespace tierlm::detail
