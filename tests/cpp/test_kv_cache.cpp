// The paged KV cache: blocks taken from the host tier as a sequence grows and given back when it
// ends, shared prefixes with copy on write, the host budget, and attention over its blocks equal
// to attention over one contiguous block holding the same rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels_impl.hpp"
#include "model/kv_cache.hpp"
#include "random_floats.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {
namespace {

const std::vector<KvLayerShape> kLayers = {{3, 64}, {3, 64}};

using testing::random_floats;

// Appends n random tokens to slot through the cache's own calls, as the executor does.
void append(KvCache& kv, int32_t slot, int64_t n, uint32_t seed, const AttentionShape& shape) {
  const size_t width = shape.n_kv_heads * shape.head_dim;
  const std::vector<float> k = random_floats(n * width, seed), v = random_floats(n * width, ~seed);
  kv.prepare(slot, kv.length(slot) + n);
  for (size_t layer = 0; layer < kv.layers(); ++layer)
    kernel_kv_store(k.data(), v.data(), width, n, kv.length(slot), kv.layout(layer, slot), shape);
  kv.advance(slot, n);
}

AttentionShape shape_of(DType dtype, int64_t capacity) {
  AttentionShape s{1, 9, 3, 64, 1, static_cast<size_t>(capacity), 0, dtype};
  return s;
}

TEST(KvCache, BlocksFollowTheLengthAndGoBackWhenTheSequenceEnds) {
  HostTier host(64 << 20);
  KvCache kv(host, kLayers, 1000, 2, DType::kDTypeF16);
  EXPECT_EQ(kv.bytes(), 0u);
  EXPECT_EQ(host.stats().current, 0u);
  const AttentionShape s = shape_of(DType::kDTypeF16, 1000);
  EXPECT_EQ(kv.block_bytes(), 2u * 2 * 3 * kKvBlockTokens * 64 * 2);
  int64_t expect = 0;
  std::vector<uint64_t> held;
  for (int64_t n : {int64_t{1}, kKvBlockTokens - 1, int64_t{1}, int64_t{1}, 3 * kKvBlockTokens + 5,
                    8 * kKvBlockTokens}) {
    append(kv, 0, n, static_cast<uint32_t>(n), s);
    expect = (kv.length(0) + kKvBlockTokens - 1) / kKvBlockTokens;
    EXPECT_EQ(kv.blocks(), expect) << kv.length(0) << " tokens";
    held.push_back(kv.bytes());
  }
  EXPECT_GE(kv.bytes(), static_cast<uint64_t>(expect) * kv.block_bytes());
  // 48 KiB blocks, 5 to a 256 KiB chunk: 5 blocks hold one chunk, 13 blocks three.
  EXPECT_EQ(held[4], 5 * kv.block_bytes());
  EXPECT_EQ(held.back(), 3 * held[4]);
  EXPECT_EQ(host.stats().current, kv.bytes());
  kv.clear(0);
  EXPECT_EQ(kv.blocks(), 0);
  EXPECT_EQ(kv.bytes(), 0u);
  EXPECT_EQ(host.stats().current, 0u);
}

TEST(KvCache, SharedPrefixUsesFewerBlocksAndIsCopiedBeforeAWrite) {
  HostTier host(64 << 20);
  KvCache kv(host, kLayers, 1000, 3, DType::kDTypeF32);
  const AttentionShape s = shape_of(DType::kDTypeF32, 1000);
  const int64_t prefix = 2 * kKvBlockTokens + 7;  // two full blocks and a partial one
  append(kv, 0, prefix, 1, s);
  const KvLayout src = kv.layout(1, 0);
  std::vector<uint8_t> before(kv.block_bytes());
  std::memcpy(before.data(), src.blocks[2], before.size());
  kv.share(0, 1, prefix);
  kv.share(0, 2, prefix);
  EXPECT_EQ(kv.blocks(), 3);  // three sequences, one copy of the prefix
  EXPECT_EQ(kv.length(2), prefix);
  append(kv, 1, 4, 2, s);  // writes into the shared partial block: slot 1 gets its own copy
  EXPECT_EQ(kv.blocks(), 4);
  EXPECT_NE(kv.layout(1, 1).blocks[2], src.blocks[2]);
  EXPECT_EQ(kv.layout(1, 1).blocks[1], src.blocks[1]);  // full blocks stay shared
  EXPECT_EQ(std::memcmp(before.data(), src.blocks[2], before.size()), 0) << "source written";
  append(kv, 0, 1, 3, s);  // slot 0 still shares it with slot 2: copies too
  EXPECT_EQ(kv.blocks(), 5);
  kv.clear(0);
  kv.clear(1);
  EXPECT_EQ(kv.blocks(), 3);  // slot 2 holds the prefix alone now
  EXPECT_THROW(kv.share(2, 0, prefix + 1), Error);
}

TEST(KvCache, BlocksBeyondTheHostBudgetAreRefused) {
  HostTier host(2 << 20);
  // 512 KiB per f32 block, two blocks per chunk: the budget holds two chunks.
  const std::vector<KvLayerShape> big = {{8, 128}, {8, 128}};
  KvCache kv(host, big, 4096, 1, DType::kDTypeF32);
  kv.prepare(0, 3 * kKvBlockTokens);
  try {
    kv.prepare(0, 5 * kKvBlockTokens);
    FAIL() << "the budget did not hold";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
  }
  // The fourth block (free in the second chunk) was taken before the fifth failed; the slot
  // keeps it for its next tokens, and the cache stays usable.
  EXPECT_EQ(kv.blocks(), 4);
  EXPECT_LE(host.stats().peak, 2u << 20);
  kv.clear(0);
  EXPECT_EQ(host.stats().current, 0u);
}

TEST(KvCache, AttentionOverBlocksEqualsOneContiguousBlock) {
  for (DType dtype : {DType::kDTypeF32, DType::kDTypeF16, DType::kDTypeQ8_0}) {
    HostTier host(64 << 20);
    const int64_t len = 5 * kKvBlockTokens + 3;
    KvCache kv(host, kLayers, 1000, 2, dtype);
    AttentionShape s = shape_of(dtype, 1000);
    append(kv, 1, 11, 4, s);  // another sequence interleaves its blocks
    for (int64_t t = 0; t < len; t += 9) {
      append(kv, 0, std::min<int64_t>(9, len - t), static_cast<uint32_t>(t), s);
      append(kv, 1, 2, static_cast<uint32_t>(t + 1000), s);
    }
    // The same rows copied into one block of the whole capacity.
    const size_t row = kernel_kv_row_bytes(dtype, 64);
    const size_t half = 3 * 1000 * row;
    std::vector<uint8_t> flat(2 * half);
    void* flat_block = flat.data();
    const KvLayout contiguous{&flat_block, 1000, 0, half};
    const KvLayout paged = kv.layout(1, 0);
    for (int64_t t = 0; t < len; ++t)
      for (size_t h = 0; h < 3; ++h)
        for (size_t off : {size_t{0}, half}) {
          const size_t paged_off = off == 0 ? paged.k_offset : paged.v_offset;
          std::memcpy(flat.data() + off + (h * 1000 + t) * row,
                      static_cast<uint8_t*>(paged.blocks[t / kKvBlockTokens]) + paged_off +
                          (h * kKvBlockTokens + t % kKvBlockTokens) * row,
                      row);
        }
    for (size_t n_q : {size_t{1}, size_t{37}}) {
      s.n_q = n_q;
      s.kv_len = static_cast<size_t>(len);
      s.q_pos0 = s.kv_len - n_q;
      const std::vector<float> q = random_floats(n_q * 9 * 64, 5);
      std::vector<uint8_t> ws(kernel_attention_workspace(s));
      std::vector<float> a(q.size()), b(q.size());
      kernel_attention(q.data(), paged, a.data(), s, 0.125f, ws.data());
      kernel_attention(q.data(), contiguous, b.data(), s, 0.125f, ws.data());
      EXPECT_EQ(a, b) << dtype_name(dtype) << " n_q " << n_q;
    }
  }
}

// Eviction compacts: each kept token moves down by the drops before it and its key rotates
// back as far: a key stored rotated at position p reads as the same raw key rotated at its new
// position (kernel_rope), values move as they are, and blocks past the new end go back. Drops
// as the window policy makes them (one run after the sinks) and as the scored ones do
// (scattered, across block borders, the last token).
TEST(KvCache, EvictionCompactsTokensAndRotatesTheirKeys) {
  const size_t d = 64, heads = 3, width = heads * d;
  const int64_t len = 4 * kKvBlockTokens + 9;
  std::vector<float> inv_freq(d / 2);
  for (size_t i = 0; i < d / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / d);
  std::vector<int32_t> run(40);
  for (int32_t i = 0; i < 40; ++i) run[i] = 4 + i;
  const std::vector<int32_t> scattered = {0, 5, 6, 31, 32, 33, 63, 64, 100, len - 1};
  for (const std::vector<int32_t>& drops : {run, scattered})
    for (DType dtype : {DType::kDTypeF32, DType::kDTypeF16}) {
      HostTier host(64 << 20);
      KvCache kv(host, {{heads, d}}, 1000, 1, dtype);
      AttentionShape s = shape_of(dtype, 1000);
      const int64_t drop = static_cast<int64_t>(drops.size());
      const std::vector<float> raw = random_floats(len * width, 7),
                               v = random_floats(len * width, 8);
      std::vector<float> k = raw;
      std::vector<int32_t> pos(len);
      for (int64_t t = 0; t < len; ++t) pos[t] = static_cast<int32_t>(t);
      kernel_rope(k.data(), pos.data(), inv_freq.data(), len, heads, d);
      kv.prepare(0, len);
      kernel_kv_store(k.data(), v.data(), width, len, 0, kv.layout(0, 0), s);
      kv.advance(0, len);
      kv.evict(0, drops, inv_freq.data());
      EXPECT_EQ(kv.length(0), len - drop);
      EXPECT_EQ(kv.evicted(), drop);
      EXPECT_EQ(kv.blocks(), (len - drop + kKvBlockTokens - 1) / kKvBlockTokens);
      // Expected: kept token t at t' = t - (drops before t), key rope(raw, t').
      std::vector<float> expect_k(raw), expect_v(v);
      std::vector<bool> dropped(len, false);
      for (int32_t t : drops) dropped[t] = true;
      int32_t before = 0;
      for (int64_t t = 0; t < len; ++t) {
        pos[t] = static_cast<int32_t>(t) - before;
        before += dropped[t] ? 1 : 0;
      }
      kernel_rope(expect_k.data(), pos.data(), inv_freq.data(), len, heads, d);
      const size_t row = kernel_kv_row_bytes(dtype, d);
      const KvLayout l = kv.layout(0, 0);
      const float tol = dtype == DType::kDTypeF32 ? 1e-4f : 4e-3f;
      for (int64_t t = 0; t < len; ++t) {
        if (dropped[t]) continue;
        const int64_t at = pos[t];
        for (size_t h = 0; h < heads; ++h) {
          const auto* block = static_cast<const uint8_t*>(l.blocks[at / kKvBlockTokens]);
          const size_t r = (h * kKvBlockTokens + at % kKvBlockTokens) * row;
          for (size_t c = 0; c < d; ++c) {
            const size_t i = t * width + h * d + c;
            ASSERT_NEAR(kv_element(block + l.k_offset + r, dtype, c), expect_k[i], tol)
                << dtype_name(dtype) << " token " << t << " head " << h << " dim " << c;
            ASSERT_NEAR(kv_element(block + l.v_offset + r, dtype, c), expect_v[i], tol);
          }
        }
      }
    }
}

TEST(KvCache, EvictionRefusesDropsOutOfOrderOrRange) {
  HostTier host(64 << 20);
  KvCache kv(host, {{2, 64}}, 100, 1, DType::kDTypeF32);
  kv.prepare(0, 50);
  kv.advance(0, 50);
  std::vector<float> inv_freq(32, 1.0f);
  for (const std::vector<int32_t>& bad :
       std::vector<std::vector<int32_t>>{{}, {5, 5}, {7, 3}, {-1}, {50}}) {
    EXPECT_THROW(kv.evict(0, bad, inv_freq.data()), Error);
  }
  EXPECT_EQ(kv.length(0), 50);
}

}  // namespace
}  // namespace tierlm::detail
