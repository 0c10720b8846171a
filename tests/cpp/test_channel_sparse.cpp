// kernel_channel_sparse_linear at every SIMD level against the scalar reference, bit for bit
// (every level rounds each product before its add, in row order), and the scalar reference
// against a double-precision sum of the kept columns; f32, f16, bf16, q8_0 and q4_0 columns on
// awkward widths (1, primes, a page of floats +- 1), row counts around the SIMD group of 16,
// with and without a bias, and y as its own bias (the accumulating call the executor makes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/quant_blocks.hpp"
#include "kernels/kernels_impl.hpp"
#include "simd_levels.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/kernels/channel_sparse.hpp"

namespace tierlm {
namespace {

using detail::BlockQ4_0;
using detail::BlockQ8_0;

// n_rows columns of `stride` elements of dtype, and their values as floats.
struct Columns {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [n_rows * stride]
};

Columns random_columns(DType dtype, size_t n_rows, size_t stride, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  Columns c;
  c.values.resize(n_rows * stride);
  c.bytes.resize(n_rows * dtype_row_bytes(dtype, stride));
  if (dtype == DType::kDTypeQ8_0 || dtype == DType::kDTypeQ4_0) {
    const size_t blocks = n_rows * stride / 32;
    for (size_t b = 0; b < blocks; ++b) {
      const uint16_t d = detail::f32_to_f16(0.01f + 0.05f * std::fabs(nd(rng)));
      const float df = detail::f16_to_f32(d);
      float* v = c.values.data() + b * 32;
      if (dtype == DType::kDTypeQ8_0) {
        auto* q = reinterpret_cast<BlockQ8_0*>(c.bytes.data()) + b;
        q->d = d;
        for (size_t i = 0; i < 32; ++i) {
          q->qs[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
          v[i] = df * q->qs[i];
        }
      } else {
        auto* q = reinterpret_cast<BlockQ4_0*>(c.bytes.data()) + b;
        q->d = d;
        for (size_t i = 0; i < 16; ++i) {
          q->qs[i] = static_cast<uint8_t>(rng());
          v[i] = df * static_cast<float>((q->qs[i] & 15) - 8);
          v[i + 16] = df * static_cast<float>((q->qs[i] >> 4) - 8);
        }
      }
    }
    return c;
  }
  for (size_t i = 0; i < c.values.size(); ++i) {
    const float f = nd(rng);
    if (dtype == DType::kDTypeF32) {
      std::memcpy(c.bytes.data() + 4 * i, &f, 4);
      c.values[i] = f;
      continue;
    }
    const uint16_t h = dtype == DType::kDTypeF16 ? detail::f32_to_f16(f) : detail::f32_to_bf16(f);
    std::memcpy(c.bytes.data() + 2 * i, &h, 2);
    c.values[i] = dtype == DType::kDTypeF16 ? detail::f16_to_f32(h) : detail::bf16_to_f32(h);
  }
  return c;
}

void check(DType dtype, size_t out, size_t stride, size_t n_rows, float threshold, bool bias,
           bool accumulate) {
  std::mt19937 rng(static_cast<unsigned>(out * 131 + n_rows * 7 + (bias ? 1 : 0)));
  std::normal_distribution<float> nd;
  const size_t n_channels = 2 * n_rows + 5;
  std::vector<float> x(n_channels), b(out), y0(out);
  for (float& v : x) v = nd(rng);
  for (float& v : b) v = nd(rng);
  for (float& v : y0) v = nd(rng);
  std::vector<int32_t> channels(n_rows);
  for (size_t r = 0; r < n_rows; ++r) channels[r] = static_cast<int32_t>((r * 7 + 3) % n_channels);
  const Columns c = random_columns(dtype, n_rows, stride, rng);
  ChannelRows rows;
  rows.rows = c.bytes.data();
  rows.dtype = dtype;
  rows.n_rows = n_rows;
  rows.out = out;
  rows.row_stride = stride;
  rows.channels = channels.data();
  rows.n_channels = n_channels;
  const std::string what = std::string(dtype_name(dtype)) + " out " + std::to_string(out) +
                           " rows " + std::to_string(n_rows) + " threshold " +
                           std::to_string(threshold) + (bias ? " bias" : "") +
                           (accumulate ? " accumulate" : "");

  auto run = [&](SimdLevel level) {
    std::vector<float> y = accumulate ? y0 : std::vector<float>(out, -7.0f);
    const float* first = accumulate ? y.data() : bias ? b.data() : nullptr;
    kernel_channel_sparse_linear_at(level, x.data(), rows, threshold, first, y.data());
    return y;
  };
  const std::vector<float> ref = run(SimdLevel::kSimdScalar);
  double scale = 1.0;
  for (size_t i = 0; i < out; ++i) {
    double want = accumulate ? y0[i] : bias ? b[i] : 0.0;
    for (size_t r = 0; r < n_rows; ++r) {
      const double a = x[static_cast<size_t>(channels[r])];
      if (std::fabs(a) > threshold) want += a * c.values[r * stride + i];
    }
    scale = std::max(scale, std::fabs(want));
    ASSERT_NEAR(ref[i], want, 1e-5 * scale * std::sqrt(double(n_rows) + 1)) << what << " i " << i;
  }
  for (SimdLevel level : testing::simd_levels_here()) {
    const std::vector<float> got = run(level);
    ASSERT_EQ(std::memcmp(got.data(), ref.data(), out * sizeof(float)), 0)
        << simd_level_name(level) << " differs from scalar: " << what;
  }
}

TEST(ChannelSparse, EveryLevelIsTheScalarReferenceBitForBit) {
  for (SimdLevel l : {SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512}) {
    if (l > simd_detected())
      GTEST_LOG_(INFO) << "skipping " << simd_level_name(l) << ": CPU lacks it";
  }
  for (DType dtype : {DType::kDTypeF32, DType::kDTypeF16, DType::kDTypeBF16}) {
    for (size_t out : {1u, 7u, 31u, 33u, 97u, 1023u, 1025u}) {
      for (size_t n_rows : {1u, 16u, 17u, 37u}) {
        for (float threshold : {-1.0f, 0.6f}) {
          check(dtype, out, out + 3, n_rows, threshold, false, false);
        }
        check(dtype, out, out + 3, n_rows, 0.3f, true, false);
        check(dtype, out, out, n_rows, 0.3f, false, true);
      }
    }
  }
  for (DType dtype : {DType::kDTypeQ8_0, DType::kDTypeQ4_0}) {
    for (size_t out : {32u, 96u, 1024u, 1056u}) {
      for (size_t n_rows : {1u, 16u, 17u, 37u}) {
        check(dtype, out, out + 32, n_rows, 0.6f, false, false);
        check(dtype, out, out, n_rows, -1.0f, true, false);
        check(dtype, out, out, n_rows, 0.3f, false, true);
      }
    }
  }
}

TEST(ChannelSparse, LevelAboveTheCpuIsRefused) {
  if (simd_detected() == SimdLevel::kSimdAvx512) GTEST_SKIP() << "CPU runs every level";
  const float x[1] = {1.0f};
  const float w[1] = {2.0f};
  const int32_t ch[1] = {0};
  ChannelRows rows{w, DType::kDTypeF32, 1, 1, 1, ch, 1};
  float y[1];
  EXPECT_THROW(kernel_channel_sparse_linear_at(SimdLevel::kSimdAvx512, x, rows, 0.0f, nullptr, y),
               Error);
}

}  // namespace
}  // namespace tierlm
