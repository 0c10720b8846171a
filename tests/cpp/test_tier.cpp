#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "tier_budget.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm {
namespace {

TEST(HostTier, BudgetExactlyReachedThenExceededByOneByte) {
  HostTier tier(3 * 4096);
  testing::expect_budget_reached_then_refused(tier, "host tier");
}

TEST(HostTier, OneByteOverBudgetFails) {
  HostTier tier(8192);
  EXPECT_THROW(tier.allocate(8193), Error);
  EXPECT_EQ(tier.stats().current, 0u);
  HostBuffer ok = tier.allocate(8192);
  EXPECT_TRUE(ok);
}

TEST(HostTier, StatsTrackPeakAndRelease) {
  HostTier tier(1 << 20);
  {
    HostBuffer a = tier.allocate(4097);  // rounds to two pages
    EXPECT_EQ(a.size(), 4097u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 4096, 0u);
    std::memset(a.data(), 1, a.size());
    EXPECT_EQ(tier.stats().current, 8192u);
  }
  TierStats s = tier.stats();
  EXPECT_EQ(s.current, 0u);
  EXPECT_EQ(s.peak, 8192u);
  EXPECT_EQ(s.allocations, 1u);
  EXPECT_EQ(s.locked, 0u);
}

TEST(HostTier, MoveTransfersOwnership) {
  HostTier tier(1 << 20);
  HostBuffer a = tier.allocate(100);
  void* data = a.data();
  HostBuffer b = std::move(a);
  EXPECT_FALSE(a);
  EXPECT_EQ(b.data(), data);
  b = HostBuffer();
  EXPECT_EQ(tier.stats().current, 0u);
}

TEST(HostTier, ConcurrentAllocationsNeverOvershoot) {
  HostTier tier(64 * 4096);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        try {
          HostBuffer b = tier.allocate(4096 * (1 + i % 5));
        } catch (const Error&) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(tier.stats().peak, 64u * 4096);
  EXPECT_EQ(tier.stats().current, 0u);
}

}  // namespace
}  // namespace tierlm
