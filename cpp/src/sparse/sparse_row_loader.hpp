// Reads neuron rows of a layer's bundle file into its neuron cache: the rows' 4 KiB-widened
// ranges (SparseRowGather) go into one staging buffer as one batch of O_DIRECT requests, then
// every row is copied into the cache. Rows already read ahead (SparseReadAhead) are copied from
// there instead, in their place in the order, so the cache ends up the same either way.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_readahead.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/sparse/neuron_cache.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

class SparseRowLoader {
 public:
  // staging: plan.staging_bytes, 4 KiB-aligned. requests / rows: the scratch views of the
  // layout (max_requests requests, max capacity rows). merge_gap: see SparseRowGather.
  SparseRowLoader(HostBuffer staging, IoRequest* requests, SparseRowSource* rows,
                  size_t max_requests, bool bundled, uint64_t merge_gap);

  void* staging() { return staging_.data(); }
  size_t staging_bytes() const { return staging_.size(); }

  // Reads the rows of ids[0, n) (sorted, not cached) from `file` into `cache`, in as few
  // batches as staging allows, taking those found in `ahead` (waited for; may be null) from
  // there; counts requests, bytes, read-ahead hits and times into info. Allocates only the I/O
  // engine's futures of each batch.
  void load(File& file, const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
            size_t n, const SparseReadAhead* ahead, SparseTokenInfo& info);

  // The rows of ids[done, n) that one token needs past the cache's capacity, in rounds of at
  // most the capacity: each round replaces the rows loaded last (ids in evict, scratch of the
  // capacity) and calls compute(first slot, rows) on them, whose results the caller adds up.
  template <class Compute>
  void load_rounds(File& file, const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
                   size_t done, size_t n, int32_t* evict, const SparseReadAhead* ahead,
                   SparseTokenInfo& info, Compute compute) {
    while (done < n) {
      const size_t m = std::min(cache.capacity(), n - done);
      auto t0 = std::chrono::steady_clock::now();
      const size_t size = cache.size();
      for (size_t j = 0; j < m; ++j) evict[j] = cache.neurons()[size - 1 - j];
      cache.erase(evict, m);
      info.memory_seconds += seconds_since(t0);
      load(file, plan, cache, ids + done, m, ahead, info);
      t0 = std::chrono::steady_clock::now();
      compute(cache.size() - m, m);
      info.compute_seconds += seconds_since(t0);
      done += m;
    }
  }

 private:
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Submits the gathered requests as one batch, waits, and moves the rows into the cache.
  void flush(File& file, const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
             SparseTokenInfo& info);

  HostBuffer staging_;
  SparseRowGather gather_;
};

}  // namespace tierlm::detail
