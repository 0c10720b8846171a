// Build options and machine capabilities, for `tierlm info`.
#include "tierlm/core/info.hpp"

#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/core/simd.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

void bind_info(nb::module_& m) {
  m.def("build_info", [] {
    const BuildInfo& b = build_info();
    nb::dict d;
    d["version"] = b.version;
    d["cuda"] = b.cuda;
    d["io_uring"] = b.io_uring;
    d["compiler"] = b.compiler;
    return d;
  });
  m.def("cpu_info", [] {
    const CpuFeatures& f = cpu_features();
    nb::dict d;
    d["avx2"] = f.avx2;
    d["avx512"] = f.avx512;
    d["avx512_bf16"] = f.avx512_bf16;
    d["avx512_fp16"] = f.avx512_fp16;
    d["avx512_vnni"] = f.avx512_vnni;
    d["simd_detected"] = simd_level_name(simd_detected());
    d["simd_level"] = simd_level_name(simd_level());
    d["threads"] = parallel_threads();
    return d;
  });
  m.def("set_threads", &parallel_set_threads, nb::arg("threads"));
  m.def("set_simd_level", [](const std::string& name) {
    for (SimdLevel level : {SimdLevel::kSimdScalar, SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512}) {
      if (name == simd_level_name(level)) return simd_set_level(level);
    }
    throw nb::value_error(("unknown SIMD level '" + name + "' (scalar, avx2, avx512)").c_str());
  });
}

}  // namespace tierlm::bindings
