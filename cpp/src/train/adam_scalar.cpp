// Scalar AdamW reference: the arithmetic of torch.optim.AdamW element by element.
#include <cmath>

#include "train/adam_kernels.hpp"

namespace tierlm::detail {

void adam_range_scalar(const AdamScalars& s, const AdamTensors& t, size_t begin, size_t end) {
  const bool bf16 = t.state_dtype == AdamStateDType::kAdamStateBf16;
  float* m32 = static_cast<float*>(t.exp_avg);
  float* v32 = static_cast<float*>(t.exp_avg_sq);
  uint16_t* m16 = static_cast<uint16_t*>(t.exp_avg);
  uint16_t* v16 = static_cast<uint16_t*>(t.exp_avg_sq);
  for (size_t i = begin; i < end; ++i) {
    const float g = t.grad[i];
    float m = bf16 ? bf16_to_f32(m16[i]) : m32[i];
    float v = bf16 ? bf16_to_f32(v16[i]) : v32[i];
    const float p = t.param[i] * s.decay;
    m = std::fma(s.one_minus_beta1, g - m, m);  // exp_avg.lerp_(grad, 1 - beta1)
    const float gv = s.one_minus_beta2 * g;
    v = std::fma(gv, g, v * s.beta2);  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    const float denom = std::fma(std::sqrt(v), s.inv_bc2_sqrt, s.eps);
    const float out = p + (-s.step_size * m) / denom;  // addcdiv_(m, denom, -step_size)
    t.param[i] = out;
    if (bf16) {
      m16[i] = bf16_from_f32(m);
      v16[i] = bf16_from_f32(v);
    } else {
      m32[i] = m;
      v32[i] = v;
    }
    if (t.param_bf16) t.param_bf16[i] = bf16_from_f32(out);
  }
}

}  // namespace tierlm::detail
