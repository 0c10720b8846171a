// A fixed pool of workers that run parallel_for chunks with the caller. Decode issues a
// parallel region every few microseconds, so waiting is a short spin before a condition-variable
// sleep: a worker that was just busy picks up the next region without a futex wake. Chunks are
// claimed, not assigned: the caller runs every chunk no worker has started, so a worker that
// wakes late (its core taken by another process) never holds the region up.
#include "tierlm/core/parallel.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/running_thread.hpp"
#include "tierlm/core/limits.hpp"

namespace tierlm {

namespace {

size_t default_threads() {
  if (const char* env = std::getenv("TIERLM_THREADS")) {
    const long value = std::strtol(env, nullptr, 10);
    if (value > 0) return static_cast<size_t>(value);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// How long a waiting thread spins before it sleeps: longer than the gap between two parallel
// regions of one decode step, short enough not to burn a shared core between tokens.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Spins until done() or kSpin has passed; true if done().
template <typename Done>
bool spin_until(Done done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= until) return done();
  }
}

class Pool {
 public:
  explicit Pool(size_t threads) : threads_(threads) {
    for (size_t i = 1; i < threads_; ++i)
      workers_.push_back(detail::start_running_thread([this] { work(); }));
  }

  ~Pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  size_t threads() const { return threads_; }

  void run(size_t n, size_t min_chunk, void* context, detail::RangeFn fn) {
    const size_t chunks = std::min(
        {threads_, size_t{0xffff}, std::max<size_t>(1, n / std::max<size_t>(1, min_chunk))});
    if (chunks <= 1) {
      fn(context, 0, n);
      return;
    }
    std::unique_lock run_lock(run_mutex_);  // one parallel region at a time
    context_ = context;
    fn_ = fn;
    n_ = n;
    finished_.store(0, std::memory_order_relaxed);
    // No lock on the hot path: a mutex the caller and a finishing worker both take once per
    // region turns into futex sleeps whenever they meet. Instead a thread about to sleep
    // announces it (sleepers_, caller_sleeping_) and re-checks under the mutex; the seq_cst
    // store / load pairs guarantee that the other side either sees the announcement, and wakes
    // it under the mutex, or the sleeper sees the new state and does not sleep.
    const uint64_t generation = (generation_of(state_.load(std::memory_order_relaxed)) + 1) &
                                ((uint64_t{1} << kGenerationBits) - 1);
    state_.store(generation << 48 | uint64_t{chunks} << 32);
    if (sleepers_.load() > 0) {
      std::lock_guard lock(mutex_);
      wake_.notify_all();
    }
    claim_chunks();
    auto all_done = [&] { return finished_.load() == chunks; };
    if (!spin_until(all_done)) {
      std::unique_lock lock(mutex_);
      caller_sleeping_.store(true);
      done_.wait(lock, all_done);
      caller_sleeping_.store(false);
    }
  }

 private:
  // state_: generation (16 bits; wrapping only costs a worker one region's help), the
  // region's chunk count (16 bits) and the next unclaimed chunk (32 bits).
  static constexpr int kGenerationBits = 16;
  static uint64_t generation_of(uint64_t state) { return state >> 48; }

  // Runs chunks of the current region until none is left unclaimed. A claim is a fetch_add on
  // state_; the region's fields are read only after a claim that succeeded, so they belong to
  // the claimed generation, which cannot end before this chunk is counted in finished_.
  void claim_chunks() {
    for (;;) {
      const uint64_t claimed = state_.fetch_add(1, std::memory_order_acq_rel);
      const size_t index = static_cast<uint32_t>(claimed);
      const size_t chunks = (claimed >> 32) & 0xffff;
      if (index >= chunks) return;
      const size_t begin = n_ * index / chunks;
      const size_t end = n_ * (index + 1) / chunks;
      fn_(context_, begin, end);
      if (finished_.fetch_add(1) + 1 == chunks && caller_sleeping_.load()) {
        std::lock_guard lock(mutex_);  // the caller may be checking its predicate
        done_.notify_one();
      }
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      auto fresh = [&] { return stopping_.load() || generation_of(state_.load()) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock lock(mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, fresh);
        sleepers_.fetch_sub(1);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = generation_of(state_.load(std::memory_order_acquire));
      // A claim that lands in a newer generation than `seen` is still a valid claim of it.
      claim_chunks();
    }
  }

  const size_t threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false};
  // The region: written by the caller before it publishes a generation in state_.
  void* context_ = nullptr;
  detail::RangeFn fn_ = nullptr;
  size_t n_ = 0;
  // Own cache lines: every thread hits them on every region.
  alignas(64) std::atomic<uint64_t> state_{0};
  alignas(64) std::atomic<size_t> finished_{0};
};

std::mutex g_pool_mutex;
std::unique_ptr<Pool> g_pool;
size_t g_requested_threads = 0;

Pool& pool() {
  std::lock_guard lock(g_pool_mutex);
  if (!g_pool)
    g_pool = std::make_unique<Pool>(g_requested_threads ? g_requested_threads : default_threads());
  return *g_pool;
}

}  // namespace

size_t parallel_threads() { return pool().threads(); }

void parallel_set_threads(size_t threads) {
  check_option("threads", threads);
  std::lock_guard lock(g_pool_mutex);
  g_requested_threads = threads;
  g_pool.reset();
}

void parallel_shutdown() {
  std::lock_guard lock(g_pool_mutex);
  g_pool.reset();
}

namespace detail {
void parallel_run(size_t n, size_t min_chunk, void* context, RangeFn fn) {
  if (n == 0) return;
  pool().run(n, min_chunk, context, fn);
}
}  // namespace detail

}  // namespace tierlm
