// The asynchronous file I/O engine (KvikIO-style FileHandle on io_uring).
// Two back ends chosen at run time: io_uring (batched, registered buffers, O_DIRECT when a
// request is 4 KiB aligned) and a thread pool of pread/pwrite. Both return exact bytes for any
// offset/length/buffer; a read that runs past end of file is an error, never a silent short read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tierlm/core/export.hpp"

namespace tierlm {

enum class IoBackend { kIoBackendAuto, kIoBackendUring, kIoBackendThreads };

TIERLM_API const char* io_backend_name(IoBackend backend);
// Parses "auto" | "uring" | "threads"; throws kErrorInvalidArgument otherwise.
TIERLM_API IoBackend io_backend_parse(const std::string& name);

// What `auto` resolves to on this machine and why (probed once, with TIERLM_IO as it was at
// the first call; Files resolve TIERLM_IO again when opened).
struct TIERLM_API IoProbe {
  bool uring_compiled = false;   // built with liburing
  bool uring_available = false;  // a ring could be created here
  IoBackend chosen = IoBackend::kIoBackendThreads;
  std::string reason;  // e.g. "io_uring_setup: Operation not permitted (seccomp?)"
};
TIERLM_API const IoProbe& io_probe();
// The back end a File asking for `requested` gets now: TIERLM_IO (read at each call) replaces
// `auto`; an explicit back end in code wins over the variable. Sets *reason when given.
// Throws kErrorUnsupported when uring is asked for (in code or TIERLM_IO) but unavailable.
TIERLM_API IoBackend io_backend_resolve(IoBackend requested, std::string* reason = nullptr);

struct TIERLM_API IoOptions {
  IoBackend backend = IoBackend::kIoBackendAuto;
  unsigned queue_depth = 32;  // io_uring entries in flight
  unsigned threads = 0;       // thread-pool workers; 0 = queue_depth (started on demand)
  bool direct = true;         // use O_DIRECT for aligned requests when the file system allows
};

enum class IoMode { kIoModeRead, kIoModeWrite, kIoModeReadWrite };
// Parses "r" | "w" | "r+"; throws kErrorInvalidArgument otherwise.
TIERLM_API IoMode io_mode_parse(const std::string& mode);

// One request of a batch: len bytes at offset to/from buf.
struct TIERLM_API IoRequest {
  void* buf = nullptr;
  size_t len = 0;
  uint64_t offset = 0;
};

namespace detail {
struct IoState;
class IoEngine;
}  // namespace detail

// Completion of one asynchronous request. get() waits and returns the bytes transferred or
// throws the request's error (naming file, offset, length and cause).
// get() may be called again and returns (or throws) the same result.
class IoFuture;
TIERLM_API void io_wait_all(std::span<IoFuture> futures);

class TIERLM_API IoFuture {
 public:
  IoFuture() = default;
  explicit IoFuture(std::shared_ptr<detail::IoState> state) : state_(std::move(state)) {}
  size_t get();
  bool ready() const;
  void wait() const;  // waits without throwing
  bool valid() const { return state_ != nullptr; }

 private:
  friend void io_wait_all(std::span<IoFuture> futures);  // waits for them together
  std::shared_ptr<detail::IoState> state_;
};

// io_wait_all(futures), declared above IoFuture: waits for every future, then throws the first
// one's error: when it throws, no request of `futures` is still in flight, so their buffers
// may be reused or freed.

// A file opened for the engine. Calls may come from several threads at once (close() and
// moves excepted). A request's buffer must stay valid until its future is ready; destroying
// or closing the File waits for every request in flight.
class TIERLM_API File {
 public:
  File(const std::string& path, IoMode mode, IoOptions options = {});
  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  // Synchronous: returns bytes transferred (always len) or throws.
  size_t read(void* buf, size_t len, uint64_t offset);
  size_t write(const void* buf, size_t len, uint64_t offset);
  // Asynchronous.
  IoFuture pread(void* buf, size_t len, uint64_t offset);
  IoFuture pwrite(const void* buf, size_t len, uint64_t offset);
  // Submits many requests at once (one io_uring submission); one future per request.
  std::vector<IoFuture> pread_batch(std::span<const IoRequest> requests);
  std::vector<IoFuture> pwrite_batch(std::span<const IoRequest> requests);

  uint64_t size() const;
  void sync();  // fsync
  // Reserves disk space for [offset, offset + len) (posix_fallocate); throws naming the file.
  void allocate(uint64_t offset, uint64_t len);
  // Registers a buffer with the ring so requests inside it use fixed buffers (no pinning per
  // request). Returns false where that is impossible (thread pool, RLIMIT_MEMLOCK, table
  // full); requests then work as before. The buffer must stay allocated until
  // unregister_buffer or close: the kernel keeps its pages pinned.
  bool register_buffer(void* buf, size_t len);
  void unregister_buffer(void* buf);
  // Waits for every request in flight, then closes the descriptors. Later calls throw.
  void close();
  bool is_open() const { return engine_ != nullptr; }

  const std::string& path() const;
  IoBackend backend() const;
  bool direct() const;  // O_DIRECT is available for aligned requests
  int fd() const;       // the buffered descriptor (fallocate, fstat)
  unsigned queue_depth() const;

  // Why direct() is false ("" when it is true).
  const std::string& direct_reason() const;

 private:
  detail::IoEngine& engine(const char* what) const;

  std::unique_ptr<detail::IoEngine> engine_;
  std::string path_;
  std::string direct_reason_;
  IoBackend backend_ = IoBackend::kIoBackendThreads;
  bool direct_ = false;
  unsigned queue_depth_ = 0;
};

// Fault injection, for testing the error paths: with TIERLM_FAULT set (read once per process),
// e.g. "op=read,errno=EIO,nth=3[,path=SUBSTRING]", the nth call of that kind (counted over
// the process, on paths containing SUBSTRING when given) fails with EIO, ENOSPC or EFBIG, or
// with errno=short moves half its bytes (a short count the caller must continue). Both back
// ends, the package reader, File::sync / allocate and Python's writers ask before each call.
enum class IoFaultOp { kIoFaultRead, kIoFaultWrite, kIoFaultFsync, kIoFaultFallocate };
struct TIERLM_API IoFault {
  int err = 0;     // errno the call fails with (0: none)
  size_t len = 0;  // bytes the call may move (len asked for, or fewer: a short transfer)
};
// What the call of kind op on path moving len bytes must do (never throws: a spec that cannot
// be parsed injects nothing, and io_fault_check reports it).
TIERLM_API IoFault io_fault_point(IoFaultOp op, const std::string& path, size_t len);
// Throws kErrorInvalidArgument naming TIERLM_FAULT when it is set but cannot be parsed; File
// and the package reader call it when they open a file.
TIERLM_API void io_fault_check();
// Parses "read" | "write" | "fsync" | "fallocate"; throws kErrorInvalidArgument otherwise.
TIERLM_API IoFaultOp io_fault_op_parse(const std::string& name);

// A recording of the engine's requests, for finding where the disk idles (bench_moe --trace):
// between io_trace_record_start and io_trace_record_stop, each request's file, offset and
// length, when its file submitted it and when it moved its last byte (just before its future
// became ready; io_uring: when its completion was taken), in seconds of CLOCK_MONOTONIC
// (Python's time.monotonic). It takes the engine's one trace hook: start throws
// kErrorInvalidArgument while a recording runs; stop returns the requests in submission order.
struct TIERLM_API IoTraceRecord {
  std::string path;
  uint64_t offset = 0;
  uint64_t len = 0;
  double submitted = 0;
  double landed = -1;  // -1: still in flight when the recording stopped
};
TIERLM_API void io_trace_record_start();
TIERLM_API std::vector<IoTraceRecord> io_trace_record_stop();

// Drops the file's pages from the page cache (posix_fadvise DONTNEED), for cold benchmarks.
TIERLM_API void io_drop_cache(const std::string& path);

// Random block-aligned reads of `block` bytes with `queue_depth` requests in flight for
// `seconds` (page cache dropped first), for `tierlm bench io` and bench/bench_io.py: two
// batches of queue_depth requests, one in the ring and one in the engine's backlog.
struct TIERLM_API IoBenchResult {
  IoBackend backend = IoBackend::kIoBackendThreads;
  bool direct = false;
  bool registered = false;  // buffers registered with the ring
  uint64_t requests = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  double bytes_per_second() const { return seconds > 0 ? bytes / seconds : 0; }
  double iops() const { return seconds > 0 ? requests / seconds : 0; }
};
TIERLM_API IoBenchResult io_bench_read(const std::string& path, size_t block, unsigned queue_depth,
                                       IoOptions options, double seconds, uint64_t seed = 1);

}  // namespace tierlm
