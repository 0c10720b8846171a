// Per-ISA AdamW kernels over one contiguous range; adam.cpp dispatches among them.
#pragma once

#include <cstddef>

#include "tierlm/train/adam.hpp"

namespace tierlm::detail {

// Scalars derived once per step, in the precision torch uses (fp64 on the host, then f32).
struct AdamScalars {
  float decay;  // 1 - lr * weight_decay
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float step_size;     // lr / (1 - beta1^step)
  float inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^step): a multiply instead of a divide
  float eps;
};

AdamScalars adam_scalars(const AdamConfig& config);

// Elements [begin, end) of the tensors.
void adam_range_scalar(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end);
void adam_range_avx2(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end);
void adam_range_avx512(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end);

}  // namespace tierlm::detail
