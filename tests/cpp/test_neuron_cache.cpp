#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "tierlm/core/error.hpp"
#include "tierlm/sparse/neuron_cache.hpp"

namespace tierlm {
namespace {

// Row of neuron n: every element encodes (n, position) so a stale or moved row is visible.
std::vector<float> row_of(int32_t n, size_t elems) {
  std::vector<float> r(elems);
  for (size_t i = 0; i < elems; ++i) r[i] = static_cast<float>(n) * 1000.0f + static_cast<float>(i);
  return r;
}

void expect_consistent(const NeuronCache& c, const std::set<int32_t>& ref) {
  ASSERT_EQ(c.size(), ref.size());
  std::set<int32_t> seen;
  for (size_t s = 0; s < c.size(); ++s) {
    const int32_t n = c.neuron_at(s);
    EXPECT_TRUE(ref.count(n)) << "slot " << s << " holds evicted neuron " << n;
    EXPECT_EQ(c.slot_of(n), static_cast<int32_t>(s));
    const float* row = static_cast<const float*>(c.row(s));
    const std::vector<float> want = row_of(n, c.row_elems());
    EXPECT_EQ(0, std::memcmp(row, want.data(), c.row_bytes())) << "stale row in slot " << s;
    seen.insert(n);
  }
  EXPECT_EQ(seen, ref);
  for (size_t n = 0; n < c.n_neurons(); ++n) {
    EXPECT_EQ(c.contains(static_cast<int32_t>(n)), ref.count(static_cast<int32_t>(n)) == 1);
  }
}

TEST(NeuronCache, RandomInsertEraseMatchesReferenceSet) {
  HostTier tier(1 << 20);
  const size_t n_neurons = 257, capacity = 61, elems = 13;
  NeuronCache cache(tier, n_neurons, capacity, elems);
  std::mt19937 rng(7);
  std::set<int32_t> ref;
  for (int round = 0; round < 300; ++round) {
    if (rng() % 2 == 0 && ref.size() < capacity) {
      std::vector<int32_t> add;
      std::vector<float> rows;
      const size_t want = 1 + rng() % std::min<size_t>(7, capacity - ref.size());
      while (add.size() < want) {
        const int32_t n = static_cast<int32_t>(rng() % n_neurons);
        if (ref.count(n) || std::count(add.begin(), add.end(), n)) continue;
        add.push_back(n);
        std::vector<float> r = row_of(n, elems);
        rows.insert(rows.end(), r.begin(), r.end());
      }
      cache.insert(add.data(), add.size(), rows.data());
      ref.insert(add.begin(), add.end());
    } else if (!ref.empty()) {
      std::vector<int32_t> all(ref.begin(), ref.end());
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(1 + rng() % all.size());
      cache.erase(all.data(), all.size());
      for (int32_t n : all) ref.erase(n);
    }
    expect_consistent(cache, ref);
  }
}

TEST(NeuronCache, ChargesTheBudgetAndRefusesPastIt) {
  HostTier tier(3 * 4096);
  // 100 rows of 20 f32 = 8000 bytes (2 pages) + maps (1 page) = exactly the budget.
  NeuronCache cache(tier, 100, 100, 20);
  EXPECT_EQ(tier.stats().current, 3u * 4096);
  EXPECT_EQ(cache.reserved_bytes(), 8000u + 200u * 4u);
  try {
    NeuronCache more(tier, 10, 1, 1);
    FAIL() << "a second cache fit in an exhausted budget";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
    EXPECT_NE(std::string(e.what()).find("host tier"), std::string::npos) << e.what();
  }
}

TEST(NeuronCache, CapacityAndBadIdsFailWithoutChangingTheCache) {
  HostTier tier(1 << 20);
  NeuronCache cache(tier, 10, 3, 2, DType::kDTypeF16);
  EXPECT_EQ(cache.row_bytes(), 4u);
  const int32_t ids[] = {4, 5, 6, 7};
  const uint16_t rows[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  try {
    cache.insert(ids, 4, rows);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
    EXPECT_NE(std::string(e.what()).find("capacity of 3"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.size(), 0u);
  const int32_t dup[] = {1, 1};
  EXPECT_THROW(cache.insert(dup, 2, rows), Error);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_FALSE(cache.contains(1));
  const int32_t bad[] = {2, 10};
  EXPECT_THROW(cache.insert(bad, 2, rows), Error);
  EXPECT_FALSE(cache.contains(2));
  cache.insert(ids, 3, rows);
  EXPECT_THROW(cache.insert(ids, 1, rows), Error);  // already cached
  const int32_t missing[] = {4, 9};
  EXPECT_THROW(cache.erase(missing, 2), Error);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_TRUE(cache.contains(4));
  const int32_t twice[] = {5, 5};
  EXPECT_THROW(cache.erase(twice, 2), Error);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.slot_of(5), 1);
  const int32_t first[] = {4};
  cache.erase(first, 1);  // the last row (neuron 6) moves into slot 0
  EXPECT_EQ(cache.neuron_at(0), 6);
  EXPECT_EQ(static_cast<const uint16_t*>(cache.row(0))[0], 5);
  EXPECT_THROW(NeuronCache(tier, 10, 11, 2), Error);
  EXPECT_THROW(NeuronCache(tier, 10, 0, 2), Error);
}

TEST(NeuronWindow, KeepsTheUnionOfTheLastKTokens) {
  for (size_t k : {1u, 2u, 4u, 5u}) {
    const size_t n = 97;
    NeuronWindow window(n, k);
    std::mt19937 rng(static_cast<unsigned>(k));
    std::vector<std::vector<int32_t>> history;
    std::set<int32_t> held;
    std::vector<int32_t> load(n), evict(n);
    for (int t = 0; t < 60; ++t) {
      std::vector<int32_t> active;
      for (size_t i = 0; i < 12; ++i) active.push_back(static_cast<int32_t>(rng() % n));
      history.push_back(active);
      NeuronWindow::Step s = window.step(active.data(), active.size(), load.data(), evict.data());
      for (size_t i = 0; i < s.n_evict; ++i) EXPECT_EQ(held.erase(evict[i]), 1u);
      for (size_t i = 0; i < s.n_load; ++i) EXPECT_TRUE(held.insert(load[i]).second);
      std::set<int32_t> want;
      for (size_t back = 0; back < k && back < history.size(); ++back) {
        const auto& h = history[history.size() - 1 - back];
        want.insert(h.begin(), h.end());
      }
      EXPECT_EQ(held, want) << "k " << k << " token " << t;
      EXPECT_EQ(window.size(), want.size());
      for (int32_t a : active) EXPECT_TRUE(window.contains(a));
    }
  }
}

}  // namespace
}  // namespace tierlm
