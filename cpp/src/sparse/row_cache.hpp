// What the sparse FFN and the input-channel path share per layer (or site): the row file and a
// host-tier row cache (NeuronCache) with its window and last-use record, the step that admits
// one token's active ids into it, and the per-token counters of a batch with their ring log.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_runtime.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/sparse/neuron_cache.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

// One layer's (site's) cached rows: the cache, the window over the last k tokens and the last
// token that used each id (for least-recently-used eviction past the capacity).
struct RowCache {
  RowCache(HostTier& host, size_t n_ids, size_t capacity, size_t row_elems, DType dtype,
           size_t window);

  // Admits one token's active ids (sorted or not, no duplicates): the cached ids that left the
  // window are evicted, then, when the cache would pass `capacity`, cached ids this token does
  // not use, least recently used first. Writes the active ids not cached to need and returns
  // their count. to_load, to_evict and evict are scratch of n_ids entries each.
  size_t admit(const int32_t* active, size_t n_active, int32_t* need, int32_t* to_load,
               int32_t* to_evict, int32_t* evict);
  // Empties the cache and the window (a new sequence).
  void reset();
  // Host-tier bytes the cache of `plan`'s rows reserves at its capacity: rows, maps, window
  // and last-use record.
  static uint64_t host_bytes(const SparseLayerPlan& plan, size_t window);

  NeuronCache cache;
  NeuronWindow window;
  HostBuffer last_use_buffer;
  int64_t* last_use = nullptr;
  int64_t token = 0;
};

// One layer's (site's) rows: its row file, opened for O_DIRECT reads with queue_depth requests
// in the ring (the thread pool keeps the default's workers), and their cache.
struct CachedRowFile {
  CachedRowFile(const SparseLayerPlan& plan, HostTier& host, size_t window,
                unsigned queue_depth = IoOptions{}.queue_depth);

  RowCache rows;
  File file;
};

// Adds a row file to the runtime's I/O record: the files share one back end and O_DIRECT
// state; `registered` (the file took every staging buffer) holds only while every file's did.
// `first` starts the record.
void record_row_file(SparseFfnIo& io, const File& file, bool registered, bool first);

// The counters of the rows of a batch (views of a runtime's scratch) and the ring of the last
// kSparseTokenLog tokens.
class SparseTokenLog {
 public:
  SparseTokenLog(SparseTokenInfo* rows, size_t max_rows, SparseTokenInfo* ring);
  SparseTokenInfo& row(size_t r) { return rows_[r]; }
  // The batch of rows is done: its counters go to totals and the ring, and are cleared.
  void end_batch(size_t rows, SparseStats& totals);
  // One record per token since load, oldest first.
  std::vector<SparseTokenInfo> tokens() const;

 private:
  SparseTokenInfo* rows_;
  size_t max_rows_;
  SparseTokenInfo* ring_;
  uint64_t logged_ = 0;
};

}  // namespace tierlm::detail
