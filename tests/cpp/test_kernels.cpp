// C++-only checks of the kernels: the per-token launchers make no heap allocation, every SIMD
// level agrees with the scalar reference, and argument errors are typed. Numerical checks
// against numpy/torch are in tests/python/test_kernels.py.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "random_floats.hpp"
#include "simd_levels.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/core/simd.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace {
std::atomic<size_t> g_allocations{0};
}  // namespace

void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace tierlm {
namespace {

using testing::random_floats;

std::vector<SimdLevel> levels() { return testing::simd_levels_here(); }
using LevelGuard = testing::SimdLevelGuard;

// A cache of shape.kv_dtype in blocks of block_tokens (0: one block), filled by kernel_kv_store
// with random keys and values, its blocks listed in reverse address order.
struct AttentionCase {
  AttentionShape shape;
  std::vector<float> q, out;
  std::vector<unsigned char> cache, workspace;
  std::vector<void*> blocks;
  KvLayout layout;
  explicit AttentionCase(AttentionShape s, size_t block_tokens = 0) : shape(s) {
    q = random_floats(s.n_q * s.n_heads * s.head_dim, 1);
    const size_t width = s.n_kv_heads * s.head_dim;
    const std::vector<float> k = random_floats(s.kv_len * width, 2);
    const std::vector<float> v = random_floats(s.kv_len * width, 3);
    const size_t bt = block_tokens == 0 ? s.kv_capacity : block_tokens;
    const size_t n_blocks = (s.kv_capacity + bt - 1) / bt;
    const size_t half = s.n_kv_heads * bt * kernel_kv_row_bytes(s.kv_dtype, s.head_dim);
    cache.resize(n_blocks * 2 * half);
    for (size_t b = n_blocks; b-- > 0;) blocks.push_back(cache.data() + b * 2 * half);
    layout = {blocks.data(), bt, 0, half};
    kernel_kv_store(k.data(), v.data(), width, s.kv_len, 0, layout, s);
    out.assign(q.size(), 0.0f);
    workspace.resize(kernel_attention_workspace(s));
  }
  void run() {
    kernel_attention(q.data(), layout, out.data(), shape,
                     1.0f / std::sqrt(static_cast<float>(shape.head_dim)), workspace.data());
  }
};

TEST(Kernels, PerTokenLaunchersDoNotAllocate) {
  const size_t rows = 129, cols = 257, n = 3;
  std::vector<float> x = random_floats(n * cols, 4), w = random_floats(rows * cols, 5);
  std::vector<float> y(n * rows), norm_w(cols, 1.0f), up = random_floats(n * cols, 6);
  std::vector<int32_t> positions = {0, 1, 2};
  std::vector<float> inv_freq(32, 0.01f);
  std::vector<float> rope_x = random_floats(n * 2 * 64, 7);
  std::vector<int32_t> ids = {1, 0, 2};
  AttentionCase decode({1, 8, 2, 64, 3000, 3001, 2999});
  AttentionCase prefill({37, 8, 2, 64, 300, 300, 263});
  AttentionCase decode_q8({1, 9, 3, 64, 1000, 1024, 999, DType::kDTypeQ8_0}, 16);
  AttentionCase prefill_f16({37, 9, 3, 64, 300, 320, 263, DType::kDTypeF16}, 32);
  auto all = [&] {
    kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeF32, y.data(), n, rows, cols);
    kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeBF16, y.data(), n, rows, cols / 2);
    kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeF32, y.data(), 1, rows, cols);
    kernel_rmsnorm(x.data(), norm_w.data(), DType::kDTypeF32, up.data(), n, cols, 1e-6f);
    kernel_layernorm(x.data(), norm_w.data(), nullptr, DType::kDTypeF32, up.data(), n, cols, 1e-5f);
    kernel_rope(rope_x.data(), positions.data(), inv_freq.data(), n, 2, 64);
    kernel_silu_mul(x.data(), up.data(), up.data(), n * cols);
    kernel_relu(up.data(), n * cols);
    kernel_gelu(up.data(), n * cols);
    kernel_add(up.data(), x.data(), n * cols);
    kernel_embedding(w.data(), DType::kDTypeF32, ids.data(), ids.size(), cols, up.data());
    decode.run();
    prefill.run();
    decode_q8.run();
    prefill_f16.run();
  };
  LevelGuard guard;
  for (SimdLevel level : levels()) {
    simd_set_level(level);
    all();  // starts the pool
    const size_t before = g_allocations.load();
    all();
    EXPECT_EQ(g_allocations.load(), before) << simd_level_name(level);
  }
}

TEST(Kernels, EveryLevelMatchesScalar) {
  LevelGuard guard;
  const size_t rows = 67, cols = 1031, n = 5;
  std::vector<float> x = random_floats(n * cols, 8), w = random_floats(rows * cols, 9);
  std::vector<uint16_t> wb(rows * cols);
  for (size_t i = 0; i < wb.size(); ++i) {  // bf16 by truncation
    uint32_t bits;
    std::memcpy(&bits, &w[i], 4);
    wb[i] = static_cast<uint16_t>(bits >> 16);
  }
  AttentionCase att({7, 12, 4, 80, 1500, 1600, 1493});
  simd_set_level(SimdLevel::kSimdScalar);
  std::vector<float> ref(n * rows), ref1(rows), refb(n * rows), refb1(rows);
  kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeF32, ref.data(), n, rows, cols);
  kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeF32, ref1.data(), 1, rows, cols);
  kernel_linear(x.data(), wb.data(), nullptr, DType::kDTypeBF16, refb.data(), n, rows, cols);
  kernel_linear(x.data(), wb.data(), nullptr, DType::kDTypeBF16, refb1.data(), 1, rows, cols);
  att.run();
  const std::vector<float> att_ref = att.out;
  for (SimdLevel level : levels()) {
    simd_set_level(level);
    std::vector<float> y(n * rows), y1(rows), yb(n * rows), yb1(rows);
    kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeF32, y.data(), n, rows, cols);
    kernel_linear(x.data(), w.data(), nullptr, DType::kDTypeF32, y1.data(), 1, rows, cols);
    kernel_linear(x.data(), wb.data(), nullptr, DType::kDTypeBF16, yb.data(), n, rows, cols);
    kernel_linear(x.data(), wb.data(), nullptr, DType::kDTypeBF16, yb1.data(), 1, rows, cols);
    for (size_t i = 0; i < y.size(); ++i) {
      EXPECT_NEAR(y[i], ref[i], 1e-3f) << simd_level_name(level) << " f32 " << i;
      // bf16 x bf16 products (AVX512-BF16) round the activations: 1% of the typical |y|.
      EXPECT_NEAR(yb[i], refb[i], 0.35f) << simd_level_name(level) << " bf16 " << i;
    }
    for (size_t i = 0; i < y1.size(); ++i) {
      EXPECT_NEAR(y1[i], ref1[i], 1e-3f) << simd_level_name(level);
      EXPECT_NEAR(yb1[i], refb1[i], 0.35f) << simd_level_name(level) << " bf16 matvec " << i;
    }
    att.run();
    for (size_t i = 0; i < att.out.size(); ++i)
      ASSERT_NEAR(att.out[i], att_ref[i], 1e-4f) << simd_level_name(level) << " attention " << i;
  }
}

TEST(Kernels, ElementwiseAndNormsWorkInPlace) {
  LevelGuard guard;
  const size_t n = 3, dim = 1031;
  const std::vector<float> x = random_floats(n * dim, 10), up = random_floats(n * dim, 11);
  const std::vector<float> w = random_floats(dim, 12), b = random_floats(dim, 13);
  for (SimdLevel level : levels()) {
    simd_set_level(level);
    std::vector<float> out(n * dim), in_place = x;
    kernel_rmsnorm(x.data(), w.data(), DType::kDTypeF32, out.data(), n, dim, 1e-6f);
    kernel_rmsnorm(in_place.data(), w.data(), DType::kDTypeF32, in_place.data(), n, dim, 1e-6f);
    EXPECT_EQ(out, in_place) << simd_level_name(level);
    in_place = x;
    kernel_layernorm(x.data(), w.data(), b.data(), DType::kDTypeF32, out.data(), n, dim, 1e-5f);
    kernel_layernorm(in_place.data(), w.data(), b.data(), DType::kDTypeF32, in_place.data(), n, dim,
                     1e-5f);
    EXPECT_EQ(out, in_place) << simd_level_name(level);
    in_place = x;
    kernel_silu_mul(x.data(), up.data(), out.data(), n * dim);
    kernel_silu_mul(in_place.data(), up.data(), in_place.data(), n * dim);
    EXPECT_EQ(out, in_place) << simd_level_name(level);
  }
}

TEST(Kernels, BadArgumentsAreInvalidArgumentErrors) {
  EXPECT_EQ(dtype_parse("bfloat16"), DType::kDTypeBF16);
  EXPECT_STREQ(dtype_name(DType::kDTypeF16), "f16");
  EXPECT_EQ(dtype_size(DType::kDTypeF32), 4u);
  try {
    dtype_parse("int8");
    FAIL() << "int8 parsed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorInvalidArgument);
  }
  AttentionShape bad{4, 6, 4, 64, 10, 10, 6};  // 6 heads over 4 KV heads
  EXPECT_THROW(kernel_attention_workspace(bad), Error);
  AttentionShape ok{4, 8, 4, 64, 10, 10, 6};
  std::vector<float> q(4 * 8 * 64), kv(2 * 4 * 10 * 64), out(q.size());
  void* block = kv.data();
  const KvLayout layout{&block, 10, 0, 4 * 10 * 64 * sizeof(float)};
  EXPECT_THROW(kernel_attention(q.data(), layout, out.data(), ok, 0.1f, nullptr), Error);
  std::vector<unsigned char> ws(kernel_attention_workspace(ok));
  EXPECT_THROW(kernel_attention(q.data(), KvLayout{}, out.data(), ok, 0.1f, ws.data()), Error);
  for (DType t : {DType::kDTypeQ4_0, DType::kDTypeQ6_K}) {
    AttentionShape wrong = ok;
    wrong.kv_dtype = t;
    try {
      kernel_attention(q.data(), layout, out.data(), wrong, 0.1f, ws.data());
      FAIL() << dtype_name(t) << " accepted as a KV dtype";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kErrorInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("kv_dtype"), std::string::npos) << e.what();
    }
  }
  // A store past the capacity is refused before it writes.
  EXPECT_THROW(kernel_kv_store(kv.data(), kv.data(), 256, 2, 9, layout, ok), Error);
}

TEST(Kernels, AttentionWorkspaceGrowsAtMostLinearly) {
  AttentionShape s{1, 32, 8, 128, 1024, 1 << 16, 1023};
  const size_t small = kernel_attention_workspace(s);
  s.kv_len = 1 << 16;
  s.q_pos0 = s.kv_len - 1;
  EXPECT_LE(kernel_attention_workspace(s), 64 * small);
  // The size for the largest shape covers every smaller one (plan once, run many).
  const size_t big = kernel_attention_workspace({512, 32, 8, 128, 4096, 4096, 3584});
  for (size_t n_q : {1, 7, 512})
    for (size_t kv : {512, 1000, 4096})
      if (n_q <= kv)
        EXPECT_LE(kernel_attention_workspace({n_q, 32, 8, 128, kv, 4096, kv - n_q}), big);
}

}  // namespace
}  // namespace tierlm
