// Thread-pool back end: workers loop pread/pwrite over a shared queue. Workers start on
// demand up to the pool size and drain the queue before the engine is destroyed, so every
// future completes. Synchronous requests run on the caller's thread (no hand-off).
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "tierlm/detail/io_engine.hpp"

namespace tierlm::detail {

namespace {

class ThreadsEngine final : public IoEngine {
 public:
  ThreadsEngine(IoFd file, const IoOptions& options)
      : IoEngine(std::move(file)),
        depth_(options.queue_depth),
        max_threads_(options.threads != 0 ? options.threads : options.queue_depth) {}

  ~ThreadsEngine() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }

  void submit(std::span<IoOp> ops) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (IoOp& op : ops) queue_.push_back(std::move(op));
      // Start workers for the requests no idle worker will pick up.
      const size_t uncovered = queue_.size() > idle_ ? queue_.size() - idle_ : 0;
      const size_t want = std::min<size_t>(max_threads_, threads_.size() + uncovered);
      while (threads_.size() < want) threads_.emplace_back([this] { work(); });
    }
    if (ops.size() == 1) {
      work_cv_.notify_one();
    } else {
      work_cv_.notify_all();
    }
  }

  void run(IoOp& op) override { io_op_run_blocking(file_, op); }

  IoBackend backend() const override { return IoBackend::kIoBackendThreads; }
  unsigned queue_depth() const override { return depth_; }

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

  unsigned depth_;
  unsigned max_threads_;
  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::deque<IoOp> queue_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stop_ = false;
};

}  // namespace

std::unique_ptr<IoEngine> io_engine_threads(IoFd file, const IoOptions& options) {
  return std::make_unique<ThreadsEngine>(std::move(file), options);
}

}  // namespace tierlm::detail
