#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "tierlm/core/error.hpp"
#include "tierlm/planner/planner.hpp"

namespace tierlm {
namespace {

std::vector<PlanBuffer> random_buffers(size_t n, int64_t horizon, int64_t max_len,
                                       uint64_t max_size, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<PlanBuffer> buffers(n);
  for (auto& b : buffers) {
    b.first_op = static_cast<int64_t>(rng() % horizon);
    b.last_op = b.first_op + static_cast<int64_t>(rng() % max_len);
    b.size = 1 + rng() % max_size;
  }
  return buffers;
}

// Quadratic reference: every pair live at once must be disjoint.
bool valid_by_pairs(const std::vector<PlanBuffer>& b, const std::vector<uint64_t>& off) {
  for (size_t i = 0; i < b.size(); ++i) {
    for (size_t j = i + 1; j < b.size(); ++j) {
      bool in_time = b[i].first_op <= b[j].last_op && b[j].first_op <= b[i].last_op;
      bool in_mem = off[i] < off[j] + b[j].size && off[j] < off[i] + b[i].size;
      if (in_time && in_mem && b[i].size && b[j].size) return false;
    }
  }
  return true;
}

uint64_t lower_bound_by_steps(const std::vector<PlanBuffer>& b) {
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (auto& x : b) lo = std::min(lo, x.first_op), hi = std::max(hi, x.last_op);
  uint64_t best = 0;
  for (int64_t t = lo; t <= hi; ++t) {
    uint64_t live = 0;
    for (auto& x : b) live += (x.first_op <= t && t <= x.last_op) ? x.size : 0;
    best = std::max(best, live);
  }
  return best;
}

TEST(Planner, DisjointLifetimesShareOffsetZero) {
  std::vector<PlanBuffer> b = {{4096, 0, 1}, {4097, 2, 3}, {1, 4, 4}};
  Plan p = plan_greedy(b, 64);
  EXPECT_EQ(p.offsets, (std::vector<uint64_t>{0, 0, 0}));
  EXPECT_EQ(p.peak, 4097u);
  EXPECT_EQ(p.lower_bound, 4097u);
}

TEST(Planner, SameOpCountsAsOverlap) {
  // last_op is inclusive: a buffer ending at op 3 and one starting at op 3 are both live.
  std::vector<PlanBuffer> b = {{100, 0, 3}, {100, 3, 5}};
  Plan p = plan_greedy(b, 1);
  EXPECT_EQ(p.peak, 200u);
  EXPECT_EQ(plan_lower_bound(b), 200u);
  plan_check(b, p.offsets, 1);
}

TEST(Planner, BestFitReusesTheHole) {
  // A 4 KiB buffer freed at op 2 leaves a hole under a long-lived one; a 4095-byte buffer
  // born later must go into it rather than on top.
  std::vector<PlanBuffer> b = {{4096, 0, 2}, {8192, 0, 10}, {4095, 3, 10}};
  Plan p = plan_greedy(b, 1, PlanOrder::kPlanOrderTime);
  plan_check(b, p.offsets, 1);
  EXPECT_EQ(p.peak, 8192u + 4096u);
}

TEST(Planner, AlignmentHoldsPerBuffer) {
  std::vector<PlanBuffer> b = {{3, 0, 9, 0}, {5, 0, 9, 4096}, {7, 0, 9, 0}, {1, 0, 9, 13}};
  Plan p = plan_greedy(b, 64);
  plan_check(b, p.offsets, 64);
  EXPECT_EQ(p.offsets[1] % 4096, 0u);
  EXPECT_EQ(p.offsets[0] % 64, 0u);
  EXPECT_EQ(p.offsets[3] % 13, 0u);
}

TEST(Planner, RandomPlansAreValidAndAboveTheBound) {
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    auto b = random_buffers(1 + seed * 3, 37, 11, 4097, seed);
    for (PlanOrder order :
         {PlanOrder::kPlanOrderSize, PlanOrder::kPlanOrderTime, PlanOrder::kPlanOrderArea,
          PlanOrder::kPlanOrderLength, PlanOrder::kPlanOrderBest}) {
      Plan p = plan_greedy(b, 64, order);
      ASSERT_TRUE(valid_by_pairs(b, p.offsets)) << "seed " << seed;
      plan_check(b, p.offsets, 64);
      EXPECT_EQ(p.lower_bound, lower_bound_by_steps(b));
      EXPECT_GE(p.peak, p.lower_bound);
      EXPECT_EQ(p.peak, plan_peak(b, p.offsets));
    }
  }
}

TEST(Planner, BestIsTheSmallestOfAllOrders) {
  auto b = random_buffers(301, 101, 17, 65537, 7);
  uint64_t smallest = UINT64_MAX;
  for (PlanOrder order : {PlanOrder::kPlanOrderSize, PlanOrder::kPlanOrderTime,
                          PlanOrder::kPlanOrderArea, PlanOrder::kPlanOrderLength}) {
    Plan p = plan_greedy(b, 64, order);
    EXPECT_EQ(p.order, order);
    plan_check(b, p.offsets, 64);
    smallest = std::min(smallest, p.peak);
  }
  Plan best = plan_greedy(b, 64);
  EXPECT_EQ(best.peak, smallest);
  EXPECT_STREQ(plan_order_name(PlanOrder::kPlanOrderArea), "area");
}

TEST(Planner, HundredThousandBuffers) {
  // A valid plan at this scale; its speed (< 1 s) is measured by bench/bench_plan.py, not here.
  auto b = random_buffers(100000, 100000, 12, 1 << 24, 3);
  Plan p = plan_greedy(b, 64);
  plan_check(b, p.offsets, 64);
  EXPECT_GE(p.peak, p.lower_bound);
}

TEST(Planner, CheckNamesBothOverlappingBuffers) {
  std::vector<PlanBuffer> b = {{100, 0, 5}, {100, 6, 9}, {100, 4, 7}};
  std::vector<uint64_t> off = {0, 0, 64};
  try {
    plan_check(b, off, 64);
    FAIL() << "overlap accepted";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_EQ(e.code(), ErrorCode::kErrorInvalidArgument);
    EXPECT_NE(what.find("buffer 0"), std::string::npos) << what;
    EXPECT_NE(what.find("buffer 2"), std::string::npos) << what;
  }
  off = {0, 128, 100 + 28};  // buffer 2 [128, 228) vs buffer 1 [128, 228), live 6..7
  EXPECT_THROW(plan_check(b, off, 1), Error);
  off = {0, 0, 128};
  plan_check(b, off, 64);
}

TEST(Planner, CheckRejectsMisalignment) {
  std::vector<PlanBuffer> b = {{100, 0, 5}};
  std::vector<uint64_t> off = {4095};
  EXPECT_THROW(plan_check(b, off, 64), Error);
  plan_check(b, off, 1);
  std::vector<uint64_t> wrong_count = {0, 0};
  EXPECT_THROW(plan_check(b, wrong_count, 64), Error);
}

TEST(Planner, RejectsBadLifetime) {
  std::vector<PlanBuffer> b = {{100, 5, 4}};
  EXPECT_THROW(plan_greedy(b, 64), Error);
  EXPECT_THROW(plan_greedy({}, 0), Error);
  Plan empty = plan_greedy({}, 64);
  EXPECT_EQ(empty.peak, 0u);
}

}  // namespace
}  // namespace tierlm
