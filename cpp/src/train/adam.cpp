// AdamW dispatch: derives the step's scalars the way torch does (host fp64, then f32), splits
// the tensors into cache-line-aligned ranges over the compute pool and runs the kernel of the
// current SIMD level on each.
#include "tierlm/train/adam.hpp"

#include <cmath>
#include <cstring>

#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/core/simd.hpp"
#include "train/adam_kernels.hpp"

namespace tierlm {

namespace {

constexpr size_t kAdamBlock = 64;  // elements per scheduling unit (a cache line of bf16 x2)
// 32K elements (~10 us of work) per thread at least: below that, waking a worker costs more.
constexpr size_t kAdamMinBlocksPerThread = 512;

using RangeKernel = void (*)(const detail::AdamScalars&, const AdamTensors&, size_t, size_t);

RangeKernel kernel_for_level() {
  switch (simd_level()) {
    case SimdLevel::kSimdAvx512:
      return &detail::adam_range_avx512;
    case SimdLevel::kSimdAvx2:
      return &detail::adam_range_avx2;
    case SimdLevel::kSimdScalar:
      break;
  }
  return &detail::adam_range_scalar;
}

void check(const AdamConfig& c, const AdamTensors& t) {
  TIERLM_CHECK(t.n == 0 || (t.param && t.grad && t.exp_avg && t.exp_avg_sq), kErrorInvalidArgument,
               "adam_step: param, grad, exp_avg and exp_avg_sq must all be given for ", t.n,
               " elements");
  TIERLM_CHECK(c.step >= 1, kErrorInvalidArgument, "adam_step: step must count from 1, got ",
               c.step);
  TIERLM_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, kErrorInvalidArgument,
               "adam_step: betas must be in [0, 1), got (", c.beta1, ", ", c.beta2, ")");
}

}  // namespace

namespace detail {

AdamScalars adam_scalars(const AdamConfig& c) {
  // torch.optim.AdamW (single-tensor path): Python floats (fp64) become f32 tensor scalars.
  const double lr = c.lr, beta1 = c.beta1, beta2 = c.beta2;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(c.step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(c.step));
  AdamScalars s;
  s.decay = static_cast<float>(1.0 - lr * c.weight_decay);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(c.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(lr / bc1);
  s.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
  s.eps = static_cast<float>(c.eps);
  return s;
}

}  // namespace detail

uint16_t bf16_from_f32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float bf16_to_f32(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

void adam_step_serial(const AdamConfig& config, const AdamTensors& tensors) {
  check(config, tensors);
  kernel_for_level()(detail::adam_scalars(config), tensors, 0, tensors.n);
}

void adam_step(const AdamConfig& config, const AdamTensors& tensors) {
  check(config, tensors);
  const detail::AdamScalars scalars = detail::adam_scalars(config);
  const RangeKernel kernel = kernel_for_level();
  const size_t blocks = (tensors.n + kAdamBlock - 1) / kAdamBlock;
  // The pool's chunks are claimed, not assigned: a worker that wakes late (its core taken by
  // another process) leaves its chunk to the caller instead of holding the step up.
  parallel_for(
      blocks,
      [&](size_t begin, size_t end) {
        const size_t hi = end * kAdamBlock < tensors.n ? end * kAdamBlock : tensors.n;
        kernel(scalars, tensors, begin * kAdamBlock, hi);
      },
      kAdamMinBlocksPerThread);
}

}  // namespace tierlm
