// The list of backends this build knows (what the op test driver iterates) and the op names.
// A backend joins by adding its entries to backend_list(); one that cannot run here stays
// listed with the reason, so the driver's skip says why.
#include "kernels/backend.hpp"

#include "tierlm/memory/device.hpp"

namespace tierlm::detail {

const char* backend_op_name(BackendOp op) {
  switch (op) {
    case BackendOp::kBackendOpLinear:
      return "linear";
    case BackendOp::kBackendOpRmsNorm:
      return "rmsnorm";
    case BackendOp::kBackendOpLayerNorm:
      return "layernorm";
    case BackendOp::kBackendOpRope:
      return "rope";
    case BackendOp::kBackendOpSiluMul:
      return "silu_mul";
    case BackendOp::kBackendOpRelu:
      return "relu";
    case BackendOp::kBackendOpGelu:
      return "gelu";
    case BackendOp::kBackendOpAdd:
      return "add";
    case BackendOp::kBackendOpEmbedding:
      return "embedding";
    case BackendOp::kBackendOpAttention:
      return "attention";
    case BackendOp::kBackendOpKvStore:
      return "kv_store";
    case BackendOp::kBackendOpCopyRows:
      return "copy_rows";
    case BackendOp::kBackendOpAttentionMass:
      return "attention_mass";
  }
  return "unknown";
}

std::vector<BackendEntry> backend_list() {
  std::vector<BackendEntry> out;
  for (SimdLevel level : {SimdLevel::kSimdScalar, SimdLevel::kSimdAvx2, SimdLevel::kSimdAvx512}) {
    BackendEntry e;
    e.name = std::string("cpu-") + simd_level_name(level);
    if (level <= simd_detected()) {
      e.create = [level] { return backend_cpu_at(level); };
    } else {
      e.unavailable = std::string("this CPU lacks ") + simd_level_name(level) +
                      " (best level: " + simd_level_name(simd_detected()) + ")";
    }
    out.push_back(std::move(e));
  }
  // cuda/ holds the device tier but no kernels behind Backend yet; listing it keeps the gap
  // visible in the driver's output until the CUDA backend replaces this entry.
  BackendEntry cuda;
  cuda.name = "cuda";
  cuda.unavailable = device_count() == 0
                         ? device_unavailable_reason()
                         : "no CUDA kernels implement the backend interface yet (cuda/ holds "
                           "the device tier only)";
  out.push_back(std::move(cuda));
  return out;
}

}  // namespace tierlm::detail
