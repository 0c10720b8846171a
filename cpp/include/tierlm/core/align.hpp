// The one alignment every tier, package file and I/O request shares, and rounding to it.
// 4 KiB is the O_DIRECT unit on the file systems tierlm targets and the host page size, so a
// buffer or file offset aligned to it can be read into or out of without a bounce copy.
#pragma once

#include <cstdint>

namespace tierlm {

inline constexpr uint64_t kAlignment = 4096;

// The least multiple of `alignment` (any nonzero value, not only powers of two) >= value.
constexpr uint64_t round_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// The greatest multiple of `alignment` (nonzero) <= value.
constexpr uint64_t round_down(uint64_t value, uint64_t alignment) {
  return value / alignment * alignment;
}

}  // namespace tierlm
