// Disk tier: 4 KiB-aligned extents of one scratch file under a directory the user gives,
// charged to a byte budget and read/written through the I/O engine (O_DIRECT when aligned).
// The scratch file is unlinked as soon as it is open, so nothing is left behind; extent space
// is reserved with posix_fallocate, so a full disk fails at allocate, not mid-write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tierlm/core/export.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm {

namespace detail {
class DiskSpace;
}

// Bytes [offset(), offset() + size()) of the tier's scratch file; returned to the tier's free
// list when destroyed. Offsets given to read/write are relative to the extent.
class TIERLM_API DiskExtent {
 public:
  DiskExtent() = default;
  DiskExtent(DiskExtent&& other) noexcept;
  DiskExtent& operator=(DiskExtent&& other) noexcept;
  DiskExtent(const DiskExtent&) = delete;
  DiskExtent& operator=(const DiskExtent&) = delete;
  ~DiskExtent();

  uint64_t offset() const { return offset_; }  // in the scratch file, a multiple of 4 KiB
  size_t size() const { return size_; }
  size_t reserved() const { return reserved_; }  // size rounded up to 4 KiB
  explicit operator bool() const { return space_ != nullptr; }

  // Bounds-checked transfers (offset + len <= size()); counted in the tier's stats.
  size_t read(void* buf, size_t len, uint64_t offset = 0) const;
  size_t write(const void* buf, size_t len, uint64_t offset = 0);
  IoFuture pread(void* buf, size_t len, uint64_t offset = 0) const;
  IoFuture pwrite(const void* buf, size_t len, uint64_t offset = 0);
  // Returns the space to the tier now (the destructor does the same).
  void release();

 private:
  friend class DiskTier;
  void check(const char* what, size_t len, uint64_t offset) const;

  std::shared_ptr<detail::DiskSpace> space_;
  uint64_t offset_ = 0;
  size_t size_ = 0;
  size_t reserved_ = 0;
};

// One transfer of a batch over several extents: len bytes at offset inside *extent.
struct TIERLM_API DiskRequest {
  const DiskExtent* extent = nullptr;
  void* buf = nullptr;
  size_t len = 0;
  uint64_t offset = 0;
};

class TIERLM_API DiskTier {
 public:
  // dir must exist and be writable; the scratch file lives there until the tier and its
  // extents are gone (it is unlinked at once, so a crash leaves nothing behind).
  DiskTier(const std::string& dir, uint64_t budget, IoOptions options = {});

  DiskExtent allocate(size_t bytes);
  // Bounds-checked transfers into/out of many extents of this tier in one submission.
  std::vector<IoFuture> pread_batch(std::span<const DiskRequest> requests) const;
  std::vector<IoFuture> pwrite_batch(std::span<const DiskRequest> requests);
  TierStats stats() const;
  uint64_t budget() const;
  uint64_t available() const;
  const std::string& directory() const;
  // The scratch file, for batches over many extents (offsets from DiskExtent::offset()).
  File& file() const;

 private:
  std::vector<IoRequest> file_requests(std::span<const DiskRequest> requests,
                                       const char* what) const;

  std::shared_ptr<detail::DiskSpace> space_;
};

}  // namespace tierlm
