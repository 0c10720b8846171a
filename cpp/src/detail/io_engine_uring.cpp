// io_uring back end. Submitters fill the submission queue under one lock and call
// io_uring_submit once per batch; at most queue_depth requests are in the ring, the rest wait
// in a backlog. A reaper thread takes completions in batches, resubmits the rest of short
// transfers, completes futures and refills the ring. The file's descriptors are registered
// (fixed files) and buffers given to register_buffer go to a sparse fixed-buffer table.
#include <liburing.h>
#include <sys/resource.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "tierlm/detail/io_engine.hpp"
#include "tierlm/error.hpp"

namespace tierlm::detail {

namespace {

constexpr unsigned kBufferSlots = 64;
constexpr unsigned kReapBatch = 64;
constexpr size_t kMaxChunk = size_t{1} << 30;  // io_uring lengths are 32-bit

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

class UringEngine final : public IoEngine {
 public:
  UringEngine(IoFd file, const IoOptions& options)
      : IoEngine(std::move(file)), depth_(options.queue_depth) {
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = 2 * depth_ + 2;  // every request in flight plus the shutdown NOP
    const int r = io_uring_queue_init_params(depth_, &ring_, &params);
    if (r < 0) {
      TIERLM_FAIL(kErrorUnsupported, -r, "cannot create an io_uring of depth ", depth_, " for ",
                  file_.path, ": ", setup_failure(-r),
                  "; use backend='threads' or TIERLM_IO=threads, or a smaller queue depth");
    }
    int fds[2] = {file_.fd, file_.direct_fd};
    fixed_files_ = io_uring_register_files(&ring_, fds, file_.direct_fd >= 0 ? 2 : 1) == 0;
    sparse_buffers_ = io_uring_register_buffers_sparse(&ring_, kBufferSlots) == 0;
    buffers_.resize(kBufferSlots);
    reaper_ = std::thread([this] { reap(); });
  }

  ~UringEngine() override {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      idle_cv_.wait(lock, [this] { return pending_ == 0; });
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, nullptr);
      submit_locked();
    }
    reaper_.join();
    io_uring_queue_exit(&ring_);
  }

  void submit(std::span<IoOp> ops) override {
    std::vector<IoOp*> owned;
    owned.reserve(ops.size());
    for (IoOp& op : ops) owned.push_back(new IoOp(std::move(op)));
    std::lock_guard<std::mutex> lock(mutex_);
    for (IoOp* op : owned) backlog_.push_back(op);
    pending_ += owned.size();
    fill_locked();
  }

  bool register_buffer(void* buf, size_t len) override {
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

  void unregister_buffer(void* buf) override {
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

  IoBackend backend() const override { return IoBackend::kIoBackendUring; }
  unsigned queue_depth() const override { return depth_; }

 private:
  struct Registered {
    char* base = nullptr;
    size_t len = 0;
  };

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
    const unsigned n = static_cast<unsigned>(std::min(op->next_len(), kMaxChunk));
    const int slot = buffer_slot(op->next_buf(), n);
    if (op->kind == IoOpKind::kIoOpRead) {
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
    unsigned prepared = 0;
    while (inflight_ < depth_ && !backlog_.empty()) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) break;
      prep(sqe, backlog_.front());
      backlog_.pop_front();
      ++inflight_;
      ++prepared;
    }
    if (prepared > 0) submit_locked();
  }

  void submit_locked() {
    for (int attempt = 0;; ++attempt) {
      const int r = io_uring_submit(&ring_);
      if (r >= 0) return;
      // Transient: the kernel could not allocate. The entries stay queued; retry.
      if ((r == -EINTR || r == -EAGAIN || r == -EBUSY) && attempt < 1000) {
        if (r != -EINTR) std::this_thread::yield();
        continue;
      }
      return;  // entries remain in the ring and go with the next submission
    }
  }

  void reap() {
    io_uring_cqe* batch[kReapBatch];
    bool stopping = false;
    while (!stopping) {
      io_uring_cqe* first = nullptr;
      const int r = io_uring_wait_cqe(&ring_, &first);
      if (r < 0) continue;  // EINTR / EAGAIN: wait again
      const unsigned n = io_uring_peek_batch_cqe(&ring_, batch, kReapBatch);
      std::lock_guard<std::mutex> lock(mutex_);
      for (unsigned i = 0; i < n; ++i) {
        IoOp* op = static_cast<IoOp*>(io_uring_cqe_get_data(batch[i]));
        if (op == nullptr) {
          stopping = true;
          continue;
        }
        --inflight_;
        if (io_op_advance(file_, *op, batch[i]->res)) {
          delete op;
          --pending_;
        } else {
          backlog_.push_front(op);  // the rest of a short transfer goes first
        }
      }
      io_uring_cq_advance(&ring_, n);
      fill_locked();
      if (pending_ == 0) idle_cv_.notify_all();
    }
  }

  io_uring ring_{};
  unsigned depth_;
  bool fixed_files_ = false;
  bool sparse_buffers_ = false;
  std::mutex mutex_;  // guards the submission queue, the backlog, the counters and buffers_
  std::condition_variable idle_cv_;
  std::deque<IoOp*> backlog_;
  unsigned inflight_ = 0;  // requests in the ring
  size_t pending_ = 0;     // requests not finished: backlog + ring
  std::vector<Registered> buffers_;
  unsigned registered_ = 0;
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<IoEngine> io_engine_uring(IoFd file, const IoOptions& options) {
  return std::make_unique<UringEngine>(std::move(file), options);
}

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
  io_uring_queue_exit(&ring);
  if (!ops) {
    *why = "the kernel's io_uring lacks IORING_OP_READ/WRITE (needs Linux 5.6 or newer)";
    return ENOSYS;
  }
  *why = "io_uring is available";
  return 0;
}

}  // namespace tierlm::detail
