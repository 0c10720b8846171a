// The SIMD levels this CPU runs, and a guard that restores the process level, for the kernel
// tests that compare every level against the scalar reference.
#pragma once

#include <vector>

#include "tierlm/core/simd.hpp"

namespace tierlm::testing {

inline std::vector<SimdLevel> simd_levels_here() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::kSimdScalar, SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512})
    if (l <= simd_detected()) out.push_back(l);
  return out;
}

struct SimdLevelGuard {
  SimdLevel saved = simd_level();
  ~SimdLevelGuard() { simd_set_level(saved); }
};

}  // namespace tierlm::testing
