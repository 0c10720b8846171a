// The moe ops of a package's graph: their shapes, checked against the manifest at load, and
// the expert tensors they read; and the expert provider that reads experts through the
// weight store like any other tensor (every expert resident, or streamed with its layer).
#pragma once

#include <string>
#include <vector>

#include "moe/moe_ffn.hpp"
#include "tierlm/model/package.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

// The shape of moe op `op`; throws kErrorCorrupt naming the op and the tensor that does not fit
// (router [experts, width], gate/up [inner, width], down [width, inner], one dtype per part).
MoeShape moe_shape(const Package& package, const GraphOp& op, size_t op_index);

// The graph's moe ops (indices into graph.ops), in order: ExpertProvider's `moe` numbers.
std::vector<size_t> moe_ops(const Package& package);

// Every expert tensor of the graph, moe op by moe op, expert by expert, gate/up/down.
std::vector<std::string> moe_expert_tensors(const Package& package);

class ExpertsFromWeights : public ExpertProvider {
 public:
  ExpertsFromWeights(const Package& package, WeightStore& weights);
  void route(int, std::span<const int32_t>, size_t) override {}
  ExpertWeights expert(int moe, int32_t e) override;
  void release(int moe, int32_t e) override;

 private:
  WeightStore& weights_;
  std::vector<std::vector<int>> index_;  // [moe][expert * 3 + part]: weight store indices
};

}  // namespace tierlm::detail
