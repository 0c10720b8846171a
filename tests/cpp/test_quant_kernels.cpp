// The quantized linear kernels (GGUF block types) at every SIMD level against the scalar
// dequantizer, on awkward sizes, plus their workspace, allocation and error behaviour.
// Tolerances, relative to |x| * |w_row| per output:
//  - against X rounded through the activation blocks times the dequantized W (what the kernel
//    computes, its integer sums exact): 1e-6, for the f32 sums and scale products;
//  - against f32 X times the dequantized W: sqrt(B) / 254 (the bound kernels.hpp states;
//    observed up to 2.4e-3 for 32-blocks, 1.4e-3 for k-types, at 32 / 256 columns);
//  - every level against the scalar level: 1e-6.
// The dequantizer itself is checked against gguf.quants in tests/python/test_quant_kernels.py.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "count_allocations.hpp"
#include "kernels/kernels_impl.hpp"
#include "kernels/quant_impl.hpp"
#include "simd_levels.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/simd.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"

namespace tierlm {

void PrintTo(DType dtype, std::ostream* os) { *os << dtype_name(dtype); }

namespace {

constexpr DType kTypes[] = {DType::kDTypeQ8_0, DType::kDTypeQ4_0, DType::kDTypeQ4_1,
                            DType::kDTypeQ5_0, DType::kDTypeQ5_1, DType::kDTypeQ4_K,
                            DType::kDTypeQ5_K, DType::kDTypeQ6_K};

std::vector<SimdLevel> levels() { return testing::simd_levels_here(); }
using LevelGuard = testing::SimdLevelGuard;

// An f16 bit pattern of magnitude 2^-10 .. 2^-1 with a random mantissa (and sign if asked).
uint16_t random_f16(std::mt19937& rng, bool any_sign) {
  const uint32_t exp = 5 + rng() % 10, mant = rng() % 1024;
  const uint32_t sign = any_sign && (rng() & 1) ? 0x8000u : 0u;
  return static_cast<uint16_t>(sign | exp << 10 | mant);
}

// rows x cols weights of dtype: random bytes (every bit pattern is a valid block) with the f16
// scales replaced by moderate values, so that no product overflows or vanishes.
std::vector<uint8_t> random_blocks(DType dtype, size_t rows, size_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  const DTypeBlock b = dtype_block(dtype);
  std::vector<uint8_t> w(rows * dtype_row_bytes(dtype, cols));
  for (uint8_t& v : w) v = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < w.size(); i += b.bytes) {
    auto put = [&](size_t at, bool any_sign) {
      const uint16_t h = random_f16(rng, any_sign);
      std::memcpy(&w[i + at], &h, 2);
    };
    switch (dtype) {
      case DType::kDTypeQ4_1:
      case DType::kDTypeQ5_1:
        put(0, false);
        put(2, true);  // the min
        break;
      case DType::kDTypeQ4_K:
      case DType::kDTypeQ5_K:
        put(0, false);
        put(2, false);  // dmin
        break;
      case DType::kDTypeQ6_K:
        put(208, false);
        break;
      default:
        put(0, false);
        break;
    }
  }
  return w;
}

std::vector<float> random_x(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

std::vector<float> dequantized(DType dtype, const std::vector<uint8_t>& w, size_t rows,
                               size_t cols) {
  std::vector<float> out(rows * cols);
  const size_t row_bytes = dtype_row_bytes(dtype, cols);
  for (size_t r = 0; r < rows; ++r)
    detail::dequantize_row(w.data() + r * row_bytes, dtype, out.data() + r * cols, cols);
  return out;
}

// x as the kernels see it: rounded through the activation blocks of dtype's kind.
std::vector<float> rounded_x(DType dtype, const std::vector<float>& x, size_t n, size_t cols) {
  std::vector<unsigned char> act(n * detail::quant_act_row_bytes(dtype, cols));
  detail::quant_kernels_scalar().quantize_rows(x.data(), dtype, act.data(), n, cols);
  std::vector<float> out(n * cols);
  if (detail::quant_is_k_type(dtype)) {
    const auto* a = reinterpret_cast<const detail::ActBlock256*>(act.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = a[i / 256].d * a[i / 256].q[i % 256];
  } else {
    const size_t nb = cols / 32;
    for (size_t t = 0; t < n; ++t) {
      const detail::Act32Row<true> a(act.data() + t * detail::act32_row_bytes(nb), nb);
      for (size_t c = 0; c < cols; ++c)
        out[t * cols + c] = a.d[c / 32] * a.q[detail::act32_index(nb, c / 32, c % 32)];
    }
  }
  return out;
}

// y = x w^T in double, and the norms the tolerances scale with.
struct Reference {
  std::vector<double> y;
  std::vector<double> scale;  // |x_t| * |w_r|
};
Reference reference(const std::vector<float>& x, const std::vector<float>& w, size_t n, size_t rows,
                    size_t cols) {
  Reference ref;
  ref.y.resize(n * rows);
  ref.scale.resize(n * rows);
  for (size_t t = 0; t < n; ++t)
    for (size_t r = 0; r < rows; ++r) {
      double s = 0, xx = 0, ww = 0;
      for (size_t c = 0; c < cols; ++c) {
        const double a = x[t * cols + c], b = w[r * cols + c];
        s += a * b;
        xx += a * a;
        ww += b * b;
      }
      ref.y[t * rows + r] = s;
      ref.scale[t * rows + r] = std::sqrt(xx * ww);
    }
  return ref;
}

// f32 rounding of the kernels' sums and scale products (observed: at most 1.1e-7).
constexpr double kExactTolerance = 1e-6;

struct Case {
  size_t rows, cols, n;
};
std::vector<Case> cases(DType dtype) {
  // cols: one block, three, a long row with a tail block past a power of two, and a power of
  // two (for the 32-blocks: odd and even block counts, as the activations pair blocks). The
  // k-types' 16-row panels (AVX512-VNNI, from 5 tokens, in groups of 8): whole and partial
  // panels (16, 17, 31 rows) with whole and partial token groups (5, 8, 15, 16, 17 tokens), and
  // 4 tokens, the most that still go to the row tiles. One token (decode) also on long rows:
  // the 32-blocks' decode body takes eight blocks a step, then fours, a pair and a last block
  // (c3: 15 blocks, one of each).
  const bool k = detail::quant_is_k_type(dtype);
  const size_t c0 = k ? 256 : 32, c1 = k ? 768 : 96, c2 = k ? 4352 : 4128, c3 = k ? 3840 : 480;
  return {{1, c0, 1},    {3, c1, 2},   {37, c2, 7},  {4097, c0, 1}, {37, c1, 33},
          {4097, c2, 2}, {3, c2, 33},  {37, c0, 1},  {5, 4096, 3},  {16, c0, 8},
          {17, c1, 17},  {31, c1, 15}, {16, c2, 16}, {1, c0, 9},    {7, c1, 5},
          {19, c0, 4},   {3, c2, 1},   {6, c3, 1},   {2, 4096, 1}};
}

class QuantLinear : public ::testing::TestWithParam<DType> {};

TEST_P(QuantLinear, EveryLevelEqualsTheDequantizedReference) {
  const DType dtype = GetParam();
  LevelGuard guard;
  uint32_t seed = 1;
  for (const Case& c : cases(dtype)) {
    const std::vector<uint8_t> w = random_blocks(dtype, c.rows, c.cols, seed++);
    const std::vector<float> x = random_x(c.n * c.cols, seed++);
    const std::vector<float> wf = dequantized(dtype, w, c.rows, c.cols);
    const Reference exact = reference(rounded_x(dtype, x, c.n, c.cols), wf, c.n, c.rows, c.cols);
    const Reference plain = reference(x, wf, c.n, c.rows, c.cols);
    const double bound = std::sqrt(static_cast<double>(dtype_block(dtype).elems)) / 254.0;
    std::vector<unsigned char> ws(kernel_linear_workspace(dtype, c.n, c.cols));
    std::vector<float> scalar;
    for (SimdLevel level : levels()) {
      simd_set_level(level);
      std::vector<float> y(c.n * c.rows);
      kernel_linear(x.data(), w.data(), nullptr, dtype, y.data(), c.n, c.rows, c.cols, ws.data());
      if (level == SimdLevel::kSimdScalar) scalar = y;
      double worst_exact = 0, worst_plain = 0, worst_scalar = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        const double s = exact.scale[i] + 1e-30;
        worst_exact = std::max(worst_exact, std::fabs(y[i] - exact.y[i]) / s);
        worst_plain = std::max(worst_plain, std::fabs(y[i] - plain.y[i]) / s);
        worst_scalar = std::max(worst_scalar, std::fabs(y[i] - scalar[i]) / s);
      }
      const std::string what = std::string(dtype_name(dtype)) + " " + simd_level_name(level) +
                               " rows " + std::to_string(c.rows) + " cols " +
                               std::to_string(c.cols) + " n " + std::to_string(c.n);
      EXPECT_LE(worst_exact, kExactTolerance) << what;
      EXPECT_LE(worst_scalar, kExactTolerance) << what;
      EXPECT_LE(worst_plain, bound) << what;
    }
  }
}

// Decode (one token) has its own loop for the nibble 32-block types (quant_decode_32.hpp) that
// must keep tile32's sums to the bit: bench_quant's agreement with llama.cpp moves with a 1e-7
// change. A token of a two-token call, which goes through tile32 one token at a time, is the
// reference.
TEST_P(QuantLinear, DecodeEqualsATokenOfTheRowTilesBitForBit) {
  const DType dtype = GetParam();
  LevelGuard guard;
  const size_t e = dtype_block(dtype).elems;
  for (size_t cols : {e, 8 * e, 15 * e, 129 * e}) {
    const size_t rows = 5, n = 2;
    const std::vector<uint8_t> w = random_blocks(dtype, rows, cols, 11);
    const std::vector<float> x = random_x(n * cols, 12);
    std::vector<unsigned char> ws(kernel_linear_workspace(dtype, n, cols));
    for (SimdLevel level : levels()) {
      simd_set_level(level);
      std::vector<float> one(rows), two(n * rows);
      kernel_linear(x.data(), w.data(), nullptr, dtype, one.data(), 1, rows, cols, ws.data());
      kernel_linear(x.data(), w.data(), nullptr, dtype, two.data(), n, rows, cols, ws.data());
      for (size_t r = 0; r < rows; ++r)
        EXPECT_EQ(std::bit_cast<uint32_t>(one[r]), std::bit_cast<uint32_t>(two[r]))
            << dtype_name(dtype) << " " << simd_level_name(level) << " cols " << cols << " row "
            << r;
    }
  }
}

TEST_P(QuantLinear, BiasIsF32AndAdded) {
  const DType dtype = GetParam();
  const size_t rows = 5, cols = dtype_block(dtype).elems * 2, n = 3;
  const std::vector<uint8_t> w = random_blocks(dtype, rows, cols, 7);
  const std::vector<float> x = random_x(n * cols, 8), bias = random_x(rows, 9);
  std::vector<unsigned char> ws(kernel_linear_workspace(dtype, n, cols));
  std::vector<float> y(n * rows), yb(n * rows);
  kernel_linear(x.data(), w.data(), nullptr, dtype, y.data(), n, rows, cols, ws.data());
  kernel_linear(x.data(), w.data(), bias.data(), dtype, yb.data(), n, rows, cols, ws.data());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_FLOAT_EQ(yb[i], y[i] + bias[i % rows]);
}

TEST_P(QuantLinear, EmbeddingRowsAreTheDequantizedRows) {
  const DType dtype = GetParam();
  const size_t vocab = 11, dim = dtype_block(dtype).elems * 3;
  const std::vector<uint8_t> table = random_blocks(dtype, vocab, dim, 10);
  const std::vector<float> ref = dequantized(dtype, table, vocab, dim);
  const std::vector<int32_t> ids = {10, 0, 3, 3};
  std::vector<float> out(ids.size() * dim);
  kernel_embedding(table.data(), dtype, ids.data(), ids.size(), dim, out.data());
  for (size_t i = 0; i < ids.size(); ++i)
    for (size_t c = 0; c < dim; ++c)
      ASSERT_EQ(out[i * dim + c], ref[static_cast<size_t>(ids[i]) * dim + c]) << i << " " << c;
}

INSTANTIATE_TEST_SUITE_P(Types, QuantLinear, ::testing::ValuesIn(kTypes),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

TEST(QuantKernels, BlockRecordsHaveTheDtypeGeometry) {
  EXPECT_EQ(sizeof(detail::BlockQ8_0), dtype_block(DType::kDTypeQ8_0).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ4_0), dtype_block(DType::kDTypeQ4_0).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ4_1), dtype_block(DType::kDTypeQ4_1).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ5_0), dtype_block(DType::kDTypeQ5_0).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ5_1), dtype_block(DType::kDTypeQ5_1).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ4_K), dtype_block(DType::kDTypeQ4_K).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ5_K), dtype_block(DType::kDTypeQ5_K).bytes);
  EXPECT_EQ(sizeof(detail::BlockQ6_K), dtype_block(DType::kDTypeQ6_K).bytes);
}

TEST(QuantKernels, EveryLevelQuantizesActivationsIdentically) {
  LevelGuard guard;
  for (DType dtype : {DType::kDTypeQ4_0, DType::kDTypeQ4_K}) {
    const size_t n = 3, cols = dtype == DType::kDTypeQ4_0 ? 800 : 768;  // 25 blocks: one unpaired
    std::vector<float> x = random_x(n * cols, 11);
    x[5] = 0.0f;
    std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // an all-zero block: scale 0
    const size_t bytes = n * detail::quant_act_row_bytes(dtype, cols);
    std::vector<unsigned char> ref(bytes), got(bytes);
    detail::quant_kernels_scalar().quantize_rows(x.data(), dtype, ref.data(), n, cols);
    detail::quant_kernels_avx2().quantize_rows(x.data(), dtype, got.data(), n, cols);
    if (simd_detected() >= SimdLevel::kSimdAvx2) EXPECT_EQ(got, ref) << dtype_name(dtype);
    if (cpu_features().avx512_vnni) {
      detail::quant_kernels_avx512().quantize_rows(x.data(), dtype, got.data(), n, cols);
      EXPECT_EQ(got, ref) << dtype_name(dtype);
    }
  }
}

TEST(QuantKernels, LinearDoesNotAllocate) {
  LevelGuard guard;
  const size_t rows = 300, cols = 512, n = 9;  // 4 tokens: row tiles; 9: the k-types' panels
  const std::vector<float> x = random_x(n * cols, 12);
  std::vector<float> y(n * rows);
  for (DType dtype : kTypes) {
    const std::vector<uint8_t> w = random_blocks(dtype, rows, cols, 13);
    std::vector<unsigned char> ws(kernel_linear_workspace(dtype, n, cols));
    for (SimdLevel level : levels()) {
      simd_set_level(level);
      auto run = [&] {
        kernel_linear(x.data(), w.data(), nullptr, dtype, y.data(), n, rows, cols, ws.data());
        kernel_linear(x.data(), w.data(), nullptr, dtype, y.data(), 4, rows, cols, ws.data());
        kernel_linear(x.data(), w.data(), nullptr, dtype, y.data(), 1, rows, cols, ws.data());
      };
      run();  // starts the pool
      g_allocations.store(0);
      g_counting.store(true);
      run();
      g_counting.store(false);
      EXPECT_EQ(g_allocations.load(), 0) << dtype_name(dtype) << " " << simd_level_name(level);
    }
  }
}

// A matrix streamed in row parts: each part, computed from a buffer holding only its rows,
// fills exactly its rows of Y (the others keep their sentinel) with what the whole matrix
// gives there, within the level-vs-scalar tolerance (1e-6 of |x| |w_row|; the same bodies
// run, only the rows handed to each thread differ). Parts of 1, 7, 123 and 169 rows of 300.
TEST(QuantKernels, LinearPartFillsItsRowsAsTheWholeMatrixDoes) {
  LevelGuard guard;
  const size_t rows = 300, cols = 512;
  const size_t cuts[] = {0, 1, 8, 131, 300};
  std::vector<DType> types(std::begin(kTypes), std::end(kTypes));
  types.push_back(DType::kDTypeF32);
  for (size_t n : {size_t{1}, size_t{4}, size_t{9}}) {
    const std::vector<float> x = random_x(n * cols, 21);
    for (DType dtype : types) {
      const std::vector<float> wf = random_x(rows * cols, 22);
      const std::vector<uint8_t> w =
          dtype == DType::kDTypeF32
              ? std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(wf.data()),
                                     reinterpret_cast<const uint8_t*>(wf.data() + wf.size()))
              : random_blocks(dtype, rows, cols, 23);
      const size_t row_bytes = dtype_row_bytes(dtype, cols);
      std::vector<unsigned char> ws(std::max<size_t>(1, kernel_linear_workspace(dtype, n, cols)));
      for (SimdLevel level : levels()) {
        simd_set_level(level);
        std::vector<float> whole(n * rows);
        kernel_linear(x.data(), w.data(), nullptr, dtype, whole.data(), n, rows, cols, ws.data());
        std::vector<float> y(n * rows, std::nanf(""));
        for (size_t c = 0; c + 1 < std::size(cuts); ++c) {
          const size_t r0 = cuts[c], r1 = cuts[c + 1];
          const std::vector<uint8_t> part(w.begin() + r0 * row_bytes, w.begin() + r1 * row_bytes);
          detail::kernel_linear_part(x.data(), part.data(), nullptr, dtype, y.data(), n, rows, cols,
                                     r0, r1 - r0, ws.data());
          for (size_t t = 0; t < n; ++t) {
            for (size_t r = 0; r < rows; ++r) {
              const float got = y[t * rows + r];
              if (r >= r1) {
                EXPECT_TRUE(std::isnan(got)) << "row " << r << " written by part " << c;
                continue;
              }
              const float ref = whole[t * rows + r];
              EXPECT_NEAR(got, ref, 1e-6 * (1 + std::fabs(ref)))
                  << dtype_name(dtype) << " " << simd_level_name(level) << " n " << n << " row "
                  << r;
            }
          }
        }
      }
    }
  }
  std::vector<float> y(300);
  EXPECT_THROW(detail::kernel_linear_part(y.data(), y.data(), nullptr, DType::kDTypeF32, y.data(),
                                          1, 10, 30, 5, 6, nullptr),
               Error);
}

TEST(QuantKernels, WorkspaceGrowsWithTokensAndIsZeroUnquantized) {
  EXPECT_EQ(kernel_linear_workspace(DType::kDTypeBF16, 64, 4096), 0u);
  for (DType dtype : kTypes) {
    const size_t one = kernel_linear_workspace(dtype, 1, 4096);
    EXPECT_GT(one, 0u);
    EXPECT_GE(kernel_linear_workspace(dtype, 33, 4096), 33 * (one - 64));
  }
}

TEST(QuantKernels, BadArgumentsAreClearErrors) {
  const std::vector<uint8_t> w = random_blocks(DType::kDTypeQ4_0, 2, 64, 14);
  const std::vector<float> x = random_x(64, 15);
  std::vector<float> y(2);
  std::vector<unsigned char> ws(kernel_linear_workspace(DType::kDTypeQ4_0, 1, 64));
  auto code_of = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kErrorIo;  // "no error"
  };
  EXPECT_EQ(code_of([&] {
              kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeQ4_0, y.data(), 1, 2, 64);
            }),
            ErrorCode::kErrorInvalidArgument);  // no workspace
  EXPECT_EQ(code_of([&] {
              kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeQ4_0, y.data(), 1, 2, 48,
                            ws.data());
            }),
            ErrorCode::kErrorInvalidArgument);  // not whole blocks
  std::vector<float> out(64);
  EXPECT_EQ(code_of([&] {
              kernel_rmsnorm(x.data(), w.data(), DType::kDTypeQ4_0, out.data(), 1, 64, 1e-6f);
            }),
            ErrorCode::kErrorUnsupported);
  EXPECT_EQ(code_of([&] {
              kernel_layernorm(x.data(), w.data(), nullptr, DType::kDTypeQ8_0, out.data(), 1, 64,
                               1e-6f);
            }),
            ErrorCode::kErrorUnsupported);
  SparseFfnRows rows;
  rows.rows = w.data();
  rows.dtype = DType::kDTypeQ4_0;
  rows.n_rows = 1;
  rows.dim = 32;
  rows.row_stride = 64;
  auto sparse = [&] { kernel_sparse_ffn(x.data(), rows, nullptr, 1, nullptr, out.data()); };
  EXPECT_EQ(code_of(sparse), ErrorCode::kErrorInvalidArgument);  // no activation blocks
  std::vector<unsigned char> xq(kernel_sparse_ffn_workspace(DType::kDTypeQ4_0, 32));
  kernel_sparse_ffn_prepare(x.data(), DType::kDTypeQ4_0, 32, xq.data());
  rows.x_blocks = xq.data();
  EXPECT_EQ(code_of(sparse), ErrorCode::kErrorIo);  // runs
  rows.row_stride = 48;
  EXPECT_EQ(code_of(sparse), ErrorCode::kErrorInvalidArgument);  // not whole blocks
  EXPECT_EQ(code_of([&] { kernel_sparse_ffn_workspace(DType::kDTypeQ8_0, 48); }),
            ErrorCode::kErrorInvalidArgument);
  EXPECT_EQ(kernel_sparse_ffn_workspace(DType::kDTypeF16, 48), 0u);
  try {
    kernel_rmsnorm(x.data(), w.data(), DType::kDTypeQ4_K, out.data(), 1, 64, 1e-6f);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_k"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tierlm
