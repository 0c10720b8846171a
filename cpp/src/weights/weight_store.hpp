// Where the executor gets weight bytes from, one transformer layer at a time.
// The executor brackets each layer's ops with begin_layer / end_layer, asks data(tensor) for
// an op's weights and release(tensor) after the op, so a store may keep every layer resident
// (ResidentWeightStore) or stream tensors through a ring of host staging sections smaller than
// a layer while earlier tensors compute (StreamingWeightStore, placed by weight_placement).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tierlm/memory/tier.hpp"
#include "tierlm/model/package.hpp"
#include "tierlm/weights/placement.hpp"
#include "tierlm/weights/stream_stats.hpp"
#include "weights/weight_placement.hpp"

namespace tierlm::detail {

// Layer id of tensors outside the layer stack (embeddings, final norm, lm_head).
constexpr int kGlobalLayer = -1;

// Rows [row0, row0 + rows) of a matrix, at data.
struct WeightRowPart {
  const void* data = nullptr;
  int64_t row0 = 0;
  int64_t rows = 0;
};

struct WeightStoreStats {
  uint64_t disk_bytes_read = 0;  // bytes read from the package's weight files
  uint64_t resident_bytes = 0;   // host-tier bytes holding weights now
  uint64_t tensors = 0;
  double load_seconds = 0.0;
  VerifyStats verify;      // what the store checked at load (options.verify)
  std::string io_backend;  // how it read the weight files
  bool io_direct = false;  // with O_DIRECT (else through the page cache, for io_direct_reason)
  std::string io_direct_reason;
};

class WeightStore {
 public:
  virtual ~WeightStore() = default;

  // Stable index of a tensor the graph uses; throws kErrorNotFound when the store lacks it.
  virtual int index(const std::string& name) const = 0;
  virtual const TensorInfo& info(int index) const = 0;
  // The tensor's bytes. Always valid for kGlobalLayer and resident tensors. A streaming store
  // waits here for a streamed tensor's reads; its bytes then stay valid until release(index)
  // or end_layer(info.layer), whichever comes first. Allocates nothing beyond the I/O
  // engine's futures of the reads a streaming store issues to refill its ring.
  virtual const void* data(int index) = 0;
  // The executor is done with the tensor's bytes for this pass (call once per data() use, after
  // the op): a streaming store reuses its staging space for the next tensors' reads.
  virtual void release(int /*index*/) {}
  // A streaming store may hand a matrix that only linear ops read (placement.split_tensors) in
  // row parts, each valid from part() until release_part(): the executor asks parts() first and
  // uses data() only when it is 1.
  virtual int parts(int /*index*/) const { return 1; }
  virtual WeightRowPart part(int index, int /*k*/) {
    return {data(index), 0, info(index).shape.empty() ? 1 : info(index).shape[0]};
  }
  virtual void release_part(int /*index*/, int /*k*/) {}
  // Rows ids[0..n) of a tensor the store reads by rows on demand (a streaming store's embedding
  // table): one pointer per id, valid until the next rows() call. nullptr when the store holds
  // the whole tensor (use data()). Must not allocate beyond the I/O futures.
  virtual const void* const* rows(int /*index*/, const int32_t* /*ids*/, size_t /*n*/) {
    return nullptr;
  }
  // The executor is about to run / has finished the ops of `layer`. end_layer releases what the
  // layer still holds; it allocates nothing beyond the I/O futures of the refill reads.
  virtual void begin_layer(int layer) = 0;
  virtual void end_layer(int layer) = 0;
  virtual WeightStoreStats stats() const = 0;
};

struct WeightStoreOptions {
  // Check the CRC-32 of every tensor the store will ever hand out, at load: resident tensors as
  // they are read, streamed ones and row tables by a read of their bytes before the first run.
  bool verify = false;
};

// Host bytes the resident store needs for these tensors (per-tensor 4 KiB rounding included).
uint64_t resident_weight_bytes(const Package& package, const std::vector<std::string>& tensors);

// Reads `tensors` (names) of the package into the host tier, one buffer per layer, and keeps
// them there. Throws kErrorBudget when the tier cannot hold them.
std::unique_ptr<WeightStore> weight_store_resident(const Package& package, HostTier& host,
                                                   const std::vector<std::string>& tensors,
                                                   const WeightStoreOptions& options);

// Streaming: the placement (tierlm/weights/placement.hpp, planned by weights/weight_placement.hpp)
// is read through a ring of staging sections; its counters are tierlm/weights/stream_stats.hpp.
class StreamingWeightStore : public WeightStore {
 public:
  virtual const WeightPlacement& placement() const = 0;
  virtual StreamStats stream_stats() const = 0;
  // The recorded events, oldest first (the last 65536 kept).
  virtual std::vector<StreamEvent> events() const = 0;
};

std::unique_ptr<StreamingWeightStore> weight_store_streaming(
    const Package& package, HostTier& host, const std::vector<std::string>& tensors,
    const WeightPlacement& placement, const WeightStoreOptions& options);

}  // namespace tierlm::detail
