// Fused CPU AdamW: one pass over param, grad and the two moments, exactly torch.optim.AdamW's
// arithmetic (decoupled weight decay, bias correction, eps added after the sqrt), SIMD by
// run-time dispatch and split over the compute pool. Moments may be kept in bf16 to move
// fewer bytes; the updated param may also be written out as bf16 for a low-precision copy.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tierlm/core/export.hpp"

namespace tierlm {

enum class AdamStateDType { kAdamStateF32, kAdamStateBf16 };

struct TIERLM_API AdamConfig {
  // Double, as Python floats are: torch derives 1 - beta etc. in fp64 before rounding to f32.
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  int64_t step = 1;  // the step being taken, counted from 1 (bias correction)
};

// n elements; m and v are float* (kAdamStateF32) or uint16_t* bf16 bits (kAdamStateBf16).
struct TIERLM_API AdamTensors {
  float* param = nullptr;
  const float* grad = nullptr;
  void* exp_avg = nullptr;
  void* exp_avg_sq = nullptr;
  uint16_t* param_bf16 = nullptr;  // optional: receives the updated param rounded to bf16
  size_t n = 0;
  AdamStateDType state_dtype = AdamStateDType::kAdamStateF32;
};

// One AdamW step over all n elements, on the compute pool (parallel.hpp).
TIERLM_API void adam_step(const AdamConfig& config, const AdamTensors& tensors);

// The same on the calling thread only, at the current SIMD level (benchmarks, tests).
TIERLM_API void adam_step_serial(const AdamConfig& config, const AdamTensors& tensors);

// Round-to-nearest-even f32 -> bf16 bits and back (NaN stays NaN).
TIERLM_API uint16_t bf16_from_f32(float x);
TIERLM_API float bf16_to_f32(uint16_t x);

}  // namespace tierlm
