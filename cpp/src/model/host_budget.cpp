// The budget checks and messages of load, and the placement record they lead to. Weights come
// last: a resident weight byte saves a read on every token, so they get what the parts that
// must stay in the host tier leave.
#include "model/host_budget.hpp"

#include <algorithm>

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

constexpr uint64_t kPageBytes = 4096;  // the host tier's allocation granule

uint64_t whole_pages(uint64_t bytes) { return (bytes + kPageBytes - 1) / kPageBytes * kPageBytes; }

}  // namespace

HostBudget host_budget_fit(const Package& package, const ModelOptions& options,
                           const HostDemand& demand, SparseFfnPlan* sparse_plan,
                           ChannelPlan* channel_plan) {
  const Package& p = package;
  HostBudget b;
  b.weight_bytes = resident_weight_bytes(p, demand.tensors);
  b.kv_bytes = whole_pages(demand.kv_bytes);
  b.arena_bytes = whole_pages(std::max<uint64_t>(demand.arena_bytes, 1));
  const uint64_t kv_bytes = b.kv_bytes;
  const uint64_t arena_bytes = b.arena_bytes;
  auto sparse_bytes = [&] {
    return sparse_plan ? sparse_plan->host_bytes : channel_plan ? channel_plan->host_bytes : 0;
  };
  if (options.sparse && options.sparse_capacity == 0 &&
      b.weight_bytes + kv_bytes + arena_bytes + sparse_bytes() > options.host_budget) {
    // Weights first: a resident weight byte saves a read on every token, a cached window row
    // only on some. Auto capacities then hold one token's prediction; the window still evicts
    // the least recently used neurons when its union is larger.
    // (Auto channel sites start streamed, their smallest.)
    if (sparse_plan) size_sparse_caches(*sparse_plan, 0, 1);
  }
  b.sparse_bytes = sparse_bytes();
  b.fixed_bytes = kv_bytes + arena_bytes + b.sparse_bytes + demand.expert_min_bytes;
  const uint64_t needed = b.weight_bytes + b.fixed_bytes;
  const WeightPlacement probe = weight_placement(p, demand.tensors, 0, 0, demand.row_tensors,
                                                 demand.chunk, demand.split_tensors);
  b.minimum_budget = probe.minimum() + b.fixed_bytes;
  b.expert_budget = demand.expert_min_bytes;
  if (needed <= options.host_budget) {
    // Channel sites take what is left, whole ones resident: a resident column saves a read
    // whenever it is kept.
    const uint64_t grown = channel_plan && options.sparse_capacity == 0
                               ? grow_channel_caches(*channel_plan, options.host_budget - needed)
                               : 0;
    b.sparse_bytes += grown;
    b.fixed_bytes += grown;
    b.expert_budget += options.host_budget - needed - grown;
    return b;
  }

  std::string also_held =
      channel_plan ? " + input-channel caches, staging and scratch " +
                         format_bytes(b.sparse_bytes) + " (lower sparse_capacity or sparse_window)"
      : options.sparse
          ? " + sparse FFN neuron caches, staging and predictors " + format_bytes(b.sparse_bytes) +
                " (lower sparse_capacity or sparse_window)"
          : std::string();
  if (demand.expert_min_bytes > 0) {
    also_held += " + one expert of the expert cache (and the routers) " +
                 format_bytes(demand.expert_min_bytes);
  }
  const uint64_t minimum = b.minimum_budget;
  TIERLM_CHECK(
      b.fixed_bytes <= options.host_budget, kErrorBudget, "host tier: the KV cache (",
      format_bytes(kv_bytes), ": ", demand.context, " tokens of ", dtype_name(demand.kv_dtype),
      " plus a block for each of ", demand.max_batch - 1, " more sequences) and activations (",
      format_bytes(arena_bytes), ")", also_held,
      " stay in the host tier and do not fit the host budget of ",
      format_bytes(options.host_budget),
      "; lower max_context or max_batch, use a smaller kv_dtype (q8_0), set kv_host_budget "
      "to keep the oldest KV blocks on disk, or raise "
      "the host budget (streaming the weights needs at least ",
      format_bytes(minimum), ")");
  TIERLM_CHECK(minimum <= options.host_budget, kErrorBudget,
               "host tier: streaming the weights "
               "needs a host budget of at least ",
               format_bytes(minimum), " (", minimum, " bytes: resident norms/embeddings/lm_head ",
               format_bytes(probe.base_bytes),
               " + one staging section (the largest matrix, or row part of one) ",
               format_bytes(probe.section_bytes), " + KV cache ", format_bytes(kv_bytes),
               " + activations ", format_bytes(arena_bytes), also_held, ") but the host budget is ",
               format_bytes(options.host_budget), "; raise the host budget or lower max_context");
  b.streaming = true;
  b.placement = weight_placement(p, demand.tensors, options.host_budget - b.fixed_bytes,
                                 static_cast<int>(options.ring_sections), demand.row_tensors,
                                 demand.chunk, demand.split_tensors);
  return b;
}

WeightPlacement host_budget_placement(const Package& package, const HostDemand& demand,
                                      const HostBudget& budget) {
  if (!budget.streaming) {
    WeightPlacement info;
    info.minimum_budget = budget.minimum_budget;
    info.resident_bytes = budget.weight_bytes;
    info.base_bytes = budget.weight_bytes;
    return info;
  }
  const WeightPlacement& placement = budget.placement;
  WeightPlacement info = placement;
  info.streaming = true;
  info.minimum_budget = budget.minimum_budget;
  auto contains = [](const auto& list, const auto& value) {
    return std::find(list.begin(), list.end(), value) != list.end();
  };
  for (const std::string& name : demand.tensors) {
    const TensorInfo& t = package.tensor(name);
    if (t.layer >= 0 && t.shape.size() >= 2 && contains(placement.streamed_layers, t.layer) &&
        !contains(info.streamed_tensors, name) && !contains(placement.pinned_tensors, name)) {
      info.streamed_tensors.push_back(name);
    }
  }
  return info;
}

}  // namespace tierlm::detail
