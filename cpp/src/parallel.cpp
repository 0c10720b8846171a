// A fixed pool of workers woken per parallel_for; the caller works too and waits for the rest.
#include "tierlm/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tierlm {

namespace {

size_t default_threads() {
  if (const char* env = std::getenv("TIERLM_THREADS")) {
    const long value = std::strtol(env, nullptr, 10);
    if (value > 0) return static_cast<size_t>(value);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

class Pool {
 public:
  explicit Pool(size_t threads) : threads_(threads) {
    for (size_t i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { work(i); });
  }

  ~Pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  size_t threads() const { return threads_; }

  void run(size_t n, size_t min_chunk, void* context, detail::RangeFn fn) {
    const size_t chunks =
        std::min(threads_, std::max<size_t>(1, n / std::max<size_t>(1, min_chunk)));
    if (chunks <= 1) {
      fn(context, 0, n);
      return;
    }
    std::unique_lock run_lock(run_mutex_);  // one parallel region at a time
    {
      std::lock_guard lock(mutex_);
      context_ = context;
      fn_ = fn;
      n_ = n;
      chunks_ = chunks;
      dynamic_ = false;
      pending_ = chunks - 1;
      ++generation_;
    }
    wake_.notify_all();
    run_chunk(0);
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

  void run_dynamic(size_t n, size_t chunk, void* context, detail::RangeFn fn) {
    chunk = std::max<size_t>(1, chunk);
    const size_t chunks = (n + chunk - 1) / chunk;
    if (threads_ <= 1 || chunks <= 1) {
      fn(context, 0, n);
      return;
    }
    std::unique_lock run_lock(run_mutex_);
    {
      std::lock_guard lock(mutex_);
      context_ = context;
      fn_ = fn;
      n_ = n;
      chunk_ = chunk;
      chunks_ = chunks;
      dynamic_ = true;
      open_ = true;
      active_ = 0;
      next_.store(0, std::memory_order_relaxed);
      ++generation_;
    }
    wake_.notify_all();
    claim_chunks();
    // Workers that have not joined by now stay out; wait only for those claiming chunks.
    std::unique_lock lock(mutex_);
    open_ = false;
    done_.wait(lock, [this] { return active_ == 0; });
  }

 private:
  void run_chunk(size_t index) {
    const size_t begin = n_ * index / chunks_;
    const size_t end = n_ * (index + 1) / chunks_;
    if (begin < end) fn_(context_, begin, end);
  }

  void claim_chunks() {
    for (;;) {
      const size_t c = next_.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks_) return;
      fn_(context_, c * chunk_, std::min(n_, (c + 1) * chunk_));
    }
  }

  void work(size_t index) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      if (dynamic_) {
        if (!open_) continue;
        ++active_;
        lock.unlock();
        claim_chunks();
        lock.lock();
        if (--active_ == 0) done_.notify_one();
        continue;
      }
      if (index >= chunks_) continue;
      lock.unlock();
      run_chunk(index);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const size_t threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  bool stopping_ = false;
  uint64_t generation_ = 0;
  void* context_ = nullptr;
  detail::RangeFn fn_ = nullptr;
  size_t n_ = 0;
  size_t chunks_ = 0;
  size_t pending_ = 0;
  // parallel_for_dynamic: chunk size, whether workers may still join, how many are claiming.
  bool dynamic_ = false;
  bool open_ = false;
  size_t chunk_ = 0;
  size_t active_ = 0;
  std::atomic<size_t> next_{0};
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

void parallel_run_dynamic(size_t n, size_t chunk, void* context, RangeFn fn) {
  if (n == 0) return;
  pool().run_dynamic(n, chunk, context, fn);
}
}  // namespace detail

}  // namespace tierlm
