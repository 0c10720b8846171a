// The I/O engine's front: choosing the back end (probe once, TIERLM_IO, explicit choice),
// File's checks before anything is queued, futures.
#include "tierlm/io/io.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "io/io_engine.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm {

namespace {

struct UringStatus {
  bool compiled = false;
  bool available = false;
  std::string why;
};

const UringStatus& uring_status() {
  static const UringStatus kStatus = [] {
    UringStatus status;
#ifdef TIERLM_HAVE_IO_URING
    status.compiled = true;
    status.available = detail::uring_probe(&status.why) == 0;
#else
    status.why = "this build has no io_uring back end (liburing was not found at build time)";
#endif
    return status;
  }();
  return kStatus;
}

constexpr unsigned kMaxQueueDepth = 4096;

}  // namespace

const char* io_backend_name(IoBackend backend) {
  switch (backend) {
    case IoBackend::kIoBackendAuto:
      return "auto";
    case IoBackend::kIoBackendUring:
      return "uring";
    case IoBackend::kIoBackendThreads:
      return "threads";
  }
  return "unknown";
}

IoBackend io_backend_parse(const std::string& name) {
  for (IoBackend b :
       {IoBackend::kIoBackendAuto, IoBackend::kIoBackendUring, IoBackend::kIoBackendThreads}) {
    if (name == io_backend_name(b)) return b;
  }
  TIERLM_FAIL(kErrorInvalidArgument, 0, "unknown I/O back end '", name,
              "'; use 'auto', 'uring' or 'threads'");
}

IoMode io_mode_parse(const std::string& mode) {
  if (mode == "r") return IoMode::kIoModeRead;
  if (mode == "w") return IoMode::kIoModeWrite;
  if (mode == "r+") return IoMode::kIoModeReadWrite;
  TIERLM_FAIL(kErrorInvalidArgument, 0, "unknown file mode '", mode,
              "'; use 'r' (read), 'w' (create/truncate, write) or 'r+' (read and write)");
}

IoBackend io_backend_resolve(IoBackend requested, std::string* reason) {
  std::string source = "asked for in code";
  if (requested == IoBackend::kIoBackendAuto) {
    const char* env = std::getenv("TIERLM_IO");
    if (env != nullptr && *env != '\0') {
      const std::string value = env;
      if (value != "auto" && value != "uring" && value != "threads") {
        TIERLM_FAIL(kErrorInvalidArgument, 0, "TIERLM_IO='", value,
                    "' is not a back end; set it to auto, uring or threads, or unset it");
      }
      requested = io_backend_parse(value);
      source = "TIERLM_IO=" + value;
    }
  }
  const UringStatus& uring = uring_status();
  std::string why;
  IoBackend chosen = IoBackend::kIoBackendThreads;
  switch (requested) {
    case IoBackend::kIoBackendThreads:
      why = source;
      break;
    case IoBackend::kIoBackendUring:
      if (!uring.available) {
        TIERLM_FAIL(kErrorUnsupported, 0, "the io_uring back end was requested (", source,
                    ") but is unavailable: ", uring.why,
                    "; use backend='threads' or TIERLM_IO=threads, or 'auto' to fall back");
      }
      chosen = IoBackend::kIoBackendUring;
      why = source;
      break;
    case IoBackend::kIoBackendAuto:
      if (uring.available) {
        chosen = IoBackend::kIoBackendUring;
        why = "io_uring is available";
      } else {
        why = "io_uring unavailable: " + uring.why;
      }
      break;
  }
  if (reason != nullptr) *reason = why;
  return chosen;
}

const IoProbe& io_probe() {
  static const IoProbe kProbe = [] {
    IoProbe probe;
    probe.uring_compiled = uring_status().compiled;
    probe.uring_available = uring_status().available;
    try {
      probe.chosen = io_backend_resolve(IoBackend::kIoBackendAuto, &probe.reason);
    } catch (const Error& error) {
      probe.chosen = IoBackend::kIoBackendThreads;
      probe.reason = error.what();
    }
    return probe;
  }();
  return kProbe;
}

size_t IoFuture::get() {
  TIERLM_CHECK(state_ != nullptr, kErrorInvalidArgument, "IoFuture::get on an empty future");
  state_->wait();
  if (state_->error) std::rethrow_exception(state_->error);
  return state_->bytes;
}

void io_wait_all(std::span<IoFuture> futures) {
  // Each wait tells the back end whether the next unfinished request is also its own, so one
  // thread drives the ring through the whole batch.
  const size_t n = futures.size();
  auto unfinished = [&](size_t j) {
    const detail::IoState* s = futures[j].state_.get();
    return s != nullptr && !s->done.load(std::memory_order_acquire);
  };
  for (size_t i = 0, next = 0; i < n; ++i) {
    if (!unfinished(i)) continue;
    next = std::max(next, i + 1);
    while (next < n && !unfinished(next)) ++next;
    detail::IoState& state = *futures[i].state_;
    state.wait(next < n && state.same_driver(*futures[next].state_));
  }
  for (IoFuture& f : futures) f.get();
}

bool IoFuture::ready() const { return state_ != nullptr && state_->ready(); }

void IoFuture::wait() const {
  if (state_ != nullptr) state_->wait();
}

File::File(const std::string& path, IoMode mode, IoOptions options) : path_(path) {
  TIERLM_CHECK(options.queue_depth >= 1 && options.queue_depth <= kMaxQueueDepth,
               kErrorInvalidArgument, "queue depth ", options.queue_depth, " for ", path,
               " is out of range; use 1 to ", kMaxQueueDepth);
  backend_ = io_backend_resolve(options.backend);
  io_fault_check();
  detail::IoFd file = detail::io_open(path, mode, options.direct);
  direct_ = file.direct_fd >= 0;
  direct_reason_ = file.direct_reason;
  queue_depth_ = options.queue_depth;
#ifdef TIERLM_HAVE_IO_URING
  if (backend_ == IoBackend::kIoBackendUring) {
    try {
      engine_ = detail::io_engine_uring(std::move(file), options);
      return;
    } catch (const Error& error) {
      // A ring that fails here (memlock for a deep queue) falls back only under `auto`.
      const char* env = std::getenv("TIERLM_IO");
      if (options.backend != IoBackend::kIoBackendAuto ||
          (env != nullptr && std::string(env) == "uring")) {
        throw;
      }
      backend_ = IoBackend::kIoBackendThreads;
      file = detail::io_open(path, mode, options.direct);
    }
  }
#endif
  engine_ = detail::io_engine_threads(std::move(file), options);
}

File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

detail::IoEngine& File::engine(const char* what) const {
  TIERLM_CHECK(engine_ != nullptr, kErrorInvalidArgument, "cannot ", what, " ", path_,
               ": the file is closed");
  return *engine_;
}

namespace {

detail::IoOp make_op(const detail::IoFd& file, detail::IoOpKind kind, const void* buf, size_t len,
                     uint64_t offset) {
  const bool read = kind == detail::IoOpKind::kIoOpRead;
  TIERLM_CHECK(read ? file.readable() : file.writable(), kErrorInvalidArgument, "cannot ",
               read ? "read from " : "write to ", file.path, ": it is open for ",
               read ? "writing only (mode 'w'); open it with 'r+'"
                    : "reading only (mode 'r'); open it with 'r+' or 'w'");
  TIERLM_CHECK(buf != nullptr || len == 0, kErrorInvalidArgument, read ? "read" : "write", " of ",
               len, " bytes at offset ", offset, " of ", file.path, ": buffer is null");
  TIERLM_CHECK(offset <= static_cast<uint64_t>(INT64_MAX) - len, kErrorInvalidArgument,
               read ? "read" : "write", " of ", len, " bytes at offset ", offset, " of ", file.path,
               ": offset out of range");
  detail::IoOp op;
  op.kind = kind;
  op.buf = static_cast<char*>(const_cast<void*>(buf));
  op.len = len;
  op.offset = offset;
  op.direct = file.direct_ok(buf, len, offset);
  op.state = std::make_shared<detail::IoState>();
  return op;
}

std::vector<IoFuture> submit_batch(detail::IoEngine& engine, detail::IoOpKind kind,
                                   std::span<const IoRequest> requests) {
  std::vector<detail::IoOp> ops;
  std::vector<IoFuture> futures;
  ops.reserve(requests.size());
  futures.reserve(requests.size());
  for (const IoRequest& r : requests) {
    ops.push_back(make_op(engine.file(), kind, r.buf, r.len, r.offset));
    futures.emplace_back(ops.back().state);
  }
  // Empty requests complete at once; the rest go to the engine in one submission.
  std::vector<detail::IoOp> work;
  work.reserve(ops.size());
  for (detail::IoOp& op : ops) {
    if (op.len == 0) {
      op.state->finish(0, nullptr);
    } else {
      detail::io_trace(engine.file().path, op.offset, op.len, false);
      work.push_back(std::move(op));
    }
  }
  if (!work.empty()) engine.submit(work);
  return futures;
}

}  // namespace

size_t File::read(void* buf, size_t len, uint64_t offset) {
  detail::IoEngine& e = engine("read");
  detail::IoOp op = make_op(e.file(), detail::IoOpKind::kIoOpRead, buf, len, offset);
  if (len == 0) return 0;
  IoFuture future(op.state);
  e.run(op);
  return future.get();
}

size_t File::write(const void* buf, size_t len, uint64_t offset) {
  detail::IoEngine& e = engine("write");
  detail::IoOp op = make_op(e.file(), detail::IoOpKind::kIoOpWrite, buf, len, offset);
  if (len == 0) return 0;
  IoFuture future(op.state);
  e.run(op);
  return future.get();
}

IoFuture File::pread(void* buf, size_t len, uint64_t offset) {
  const IoRequest request{buf, len, offset};
  return submit_batch(engine("read"), detail::IoOpKind::kIoOpRead, {&request, 1})[0];
}

IoFuture File::pwrite(const void* buf, size_t len, uint64_t offset) {
  const IoRequest request{const_cast<void*>(buf), len, offset};
  return submit_batch(engine("write"), detail::IoOpKind::kIoOpWrite, {&request, 1})[0];
}

std::vector<IoFuture> File::pread_batch(std::span<const IoRequest> requests) {
  return submit_batch(engine("read"), detail::IoOpKind::kIoOpRead, requests);
}

std::vector<IoFuture> File::pwrite_batch(std::span<const IoRequest> requests) {
  return submit_batch(engine("write"), detail::IoOpKind::kIoOpWrite, requests);
}

uint64_t File::size() const {
  const int64_t size = detail::io_file_size(engine("stat").file().fd);
  if (size < 0) {
    TIERLM_FAIL(kErrorIo, static_cast<int>(-size), "cannot stat ", path_, ": ",
                errno_text(static_cast<int>(-size)));
  }
  return static_cast<uint64_t>(size);
}

void File::sync() {
  const int fd = engine("sync").file().fd;
  int err = io_fault_point(IoFaultOp::kIoFaultFsync, path_, 0).err;
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (err != 0) {
    TIERLM_FAIL(kErrorIo, err, "fsync of ", path_, " failed: ", errno_text(err),
                err == EIO ? " (written data may be lost; check dmesg and the disk's health)" : "");
  }
}

void File::allocate(uint64_t offset, uint64_t len) {
  const int fd = engine("allocate space in").file().fd;
  int err = io_fault_point(IoFaultOp::kIoFaultFallocate, path_, len).err;
  if (err == 0) err = posix_fallocate(fd, static_cast<off_t>(offset), static_cast<off_t>(len));
  if (err != 0) {
    TIERLM_FAIL(
        kErrorIo, err, "cannot reserve ", format_bytes(len), " (", len, " bytes) at offset ",
        offset, " in ", path_, ": ", errno_text(err),
        err == ENOSPC ? " (the file system is full: free space or choose another directory)" : "");
  }
}

bool File::register_buffer(void* buf, size_t len) {
  return engine("register a buffer with").register_buffer(buf, len);
}

void File::unregister_buffer(void* buf) {
  if (engine_ != nullptr) engine_->unregister_buffer(buf);
}

void File::close() { engine_.reset(); }

const std::string& File::path() const { return path_; }
IoBackend File::backend() const { return backend_; }
bool File::direct() const { return direct_; }
const std::string& File::direct_reason() const { return direct_reason_; }
int File::fd() const { return engine("use").file().fd; }
unsigned File::queue_depth() const { return queue_depth_; }

void io_drop_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    TIERLM_FAIL(kErrorIo, err, "cannot drop the page cache of ", path, ": ", errno_text(err));
  }
  // Dirty pages cannot be dropped: write them back first.
  fdatasync(fd);
  const int r = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  if (r != 0) {
    TIERLM_FAIL(kErrorIo, r, "posix_fadvise(DONTNEED) on ", path, " failed: ", errno_text(r));
  }
}

}  // namespace tierlm
