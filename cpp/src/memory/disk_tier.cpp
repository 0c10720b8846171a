// Disk tier: a first-fit, coalescing free list (detail::ExtentAllocator) over an unlinked
// scratch file; space is fallocated per extent and kept when the extent is freed, so reuse
// costs no new allocation on disk.
#include "tierlm/memory/disk_tier.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <utility>

#include "memory/extent_allocator.hpp"
#include "memory/tier_ledger.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm {

namespace detail {

class DiskSpace {
 public:
  DiskSpace(std::string dir, uint64_t budget, File file)
      : dir(std::move(dir)),
        ledger(std::make_shared<TierLedger>(TierKind::kTierDisk, budget)),
        file(std::move(file)),
        allocator_(budget, kAlignment) {}

  // Offset of a fresh extent of `reserved` bytes (a multiple of 4 KiB), space on disk held.
  uint64_t allocate(uint64_t bytes, uint64_t reserved) {
    ledger->reserve(reserved);
    std::optional<uint64_t> offset;
    uint64_t largest = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      offset = allocator_.allocate(reserved);
      if (!offset) largest = allocator_.largest_free();
    }
    if (!offset) {
      ledger->release(reserved);
      TIERLM_FAIL(kErrorBudget, 0, "disk tier: allocation of ", format_bytes(bytes), " (", bytes,
                  " bytes) fits the budget of ", format_bytes(ledger->budget()),
                  " but no free extent is that large (largest ", format_bytes(largest),
                  ": fragmented); free extents or raise the disk budget");
    }
    try {
      file.allocate(*offset, reserved);
    } catch (const Error& error) {
      free(*offset, reserved);
      TIERLM_FAIL(kErrorIo, error.sys_errno(), "disk tier: ", error.what(),
                  error.sys_errno() == ENOSPC ? "; or lower the disk budget" : "");
    }
    return *offset;
  }

  void free(uint64_t offset, uint64_t reserved) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      allocator_.free(offset, reserved);
    }
    ledger->release(reserved);
  }

  const std::string dir;
  const TierLedgerPtr ledger;
  File file;

 private:
  std::mutex mutex_;
  ExtentAllocator allocator_;
};

}  // namespace detail

DiskExtent::DiskExtent(DiskExtent&& other) noexcept { *this = std::move(other); }

DiskExtent& DiskExtent::operator=(DiskExtent&& other) noexcept {
  if (this != &other) {
    release();
    space_ = std::move(other.space_);
    offset_ = std::exchange(other.offset_, 0);
    size_ = std::exchange(other.size_, 0);
    reserved_ = std::exchange(other.reserved_, 0);
  }
  return *this;
}

DiskExtent::~DiskExtent() { release(); }

void DiskExtent::release() {
  if (space_ == nullptr) return;
  space_->free(offset_, reserved_);
  space_.reset();
  offset_ = size_ = reserved_ = 0;
}

void DiskExtent::check(const char* what, size_t len, uint64_t offset) const {
  TIERLM_CHECK(space_ != nullptr, kErrorInvalidArgument, "disk tier: ", what,
               " of an empty or released extent");
  TIERLM_CHECK(offset <= size_ && len <= size_ - offset, kErrorInvalidArgument, "disk tier: ", what,
               " of ", len, " bytes at offset ", offset, " is outside the extent of ", size_,
               " bytes; keep offset + length within the extent");
}

size_t DiskExtent::read(void* buf, size_t len, uint64_t offset) const {
  check("read", len, offset);
  const size_t n = space_->file.read(buf, len, offset_ + offset);
  space_->ledger->record_out(n);
  return n;
}

size_t DiskExtent::write(const void* buf, size_t len, uint64_t offset) {
  check("write", len, offset);
  const size_t n = space_->file.write(buf, len, offset_ + offset);
  space_->ledger->record_in(n);
  return n;
}

IoFuture DiskExtent::pread(void* buf, size_t len, uint64_t offset) const {
  check("read", len, offset);
  IoFuture future = space_->file.pread(buf, len, offset_ + offset);
  space_->ledger->record_out(len);
  return future;
}

IoFuture DiskExtent::pwrite(const void* buf, size_t len, uint64_t offset) {
  check("write", len, offset);
  IoFuture future = space_->file.pwrite(buf, len, offset_ + offset);
  space_->ledger->record_in(len);
  return future;
}

namespace {

File open_scratch(const std::string& dir, const IoOptions& options) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      TIERLM_FAIL(kErrorNotFound, err, "disk tier: directory ", dir,
                  " does not exist; create it or pass another directory");
    }
    TIERLM_FAIL(kErrorIo, err, "disk tier: cannot use directory ", dir, ": ", errno_text(err));
  }
  if (!S_ISDIR(st.st_mode)) {
    TIERLM_FAIL(kErrorIo, ENOTDIR, "disk tier: ", dir,
                " is not a directory; pass the directory to hold the scratch file");
  }
  std::string path = dir + (dir.empty() || dir.back() == '/' ? "" : "/") + "tierlm-disk-XXXXXX";
  const int fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    TIERLM_FAIL(kErrorIo, err, "disk tier: cannot create a scratch file in ", dir, ": ",
                errno_text(err), " (check that the directory is writable)");
  }
  ::close(fd);
  try {
    File file(path, IoMode::kIoModeReadWrite, options);
    ::unlink(path.c_str());  // the open descriptors keep it; nothing outlives the tier
    return file;
  } catch (...) {
    ::unlink(path.c_str());
    throw;
  }
}

}  // namespace

DiskTier::DiskTier(const std::string& dir, uint64_t budget, IoOptions options)
    : space_(std::make_shared<detail::DiskSpace>(dir, budget, open_scratch(dir, options))) {}

DiskExtent DiskTier::allocate(size_t bytes) {
  const uint64_t reserved = round_up(std::max<uint64_t>(bytes, 1), kAlignment);
  DiskExtent extent;
  extent.offset_ = space_->allocate(bytes, reserved);
  extent.space_ = space_;
  extent.size_ = bytes;
  extent.reserved_ = reserved;
  return extent;
}

std::vector<IoRequest> DiskTier::file_requests(std::span<const DiskRequest> requests,
                                               const char* what) const {
  std::vector<IoRequest> out;
  out.reserve(requests.size());
  for (const DiskRequest& r : requests) {
    TIERLM_CHECK(r.extent != nullptr, kErrorInvalidArgument, "disk tier: ", what,
                 " request without an extent");
    r.extent->check(what, r.len, r.offset);
    TIERLM_CHECK(r.extent->space_ == space_, kErrorInvalidArgument, "disk tier: ", what,
                 " request names an extent of another disk tier");
    out.push_back({r.buf, r.len, r.extent->offset() + r.offset});
  }
  return out;
}

std::vector<IoFuture> DiskTier::pread_batch(std::span<const DiskRequest> requests) const {
  const std::vector<IoRequest> file = file_requests(requests, "read");
  std::vector<IoFuture> futures = space_->file.pread_batch(file);
  for (const IoRequest& r : file) space_->ledger->record_out(r.len);
  return futures;
}

std::vector<IoFuture> DiskTier::pwrite_batch(std::span<const DiskRequest> requests) {
  const std::vector<IoRequest> file = file_requests(requests, "write");
  std::vector<IoFuture> futures = space_->file.pwrite_batch(file);
  for (const IoRequest& r : file) space_->ledger->record_in(r.len);
  return futures;
}

TierStats DiskTier::stats() const { return space_->ledger->stats(); }
uint64_t DiskTier::budget() const { return space_->ledger->budget(); }
uint64_t DiskTier::available() const {
  return space_->ledger->budget() - space_->ledger->current();
}
const std::string& DiskTier::directory() const { return space_->dir; }
File& DiskTier::file() const { return space_->file; }

}  // namespace tierlm
