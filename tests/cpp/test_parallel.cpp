// The compute pool: parallel_for covers [0, n) exactly once per call, back to back (workers
// spinning), after the workers went to sleep, and across pool resizes; a fresh pool's first
// region allocates nothing; chunks run concurrently; a decode matrix-vector split over any
// thread count gives the single-thread result bit for bit.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "count_allocations.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace tierlm {
namespace {

// Runs one parallel_for over n items and checks each was visited once.
void expect_covered(size_t n, size_t min_chunk = 1) {
  std::vector<std::atomic<int>> seen(n);
  for (auto& s : seen) s.store(0);
  parallel_for(
      n,
      [&](size_t begin, size_t end) {
        ASSERT_LE(begin, end);
        ASSERT_LE(end, n);
        for (size_t i = begin; i < end; ++i) seen[i].fetch_add(1);
      },
      min_chunk);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << "item " << i << " of " << n;
}

struct ThreadsGuard {
  size_t before = parallel_threads();
  ~ThreadsGuard() { parallel_set_threads(before); }
};

TEST(Parallel, CoversEveryItemOnceForAnyThreadCount) {
  ThreadsGuard guard;
  for (size_t threads : {1, 2, 3, 7}) {
    parallel_set_threads(threads);
    EXPECT_EQ(parallel_threads(), threads);
    for (size_t n : {1, 2, 3, 7, 64, 4097}) expect_covered(n);
    expect_covered(4097, 1000);  // min_chunk limits the chunk count
  }
}

TEST(Parallel, BackToBackRegionsAndAfterWorkersSleep) {
  ThreadsGuard guard;
  parallel_set_threads(3);
  for (int i = 0; i < 5000; ++i) expect_covered(static_cast<size_t>(2 + i % 5));
  // Longer than the spin: the workers sleep and must be woken.
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    expect_covered(6);
  }
}

TEST(Parallel, AFreshPoolsFirstRegionAllocatesNothing) {
  // A thread's start allocates on the new thread; the pool returns only once its workers run,
  // so a late-scheduled worker cannot allocate inside a caller's allocation-free region.
  for (int round = 0; round < 20; ++round) {
    parallel_set_threads(8);  // more workers than this machine's cores: some start late
    ASSERT_EQ(parallel_threads(), 8u);
    g_allocations = 0;
    g_counting = true;
    parallel_for(1024, [](size_t, size_t) {});
    g_counting = false;
    EXPECT_EQ(g_allocations.load(), 0) << "round " << round;
  }
  parallel_shutdown();
}

TEST(Parallel, ChunksRunConcurrently) {
  ThreadsGuard guard;
  parallel_set_threads(2);
  // The first chunk to start blocks until another chunk ran: the other thread must claim it
  // (a pool that ran the chunks one after another would hang here).
  std::atomic<int> started{0};
  std::atomic<int> done{0};
  parallel_for(2, [&](size_t, size_t) {
    if (started.fetch_add(1) == 0) {
      while (done.load() == 0) std::this_thread::yield();
    }
    done.fetch_add(1);
  });
  EXPECT_EQ(done.load(), 2);
}

TEST(Parallel, MatvecIsTheSameForAnyThreadCount) {
  ThreadsGuard guard;
  const size_t rows = 1031, cols = 509;  // several row blocks, odd tail
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  std::vector<float> x(cols), w(rows * cols), bias(rows);
  for (float& v : x) v = dist(rng);
  for (float& v : w) v = dist(rng);
  for (float& v : bias) v = dist(rng);
  parallel_set_threads(1);
  std::vector<float> ref(rows);
  kernel_linear(x.data(), w.data(), bias.data(), DType::kDTypeF32, ref.data(), 1, rows, cols);
  for (size_t threads : {2, 3, 5}) {
    parallel_set_threads(threads);
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<float> y(rows, -1.0f);
      kernel_linear(x.data(), w.data(), bias.data(), DType::kDTypeF32, y.data(), 1, rows, cols);
      ASSERT_EQ(y, ref) << threads << " threads";
    }
  }
}

}  // namespace
}  // namespace tierlm
