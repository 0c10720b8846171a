// Internals of the I/O engine shared by its back ends: the file's descriptors, one request's
// progress (IoOp) and the rule that advances it after each partial transfer, so io_uring and
// the thread pool resubmit, fall back and fail in exactly the same way.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "tierlm/core/align.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm::detail {

struct IoState;

// A back end whose waiters drive completions themselves (io_uring: the waiting thread reaps
// the ring, so no other thread has to be woken to hand the result over).
class IoDriver {
 public:
  virtual ~IoDriver() = default;
  // Returns once state.done. `more`: the caller waits for another request of this back end
  // right after, so progress is left to it (io_uring: no hand-over to the background reaper
  // between the requests of one io_wait_all, which cost two thread switches each).
  virtual void wait(IoState& state, bool more) = 0;
  virtual void poll() = 0;  // takes finished completions without blocking
};

// The completion of one request, shared by the engine and the IoFuture.
struct IoState {
  std::mutex mutex;
  std::condition_variable cv;
  std::atomic<bool> done{false};
  size_t bytes = 0;  // valid once done
  std::exception_ptr error;
  std::weak_ptr<IoDriver> driver;  // set before the request is queued; empty: wait on cv

  void finish(size_t transferred, std::exception_ptr failure);
  void wait(bool more = false);  // more: see IoDriver::wait
  // Whether next's request went to the same back end as this one's.
  bool same_driver(const IoState& next) const {
    return !driver.owner_before(next.driver) && !next.driver.owner_before(driver);
  }
  bool ready();
};

// The open file: a buffered descriptor always, an O_DIRECT one when the file system allows.
struct IoFd {
  std::string path;
  IoMode mode = IoMode::kIoModeRead;
  int fd = -1;
  int direct_fd = -1;
  std::string direct_reason;  // why direct_fd is -1

  IoFd() = default;
  IoFd(IoFd&& other) noexcept;
  IoFd& operator=(IoFd&& other) noexcept;
  IoFd(const IoFd&) = delete;
  ~IoFd();

  bool readable() const { return mode != IoMode::kIoModeWrite; }
  bool writable() const { return mode != IoMode::kIoModeRead; }
  // Whether a transfer of len bytes at offset to/from buf may use the O_DIRECT descriptor.
  bool direct_ok(const void* buf, size_t len, uint64_t offset) const {
    return direct_fd >= 0 && reinterpret_cast<uintptr_t>(buf) % kAlignment == 0 &&
           len % kAlignment == 0 && offset % kAlignment == 0 && len > 0;
  }
};

// Opens path in mode; O_DIRECT beside it when want_direct and the file system accepts it.
// Throws kErrorNotFound (ENOENT) / kErrorIo (errno) naming the path and what to do.
IoFd io_open(const std::string& path, IoMode mode, bool want_direct);

// Bytes in the open file fd (a block device's by seeking to its end, 0 when that fails);
// -errno when fstat fails.
int64_t io_file_size(int fd);

// The order requests go to the disk in, for tests of who reads first (the expert store's read-
// ahead held behind a layer's own reads): when set, io_trace is called for each request as
// its file submits it (done false, on the submitting thread) and again when it has moved all
// its bytes, just before its future becomes ready (done true, on whichever thread finished
// it). Unset (nullptr) by default; nothing else is traced.
struct IoTraceEvent {
  const std::string* path;
  uint64_t offset;
  size_t len;
  bool done;
};
using IoTrace = void (*)(const IoTraceEvent& event);
void io_trace_set(IoTrace trace);
void io_trace(const std::string& path, uint64_t offset, size_t len, bool done);

enum class IoOpKind { kIoOpRead, kIoOpWrite };

// One request and how far it got. `direct` says which descriptor the next chunk uses.
struct IoOp {
  IoOpKind kind = IoOpKind::kIoOpRead;
  char* buf = nullptr;
  size_t len = 0;
  uint64_t offset = 0;
  size_t done = 0;
  bool direct = false;
  unsigned ring_slot = 0;  // io_uring: its place in the table of requests in the ring
  int injected = 0;        // io_uring: errno TIERLM_FAULT gave the chunk in the ring
  std::shared_ptr<IoState> state;

  char* next_buf() const { return buf + done; }
  size_t next_len() const { return len - done; }
  uint64_t next_offset() const { return offset + done; }
};

// Feeds the result of one chunk (bytes transferred or -errno) into op. Returns true when the
// request is finished (its state completed, with bytes or an error), false when the rest must
// be submitted again (short transfer, EINTR/EAGAIN, or O_DIRECT refused: retry buffered).
bool io_op_advance(const IoFd& file, IoOp& op, long result);
// Finishes a request that the back end could not submit at all (`call` failed with err).
void io_op_fail(const IoFd& file, IoOp& op, int err, const char* call);

// TIERLM_FAULT's word on op's next chunk of at most n bytes: 0 and the bytes to move (n, or a
// short count that keeps an O_DIRECT chunk aligned), or the errno the chunk fails with.
int io_op_fault(const IoFd& file, const IoOp& op, size_t* n);

// Does op's remaining chunks with pread/pwrite on the calling thread; completes its state.
void io_op_run_blocking(const IoFd& file, IoOp& op);

class IoEngine {
 public:
  explicit IoEngine(IoFd file) : file_(std::move(file)) {}
  virtual ~IoEngine() = default;

  // Queues ops (their states already set) and starts them; never blocks on their completion.
  virtual void submit(std::span<IoOp> ops) = 0;
  // Runs one op to completion; the thread pool does it on the caller's thread.
  virtual void run(IoOp& op);
  virtual bool register_buffer(void*, size_t) { return false; }
  virtual void unregister_buffer(void*) {}
  virtual IoBackend backend() const = 0;
  virtual unsigned queue_depth() const = 0;

  const IoFd& file() const { return file_; }

 protected:
  IoFd file_;
};

std::unique_ptr<IoEngine> io_engine_threads(IoFd file, const IoOptions& options);
#ifdef TIERLM_HAVE_IO_URING
std::unique_ptr<IoEngine> io_engine_uring(IoFd file, const IoOptions& options);
// 0 when a ring with the read/write opcodes can be created here, else the errno; why in *why.
int uring_probe(std::string* why);
#endif

}  // namespace tierlm::detail
