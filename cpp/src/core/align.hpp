// The alignment of the disk tier: O_DIRECT transfers and the package's tensor offsets and file
// padding are multiples of kIoAlignment bytes, so reads and the buffers they land in are
// rounded with these helpers (one definition for the whole tree).
#pragma once

#include <cstdint>

namespace tierlm::detail {

constexpr uint64_t kIoAlignment = 4096;

constexpr uint64_t round_up(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

constexpr uint64_t round_down(uint64_t value, uint64_t multiple) {
  return value / multiple * multiple;
}

}  // namespace tierlm::detail
