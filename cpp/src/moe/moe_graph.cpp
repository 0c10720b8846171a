// Reading the moe ops of graph.json against the manifest.
#include "moe/moe_graph.hpp"

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

MoeShape moe_shape(const Package& package, const GraphOp& op, size_t op_index) {
  const std::string where = "graph.json: op " + std::to_string(op_index) + " (moe)";
  const int64_t width = package.graph.width(op.output);
  TIERLM_CHECK(op.inputs.size() == 1 && package.graph.width(op.inputs[0]) == width, kErrorCorrupt,
               where, ": needs one input as wide as its output (", width, ")");
  const TensorInfo& router = package.tensor(op.weight);
  TIERLM_CHECK(router.shape == std::vector<int64_t>({op.experts, width}), kErrorCorrupt, where,
               ": router `", router.name, "` does not have shape [", op.experts, ", ", width, "]");
  MoeShape s;
  s.hidden = static_cast<size_t>(width);
  s.experts = static_cast<size_t>(op.experts);
  s.top_k = static_cast<size_t>(op.top_k);
  s.norm_topk = op.norm_topk;
  s.router_dtype = router.dtype;
  int64_t inner = -1;
  for (int64_t e = 0; e < op.experts; ++e) {
    for (int part = 0; part < kExpertParts; ++part) {
      const TensorInfo& t =
          package.tensor(moe_expert_tensor(op.expert_prefix, e, static_cast<ExpertPart>(part)));
      if (inner < 0) inner = t.shape.size() == 2 ? t.shape[0] : 0;
      const bool down = part == static_cast<int>(ExpertPart::kExpertPartDown);
      const std::vector<int64_t> expect =
          down ? std::vector<int64_t>{width, inner} : std::vector<int64_t>{inner, width};
      TIERLM_CHECK(inner > 0 && t.shape == expect, kErrorCorrupt, where, ": expert tensor `",
                   t.name, "` does not have shape [", expect[0], ", ", expect[1], "]");
      if (e == 0) s.part_dtype[part] = t.dtype;
      TIERLM_CHECK(t.dtype == s.part_dtype[part], kErrorUnsupported, where, ": expert tensor `",
                   t.name, "` is ", dtype_name(t.dtype), ", expert 0's is ",
                   dtype_name(s.part_dtype[part]), "; export the experts in one dtype");
    }
  }
  s.inner = static_cast<size_t>(inner);
  return s;
}

std::vector<size_t> moe_ops(const Package& package) {
  std::vector<size_t> ops;
  for (size_t i = 0; i < package.graph.ops.size(); ++i) {
    if (package.graph.ops[i].kind == OpKind::kOpMoe) ops.push_back(i);
  }
  return ops;
}

}  // namespace tierlm::detail
