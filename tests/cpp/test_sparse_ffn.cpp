#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tierlm/core/error.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"

namespace tierlm {
namespace {

// Dense reference in double over the chosen rows.
std::vector<double> reference(const std::vector<float>& x, const std::vector<float>& rows,
                              size_t dim, size_t stride, bool gated,
                              const std::vector<int32_t>& neurons, const std::vector<float>& ub,
                              const std::vector<float>& gb) {
  std::vector<double> y(dim, 0.0);
  for (size_t r = 0; r < neurons.size(); ++r) {
    const float* row = rows.data() + r * stride;
    double up = ub[neurons[r]], gate = gated ? gb[neurons[r]] : 0.0;
    for (size_t i = 0; i < dim; ++i) up += double(x[i]) * row[i];
    if (gated)
      for (size_t i = 0; i < dim; ++i) gate += double(x[i]) * row[dim + i];
    const double a = gated ? gate / (1.0 + std::exp(-gate)) * up : std::max(up, 0.0);
    const float* down = row + (gated ? 2 * dim : dim);
    for (size_t i = 0; i < dim; ++i) y[i] += a * down[i];
  }
  return y;
}

TEST(SparseFfn, EveryLevelMatchesTheReference) {
  for (SimdLevel level : {SimdLevel::kSimdScalar, SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512}) {
    if (level > simd_detected()) {
      GTEST_LOG_(INFO) << "skipping " << simd_level_name(level) << ": CPU lacks it";
      continue;
    }
    for (bool gated : {false, true}) {
      for (size_t dim : {1u, 7u, 16u, 33u, 257u}) {
        std::mt19937 rng(static_cast<unsigned>(dim));
        std::normal_distribution<float> nd;
        const size_t n_rows = 29, stride = (gated ? 3 : 2) * dim + 3, n_neurons = 101;
        std::vector<float> x(dim), rows(n_rows * stride), ub(n_neurons), gb(n_neurons);
        for (auto& v : x) v = nd(rng);
        for (auto& v : rows) v = nd(rng) / std::sqrt(float(dim));
        for (auto& v : ub) v = nd(rng) * 0.3f;
        for (auto& v : gb) v = nd(rng) * 0.3f;
        std::vector<int32_t> neurons(n_rows);
        for (auto& n : neurons) n = static_cast<int32_t>(rng() % n_neurons);
        SparseFfnRows r{rows.data(), DType::kDTypeF32, n_rows,    dim,      stride,
                        gated,       neurons.data(),   ub.data(), gb.data()};
        std::vector<float> y(dim);
        kernel_sparse_ffn_at(level, x.data(), r, nullptr, n_rows, nullptr, y.data());
        const std::vector<double> want = reference(x, rows, dim, stride, gated, neurons, ub, gb);
        for (size_t i = 0; i < dim; ++i) {
          EXPECT_NEAR(y[i], want[i], 1e-4 * (1.0 + std::abs(want[i])))
              << simd_level_name(level) << " gated " << gated << " dim " << dim << " i " << i;
        }
      }
    }
  }
}

TEST(SparseFfn, ActThresholdDropsSmallSiluNeurons) {
  const size_t dim = 33, n_rows = 41, stride = 3 * dim;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> x(dim), rows(n_rows * stride), ub(n_rows), gb(n_rows);
  for (auto& v : x) v = nd(rng);
  for (auto& v : rows) v = nd(rng) / std::sqrt(float(dim));
  for (auto& v : gb) v = nd(rng) * 0.3f;
  const float threshold = 0.2f;
  // Reference over the rows whose |silu(gate)| passes the threshold.
  std::vector<int32_t> kept;
  for (size_t r = 0; r < n_rows; ++r) {
    double g = gb[r];
    for (size_t i = 0; i < dim; ++i) g += double(x[i]) * rows[r * stride + dim + i];
    if (std::abs(g / (1.0 + std::exp(-g))) > threshold) kept.push_back(static_cast<int32_t>(r));
  }
  ASSERT_GT(kept.size(), 3u);
  ASSERT_LT(kept.size(), n_rows - 3);
  std::vector<float> kept_rows;
  for (int32_t r : kept) {
    kept_rows.insert(kept_rows.end(), rows.begin() + r * stride, rows.begin() + (r + 1) * stride);
  }
  const std::vector<double> want = reference(x, kept_rows, dim, stride, true, kept, ub, gb);
  for (SimdLevel level : {SimdLevel::kSimdScalar, SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512}) {
    if (level > simd_detected()) continue;
    SparseFfnRows r{rows.data(), DType::kDTypeF32, n_rows,    dim,       stride,
                    true,        nullptr,          ub.data(), gb.data(), threshold};
    std::vector<float> y(dim);
    kernel_sparse_ffn_at(level, x.data(), r, nullptr, n_rows, nullptr, y.data());
    for (size_t i = 0; i < dim; ++i) {
      EXPECT_NEAR(y[i], want[i], 1e-4 * (1.0 + std::abs(want[i]))) << simd_level_name(level);
    }
  }
}

TEST(SparseFfn, SlotsChooseRowsAndOrderDoesNotMatter) {
  const size_t dim = 45, n_rows = 10, stride = 2 * dim;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> x(dim), rows(n_rows * stride), bias(n_rows, 0.1f), down_bias(dim, 0.5f);
  for (auto& v : x) v = nd(rng);
  for (auto& v : rows) v = nd(rng);
  SparseFfnRows r{rows.data(), DType::kDTypeF32, n_rows,      dim,    stride,
                  false,       nullptr,          bias.data(), nullptr};
  const std::vector<int32_t> a = {1, 4, 7, 8}, b = {8, 7, 4, 1};
  std::vector<float> ya(dim), yb(dim), yn(dim);
  kernel_sparse_ffn(x.data(), r, a.data(), a.size(), down_bias.data(), ya.data());
  kernel_sparse_ffn(x.data(), r, b.data(), b.size(), down_bias.data(), yb.data());
  kernel_sparse_ffn(x.data(), r, a.data(), 0, down_bias.data(), yn.data());
  for (size_t i = 0; i < dim; ++i) {
    EXPECT_NEAR(ya[i], yb[i], 1e-4f * (1 + std::abs(ya[i])));
    EXPECT_EQ(yn[i], 0.5f);  // no rows: only the bias
  }
  const int32_t bad[] = {10};
  EXPECT_THROW(kernel_sparse_ffn(x.data(), r, bad, 1, nullptr, ya.data()), Error);
  r.row_stride = 2 * dim - 1;
  EXPECT_THROW(kernel_sparse_ffn(x.data(), r, nullptr, n_rows, nullptr, ya.data()), Error);
}

}  // namespace
}  // namespace tierlm
