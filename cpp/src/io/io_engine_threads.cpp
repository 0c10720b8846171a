// Thread-pool back end: workers loop pread/pwrite over a shared queue. Workers start on
// demand up to the pool size and drain the queue before the engine is destroyed, so every
// future completes. Synchronous requests, and requests waited for before a worker took them,
// run on the caller's thread (no hand-off).
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "core/running_thread.hpp"
#include "io/io_engine.hpp"

namespace tierlm::detail {

namespace {

// The queue, shared with the futures: a waiter whose request no worker has started yet takes
// it back and runs it itself, which saves two thread hand-offs on that request.
class ThreadsCore final : public IoDriver {
 public:
  ThreadsCore(const IoFd& file, unsigned max_threads) : file_(file), max_threads_(max_threads) {}

  ~ThreadsCore() override { stop(); }

  void submit(std::span<IoOp> ops, const std::shared_ptr<ThreadsCore>& self) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (IoOp& op : ops) {
        op.state->driver = self;
        queue_.push_back(std::move(op));
      }
      // Start workers for the requests no idle worker will pick up.
      const size_t uncovered = queue_.size() > idle_ ? queue_.size() - idle_ : 0;
      const size_t want = std::min<size_t>(max_threads_, threads_.size() + uncovered);
      while (threads_.size() < want) threads_.push_back(start_running_thread([this] { work(); }));
    }
    if (ops.size() == 1) {
      work_cv_.notify_one();
    } else {
      work_cv_.notify_all();
    }
  }

  void wait(IoState& state, bool /*more*/) override {
    std::unique_lock<std::mutex> lock(mutex_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->state.get() != &state) continue;
      IoOp op = std::move(*it);
      queue_.erase(it);
      ++inline_;
      lock.unlock();
      io_op_run_blocking(file_, op);
      lock.lock();
      if (--inline_ == 0 && stop_) inline_cv_.notify_all();
      return;
    }
    lock.unlock();
    std::unique_lock<std::mutex> state_lock(state.mutex);
    state.cv.wait(state_lock, [&] { return state.done.load(std::memory_order_acquire); });
  }

  void poll() override {}

  // Workers finish the queue, then exit.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
    std::unique_lock<std::mutex> lock(mutex_);
    // Requests that waiters took back still use the descriptors: let them finish.
    inline_cv_.wait(lock, [this] { return inline_ == 0; });
  }

 private:
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (queue_.empty()) {
        if (stop_) return;
        ++idle_;
        work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        --idle_;
        continue;
      }
      IoOp op = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      io_op_run_blocking(file_, op);
      lock.lock();
    }
  }

  const IoFd& file_;
  const unsigned max_threads_;
  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable inline_cv_;
  std::deque<IoOp> queue_;
  size_t inline_ = 0;  // requests running on waiters' threads
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

class ThreadsEngine final : public IoEngine {
 public:
  ThreadsEngine(IoFd file, const IoOptions& options)
      : IoEngine(std::move(file)),
        depth_(options.queue_depth),
        core_(std::make_shared<ThreadsCore>(
            file_, options.threads != 0 ? options.threads : options.queue_depth)) {}

  // Requests taken back by waiters finish on their threads; the workers finish the rest.
  ~ThreadsEngine() override { core_->stop(); }

  void submit(std::span<IoOp> ops) override { core_->submit(ops, core_); }
  void run(IoOp& op) override { io_op_run_blocking(file_, op); }
  IoBackend backend() const override { return IoBackend::kIoBackendThreads; }
  unsigned queue_depth() const override { return depth_; }

 private:
  unsigned depth_;
  std::shared_ptr<ThreadsCore> core_;
};

}  // namespace

std::unique_ptr<IoEngine> io_engine_threads(IoFd file, const IoOptions& options) {
  return std::make_unique<ThreadsEngine>(std::move(file), options);
}

}  // namespace tierlm::detail
