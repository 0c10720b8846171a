// First-fit allocation of aligned extents inside one fixed range (a device arena, a scratch
// file). Freed extents coalesce with their neighbours, so the range does not fragment into
// unusable slivers. Not thread-safe: the owning tier serialises calls.
#pragma once

#include <cstdint>
#include <map>
#include <optional>

namespace tierlm::detail {

class ExtentAllocator {
 public:
  ExtentAllocator(uint64_t capacity, uint64_t alignment);

  // Offset of a free extent of `size` bytes (rounded up to the alignment), or nullopt.
  std::optional<uint64_t> allocate(uint64_t size);
  // Returns an extent given out by allocate; size as passed to allocate.
  void free(uint64_t offset, uint64_t size);

  uint64_t rounded(uint64_t size) const;
  uint64_t capacity() const { return capacity_; }
  uint64_t largest_free() const;

 private:
  uint64_t capacity_;
  uint64_t alignment_;
  std::map<uint64_t, uint64_t> free_;  // offset -> size, non-adjacent
};

}  // namespace tierlm::detail
