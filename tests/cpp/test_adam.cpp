#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tierlm/core/error.hpp"
#include "tierlm/core/simd.hpp"
#include "tierlm/train/adam.hpp"

namespace tierlm {
namespace {

// fp64 reference of one AdamW step (torch.optim.AdamW's formula).
void reference(const AdamConfig& c, std::vector<double>& p, const std::vector<float>& g,
               std::vector<double>& m, std::vector<double>& v) {
  const double bc1 = 1 - std::pow(c.beta1, c.step), bc2 = 1 - std::pow(c.beta2, c.step);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= 1 - c.lr * c.weight_decay;
    m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
    v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i];
    p[i] -= c.lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + c.eps);
  }
}

class AdamLevels : public ::testing::TestWithParam<std::tuple<SimdLevel, size_t>> {};

TEST_P(AdamLevels, MatchesFp64Reference) {
  const auto [level, n] = GetParam();
  if (level > simd_detected()) GTEST_SKIP() << "CPU lacks " << simd_level_name(level);
  const SimdLevel before = simd_level();
  simd_set_level(level);
  std::mt19937 rng(static_cast<unsigned>(n));
  std::normal_distribution<float> normal;
  std::vector<float> p(n), g(n), m(n, 0.f), v(n, 0.f);
  std::vector<double> rp(n), rm(n, 0.0), rv(n, 0.0);
  for (size_t i = 0; i < n; ++i) rp[i] = p[i] = normal(rng);
  AdamConfig c;
  c.lr = 1e-2;
  c.weight_decay = 0.1;
  for (int64_t step = 1; step <= 3; ++step) {
    for (auto& x : g) x = normal(rng);
    c.step = step;
    AdamTensors t{p.data(), g.data(), m.data(), v.data(), nullptr, n};
    adam_step(c, t);
    reference(c, rp, g, rm, rv);
  }
  simd_set_level(before);
  for (size_t i = 0; i < n; ++i) ASSERT_NEAR(p[i], rp[i], 1e-5 * (1 + std::abs(rp[i]))) << i;
}

INSTANTIATE_TEST_SUITE_P(Sizes, AdamLevels,
                         ::testing::Combine(::testing::Values(SimdLevel::kSimdScalar,
                                                              SimdLevel::kSimdAvx2,
                                                              SimdLevel::kSimdAvx512),
                                            ::testing::Values(1, 7, 15, 17, 4095, 4097, 100003)));

TEST(Adam, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_from_f32(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(bf16_from_f32(3.140625f)), 3.140625f);
  EXPECT_EQ(bf16_from_f32(bf16_to_f32(0x3f81) + 0x1p-9f * 0.5f), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(bf16_from_f32(std::nanf("")))));
}

TEST(Adam, RejectsStepZero) {
  float x = 0;
  AdamConfig c;
  c.step = 0;
  AdamTensors t{&x, &x, &x, &x, nullptr, 1};
  EXPECT_THROW(adam_step(c, t), Error);
}

}  // namespace
}  // namespace tierlm
