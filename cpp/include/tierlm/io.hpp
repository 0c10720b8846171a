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

namespace tierlm {

enum class IoBackend { kIoBackendAuto, kIoBackendUring, kIoBackendThreads };

const char* io_backend_name(IoBackend backend);
// Parses "auto" | "uring" | "threads"; throws kErrorInvalidArgument otherwise.
IoBackend io_backend_parse(const std::string& name);

// What `auto` resolves to on this machine and why (probed once; TIERLM_IO overrides).
struct IoProbe {
  bool uring_compiled = false;   // built with liburing
  bool uring_available = false;  // a ring could be created here
  IoBackend chosen = IoBackend::kIoBackendThreads;
  std::string reason;  // e.g. "io_uring_setup: Operation not permitted (seccomp?)"
};
const IoProbe& io_probe();

struct IoOptions {
  IoBackend backend = IoBackend::kIoBackendAuto;
  unsigned queue_depth = 32;  // io_uring entries in flight
  unsigned threads = 0;       // thread-pool workers; 0 = hardware concurrency
  bool direct = true;         // use O_DIRECT for aligned requests when the file system allows
};

enum class IoMode { kIoModeRead, kIoModeWrite, kIoModeReadWrite };
// Parses "r" | "w" | "r+"; throws kErrorInvalidArgument otherwise.
IoMode io_mode_parse(const std::string& mode);

// One request of a batch: len bytes at offset to/from buf.
struct IoRequest {
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
class IoFuture {
 public:
  IoFuture() = default;
  explicit IoFuture(std::shared_ptr<detail::IoState> state) : state_(std::move(state)) {}
  size_t get();
  bool ready() const;
  bool valid() const { return state_ != nullptr; }

 private:
  std::shared_ptr<detail::IoState> state_;
};

class File {
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
  // Registers a buffer with the ring so reads into it use fixed buffers (no-op for threads).
  void register_buffer(void* buf, size_t len);

  const std::string& path() const;
  IoBackend backend() const;
  bool direct() const;  // O_DIRECT is available for aligned requests

 private:
  std::unique_ptr<detail::IoEngine> engine_;
};

// Drops the file's pages from the page cache (posix_fadvise DONTNEED), for cold benchmarks.
void io_drop_cache(const std::string& path);

}  // namespace tierlm
