// CPU feature detection through cpuid/xgetbv (GCC builtins), once per process.
#include "tierlm/core/simd.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "tierlm/core/error.hpp"

namespace tierlm {

namespace {

SimdLevel level_from_env(SimdLevel detected) {
  const char* env = std::getenv("TIERLM_SIMD");
  if (env == nullptr || *env == '\0') return detected;
  SimdLevel wanted = detected;
  if (std::strcmp(env, "scalar") == 0)
    wanted = SimdLevel::kSimdScalar;
  else if (std::strcmp(env, "avx2") == 0)
    wanted = SimdLevel::kSimdAvx2;
  else if (std::strcmp(env, "avx512") == 0)
    wanted = SimdLevel::kSimdAvx512;
  else
    TIERLM_FAIL(kErrorInvalidArgument, 0, "TIERLM_SIMD=", env,
                " is not one of scalar, avx2, avx512");
  return wanted < detected ? wanted : detected;
}

std::atomic<int> g_level{-1};

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures kFeatures = [] {
    CpuFeatures f;
#if defined(__x86_64__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    // cpuid leaf 7 EDX bit 23 read directly: clang before 15 has no "avx512fp16" builtin name.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    f.avx512_fp16 = f.avx512 && __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 23 & 1);
    f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
#endif
    return f;
  }();
  return kFeatures;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kSimdScalar:
      return "scalar";
    case SimdLevel::kSimdAvx2:
      return "avx2";
    case SimdLevel::kSimdAvx512:
      return "avx512";
  }
  return "unknown";
}

SimdLevel simd_detected() {
  const CpuFeatures& f = cpu_features();
  if (f.avx512) return SimdLevel::kSimdAvx512;
  if (f.avx2) return SimdLevel::kSimdAvx2;
  return SimdLevel::kSimdScalar;
}

SimdLevel simd_level() {
  int level = g_level.load(std::memory_order_relaxed);
  if (level < 0) {
    level = static_cast<int>(level_from_env(simd_detected()));
    g_level.store(level, std::memory_order_relaxed);
  }
  return static_cast<SimdLevel>(level);
}

void simd_set_level(SimdLevel level) {
  TIERLM_CHECK(level <= simd_detected(), kErrorUnsupported, "SIMD level ", simd_level_name(level),
               " is not supported by this CPU (best: ", simd_level_name(simd_detected()), ")");
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

}  // namespace tierlm
