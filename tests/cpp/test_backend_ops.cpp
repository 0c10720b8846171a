// The op test driver: every op of every backend in backend_list() against the reference
// (cpu-scalar, the scalar kernel bodies) on awkward sizes (1, primes, page size +- 1), with a
// per-op tolerance. TIERLM_OPS_MODE=test (default) asserts; TIERLM_OPS_MODE=perf prints a
// timing table per op, size and backend beside the reference's time instead.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "count_allocations.hpp"
#include "kernels/backend.hpp"
#include "kernels/kernels_impl.hpp"
#include "random_floats.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {
namespace {

constexpr BackendOp kLastOp = BackendOp::kBackendOpAttentionMass;

enum class Mode { kModeTest, kModePerf };

Mode ops_mode() {
  const char* env = std::getenv("TIERLM_OPS_MODE");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "test") == 0) return Mode::kModeTest;
  if (std::strcmp(env, "perf") == 0) return Mode::kModePerf;
  ADD_FAILURE() << "TIERLM_OPS_MODE=" << env << " is not one of test, perf";
  return Mode::kModeTest;
}

// Largest max|out - ref| / max|ref| accepted, per op and weight dtype. The SIMD bodies sum in
// another order (and with FMA) than the scalar ones; AVX512-BF16 also rounds the activations
// to bf16 in bf16 products (about 2^-9 each). Moves, ReLU, adds and conversions are exact.
double tolerance(BackendOp op, DType dtype) {
  switch (op) {
    case BackendOp::kBackendOpLinear:
      return dtype == DType::kDTypeBF16 ? 1e-2 : 1e-5;
    case BackendOp::kBackendOpRmsNorm:
    case BackendOp::kBackendOpLayerNorm:
      return 1e-5;
    case BackendOp::kBackendOpRope:
      return 1e-6;
    case BackendOp::kBackendOpSiluMul:
    case BackendOp::kBackendOpGelu:
      return 1e-6;  // vector exp / erf approximations
    case BackendOp::kBackendOpAttention:
    case BackendOp::kBackendOpAttentionMass:  // the normalizers come from the attention bodies
      return 1e-5;  // any KV dtype: every level widens the same stored values exactly
    case BackendOp::kBackendOpRelu:
    case BackendOp::kBackendOpAdd:
    case BackendOp::kBackendOpEmbedding:
    case BackendOp::kBackendOpCopyRows:
    case BackendOp::kBackendOpKvStore:
      return 0.0;
  }
  return 0.0;
}

using testing::random_floats;

// Weights in dtype: f32 as is, f16 / bf16 by rounding the same normal values.
std::vector<uint8_t> random_weights(size_t n, DType dtype, uint32_t seed) {
  const std::vector<float> f = random_floats(n, seed);
  std::vector<uint8_t> out(n * dtype_size(dtype));
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &f[i], 4);
    uint16_t h = 0;
    if (dtype == DType::kDTypeF32) {
      std::memcpy(out.data() + 4 * i, &bits, 4);
      continue;
    } else if (dtype == DType::kDTypeBF16) {
      h = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    } else {  // f16: normal values of N(0, 1) are well inside its range
      const uint32_t sign = (bits >> 16) & 0x8000u;
      const int exp = static_cast<int>((bits >> 23) & 0xffu) - 127 + 15;
      const uint32_t mant = bits & 0x7fffffu;
      if (exp <= 0) {
        h = static_cast<uint16_t>(sign);  // flush the rare tiny value to zero
      } else {
        h = static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13));
      }
    }
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

// One op at one size. prepare() sets the output to its starting state (the input for ops that
// run in place); run() is the op alone, what perf mode times.
struct OpCase {
  BackendOp op = BackendOp::kBackendOpLinear;
  DType dtype = DType::kDTypeF32;
  std::string size;
  size_t out_floats = 0;
  std::function<void(std::vector<float>& out)> prepare;
  std::function<void(Backend& backend, std::vector<float>& out, void* workspace)> run;
  std::function<size_t(const Backend& backend)> workspace = [](const Backend&) { return 0; };
};

std::string dims(std::initializer_list<std::pair<const char*, size_t>> items) {
  std::string s;
  for (const auto& [name, value] : items) {
    s += (s.empty() ? "" : " ") + std::string(name) + "=" + std::to_string(value);
  }
  return s;
}

void add_linear(std::vector<OpCase>& cases, size_t n, size_t rows, size_t cols, DType dtype,
                bool bias) {
  auto x = std::make_shared<std::vector<float>>(random_floats(n * cols, 1));
  auto w = std::make_shared<std::vector<uint8_t>>(random_weights(rows * cols, dtype, 2));
  auto b = std::make_shared<std::vector<uint8_t>>(random_weights(rows, dtype, 3));
  LinearShape shape{n, rows, cols, dtype};
  OpCase c;
  c.op = BackendOp::kBackendOpLinear;
  c.dtype = dtype;
  c.size = dims({{"n", n}, {"rows", rows}, {"cols", cols}}) + " " + dtype_name(dtype) +
           (bias ? " +bias" : "");
  c.out_floats = n * rows;
  c.prepare = [](std::vector<float>&) {};
  c.run = [=](Backend& be, std::vector<float>& out, void* ws) {
    be.linear(x->data(), w->data(), bias ? b->data() : nullptr, out.data(), shape, ws);
  };
  c.workspace = [=](const Backend& be) { return be.linear_workspace(shape); };
  cases.push_back(std::move(c));
}

void add_norm(std::vector<OpCase>& cases, BackendOp op, size_t n, size_t dim, DType dtype) {
  auto x = std::make_shared<std::vector<float>>(random_floats(n * dim, 4));
  auto w = std::make_shared<std::vector<uint8_t>>(random_weights(dim, dtype, 5));
  auto b = std::make_shared<std::vector<uint8_t>>(random_weights(dim, dtype, 6));
  OpCase c;
  c.op = op;
  c.dtype = dtype;
  c.size = dims({{"n", n}, {"dim", dim}}) + " " + dtype_name(dtype);
  c.out_floats = n * dim;
  c.prepare = [](std::vector<float>&) {};
  c.run = [=](Backend& be, std::vector<float>& out, void*) {
    if (op == BackendOp::kBackendOpRmsNorm) {
      be.rmsnorm(x->data(), w->data(), dtype, out.data(), n, dim, 1e-6f);
    } else {
      be.layernorm(x->data(), w->data(), b->data(), dtype, out.data(), n, dim, 1e-5f);
    }
  };
  cases.push_back(std::move(c));
}

void add_rope(std::vector<OpCase>& cases, size_t n_tokens, size_t n_heads, size_t head_dim) {
  auto x = std::make_shared<std::vector<float>>(random_floats(n_tokens * n_heads * head_dim, 7));
  auto positions = std::make_shared<std::vector<int32_t>>();
  for (size_t t = 0; t < n_tokens; ++t) positions->push_back(static_cast<int32_t>(t * 509 % 4097));
  auto inv_freq = std::make_shared<std::vector<float>>();
  for (size_t i = 0; i < head_dim / 2; ++i) {
    inv_freq->push_back(std::pow(10000.0f, -2.0f * static_cast<float>(i) / head_dim));
  }
  OpCase c;
  c.op = BackendOp::kBackendOpRope;
  c.size = dims({{"tokens", n_tokens}, {"heads", n_heads}, {"head_dim", head_dim}});
  c.out_floats = x->size();
  c.prepare = [=](std::vector<float>& out) { out = *x; };
  c.run = [=](Backend& be, std::vector<float>& out, void*) {
    be.rope(out.data(), positions->data(), inv_freq->data(), n_tokens, n_heads, head_dim);
  };
  cases.push_back(std::move(c));
}

void add_elementwise(std::vector<OpCase>& cases, BackendOp op, size_t n) {
  auto a = std::make_shared<std::vector<float>>(random_floats(n, 8));
  auto b = std::make_shared<std::vector<float>>(random_floats(n, 9));
  OpCase c;
  c.op = op;
  c.size = dims({{"n", n}});
  c.out_floats = n;
  c.prepare = [=](std::vector<float>& out) { out = *a; };
  c.run = [=](Backend& be, std::vector<float>& out, void*) {
    switch (op) {
      case BackendOp::kBackendOpSiluMul:
        return be.silu_mul(a->data(), b->data(), out.data(), n);
      case BackendOp::kBackendOpRelu:
        return be.relu(out.data(), n);
      case BackendOp::kBackendOpGelu:
        return be.gelu(out.data(), n);
      case BackendOp::kBackendOpAdd:
        return be.add(out.data(), b->data(), n);
      default:
        FAIL() << backend_op_name(op) << " is not elementwise";
    }
  };
  cases.push_back(std::move(c));
}

void add_embedding(std::vector<OpCase>& cases, size_t vocab, size_t dim, size_t n, DType dtype) {
  auto table = std::make_shared<std::vector<uint8_t>>(random_weights(vocab * dim, dtype, 10));
  auto ids = std::make_shared<std::vector<int32_t>>();
  for (size_t i = 0; i < n; ++i) ids->push_back(static_cast<int32_t>((i * 7919 + 3) % vocab));
  OpCase c;
  c.op = BackendOp::kBackendOpEmbedding;
  c.dtype = dtype;
  c.size = dims({{"vocab", vocab}, {"dim", dim}, {"ids", n}}) + " " + dtype_name(dtype);
  c.out_floats = n * dim;
  c.prepare = [](std::vector<float>&) {};
  c.run = [=](Backend& be, std::vector<float>& out, void*) {
    be.embedding(table->data(), dtype, ids->data(), n, dim, out.data());
  };
  cases.push_back(std::move(c));
}

// A KV cache of s.kv_dtype in blocks of block_tokens (0: one block of the capacity), listed in
// reverse address order so that sequence order and memory order differ, as in a paged cache.
struct KvCacheBuffer {
  std::vector<uint8_t> bytes;
  std::vector<void*> blocks;
  KvLayout layout;
  KvCacheBuffer(const AttentionShape& s, size_t block_tokens) {
    const size_t bt = block_tokens == 0 ? s.kv_capacity : block_tokens;
    const size_t n_blocks = (s.kv_capacity + bt - 1) / bt;
    const size_t half = s.n_kv_heads * bt * kernel_kv_row_bytes(s.kv_dtype, s.head_dim);
    bytes.assign(n_blocks * 2 * half, 0);
    for (size_t b = n_blocks; b-- > 0;) blocks.push_back(bytes.data() + b * 2 * half);
    layout = {blocks.data(), bt, 0, half};
  }
};

// Attention, or with mass its heavy-hitter scores: the backend's attention writes the softmax
// normalizers, its attention_mass adds the weights to a mass of ones, and the output is both.
void add_attention(std::vector<OpCase>& cases, AttentionShape s, size_t block_tokens = 0,
                   bool mass = false) {
  auto q = std::make_shared<std::vector<float>>(random_floats(s.n_q * s.n_heads * s.head_dim, 11));
  const size_t width = s.n_kv_heads * s.head_dim;
  const std::vector<float> k = random_floats(s.kv_len * width, 12);
  const std::vector<float> v = random_floats(s.kv_len * width, 13);
  auto cache = std::make_shared<KvCacheBuffer>(s, block_tokens);
  kernel_kv_store(k.data(), v.data(), width, s.kv_len, 0, cache->layout, s);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const size_t lse_floats = s.n_q * s.n_heads;
  auto attended = std::make_shared<std::vector<float>>(q->size());
  OpCase c;
  c.op = mass ? BackendOp::kBackendOpAttentionMass : BackendOp::kBackendOpAttention;
  c.size = dims({{"n_q", s.n_q},
                 {"heads", s.n_heads},
                 {"kv_heads", s.n_kv_heads},
                 {"head_dim", s.head_dim},
                 {"kv_len", s.kv_len},
                 {"q_pos0", s.q_pos0},
                 {"block", block_tokens}}) +
           " kv " + dtype_name(s.kv_dtype);
  c.out_floats = mass ? lse_floats + s.kv_len : q->size();
  c.prepare = [=](std::vector<float>& out) {
    if (mass) std::fill(out.begin() + lse_floats, out.end(), 1.0f);
  };
  c.run = [=](Backend& be, std::vector<float>& out, void* ws) {
    if (!mass) return be.attention(q->data(), cache->layout, out.data(), s, scale, ws, nullptr);
    be.attention(q->data(), cache->layout, attended->data(), s, scale, ws, out.data());
    be.attention_mass(q->data(), cache->layout, s, scale, out.data(), out.data() + lse_floats);
  };
  c.workspace = [=](const Backend& be) { return be.attention_workspace(s); };
  cases.push_back(std::move(c));
}

// Stores n tokens at pos into a cache, then reads every stored element back as f32 (the scalar
// reference's reader), so the output compares as floats.
void add_kv_store(std::vector<OpCase>& cases, AttentionShape s, size_t n, size_t pos,
                  size_t block_tokens) {
  const size_t width = s.n_kv_heads * s.head_dim;
  auto k = std::make_shared<std::vector<float>>(random_floats(n * (width + 3), 17));
  auto v = std::make_shared<std::vector<float>>(random_floats(n * (width + 3), 18));
  auto cache = std::make_shared<KvCacheBuffer>(s, block_tokens);
  OpCase c;
  c.op = BackendOp::kBackendOpKvStore;
  c.size = dims({{"n", n},
                 {"pos", pos},
                 {"kv_heads", s.n_kv_heads},
                 {"head_dim", s.head_dim},
                 {"block", block_tokens}}) +
           " kv " + dtype_name(s.kv_dtype);
  c.out_floats = 2 * n * width;
  c.prepare = [](std::vector<float>&) {};
  c.run = [=](Backend& be, std::vector<float>& out, void*) {
    be.kv_store(k->data(), v->data(), width + 3, n, pos, cache->layout, s);
    const size_t row_bytes = kernel_kv_row_bytes(s.kv_dtype, s.head_dim);
    const size_t bt = cache->layout.block_tokens;
    size_t o = 0;
    for (size_t half : {cache->layout.k_offset, cache->layout.v_offset})
      for (size_t t = pos; t < pos + n; ++t)
        for (size_t h = 0; h < s.n_kv_heads; ++h) {
          const uint8_t* row = static_cast<const uint8_t*>(cache->blocks[t / bt]) + half +
                               (h * bt + t % bt) * row_bytes;
          for (size_t e = 0; e < s.head_dim; ++e) out[o++] = kv_element(row, s.kv_dtype, e);
        }
  };
  cases.push_back(std::move(c));
}

void add_copy_rows(std::vector<OpCase>& cases, size_t rows, size_t elems, size_t dst_stride) {
  auto src = std::make_shared<std::vector<float>>(random_floats(rows * elems, 14));
  OpCase c;
  c.op = BackendOp::kBackendOpCopyRows;
  c.size = dims({{"rows", rows}, {"elems", elems}, {"dst_stride", dst_stride}});
  c.out_floats = (rows - 1) * dst_stride + elems;
  c.prepare = [](std::vector<float>& out) { std::fill(out.begin(), out.end(), -1.0f); };
  c.run = [=](Backend& be, std::vector<float>& out, void*) {
    be.copy_rows(out.data(), dst_stride, src->data(), elems, rows, elems);
  };
  cases.push_back(std::move(c));
}

// Sizes: 1, primes, page size +- 1 (in elements), sizes past the pool's split thresholds, and
// a few shapes of a 1B model's decode step (what perf mode is for).
std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  for (DType dtype : {DType::kDTypeF32, DType::kDTypeF16, DType::kDTypeBF16}) {
    add_linear(cases, 1, 1, 1, dtype, false);
    add_linear(cases, 1, 13, 4095, dtype, true);
    add_linear(cases, 1, 31, 4096, dtype, false);
    add_linear(cases, 1, 7, 4097, dtype, true);
    add_linear(cases, 1, 4097, 67, dtype, false);  // matvec split across the pool
    add_linear(cases, 1, 6, 95, dtype, true);      // a 4-row matvec block and 2 rows alone
    add_linear(cases, 3, 67, 1031, dtype, true);
    add_linear(cases, 17, 129, 257, dtype, false);
    add_linear(cases, 1, 2048, 2048, dtype, false);
    for (BackendOp op : {BackendOp::kBackendOpRmsNorm, BackendOp::kBackendOpLayerNorm}) {
      for (size_t dim : {1, 7, 4095, 4096, 4097}) add_norm(cases, op, 3, dim, dtype);
      add_norm(cases, op, 1, 2048, dtype);
    }
    for (size_t dim : {1, 13, 4097}) add_embedding(cases, 37, dim, 5, dtype);
  }
  for (size_t head_dim : {2, 64, 130}) add_rope(cases, 5, 3, head_dim);
  add_rope(cases, 1, 32, 64);
  for (BackendOp op : {BackendOp::kBackendOpSiluMul, BackendOp::kBackendOpRelu,
                       BackendOp::kBackendOpGelu, BackendOp::kBackendOpAdd}) {
    for (size_t n : {1, 7, 4095, 4096, 4097, 65537}) add_elementwise(cases, op, n);
  }
  for (AttentionShape s : std::vector<AttentionShape>{{1, 1, 1, 1, 1, 1, 0},
                                                      {13, 6, 3, 96, 13, 13, 0},
                                                      {37, 8, 2, 64, 300, 300, 263},
                                                      {7, 12, 4, 80, 1500, 1600, 1493},
                                                      {1, 4, 4, 128, 4097, 4097, 4096},
                                                      {1, 32, 4, 64, 1024, 2048, 1023}}) {
    add_attention(cases, s);
  }
  // Compact and paged caches: every KV dtype, blocks of 16 and 64 tokens (a key tile crossing
  // blocks, a block size of 1), head_dim not a multiple of q8_0's 32.
  for (DType kv : {DType::kDTypeF32, DType::kDTypeF16, DType::kDTypeBF16, DType::kDTypeQ8_0}) {
    add_attention(cases, {1, 9, 3, 64, 1021, 1024, 1020, kv}, 16);
    add_attention(cases, {37, 8, 2, 64, 300, 320, 263, kv}, 64);
    add_attention(cases, {13, 6, 3, 96, 13, 13, 0, kv});
    add_attention(cases, {5, 4, 1, 37, 211, 211, 206, kv}, 1);
    add_attention(cases, {1, 32, 4, 64, 1024, 2048, 1023, kv});
    // Decode bodies (few rows): one key, a block + 1 keys with head_dim 37 (a partial q8_0
    // block, a vector tail), 5 rows (a chunk of 4 and 1), 2 queries' causal rows, 4097 keys in
    // blocks of 48 (a size that does not divide the key tile: the next tile's prefetch).
    add_attention(cases, {1, 3, 3, 96, 1, 16, 0, kv});
    add_attention(cases, {1, 6, 2, 37, 33, 64, 32, kv}, 32);
    add_attention(cases, {1, 5, 1, 80, 31, 31, 30, kv});
    add_attention(cases, {2, 2, 1, 64, 4097, 4097, 4095, kv}, 64);
    add_attention(cases, {1, 9, 3, 64, 4097, 4100, 4096, kv}, 48);
    add_attention(cases, {1, 9, 3, 64, 1021, 1024, 1020, kv}, 16, true);
    add_attention(cases, {37, 8, 2, 64, 300, 320, 263, kv}, 32, true);
    add_kv_store(cases, {1, 3, 3, 64, 1, 48, 0, kv}, 1, 17, 16);
    add_kv_store(cases, {1, 2, 2, 37, 1, 64, 0, kv}, 7, 30, 0);
  }
  add_copy_rows(cases, 1, 4097, 4097);
  add_copy_rows(cases, 4, 64, 4095);  // a KV append: kv_heads rows, capacity * head_dim apart
  add_copy_rows(cases, 3, 1, 1);
  return cases;
}

// max |out - ref| / max |ref|; infinity when out has a NaN or an infinity ref lacks.
double relative_error(const std::vector<float>& out, const std::vector<float>& ref) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i]) && std::isfinite(ref[i])) return INFINITY;
    diff = std::max(diff, std::fabs(static_cast<double>(out[i]) - ref[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

struct Outputs {
  std::vector<float> out;
  std::vector<uint8_t> workspace;
};

// Plans the case's workspace on the backend (as the executor does at load), then runs it.
void run_case(const OpCase& c, Backend& backend, Outputs& o) {
  o.out.assign(c.out_floats, 0.0f);
  o.workspace.assign(c.workspace(backend), 0);
  c.prepare(o.out);
  c.run(backend, o.out, o.workspace.empty() ? nullptr : o.workspace.data());
}

const std::vector<BackendEntry>& backends() {
  static const std::vector<BackendEntry> list = backend_list();
  return list;
}

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  // The backend under test, or a skip naming why it cannot run.
  std::unique_ptr<Backend> create() {
    for (const BackendEntry& e : backends()) {
      if (e.name != GetParam()) continue;
      if (!e.unavailable.empty()) return nullptr;
      return e.create();
    }
    return nullptr;
  }
  std::string unavailable() const {
    for (const BackendEntry& e : backends()) {
      if (e.name == GetParam()) return e.unavailable;
    }
    return "not in backend_list()";
  }
};

TEST(BackendList, ReferenceFirstAndEveryOpHasCases) {
  ASSERT_FALSE(backends().empty());
  EXPECT_EQ(backends().front().name, "cpu-scalar");
  EXPECT_TRUE(backends().front().unavailable.empty());
  const std::vector<OpCase> cases = op_cases();
  for (int op = 0; op <= static_cast<int>(kLastOp); ++op) {
    const bool covered = std::any_of(cases.begin(), cases.end(),
                                     [&](const OpCase& c) { return static_cast<int>(c.op) == op; });
    EXPECT_TRUE(covered) << backend_op_name(static_cast<BackendOp>(op)) << " has no case";
  }
}

// The pinned CPU backends (the driver's variants) must run their level whatever the process's
// level is, else every variant would silently test one level.
TEST(BackendList, PinnedCpuLevelIgnoresTheProcessLevel) {
  const SimdLevel saved = simd_level();
  const size_t n = 3, rows = 67, cols = 1031;
  const std::vector<float> x = random_floats(n * cols, 15);
  const std::vector<uint8_t> w = random_weights(rows * cols, DType::kDTypeBF16, 16);
  const LinearShape shape{n, rows, cols, DType::kDTypeBF16};
  auto run = [&](Backend& backend) {
    std::vector<float> y(n * rows);
    backend.linear(x.data(), w.data(), nullptr, y.data(), shape, nullptr);
    return y;
  };
  std::unique_ptr<Backend> follow = backend_cpu();
  for (SimdLevel level : {SimdLevel::kSimdScalar, SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512}) {
    if (level > simd_detected()) continue;
    std::unique_ptr<Backend> pinned = backend_cpu_at(level);
    simd_set_level(level);
    const std::vector<float> at_level = run(*follow);
    simd_set_level(level == SimdLevel::kSimdScalar ? simd_detected() : SimdLevel::kSimdScalar);
    EXPECT_EQ(run(*pinned), at_level) << pinned->name();
  }
  simd_set_level(saved);
  if (simd_detected() < SimdLevel::kSimdAvx512) {
    EXPECT_THROW(backend_cpu_at(SimdLevel::kSimdAvx512), Error);
  }
}

TEST_P(BackendOps, MatchReference) {
  if (ops_mode() != Mode::kModeTest) GTEST_SKIP() << "TIERLM_OPS_MODE=perf times ops instead";
  if (!unavailable().empty()) GTEST_SKIP() << GetParam() << ": " << unavailable();
  if (GetParam() == backends().front().name) {
    GTEST_SKIP() << GetParam() << " is the reference (tests/python/test_kernels.py checks it "
                 << "against numpy and torch)";
  }
  std::unique_ptr<Backend> backend = create();
  std::unique_ptr<Backend> reference = backends().front().create();
  Outputs ref, got;
  for (const OpCase& c : op_cases()) {
    run_case(c, *reference, ref);
    run_case(c, *backend, got);  // starts the pool and sizes the outputs
    c.prepare(got.out);
    void* ws = got.workspace.empty() ? nullptr : got.workspace.data();
    g_allocations = 0;
    g_counting = true;
    c.run(*backend, got.out, ws);
    g_counting = false;
    EXPECT_EQ(g_allocations.load(), 0) << backend_op_name(c.op) << " " << c.size << " allocated";
    const double error = relative_error(got.out, ref.out);
    const double limit = tolerance(c.op, c.dtype);
    EXPECT_LE(error, limit) << GetParam() << " " << backend_op_name(c.op) << " " << c.size;
  }
}

double median_seconds(const OpCase& c, Backend& backend, Outputs& o) {
  run_case(c, backend, o);  // warm-up
  void* ws = o.workspace.empty() ? nullptr : o.workspace.data();
  std::vector<double> times;
  const auto start = std::chrono::steady_clock::now();
  while (times.size() < 5 || (times.size() < 1000 && std::chrono::steady_clock::now() - start <
                                                         std::chrono::milliseconds(50))) {
    const auto t0 = std::chrono::steady_clock::now();
    c.run(backend, o.out, ws);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

TEST_P(BackendOps, Perf) {
  if (ops_mode() != Mode::kModePerf) GTEST_SKIP() << "set TIERLM_OPS_MODE=perf to time ops";
  if (!unavailable().empty()) GTEST_SKIP() << GetParam() << ": " << unavailable();
  if (GetParam() == backends().front().name) {
    GTEST_SKIP() << GetParam() << " is the reference: its times are the baseline column";
  }
  std::unique_ptr<Backend> backend = create();
  std::unique_ptr<Backend> reference = backends().front().create();
  Outputs o;
  std::printf("%-10s %-62s %-12s %12s %14s %8s\n", "op", "size", "backend", "median us",
              "cpu-scalar us", "speedup");
  for (const OpCase& c : op_cases()) {
    const double ref = median_seconds(c, *reference, o);
    const double ours = median_seconds(c, *backend, o);
    std::printf("%-10s %-62s %-12s %12.2f %14.2f %7.2fx\n", backend_op_name(c.op), c.size.c_str(),
                GetParam().c_str(), ours * 1e6, ref * 1e6, ref / ours);
  }
}

std::vector<std::string> backend_names() {
  std::vector<std::string> names;
  for (const BackendEntry& e : backends()) names.push_back(e.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Registered, BackendOps, ::testing::ValuesIn(backend_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace tierlm::detail
