// Run-time SIMD dispatch: what the CPU supports, and which level kernels use.
// TIERLM_SIMD=scalar|avx2|avx512 caps the level (tests run every level this way).
#pragma once

#include "tierlm/core/export.hpp"

namespace tierlm {

enum class SimdLevel { kSimdScalar = 0, kSimdAvx2 = 1, kSimdAvx512 = 2 };

struct TIERLM_API CpuFeatures {
  bool avx2 = false;    // with FMA and F16C
  bool avx512 = false;  // F, BW, VL, DQ
  bool avx512_bf16 = false;
  bool avx512_fp16 = false;
  bool avx512_vnni = false;  // VPDPBUSD / VPDPWSSD: the quantized kernels' integer dot products
};

TIERLM_API const CpuFeatures& cpu_features();
TIERLM_API const char* simd_level_name(SimdLevel level);
// The best level this CPU supports.
TIERLM_API SimdLevel simd_detected();
// The level kernels dispatch to: detected, capped by TIERLM_SIMD or simd_set_level.
TIERLM_API SimdLevel simd_level();
// Caps the level (throws kErrorUnsupported when the CPU lacks it).
TIERLM_API void simd_set_level(SimdLevel level);

}  // namespace tierlm
