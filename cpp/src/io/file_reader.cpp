// pread loop with EINTR retry; short reads mean the file shrank under us or is truncated.
#include "io/file_reader.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm::detail {

FileReader::FileReader(const std::string& path) : path_(path) {
  io_fault_check();
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    const int err = errno;
    if (err == ENOENT) {
      TIERLM_FAIL(kErrorNotFound, err, path,
                  ": not found (the package is incomplete; export it again)");
    }
    TIERLM_FAIL(kErrorIo, err, path, ": cannot open: ", errno_text(err));
  }
}

FileReader::FileReader(FileReader&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

FileReader& FileReader::operator=(FileReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

FileReader::~FileReader() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t FileReader::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    TIERLM_FAIL(kErrorIo, err, path_, ": fstat failed: ", errno_text(err));
  }
  return static_cast<uint64_t>(st.st_size);
}

void FileReader::read(void* buf, size_t len, uint64_t offset, const std::string& what) const {
  char* out = static_cast<char*>(buf);
  size_t done = 0;
  while (done < len) {
    const IoFault fault = io_fault_point(IoFaultOp::kIoFaultRead, path_, len - done);
    const ssize_t got =
        fault.err != 0 ? -1
                       : ::pread(fd_, out + done, fault.len, static_cast<off_t>(offset + done));
    if (got < 0) {
      const int err = fault.err != 0 ? fault.err : errno;
      if (err == EINTR) continue;
      TIERLM_FAIL(kErrorIo, err, "read of ", what, " (", format_bytes(len), " at offset ", offset,
                  ") in ", path_, " failed: ", errno_text(err));
    }
    if (got == 0) {
      TIERLM_FAIL(kErrorCorrupt, 0, "read of ", what, " (", format_bytes(len), " at offset ",
                  offset, ") in ", path_, " failed: short read after ", done,
                  " bytes (file is truncated?)");
    }
    done += static_cast<size_t>(got);
  }
}

}  // namespace tierlm::detail
