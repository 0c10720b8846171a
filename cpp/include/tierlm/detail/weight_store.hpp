// Where the executor gets weight bytes from, one transformer layer at a time.
// The executor brackets each layer's ops with begin_layer / end_layer and asks data(tensor)
// in between, so a store may keep every layer resident (ResidentWeightStore, today) or stream
// layers through a ring of host staging sections while earlier layers compute (issue 4).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tierlm/package.hpp"
#include "tierlm/tier.hpp"

namespace tierlm::detail {

// Layer id of tensors outside the layer stack (embeddings, final norm, lm_head).
constexpr int kGlobalLayer = -1;

struct WeightStoreStats {
  uint64_t disk_bytes_read = 0;  // bytes read from the package's weight files
  uint64_t resident_bytes = 0;   // host-tier bytes holding weights now
  uint64_t tensors = 0;
  double load_seconds = 0.0;
};

class WeightStore {
 public:
  virtual ~WeightStore() = default;

  // Stable index of a tensor the graph uses; throws kErrorNotFound when the store lacks it.
  virtual int index(const std::string& name) const = 0;
  virtual const TensorInfo& info(int index) const = 0;
  // The tensor's bytes; valid between begin_layer(info.layer) and end_layer(info.layer), and
  // always for kGlobalLayer tensors.
  virtual const void* data(int index) const = 0;
  // The executor is about to run / has finished the ops of `layer`. A streaming store waits
  // here for the layer's reads and schedules the next layers'; must not allocate.
  virtual void begin_layer(int layer) = 0;
  virtual void end_layer(int layer) = 0;
  virtual WeightStoreStats stats() const = 0;
};

struct WeightStoreOptions {
  bool verify = false;  // compare each tensor's CRC-32 with the manifest as it is read
};

// Host bytes the resident store needs for these tensors (per-tensor 4 KiB rounding included).
uint64_t resident_weight_bytes(const Package& package, const std::vector<std::string>& tensors);

// Reads `tensors` (names) of the package into the host tier, one buffer per layer, and keeps
// them there. Throws kErrorBudget when the tier cannot hold them.
std::unique_ptr<WeightStore> weight_store_resident(const Package& package, HostTier& host,
                                                   const std::vector<std::string>& tensors,
                                                   const WeightStoreOptions& options);

}  // namespace tierlm::detail
