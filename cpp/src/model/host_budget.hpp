// Host budget arithmetic at load: the KV cache, the activation arena and the sparse FFN stay in
// the host tier; the weights are resident when everything fits, else streamed through a ring
// under what is left. Says which, or refuses naming each part and the least budget that loads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparse/channel_plan.hpp"
#include "sparse/sparse_ffn_layer.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/model/package.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

// What load asks of the host tier besides the weights.
struct HostDemand {
  std::vector<std::string> tensors;        // weights the store holds
  std::vector<std::string> row_tensors;    // tables that may be read by rows on demand
  std::vector<std::string> split_tensors;  // matrices that may stream in row parts
  int64_t chunk = 0;                       // rows of a batch
  int64_t context = 0;                     // KV cache tokens per slot
  int64_t max_batch = 1;                   // KV cache slots
  uint64_t kv_bytes = 0;                   // KV cache bytes set aside (KvCache::bytes_reserved)
  DType kv_dtype = DType::kDTypeF16;       // ... in this element type
  uint64_t arena_bytes = 0;                // the arena plan's peak
  uint64_t expert_bytes = 0;               // every moe expert homed on the host tier
  uint64_t expert_min_bytes = 0;           // the least the expert store runs in (expert_store.hpp)
};

struct HostBudget {
  uint64_t kv_bytes = 0;      // as the host tier charges them (whole pages)
  uint64_t arena_bytes = 0;   // ... and the size the arena is allocated with
  uint64_t weight_bytes = 0;  // every weight resident
  uint64_t sparse_bytes = 0;  // the sparse FFN's caches, staging, predictors and scratch
  uint64_t fixed_bytes = 0;   // KV cache + arena + sparse + one expert: held whatever happens
  // The expert store's share: what the other weights leave (they are read on every token,
  // an expert only when routed to), at least one expert.
  uint64_t expert_budget = 0;
  bool streaming = false;
  WeightPlacement placement;    // when streaming
  uint64_t minimum_budget = 0;  // the least host budget that loads (streaming)
};

// Fits the demand into options.host_budget. An auto-sized sparse FFN (sparse_capacity 0)
// that would not fit beside resident weights shrinks its caches to one token's prediction
// first (sparse_plan is resized then). Auto-sized channel caches do the same, and when every
// other weight stays resident take what the budget has left (channel_plan is resized).
// Either plan may be null. Throws kErrorBudget.
HostBudget host_budget_fit(const Package& package, const ModelOptions& options,
                           const HostDemand& demand, SparseFfnPlan* sparse_plan,
                           ChannelPlan* channel_plan);

// The placement record Model::placement() reports for a fit.
WeightPlacement host_budget_placement(const Package& package, const HostDemand& demand,
                                      const HostBudget& budget);

}  // namespace tierlm::detail
