// Reads neuron rows of a layer's bundle file into its neuron cache: the rows' 4 KiB-widened
// ranges (SparseRowGather) go into one staging buffer as one batch of O_DIRECT requests, then
// every row is copied into the cache. Rows already read ahead (SparseReadAhead) are copied from
// there instead, in their place in the order, so the cache ends up the same either way; the
// read-ahead is waited for only before the copies, after this batch was submitted.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/clock.hpp"
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

  ~SparseRowLoader();
  SparseRowLoader(const SparseRowLoader&) = delete;
  SparseRowLoader& operator=(const SparseRowLoader&) = delete;

  void* staging() { return staging_.data(); }
  size_t staging_bytes() const { return staging_.size(); }

  // Reads the rows of ids[0, n) (sorted, not cached) from `file` into `cache`, in as few
  // batches as staging allows, taking those found in `ahead` (may be null; waited for after
  // each batch is submitted) from there; counts requests, bytes, read-ahead hits and times into
  // info. Allocates only the I/O engine's futures of each batch.
  void load(File& file, const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
            size_t n, SparseReadAhead* ahead, SparseTokenInfo& info);

  // load() split so that other work overlaps the reads: start() submits the first batch of
  // ids[0, n) (as many rows as staging holds, those in `ahead` taken from there) and returns
  // how many rows it holds; finish() waits for it and for `ahead` (the waits into
  // info.io_seconds) and moves those rows into `cache`, as load() would. The cache must not
  // change in between; the staging must not be reused. abandon() instead waits for the batch
  // without throwing and forgets it (an error between the two).
  size_t start(File& file, const SparseLayerPlan& plan, const int32_t* ids, size_t n,
               SparseReadAhead* ahead, SparseTokenInfo& info);
  void finish(const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
              SparseReadAhead* ahead, SparseTokenInfo& info);
  void abandon();

  // The rows of ids[done, n) that one token needs past the cache's capacity, in rounds of at
  // most the capacity: each round replaces the rows loaded last (ids in evict, scratch of the
  // capacity) and calls compute(first slot, rows) on them, whose results the caller adds up.
  template <class Compute>
  void load_rounds(File& file, const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
                   size_t done, size_t n, int32_t* evict, SparseReadAhead* ahead,
                   SparseTokenInfo& info, Compute compute) {
    while (done < n) {
      const size_t m = std::min(cache.capacity(), n - done);
      auto t0 = Clock::now();
      const size_t size = cache.size();
      for (size_t j = 0; j < m; ++j) evict[j] = cache.neurons()[size - 1 - j];
      cache.erase(evict, m);
      info.memory_seconds += seconds_since(t0);
      load(file, plan, cache, ids + done, m, ahead, info);
      t0 = Clock::now();
      compute(cache.size() - m, m);
      info.compute_seconds += seconds_since(t0);
      done += m;
    }
  }

 private:
  // Gathers rows of ids[0, n) until staging is full; returns how many.
  size_t gather(const SparseLayerPlan& plan, const int32_t* ids, size_t n,
                const SparseReadAhead* ahead, SparseTokenInfo& info);
  // Submits the gathered requests as one batch (none when every row was read ahead).
  void submit(File& file, SparseTokenInfo& info);
  // Waits for the submitted batch and `ahead` (may be null), then moves the rows into the cache.
  void complete(const SparseLayerPlan& plan, NeuronCache& cache, const int32_t* ids,
                SparseReadAhead* ahead, SparseTokenInfo& info);

  HostBuffer staging_;
  SparseRowGather gather_;
  std::vector<IoFuture> futures_;  // the submitted batch's, until complete()
};

}  // namespace tierlm::detail
