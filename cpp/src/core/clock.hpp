// The runtime's one clock for timing its stats: monotonic, and read as seconds since a start.
#pragma once

#include <chrono>

namespace tierlm::detail {

using Clock = std::chrono::steady_clock;

// Seconds from t0 to now.
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace tierlm::detail
