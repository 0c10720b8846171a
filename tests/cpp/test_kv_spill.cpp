// KV blocks on the disk tier: a cache that keeps a few blocks in host memory and spills the
// rest gives attention the same rows, bit for bit, as a cache holding everything, over awkward
// shapes (3 KV heads of 20, padded to pages; q8_0 rows), shared prefixes and cleared sequences;
// its host bytes stay within the plan and its disk bytes follow the spilled blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/kv_cache.hpp"
#include "random_floats.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {
namespace {

// 7 layers: two staging buffers of one layer each leave room for resident blocks.
const std::vector<KvLayerShape> kLayers(7, KvLayerShape{3, 20});
constexpr int64_t kCapacity = 20 * kKvBlockTokens + 9;

using testing::random_floats;

AttentionShape shape_of(DType dtype) {
  AttentionShape s{1, 6, 3, 20, 1, static_cast<size_t>(kCapacity), 0, dtype};
  return s;
}

// One executor step: n random tokens appended to slot, each layer's keys and values stored
// through the layout the step stages, as the executor does.
void append(KvCache& kv, int32_t slot, int64_t n, uint32_t seed, const AttentionShape& shape) {
  const size_t width = shape.n_kv_heads * shape.head_dim;
  const std::vector<float> k = random_floats(n * width, seed), v = random_floats(n * width, ~seed);
  kv.begin_step();
  kv.prepare(slot, kv.length(slot) + n);
  kv.stage({&slot, 1});
  for (size_t layer = 0; layer < kv.layers(); ++layer) {
    kv.fetch(layer);
    kernel_kv_store(k.data(), v.data(), width, n, kv.length(slot), kv.layout(layer, slot), shape);
    kv.release(layer);
  }
  kv.advance(slot, n);
}

// Every layer's attention of a random query over slot's tokens, concatenated.
std::vector<float> attend(KvCache& kv, int32_t slot, AttentionShape shape, uint32_t seed) {
  shape.kv_len = static_cast<size_t>(kv.length(slot));
  shape.q_pos0 = shape.kv_len - 1;
  const std::vector<float> q = random_floats(shape.n_heads * shape.head_dim, seed);
  std::vector<uint8_t> ws(kernel_attention_workspace(shape));
  std::vector<float> out;
  kv.begin_step();
  kv.prepare(slot, kv.length(slot));
  kv.stage({&slot, 1});
  for (size_t layer = 0; layer < kv.layers(); ++layer) {
    std::vector<float> o(q.size());
    kv.fetch(layer);
    kernel_attention(q.data(), kv.layout(layer, slot), o.data(), shape, 0.2f, ws.data());
    kv.release(layer);
    out.insert(out.end(), o.begin(), o.end());
  }
  return out;
}

std::string scratch_dir() {
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr ? tmp : "/tmp";
}

class KvSpillTest : public ::testing::TestWithParam<DType> {};

TEST_P(KvSpillTest, SpilledBlocksGiveAttentionTheSameRows) {
  const DType dtype = GetParam();
  const AttentionShape s = shape_of(dtype);
  const uint64_t full = KvCache::bytes_reserved(kLayers, kCapacity, 2, dtype);
  const KvSpillPlan plan = KvCache::spill_plan(kLayers, kCapacity, 2, dtype, full / 2, 2);
  ASSERT_TRUE(plan.on());
  ASSERT_LE(plan.host_bytes, full / 2);
  HostTier host_a(64 << 20), host_b(64 << 20);
  KvCache memory(host_a, kLayers, kCapacity, 2, dtype);
  KvCache spilled(host_b, kLayers, kCapacity, 2, dtype, 0, plan,
                  KvDiskOptions{.dir = scratch_dir(), .budget = plan.disk_bytes});
  EXPECT_EQ(spilled.bytes(), plan.host_bytes);
  uint32_t seed = 1;
  // Steps of at most what the resident blocks hold (the executor's prefill chunk).
  const int64_t most = (plan.resident_blocks - 1) * kKvBlockTokens;
  for (int64_t n : {1, 31, 1, 69, 2, 90, 33, 1, 64, 47}) {
    ASSERT_LE(n, most);
    append(memory, 0, n, seed, s);
    append(spilled, 0, n, seed, s);
    ++seed;
    EXPECT_EQ(attend(spilled, 0, s, seed), attend(memory, 0, s, seed)) << memory.length(0);
  }
  EXPECT_GT(spilled.spill()->counts().blocks_written, 0u);
  EXPECT_GT(spilled.spill()->disk_bytes(), 0u);
  EXPECT_LE(spilled.spill()->disk_stats().peak, plan.disk_bytes);
  EXPECT_EQ(host_b.stats().peak, plan.host_bytes);  // nothing beyond the plan, ever
  EXPECT_EQ(spilled.blocks(), memory.blocks());

  // Shared prefixes continued apart in each slot: one whose tail block is recent (in host
  // memory), one whose tail block went to disk long ago (read back whole before the write).
  for (int64_t prefix : {memory.length(0) - 11, 2 * kKvBlockTokens + 7}) {
    memory.share(0, 1, prefix);
    spilled.share(0, 1, prefix);
    append(memory, 1, 40, 77, s);
    append(spilled, 1, 40, 77, s);
    EXPECT_EQ(attend(spilled, 1, s, 5), attend(memory, 1, s, 5)) << prefix;
    EXPECT_EQ(attend(spilled, 0, s, 6), attend(memory, 0, s, 6)) << prefix;
    EXPECT_EQ(spilled.blocks(), memory.blocks());
  }
  spilled.clear_all();
  EXPECT_EQ(spilled.blocks(), 0);
  EXPECT_EQ(spilled.spill()->disk_bytes(), 0u);
}

// Eviction on a spilling cache runs the same compaction, its spilled blocks read into a staging
// buffer and written back in place a layer at a time: after drops as the window policy makes
// them (one run after the sinks) and as the scored ones do (scattered, across block borders, the
// last token), and after appending again, attention reads what it reads from memory, bit for
// bit, at 60% and half of the bytes; a slot sharing the prefix keeps its own rows; the
// host peak stays the plan's, the disk within it.
TEST_P(KvSpillTest, EvictionRewritesSpilledBlocksToWhatMemoryHolds) {
  const DType dtype = GetParam();
  const AttentionShape s = shape_of(dtype);
  std::vector<float> inv_freq(10);
  for (size_t i = 0; i < inv_freq.size(); ++i) inv_freq[i] = std::pow(10000.0f, -0.1f * i);
  const uint64_t full = KvCache::bytes_reserved(kLayers, kCapacity, 2, dtype);
  for (uint64_t share : {full * 3 / 5, full / 2}) {
    const KvSpillPlan plan = KvCache::spill_plan(kLayers, kCapacity, 2, dtype, share, 2);
    ASSERT_TRUE(plan.on());
    HostTier host_a(64 << 20), host_b(64 << 20);
    KvCache memory(host_a, kLayers, kCapacity, 2, dtype);
    KvCache spilled(host_b, kLayers, kCapacity, 2, dtype, 0, plan,
                    KvDiskOptions{.dir = scratch_dir(), .budget = plan.disk_bytes});
    const int64_t most = (plan.resident_blocks - 1) * kKvBlockTokens;
    uint32_t seed = 21;
    auto fill = [&](int64_t upto) {
      while (memory.length(0) < upto) {
        const int64_t n = std::min<int64_t>({most, upto - memory.length(0), 1 + seed % 45});
        append(memory, 0, n, seed, s);
        append(spilled, 0, n, seed, s);
        ++seed;
      }
    };
    const int64_t len = 15 * kKvBlockTokens - 10;  // with the shared copies, within the plan
    fill(len);
    memory.share(0, 1, 3 * kKvBlockTokens + 5);
    spilled.share(0, 1, 3 * kKvBlockTokens + 5);
    std::vector<int32_t> run(40);
    for (int32_t i = 0; i < 40; ++i) run[i] = 4 + i;
    const std::vector<int32_t> scattered = {0,  5,   6,   31,  32,  33,  63,
                                            64, 100, 200, 201, 333, 400, len - 41};
    for (const std::vector<int32_t>& drops : {run, scattered}) {
      ASSERT_GT(spilled.spill()->disk_bytes(), 0u);
      const uint64_t written = spilled.spill()->counts().bytes_written;
      memory.begin_step();
      spilled.begin_step();
      memory.evict(0, drops, inv_freq.data());
      spilled.evict(0, drops, inv_freq.data());
      EXPECT_GT(spilled.spill()->counts().bytes_written, written);  // rewritten in place
      ASSERT_EQ(spilled.length(0), memory.length(0));
      EXPECT_EQ(spilled.evicted(), memory.evicted());
      EXPECT_EQ(spilled.blocks(), memory.blocks());
      EXPECT_EQ(attend(spilled, 0, s, seed), attend(memory, 0, s, seed)) << share;
      EXPECT_EQ(attend(spilled, 1, s, seed), attend(memory, 1, s, seed)) << share;
      fill(len);
      EXPECT_EQ(attend(spilled, 0, s, ~seed), attend(memory, 0, s, ~seed)) << share;
    }
    EXPECT_EQ(host_b.stats().peak, plan.host_bytes);
    EXPECT_LE(spilled.spill()->disk_stats().peak, plan.disk_bytes);
    spilled.clear_all();
    EXPECT_EQ(spilled.spill()->disk_bytes(), 0u);
  }
}

// Budgets from the least that works to nearly the whole cache: the read-ahead goes from two
// layers to every layer, its staging within the plan's rules, and each depth gives attention the
// same rows as memory (the ring of buffers wrapping around a layer count it does not divide).
TEST(KvSpill, ReadsAheadAsManyLayersAsTheBudgetAffords) {
  const DType dtype = DType::kDTypeF16;
  const AttentionShape s = shape_of(dtype);
  const uint64_t full = KvCache::bytes_reserved(kLayers, kCapacity, 1, dtype);
  std::vector<KvSpillPlan> depths;  // the first plan of each depth, by growing budget
  for (uint64_t budget = full / 8; budget < full; budget += 4096) {
    KvSpillPlan plan;
    try {
      plan = KvCache::spill_plan(kLayers, kCapacity, 1, dtype, budget, 2);
    } catch (const Error&) {
      continue;  // below the least that works
    }
    ASSERT_TRUE(plan.on());
    EXPECT_LE(plan.host_bytes, budget);
    EXPECT_GE(plan.staging_layers, 2);
    EXPECT_LE(plan.staging_layers, static_cast<int64_t>(kLayers.size()));
    if (plan.staging_layers > 2) {
      EXPECT_LE(static_cast<uint64_t>(plan.staging_layers) * plan.staging_bytes, budget / 2);
    }
    if (depths.empty() || plan.staging_layers != depths.back().staging_layers) {
      if (!depths.empty()) EXPECT_GT(plan.staging_layers, depths.back().staging_layers);
      depths.push_back(plan);
    }
  }
  ASSERT_GE(depths.size(), 3u);
  EXPECT_EQ(depths.front().staging_layers, 2);
  EXPECT_EQ(depths.back().staging_layers, static_cast<int64_t>(kLayers.size()));
  for (const KvSpillPlan& plan : depths) {
    HostTier host_a(64 << 20), host_b(64 << 20);
    KvCache memory(host_a, kLayers, kCapacity, 1, dtype);
    KvCache spilled(host_b, kLayers, kCapacity, 1, dtype, 0, plan,
                    KvDiskOptions{.dir = scratch_dir(), .budget = plan.disk_bytes});
    ASSERT_EQ(spilled.spill()->staging_layers(), static_cast<size_t>(plan.staging_layers));
    const int64_t most = (plan.resident_blocks - 1) * kKvBlockTokens;
    uint32_t seed = 11;
    for (int64_t left = kCapacity - 1; left > 0; ++seed) {
      const int64_t n = std::min<int64_t>({left, most, 1 + seed % 53});
      append(memory, 0, n, seed, s);
      append(spilled, 0, n, seed, s);
      left -= n;
    }
    EXPECT_EQ(attend(spilled, 0, s, 3), attend(memory, 0, s, 3)) << plan.staging_layers;
    // The last step read this one's first staging_layers layers ahead (the same spilled
    // blocks): staging reads nothing more, and the step reads its other layers and then the
    // next step's first ones (equal layers: equal slices).
    int32_t slot = 0;
    const uint64_t before = spilled.spill()->counts().bytes_read;
    spilled.begin_step();
    spilled.prepare(slot, spilled.length(slot));
    spilled.stage({&slot, 1});
    EXPECT_EQ(spilled.spill()->counts().bytes_read, before);
    for (size_t layer = 0; layer < kLayers.size(); ++layer) {
      spilled.fetch(layer);
      spilled.release(layer);
    }
    EXPECT_EQ(spilled.spill()->counts().bytes_read - before, spilled.spill()->disk_bytes());
    EXPECT_GT(spilled.spill()->counts().blocks_written, 0u);
    EXPECT_EQ(host_b.stats().peak, plan.host_bytes) << plan.staging_layers;
  }
}

// The read-ahead at the KvSpill level, with blocks of 3 one-page layers whose every byte says
// which block and layer it is: a step reads the next step's first layers ahead; the next step
// uses them where its spilled blocks begin with the last step's (adding the new ones), and never
// where they differ or where a disk slot they read was freed and written again in between.
class KvSpillReadAhead : public ::testing::Test {
 protected:
  static constexpr size_t kSliceLayers = 3;
  static constexpr uint64_t kPage = 4096;

  KvSpillReadAhead()
      : host_(1 << 20),
        spill_(plan(), std::vector<uint64_t>(kSliceLayers, kPage), {0, kPage, 2 * kPage},
               {kPage / 2, kPage + kPage / 2, 2 * kPage + kPage / 2}, host_,
               KvDiskOptions{.dir = scratch_dir()}, 2, 4) {}

  static KvSpillPlan plan() {
    KvSpillPlan p;
    p.disk_blocks = 4;
    p.staging_layers = 2;
    p.staging_bytes = 4 * kPage;
    p.host_bytes = 2 * p.staging_bytes;
    p.disk_bytes = 4 * kSliceLayers * kPage;
    return p;
  }

  // Writes a block whose layer l bytes are all `mark * 16 + l`; returns its table entry.
  int32_t write(uint8_t mark) {
    std::vector<uint8_t> block(kSliceLayers * kPage);
    for (size_t l = 0; l < kSliceLayers; ++l)
      std::memset(block.data() + l * kPage, mark * 16 + static_cast<int>(l), kPage);
    HostBuffer aligned = host_.allocate(block.size());
    std::memcpy(aligned.data(), block.data(), block.size());
    return -1 - spill_.write(aligned.data(), 1);
  }

  // One step over tables (one per slot): each layer's staged blocks must hold the marks given.
  void step(const std::vector<std::vector<int32_t>>& tables,
            const std::vector<std::vector<uint8_t>>& marks) {
    tables_ = tables;
    const std::vector<int32_t> slots =
        tables.size() == 1 ? std::vector<int32_t>{0} : std::vector<int32_t>{0, 1};
    spill_.stage(slots, tables_, {});
    for (size_t l = 0; l < kSliceLayers; ++l) {
      spill_.fetch(l);
      for (int32_t slot : slots) {
        const KvLayout layout = spill_.layout(l, slot);
        for (size_t b = 0; b < marks[slot].size(); ++b) {
          const auto* bytes = static_cast<const uint8_t*>(layout.blocks[b]);
          EXPECT_EQ(bytes[0], marks[slot][b] * 16 + l) << "layer " << l << ", block " << b;
          EXPECT_EQ(bytes[kPage - 1], marks[slot][b] * 16 + l) << "layer " << l << ", block " << b;
        }
      }
      spill_.release(l);
    }
  }

  uint64_t read() const { return spill_.counts().bytes_read; }

  HostTier host_;
  KvSpill spill_;
  std::vector<std::vector<int32_t>> tables_;
};

TEST_F(KvSpillReadAhead, TheNextStepUsesWhatHoldsAndReadsTheRest) {
  const int32_t a = write(1);
  step({{a}}, {{1}});  // reads 3 layers, then the next step's first 2 ahead
  EXPECT_EQ(read(), 5 * kPage);
  const int32_t b = write(2);  // spilled between the steps, after a on disk
  // b's slices of the 2 layers read ahead, layer 2's a and b, the next step's 2 layers ahead
  step({{a, b}}, {{1, 2}});
  EXPECT_EQ(read(), 5 * kPage + 2 * kPage + 2 * kPage + 2 * 2 * kPage);
  step({{b}}, {{2}});  // not an extension of {a, b}: what was read ahead is read again
  step({{a, b}}, {{1, 2}});
}

TEST_F(KvSpillReadAhead, ASlotFreedAndWrittenAgainIsReadAgain) {
  const int32_t a = write(1);
  step({{a}}, {{1}});
  ASSERT_TRUE(spill_.unref(-1 - a));
  const int32_t c = write(3);  // the freed slot, new contents
  ASSERT_EQ(c, a);
  step({{c}}, {{3}});
}

TEST_F(KvSpillReadAhead, ABlockSharedBySequencesIsReadOncePerStep) {
  const int32_t a = write(1), b = write(2), c = write(3);
  step({{a, b}, {a, c}}, {{1, 2}, {1, 3}});
  EXPECT_EQ(read(), 3 * 3 * kPage + 2 * 3 * kPage);  // 3 blocks of 3 layers, 2 layers ahead
  spill_.ref(-1 - a);  // a second reference: freeing one keeps what was read ahead
  EXPECT_FALSE(spill_.unref(-1 - a));
  step({{a, b}, {a, c}}, {{1, 2}, {1, 3}});
  EXPECT_EQ(read(), 2 * (3 * 3 * kPage + 2 * 3 * kPage) - 2 * 3 * kPage);
}

// One layer and two buffers: the free buffer reads the next step's layer only once this step's
// is done.
TEST(KvSpill, OneLayerReadsTheNextStepAheadOnceItsOwnIsDone) {
  KvSpillPlan plan;
  plan.disk_blocks = 1;
  plan.staging_layers = 2;
  plan.staging_bytes = 4096;
  plan.disk_bytes = 4096;
  HostTier host(1 << 20);
  KvSpill spill(plan, {4096}, {0}, {2048}, host, KvDiskOptions{.dir = scratch_dir()}, 1, 1);
  HostBuffer block = host.allocate(4096);
  std::memset(block.data(), 7, 4096);
  const std::vector<std::vector<int32_t>> tables = {{-1 - spill.write(block.data(), 1)}};
  const int32_t slot = 0;
  for (int step = 0; step < 3; ++step) {
    spill.stage({&slot, 1}, tables, {});
    spill.fetch(0);
    EXPECT_EQ(static_cast<const uint8_t*>(spill.layout(0, 0).blocks[0])[4095], 7);
    spill.release(0);
    EXPECT_EQ(spill.counts().bytes_read, 4096u * (step + 2));  // the step's, then the next's
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, KvSpillTest,
                         ::testing::Values(DType::kDTypeF16, DType::kDTypeQ8_0, DType::kDTypeF32));

TEST(KvSpill, TooSmallBudgetsAreRefusedNamingThem) {
  const uint64_t full = KvCache::bytes_reserved(kLayers, kCapacity, 1, DType::kDTypeF16);
  EXPECT_FALSE(KvCache::spill_plan(kLayers, kCapacity, 1, DType::kDTypeF16, full, 2).on());
  EXPECT_FALSE(KvCache::spill_plan(kLayers, kCapacity, 1, DType::kDTypeF16, 0, 2).on());
  try {
    KvCache::spill_plan(kLayers, kCapacity, 1, DType::kDTypeF16, 4096, 2);
    FAIL() << "a 4 KiB share was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
    EXPECT_NE(std::string(e.what()).find("kv_host_budget 4.0 KiB cannot hold"), std::string::npos)
        << e.what();
  }
  const KvSpillPlan plan =
      KvCache::spill_plan(kLayers, kCapacity, 1, DType::kDTypeF16, full / 2, 2);
  HostTier host(64 << 20);
  try {
    KvCache kv(host, kLayers, kCapacity, 1, DType::kDTypeF16, 0, plan,
               KvDiskOptions{.dir = scratch_dir(), .budget = plan.disk_bytes - 1});
    FAIL() << "a disk budget below the spill was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
    EXPECT_NE(std::string(e.what()).find("more than the disk budget"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(host.stats().current, 0u);  // what the failed load took went back
}

}  // namespace
}  // namespace tierlm::detail
