#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "memory/extent_allocator.hpp"

namespace tierlm::detail {
namespace {

TEST(ExtentAllocator, FillsExactlyAndRefusesOneMore) {
  ExtentAllocator a(4 * 4096, 4096);
  std::vector<uint64_t> offsets;
  for (int i = 0; i < 4; ++i) offsets.push_back(*a.allocate(4095 + (i % 2)));
  EXPECT_FALSE(a.allocate(1).has_value());
  EXPECT_EQ(offsets, (std::vector<uint64_t>{0, 4096, 8192, 12288}));
}

TEST(ExtentAllocator, FreedNeighboursCoalesce) {
  ExtentAllocator a(4 * 4096, 4096);
  uint64_t x = *a.allocate(4096), y = *a.allocate(4096), z = *a.allocate(4096);
  a.free(x, 4096);
  a.free(z, 4096);
  EXPECT_FALSE(a.allocate(3 * 4096).has_value());
  a.free(y, 4096);
  EXPECT_EQ(a.largest_free(), 4u * 4096);
  EXPECT_EQ(*a.allocate(4 * 4096), 0u);
}

TEST(ExtentAllocator, RandomSequencesNeverOverlap) {
  std::mt19937 rng(7);
  ExtentAllocator a(1 << 20, 256);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int step = 0; step < 5000; ++step) {
    if (!live.empty() && rng() % 2) {
      size_t i = rng() % live.size();
      a.free(live[i].first, live[i].second);
      live.erase(live.begin() + static_cast<long>(i));
      continue;
    }
    uint64_t size = 1 + rng() % 20000;
    if (auto offset = a.allocate(size)) {
      EXPECT_EQ(*offset % 256, 0u);
      EXPECT_LE(*offset + size, 1u << 20);
      for (auto& [o, s] : live) EXPECT_TRUE(*offset + size <= o || o + s <= *offset);
      live.emplace_back(*offset, size);
    }
  }
  for (auto& [o, s] : live) a.free(o, s);
  EXPECT_EQ(a.largest_free(), 1u << 20);
}

}  // namespace
}  // namespace tierlm::detail
