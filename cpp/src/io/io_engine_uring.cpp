// io_uring back end. Submitters fill the submission queue under one lock and call
// io_uring_submit once per batch; at most queue_depth requests are in the ring, the rest wait
// in a backlog. Completions are taken in batches by whoever waits (or by a background thread
// while the backlog is not empty): short transfers are resubmitted, futures completed and the
// ring refilled. The file's descriptors are registered (fixed files) and buffers given to
// register_buffer go to a sparse fixed-buffer table.
//
// Setup flags not used, on purpose (fio 3.33 sets all three): IORING_SETUP_SINGLE_ISSUER /
// DEFER_TASKRUN need one thread to submit and reap, and here whichever thread waits drives the
// ring; COOP_TASKRUN leaves a completion on a running submitter until its next system call or
// timer tick, so a caller that submits a read-ahead and computes would hold back the posting of
// its completions, and with it the background reaper's refill of the ring.
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "core/running_thread.hpp"
#include "io/io_engine.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

constexpr unsigned kBufferSlots = 64;
constexpr unsigned kReapBatch = 64;
constexpr size_t kMaxChunk = size_t{1} << 30;  // io_uring lengths are 32-bit
// Without the ring's eventfd (Linux < 5.8), how long the woken background reaper leaves an
// undriven ring to a caller that may come back to wait: well under one 4 KiB read at queue
// depth 32 (~0.5 ms on NVMe), so the ring barely drains.
constexpr timespec kReaperGrace{0, 50'000};
// How often the background reaper looks at the ring although nothing signalled it: only
// against a lost signal (see arm_reaper_locked), so rarely (at 1 MiB reads, ~1,000 a second
// here, every 10 ms was 0.1 context switches per read).
constexpr timespec kReaperWatch{1, 0};

std::string setup_failure(int err) {
  std::string why = "io_uring_setup: " + errno_text(err);
  if (err == EPERM || err == EACCES) {
    int disabled = 0;
    std::ifstream("/proc/sys/kernel/io_uring_disabled") >> disabled;
    if (disabled == 2) {
      why += " (kernel.io_uring_disabled=2 turns io_uring off for everyone)";
    } else if (disabled == 1) {
      why += " (kernel.io_uring_disabled=1 and this process is not in kernel.io_uring_group)";
    } else {
      why += " (blocked by a seccomp filter; containers often forbid io_uring)";
    }
  } else if (err == ENOSYS) {
    why += " (kernel without io_uring: older than 5.1, built without it, or seccomp)";
  } else if (err == ENOMEM) {
    rlimit limit{};
    getrlimit(RLIMIT_MEMLOCK, &limit);
    why += " (not enough locked memory for the ring: RLIMIT_MEMLOCK is " +
           (limit.rlim_cur == RLIM_INFINITY ? std::string("unlimited")
                                            : format_bytes(limit.rlim_cur)) +
           "; raise `ulimit -l`)";
  }
  return why;
}

// The ring and everything about it. Only the holder of the reaping token consumes
// completions, so a thread blocked in the kernel always has a completion coming to it.
// Waiters take the token themselves (their completion wakes them directly, as in fio); the
// background reaper takes it only while requests wait in the backlog for ring space and no
// thread drives the ring. It sleeps on an eventfd registered with the ring, which the kernel
// signals on each completion only while that is so (the reaper is "armed"): a caller that
// submits and then waits, as most do, takes the token before the next completion and the
// reaper is never woken; a caller that submits and goes computing has the reaper take over at
// the ring's next completion.
class UringCore final : public IoDriver {
 public:
  UringCore(const IoFd& file, unsigned depth)
      : file_(file), depth_(depth), wake_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (wake_fd_ < 0) {
      TIERLM_FAIL(kErrorIo, errno, "cannot create the eventfd of the io_uring reaper for ",
                  file_.path, ": ", errno_text(errno),
                  "; raise the open-file limit (`ulimit -n`) or use backend='threads'");
    }
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = 2 * depth_;  // never fewer than the requests in the ring
    const int r = io_uring_queue_init_params(depth_, &ring_, &params);
    if (r < 0) {
      close(wake_fd_);
      TIERLM_FAIL(kErrorUnsupported, -r, "cannot create an io_uring of depth ", depth_, " for ",
                  file_.path, ": ", setup_failure(-r),
                  "; use backend='threads' or TIERLM_IO=threads, or a smaller queue depth");
    }
    ring_signals_ = io_uring_register_eventfd(&ring_, wake_fd_) == 0;
    if (ring_signals_ && io_uring_cq_eventfd_toggle(&ring_, false) != 0) {
      io_uring_unregister_eventfd(&ring_);  // it could not be switched off: kick by hand
      ring_signals_ = false;
    }
    int fds[2] = {file_.fd, file_.direct_fd};
    fixed_files_ = io_uring_register_files(&ring_, fds, file_.direct_fd >= 0 ? 2 : 1) == 0;
    sparse_buffers_ = io_uring_register_buffers_sparse(&ring_, kBufferSlots) == 0;
    buffers_.resize(kBufferSlots);
    staged_.assign(depth_, nullptr);
    for (unsigned i = depth_; i > 0; --i) free_slots_.push_back(i - 1);
  }

  ~UringCore() override {
    io_uring_queue_exit(&ring_);
    close(wake_fd_);
  }

  void submit(std::vector<IoOp*>& ops) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (IoOp* op : ops) backlog_.push_back(op);
    pending_ += ops.size();
    fill_locked();
    release_to_reaper(lock);
  }

  void wait(IoState& state, bool more) override {
    std::unique_lock<std::mutex> lock(mutex_);
    drive(lock, [&] { return state.done.load(std::memory_order_acquire); });
    if (!more) release_to_reaper(lock);
  }

  void poll() override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!reaping_) consume_locked();
    release_to_reaper(lock);
  }

  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    drive(lock, [&] { return pending_ == 0; });
  }

  // Unlocks, arming the background reaper if requests wait for ring space and no one drives
  // the ring (see arm_reaper_locked), and waking it if nothing in the ring will. Not under the
  // lock, which the woken reaper would block on at once.
  void release_to_reaper(std::unique_lock<std::mutex>& lock) {
    const bool wake = arm_reaper_locked();
    lock.unlock();
    if (wake) kick_reaper();
  }

  // Requests wait for ring space and no thread moves them there.
  bool undriven() const { return !backlog_.empty() && !reaping_ && followers_ == 0; }

  // Background progress: moves the backlog into the ring as slots free up.
  void reap_backlog() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      // Due when the ring has room (finished requests) that no one refills. A waiter that
      // arrives takes over (its completion then wakes it directly).
      if (undriven() && (io_uring_cq_ready(&ring_) > 0 || !ring_signals_)) {
        drive(lock, [&] { return stopping_ || backlog_.empty() || followers_ > 0; });
        continue;
      }
      lock.unlock();
      sleep_until_woken(&kReaperWatch);
      // Kicked by hand: a caller that just submitted mostly waits at once, and taking the
      // token now would make it sleep as a follower until this thread passes the ring back.
      if (!ring_signals_) sleep_until_woken(&kReaperGrace);
      lock.lock();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    kick_reaper();
  }

  bool register_buffer(void* buf, size_t len) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!sparse_buffers_ || buf == nullptr || len == 0 || len > kMaxChunk) return false;
    for (unsigned slot = 0; slot < kBufferSlots; ++slot) {
      if (buffers_[slot].base != nullptr) continue;
      iovec iov{buf, len};
      if (io_uring_register_buffers_update_tag(&ring_, slot, &iov, nullptr, 1) != 1) {
        return false;  // RLIMIT_MEMLOCK, or memory the kernel cannot pin
      }
      buffers_[slot] = {static_cast<char*>(buf), len};
      ++registered_;
      return true;
    }
    return false;
  }

  void unregister_buffer(void* buf) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (unsigned slot = 0; slot < kBufferSlots; ++slot) {
      if (buffers_[slot].base != buf || buf == nullptr) continue;
      iovec iov{nullptr, 0};
      // Requests in flight keep their own reference to the old pages.
      io_uring_register_buffers_update_tag(&ring_, slot, &iov, nullptr, 1);
      buffers_[slot] = {};
      --registered_;
    }
  }

 private:
  struct Registered {
    char* base = nullptr;
    size_t len = 0;
  };

  // Arms the reaper exactly while undriven(): the kernel then signals its eventfd on each
  // completion. Returns whether it must be woken by hand: no completion is left to come (all
  // that are in the ring are posted already), or the kernel cannot signal it.
  bool arm_reaper_locked() {
    const bool want = undriven();
    const bool changed = want != armed_;
    armed_ = want;
    if (!ring_signals_) return want && changed;
    if (changed) io_uring_cq_eventfd_toggle(&ring_, want);
    if (!want) return false;
    // The kernel stores the CQ tail and then reads the eventfd flag with no barrier between,
    // so a completion posted just now may be signalled to no one and seen here by no one: the
    // reaper's watch (kReaperWatch) bounds that stall of a batch no one waits for.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return io_uring_cq_ready(&ring_) >= inflight_;
  }

  void kick_reaper() { eventfd_write(wake_fd_, 1); }

  // Blocks the reaper until its eventfd is signalled (by the ring or a kick) or timeout passes.
  void sleep_until_woken(const timespec* timeout) {
    pollfd p{wake_fd_, POLLIN, 0};
    if (ppoll(&p, 1, timeout, nullptr) > 0) {
      eventfd_t count = 0;
      eventfd_read(wake_fd_, &count);
    }
  }

  // Consumes completions until done() holds. Blocks in the kernel only while holding the
  // token and with requests in the ring, so a completion is always on its way.
  template <typename Done>
  void drive(std::unique_lock<std::mutex>& lock, Done done) {
    while (!done()) {
      if (reaping_) {
        ++followers_;
        progress_cv_.wait(lock);
        --followers_;
        continue;
      }
      if (inflight_ == 0) fill_locked();
      if (inflight_ == 0) {
        // Nothing in the ring could finish what we wait for: a submission failed hard.
        progress_cv_.wait_for(lock, std::chrono::milliseconds(1));
        continue;
      }
      reaping_ = true;
      arm_reaper_locked();  // disarms: this thread moves the backlog now
      lock.unlock();
      io_uring_cqe* cqe = nullptr;
      io_uring_wait_cqe(&ring_, &cqe);  // EINTR and the like: consume what is there, loop
      lock.lock();
      consume_locked();
      reaping_ = false;
      // Wake other waiters only if there are any: a needless wake-up costs more than the I/O.
      if (followers_ > 0) progress_cv_.notify_all();
    }
  }

  // Takes every available completion, advances its request, refills the ring.
  void consume_locked() {
    io_uring_cqe* batch[kReapBatch];
    for (;;) {
      const unsigned n = io_uring_peek_batch_cqe(&ring_, batch, kReapBatch);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        IoOp* op = static_cast<IoOp*>(io_uring_cqe_get_data(batch[i]));
        unstage(op);
        --inflight_;
        const long res = op->injected != 0 ? -static_cast<long>(op->injected) : batch[i]->res;
        if (io_op_advance(file_, *op, res)) {
          delete op;
          --pending_;
        } else {
          backlog_.push_front(op);  // the rest of a short transfer goes first
        }
      }
      io_uring_cq_advance(&ring_, n);
    }
    fill_locked();
  }

  // The requests in the ring, so that a refused submission can finish them: a table of
  // depth_ entries and a stack of its free places.
  void stage(IoOp* op) {
    op->ring_slot = free_slots_.back();
    free_slots_.pop_back();
    staged_[op->ring_slot] = op;
  }
  void unstage(IoOp* op) {
    staged_[op->ring_slot] = nullptr;
    free_slots_.push_back(op->ring_slot);
  }

  int buffer_slot(const char* p, size_t n) const {
    if (registered_ == 0) return -1;
    for (unsigned slot = 0; slot < kBufferSlots; ++slot) {
      const Registered& r = buffers_[slot];
      if (r.base != nullptr && p >= r.base && p + n <= r.base + r.len) {
        return static_cast<int>(slot);
      }
    }
    return -1;
  }

  void prep(io_uring_sqe* sqe, IoOp* op) {
    const int fd = fixed_files_ ? (op->direct ? 1 : 0) : (op->direct ? file_.direct_fd : file_.fd);
    size_t len = std::min(op->next_len(), kMaxChunk);
    op->injected = io_op_fault(file_, *op, &len);
    const unsigned n = static_cast<unsigned>(len);
    const int slot = buffer_slot(op->next_buf(), n);
    if (op->injected != 0) {
      io_uring_prep_nop(sqe);  // completes at once; consume_locked reports the injected error
    } else if (op->kind == IoOpKind::kIoOpRead) {
      if (slot >= 0) {
        io_uring_prep_read_fixed(sqe, fd, op->next_buf(), n, op->next_offset(), slot);
      } else {
        io_uring_prep_read(sqe, fd, op->next_buf(), n, op->next_offset());
      }
    } else {
      if (slot >= 0) {
        io_uring_prep_write_fixed(sqe, fd, op->next_buf(), n, op->next_offset(), slot);
      } else {
        io_uring_prep_write(sqe, fd, op->next_buf(), n, op->next_offset());
      }
    }
    if (fixed_files_) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data(sqe, op);
  }

  // Moves the backlog into the ring up to the queue depth; one io_uring_submit for all.
  void fill_locked() {
    if (broken_ != 0) {
      if (!backlog_.empty()) fail_all_locked(broken_);
      return;
    }
    unsigned prepared = 0;
    while (inflight_ < depth_ && !backlog_.empty()) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) break;
      prep(sqe, backlog_.front());
      stage(backlog_.front());
      backlog_.pop_front();
      ++inflight_;
      ++prepared;
    }
    if (prepared == 0 && io_uring_sq_ready(&ring_) == 0) return;
    int r = 0;
    for (int attempt = 0; attempt < 1000; ++attempt) {
      r = io_uring_submit(&ring_);
      // Transient failures (the kernel could not allocate) leave the entries queued: retry.
      if (r >= 0) return;
      if (r != -EINTR && r != -EAGAIN && r != -EBUSY) break;
      std::this_thread::yield();
    }
    fail_all_locked(-r);
  }

  // io_uring_enter refused the ring's entries (seccomp, a dead ring): nothing queued will ever
  // complete, so every request finishes now with that error, and the ring takes no more.
  void fail_all_locked(int err) {
    broken_ = err;
    for (unsigned i = 0; i < depth_; ++i) {
      if (staged_[i] == nullptr) continue;
      backlog_.push_back(staged_[i]);
      unstage(staged_[i]);
    }
    inflight_ = 0;
    for (IoOp* op : backlog_) {
      io_op_fail(file_, *op, err, "io_uring_enter");
      delete op;
      --pending_;
    }
    backlog_.clear();
    progress_cv_.notify_all();
  }

  const IoFd& file_;
  const unsigned depth_;
  io_uring ring_{};
  bool fixed_files_ = false;
  bool sparse_buffers_ = false;
  std::mutex mutex_;  // guards the rings' use, the backlog, the counters, the token, buffers_
  std::condition_variable progress_cv_;  // waiters whose thread does not hold the token
  // The background reaper sleeps on it: signalled by the ring's completions while armed_, and
  // by hand to stop it (or, where the ring cannot signal it, when it is armed).
  int wake_fd_ = -1;
  bool ring_signals_ = false;  // the eventfd is registered with the ring and can be switched
  bool armed_ = false;
  unsigned followers_ = 0;
  std::deque<IoOp*> backlog_;
  unsigned inflight_ = 0;  // requests in the ring (submitted or finished, not yet consumed)
  size_t pending_ = 0;     // requests not finished: backlog + ring
  bool reaping_ = false;   // the token: its holder alone consumes completions
  bool stopping_ = false;
  std::vector<Registered> buffers_;
  unsigned registered_ = 0;
  std::vector<IoOp*> staged_;  // requests in the ring, at their ring_slot
  std::vector<unsigned> free_slots_;
  int broken_ = 0;  // errno of a refused io_uring_enter; the ring takes no more
};

class UringEngine final : public IoEngine {
 public:
  UringEngine(IoFd file, const IoOptions& options)
      : IoEngine(std::move(file)),
        depth_(options.queue_depth),
        core_(std::make_shared<UringCore>(file_, options.queue_depth)),
        reaper_(start_running_thread([this] { core_->reap_backlog(); })) {}

  ~UringEngine() override {
    core_->drain();
    core_->stop();
    reaper_.join();
  }

  void submit(std::span<IoOp> ops) override {
    std::vector<IoOp*> owned;
    owned.reserve(ops.size());
    for (IoOp& op : ops) {
      op.state->driver = core_;
      owned.push_back(new IoOp(std::move(op)));
    }
    core_->submit(owned);
  }

  bool register_buffer(void* buf, size_t len) override { return core_->register_buffer(buf, len); }
  void unregister_buffer(void* buf) override { core_->unregister_buffer(buf); }
  IoBackend backend() const override { return IoBackend::kIoBackendUring; }
  unsigned queue_depth() const override { return depth_; }

 private:
  unsigned depth_;
  std::shared_ptr<UringCore> core_;
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<IoEngine> io_engine_uring(IoFd file, const IoOptions& options) {
  return std::make_unique<UringEngine>(std::move(file), options);
}

namespace {

// Reads a few bytes from a pipe through the ring: a ring that io_uring_setup created may still
// be unusable (seccomp refusing io_uring_enter), and only a real request shows that.
int probe_read(io_uring& ring, std::string* why) {
  int fds[2];
  if (pipe(fds) != 0) {
    *why = "cannot create a pipe to probe io_uring: " + errno_text(errno);
    return errno;
  }
  const char sent[8] = {'t', 'i', 'e', 'r', 'l', 'm', '!', '\n'};
  char got[8] = {};
  int err = 0;
  if (write(fds[1], sent, sizeof(sent)) != static_cast<ssize_t>(sizeof(sent))) {
    err = errno;
    *why = "cannot write the io_uring probe pipe: " + errno_text(err);
  } else {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_read(sqe, fds[0], got, sizeof(got), 0);
    const int s = io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec timeout{1, 0};
    const int w = s < 0 ? s : io_uring_wait_cqe_timeout(&ring, &cqe, &timeout);
    if (s < 0) {
      err = -s;
      *why = "io_uring_enter: " + errno_text(err) +
             " (the ring was created but submitting to it is refused: a seccomp filter?)";
    } else if (w < 0) {
      err = w == -ETIME ? ETIMEDOUT : -w;
      *why = "a probe read through io_uring did not complete: " + errno_text(err);
    } else if (cqe->res != static_cast<int>(sizeof(sent)) ||
               std::memcmp(got, sent, sizeof(sent)) != 0) {
      err = cqe->res < 0 ? -cqe->res : EIO;
      *why = "a probe read through io_uring returned " + std::to_string(cqe->res) +
             " instead of the 8 bytes written";
    }
    if (cqe != nullptr) io_uring_cqe_seen(&ring, cqe);
  }
  close(fds[0]);
  close(fds[1]);
  return err;
}

}  // namespace

int uring_probe(std::string* why) {
  io_uring ring{};
  const int r = io_uring_queue_init(4, &ring, 0);
  if (r < 0) {
    *why = setup_failure(-r);
    return -r;
  }
  struct io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  const bool ops = probe != nullptr && io_uring_opcode_supported(probe, IORING_OP_READ) &&
                   io_uring_opcode_supported(probe, IORING_OP_WRITE) &&
                   io_uring_opcode_supported(probe, IORING_OP_READ_FIXED);
  if (probe != nullptr) io_uring_free_probe(probe);
  int err = 0;
  if (!ops) {
    *why = "the kernel's io_uring lacks IORING_OP_READ/WRITE (needs Linux 5.6 or newer)";
    err = ENOSYS;
  } else {
    err = probe_read(ring, why);
  }
  io_uring_queue_exit(&ring);
  if (err == 0) *why = "io_uring is available";
  return err;
}

}  // namespace tierlm::detail
