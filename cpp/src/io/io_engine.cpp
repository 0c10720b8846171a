// What both back ends share: opening the descriptors, advancing a request after each partial
// transfer, and the error messages (file, offset, length, cause) its future completes with.
#include "io/io_engine.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

std::string describe(const IoFd& file, const IoOp& op) {
  std::ostringstream out;
  const bool read = op.kind == IoOpKind::kIoOpRead;
  out << (read ? "read of " : "write of ");
  if (op.len >= 1024) out << format_bytes(op.len) << " (";
  out << op.len << " bytes";
  if (op.len >= 1024) out << ")";
  out << " at offset " << op.offset << (read ? " from " : " to ") << file.path;
  return out.str();
}

const char* errno_hint(int err) {
  switch (err) {
    case ENOSPC:
      return " (the file system is full: free space or use a directory on another disk)";
    case EDQUOT:
      return " (disk quota exceeded)";
    case EIO:
      return " (the device reported an error; check dmesg and the disk's health)";
    case EFBIG:
      return " (file larger than the file system or RLIMIT_FSIZE allows)";
    case EBADF:
      return " (the file is not open for this operation)";
    default:
      return "";
  }
}

std::exception_ptr errno_error(const IoFd& file, const IoOp& op, int err) {
  std::ostringstream out;
  out << describe(file, op) << " failed";
  if (op.done > 0) out << " after " << op.done << " bytes";
  out << ": " << errno_text(err) << errno_hint(err);
  const ErrorCode code = err == ENOENT ? ErrorCode::kErrorNotFound : ErrorCode::kErrorIo;
  return std::make_exception_ptr(Error(code, err, out.str()));
}

std::exception_ptr eof_error(const IoFd& file, const IoOp& op) {
  const int64_t size = std::max<int64_t>(0, io_file_size(file.fd));
  std::ostringstream out;
  out << describe(file, op) << " failed: end of file at offset " << op.next_offset()
      << " (file size " << size << " bytes) with " << op.next_len()
      << " bytes still to read; file is truncated?";
  return std::make_exception_ptr(Error(ErrorCode::kErrorCorrupt, 0, out.str()));
}

}  // namespace

namespace {
std::atomic<IoTrace> g_trace{nullptr};
}  // namespace

void io_trace_set(IoTrace trace) { g_trace.store(trace, std::memory_order_release); }

void io_trace(const std::string& path, uint64_t offset, size_t len, bool done) {
  if (IoTrace trace = g_trace.load(std::memory_order_acquire)) trace({&path, offset, len, done});
}

int64_t io_file_size(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return -errno;
  if (S_ISBLK(st.st_mode)) {
    const off_t end = lseek(fd, 0, SEEK_END);
    return end < 0 ? 0 : static_cast<int64_t>(end);
  }
  return static_cast<int64_t>(st.st_size);
}

void IoState::finish(size_t transferred, std::exception_ptr failure) {
  bytes = transferred;
  error = std::move(failure);
  {
    std::lock_guard<std::mutex> lock(mutex);
    done.store(true, std::memory_order_release);
  }
  cv.notify_all();
}

void IoState::wait(bool more) {
  if (done.load(std::memory_order_acquire)) return;
  if (std::shared_ptr<IoDriver> d = driver.lock()) {
    d->wait(*this, more);
    return;
  }
  std::unique_lock<std::mutex> lock(mutex);
  cv.wait(lock, [this] { return done.load(std::memory_order_acquire); });
}

bool IoState::ready() {
  if (done.load(std::memory_order_acquire)) return true;
  if (std::shared_ptr<IoDriver> d = driver.lock()) d->poll();
  return done.load(std::memory_order_acquire);
}

IoFd::IoFd(IoFd&& other) noexcept
    : path(std::move(other.path)),
      mode(other.mode),
      fd(std::exchange(other.fd, -1)),
      direct_fd(std::exchange(other.direct_fd, -1)),
      direct_reason(std::move(other.direct_reason)) {}

IoFd& IoFd::operator=(IoFd&& other) noexcept {
  if (this != &other) {
    if (direct_fd >= 0) ::close(direct_fd);
    if (fd >= 0) ::close(fd);
    path = std::move(other.path);
    mode = other.mode;
    fd = std::exchange(other.fd, -1);
    direct_fd = std::exchange(other.direct_fd, -1);
    direct_reason = std::move(other.direct_reason);
  }
  return *this;
}

IoFd::~IoFd() {
  if (direct_fd >= 0) ::close(direct_fd);
  if (fd >= 0) ::close(fd);
}

IoFd io_open(const std::string& path, IoMode mode, bool want_direct) {
  int flags = O_CLOEXEC;
  const char* purpose = "reading";
  switch (mode) {
    case IoMode::kIoModeRead:
      flags |= O_RDONLY;
      break;
    case IoMode::kIoModeWrite:
      flags |= O_WRONLY | O_CREAT | O_TRUNC;
      purpose = "writing";
      break;
    case IoMode::kIoModeReadWrite:
      flags |= O_RDWR;
      purpose = "reading and writing";
      break;
  }
  IoFd file;
  file.path = path;
  file.mode = mode;
  file.fd = ::open(path.c_str(), flags, 0644);
  if (file.fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      TIERLM_FAIL(kErrorNotFound, err, "cannot open ", path, " for ", purpose, ": ",
                  errno_text(err),
                  mode == IoMode::kIoModeWrite ? " (does its directory exist?)"
                                               : " (check the path; mode 'w' creates files)");
    }
    const char* hint = (err == EACCES || err == EPERM) ? " (check the file's permissions and owner)"
                       : err == EROFS ? " (read-only file system; open with mode 'r')"
                                      : "";
    TIERLM_FAIL(kErrorIo, err, "cannot open ", path, " for ", purpose, ": ", errno_text(err), hint);
  }
  struct stat st {};
  if (fstat(file.fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    TIERLM_FAIL(kErrorIo, EISDIR, "cannot open ", path, " for ", purpose,
                ": it is a directory; give a file path");
  }
  if (!want_direct) {
    file.direct_reason = "O_DIRECT turned off";
  } else if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    file.direct_reason = "not a regular file or block device";
  } else {
    const int direct_flags = (flags & ~(O_CREAT | O_TRUNC)) | O_DIRECT;
    file.direct_fd = ::open(path.c_str(), direct_flags);
    if (file.direct_fd < 0) {
      file.direct_reason = "the file system refused O_DIRECT: " + errno_text(errno);
    }
  }
  if (file.direct_fd < 0) {
    // Requests are large and read front to back, so ask for generous read-ahead.
    posix_fadvise(file.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  return file;
}

bool io_op_advance(const IoFd& file, IoOp& op, long result) {
  if (result == -EINTR || result == -EAGAIN) return false;
  if (result < 0) {
    const int err = static_cast<int>(-result);
    if (op.direct && err == EINVAL) {
      // Some file systems refuse O_DIRECT for particular ranges: finish through the page cache.
      op.direct = false;
      return false;
    }
    op.state->finish(0, errno_error(file, op, err));
    return true;
  }
  if (result == 0) {
    if (op.kind == IoOpKind::kIoOpRead) {
      op.state->finish(0, eof_error(file, op));
    } else {
      op.state->finish(0, errno_error(file, op, ENOSPC));
    }
    return true;
  }
  op.done += static_cast<size_t>(result);
  if (op.done >= op.len) {
    io_trace(file.path, op.offset, op.len, true);
    op.state->finish(op.len, nullptr);
    return true;
  }
  // A direct read that ended short at an unaligned end of file continues buffered.
  op.direct = file.direct_ok(op.next_buf(), op.next_len(), op.next_offset());
  return false;
}

void io_op_fail(const IoFd& file, IoOp& op, int err, const char* call) {
  std::ostringstream out;
  out << describe(file, op) << " failed: " << call << ": " << errno_text(err)
      << " (the io_uring back end cannot submit here; use TIERLM_IO=threads)";
  op.state->finish(0, std::make_exception_ptr(Error(ErrorCode::kErrorIo, err, out.str())));
}

int io_op_fault(const IoFd& file, const IoOp& op, size_t* n) {
  const bool read = op.kind == IoOpKind::kIoOpRead;
  const IoFault fault =
      io_fault_point(read ? IoFaultOp::kIoFaultRead : IoFaultOp::kIoFaultWrite, file.path, *n);
  if (fault.err != 0) return fault.err;
  if (fault.len < *n) {
    *n = op.direct ? std::max(round_down(fault.len, kAlignment), kAlignment) : fault.len;
  }
  return 0;
}

void io_op_run_blocking(const IoFd& file, IoOp& op) {
  for (;;) {
    const int fd = op.direct ? file.direct_fd : file.fd;
    size_t len = op.next_len();
    const int injected = io_op_fault(file, op, &len);
    ssize_t n = -1;
    if (injected != 0) {
      errno = injected;
    } else if (op.kind == IoOpKind::kIoOpRead) {
      n = ::pread(fd, op.next_buf(), len, static_cast<off_t>(op.next_offset()));
    } else {
      n = ::pwrite(fd, op.next_buf(), len, static_cast<off_t>(op.next_offset()));
    }
    if (io_op_advance(file, op, n < 0 ? -static_cast<long>(errno) : static_cast<long>(n))) {
      return;
    }
  }
}

void IoEngine::run(IoOp& op) {
  std::shared_ptr<IoState> state = op.state;
  submit(std::span<IoOp>(&op, 1));
  state->wait();
}

}  // namespace tierlm::detail
