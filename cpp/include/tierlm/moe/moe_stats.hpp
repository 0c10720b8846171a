// What a mixture-of-experts model reports: where each expert lives (ExpertPlacement, fixed at
// load) and the expert store's counters since load (MoeStats), with the figures derived from
// them. A lookup is one routed expert of one moe layer in one step (a step fetches each
// routed expert once, whatever number of its tokens chose it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tierlm/core/export.hpp"

namespace tierlm {

struct TIERLM_API ExpertPlacement {
  bool moe = false;           // the model has moe layers (the rest stays empty)
  std::vector<int> layers;    // the graph layer of each moe op
  int64_t experts = 0;        // per moe layer
  uint64_t expert_bytes = 0;  // one expert's read (gate, up and down, 4 KiB-rounded)
  uint64_t host_bytes = 0;    // experts homed on the host tier
  uint64_t cache_bytes = 0;   // the expert cache for disk-homed experts
  int64_t cache_slots = 0;
  uint64_t router_bytes = 0;  // copies of the routers, kept to predict a layer ahead
  std::string policy;         // the cache's replacement policy: "lru" or "lfu"
  // What chose the host-homed experts: "usage profile" (expert_usage.json: the most used) or
  // "outer layers first" (no profile).
  std::string homing;
  // Per moe op, the experts homed on the host tier and on the disk tier (read into the cache).
  std::vector<std::vector<int>> host_experts;
  std::vector<std::vector<int>> disk_experts;
};

struct TIERLM_API MoeStats {
  uint64_t moe_tokens = 0;         // rows through the moe layers (each counted once per step)
  uint64_t moe_lookups = 0;        // routed experts, summed over steps and moe layers
  uint64_t moe_host_hits = 0;      // ... homed on the host tier
  uint64_t moe_cache_hits = 0;     // ... found in the expert cache
  uint64_t moe_misses = 0;         // ... read from disk on demand
  uint64_t moe_bytes_read = 0;     // expert bytes read since load (misses and prefetches)
  uint64_t moe_reads = 0;          // read requests submitted
  double moe_io_wait_seconds = 0;  // time spent waiting for expert reads
  // Prefetch: lookups of layers whose experts were predicted a layer ahead, how many of them
  // were predicted, experts read ahead, and how many of those were then used.
  uint64_t moe_predicted_lookups = 0;
  uint64_t moe_predicted_right = 0;
  uint64_t moe_prefetch_reads = 0;
  uint64_t moe_prefetch_used = 0;

  MoeStats since(const MoeStats& before) const {
    MoeStats d = *this;
    d.moe_tokens -= before.moe_tokens;
    d.moe_lookups -= before.moe_lookups;
    d.moe_host_hits -= before.moe_host_hits;
    d.moe_cache_hits -= before.moe_cache_hits;
    d.moe_misses -= before.moe_misses;
    d.moe_bytes_read -= before.moe_bytes_read;
    d.moe_reads -= before.moe_reads;
    d.moe_io_wait_seconds -= before.moe_io_wait_seconds;
    d.moe_predicted_lookups -= before.moe_predicted_lookups;
    d.moe_predicted_right -= before.moe_predicted_right;
    d.moe_prefetch_reads -= before.moe_prefetch_reads;
    d.moe_prefetch_used -= before.moe_prefetch_used;
    return d;
  }
  // Share of lookups served without a read on demand (host-homed or cached), in percent.
  double moe_hit_rate_pct() const {
    return moe_lookups ? 100.0 * static_cast<double>(moe_host_hits + moe_cache_hits) /
                             static_cast<double>(moe_lookups)
                       : 0.0;
  }
  // Share of the predicted layers' routed experts that the prediction named, in percent.
  double moe_prediction_accuracy_pct() const {
    return moe_predicted_lookups ? 100.0 * static_cast<double>(moe_predicted_right) /
                                       static_cast<double>(moe_predicted_lookups)
                                 : 0.0;
  }
  double moe_experts_per_token() const {
    return moe_tokens ? static_cast<double>(moe_lookups) / static_cast<double>(moe_tokens) : 0.0;
  }
  double moe_bytes_read_per_token() const {
    return moe_tokens ? static_cast<double>(moe_bytes_read) / static_cast<double>(moe_tokens) : 0.0;
  }
};

}  // namespace tierlm
