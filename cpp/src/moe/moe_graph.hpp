// The moe ops of a package's graph and their shapes, checked against the manifest at load.
#pragma once

#include <string>
#include <vector>

#include "moe/moe_ffn.hpp"
#include "tierlm/model/package.hpp"

namespace tierlm::detail {

// The shape of moe op `op`; throws kErrorCorrupt naming the op and the tensor that does not fit
// (router [experts, width], gate/up [inner, width], down [width, inner], one dtype per part).
MoeShape moe_shape(const Package& package, const GraphOp& op, size_t op_index);

// The graph's moe ops (indices into graph.ops), in order: ExpertProvider's `moe` numbers.
std::vector<size_t> moe_ops(const Package& package);

}  // namespace tierlm::detail
