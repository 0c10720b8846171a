// First fit over a map of free extents; frees merge with the neighbours on both sides.
#include "memory/extent_allocator.hpp"

#include <algorithm>

namespace tierlm::detail {

ExtentAllocator::ExtentAllocator(uint64_t capacity, uint64_t alignment)
    : capacity_(capacity / alignment * alignment), alignment_(alignment) {
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

uint64_t ExtentAllocator::rounded(uint64_t size) const {
  return (std::max<uint64_t>(size, 1) + alignment_ - 1) / alignment_ * alignment_;
}

std::optional<uint64_t> ExtentAllocator::allocate(uint64_t size) {
  const uint64_t need = rounded(size);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const uint64_t offset = it->first;
    const uint64_t left = it->second - need;
    free_.erase(it);
    if (left > 0) free_.emplace(offset + need, left);
    return offset;
  }
  return std::nullopt;
}

void ExtentAllocator::free(uint64_t offset, uint64_t size) {
  uint64_t start = offset;
  uint64_t length = rounded(size);
  auto next = free_.lower_bound(start);
  if (next != free_.end() && start + length == next->first) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      length += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, length);
}

uint64_t ExtentAllocator::largest_free() const {
  uint64_t best = 0;
  for (const auto& [offset, size] : free_) best = std::max(best, size);
  return best;
}

}  // namespace tierlm::detail
