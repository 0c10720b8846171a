// parallel_for_dynamic: every index visited exactly once, ranges aligned to the chunk, on
// pools of 1 to 3 threads (the pool is shared with parallel_for, so both are interleaved).
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <vector>

#include "tierlm/parallel.hpp"

namespace tierlm {
namespace {

TEST(ParallelForDynamic, CoversEachIndexOnceInAlignedRanges) {
  for (size_t threads : {1, 2, 3}) {
    parallel_set_threads(threads);
    for (size_t n : {size_t{1}, size_t{7}, size_t{4095}, size_t{4097}, size_t{100003}}) {
      for (size_t chunk : {size_t{1}, size_t{64}, size_t{4096}, size_t{1} << 20}) {
        auto hits = std::make_unique<std::atomic<int>[]>(n);
        std::atomic<bool> misaligned{false};
        parallel_for_dynamic(n, chunk, [&](size_t begin, size_t end) {
          const bool whole = begin == 0 && end == n && (threads == 1 || n <= chunk);
          if (!whole &&
              (begin % chunk != 0 || end - begin > chunk || (end - begin < chunk && end != n)))
            misaligned = true;
          for (size_t i = begin; i < end; ++i) hits[i].fetch_add(1, std::memory_order_relaxed);
        });
        ASSERT_FALSE(misaligned) << "threads " << threads << " n " << n << " chunk " << chunk;
        for (size_t i = 0; i < n; ++i)
          ASSERT_EQ(hits[i].load(), 1) << "threads " << threads << " n " << n << " i " << i;
        // The static split still works on the same pool right after.
        std::atomic<size_t> sum{0};
        parallel_for(n, [&](size_t begin, size_t end) { sum += end - begin; });
        ASSERT_EQ(sum.load(), n);
      }
    }
  }
  parallel_set_threads(0);
}

TEST(ParallelForDynamic, ZeroItemsCallsNothing) {
  parallel_set_threads(2);
  bool called = false;
  parallel_for_dynamic(0, 64, [&](size_t, size_t) { called = true; });
  EXPECT_FALSE(called);
  parallel_set_threads(0);
}

}  // namespace
}  // namespace tierlm
