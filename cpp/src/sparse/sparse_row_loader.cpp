// The sparse FFN's row reads (see sparse_row_loader.hpp): gathers requests into staging until
// it or the request table is full, then one pread_batch, one wait, and the row copies.
#include "sparse/sparse_row_loader.hpp"

#include <chrono>
#include <span>
#include <utility>
#include <vector>

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

SparseRowLoader::SparseRowLoader(HostBuffer staging, IoRequest* requests, SparseRowSource* rows,
                                 size_t max_requests, bool bundled, uint64_t merge_gap)
    : staging_(std::move(staging)),
      gather_(static_cast<char*>(staging_.data()), staging_.size(), requests, max_requests, rows,
              bundled, merge_gap) {}

void SparseRowLoader::flush(File& file, const SparseLayerPlan& p, NeuronCache& cache,
                            const int32_t* ids, SparseTokenInfo& info) {
  if (gather_.n_rows() == 0) return;
  gather_.close();
  if (gather_.n_requests() > 0) {
    const auto t0 = Clock::now();
    std::vector<IoFuture> futures =
        file.pread_batch(std::span<const IoRequest>(gather_.requests(), gather_.n_requests()));
    try {
      io_wait_all(futures);
    } catch (const Error&) {
      // The batch is dropped: the next token starts from an empty staging area and reads again.
      gather_.clear();
      throw;
    }
    info.io_seconds += since(t0);
    info.requests += gather_.n_requests();
    info.bytes_read += gather_.bytes();
  }
  const auto t1 = Clock::now();
  const size_t first = cache.size();
  cache.insert(ids, gather_.n_rows(), nullptr);
  for (size_t j = 0; j < gather_.n_rows(); ++j) gather_.copy_row(p, j, cache.row(first + j));
  info.memory_seconds += since(t1);
  gather_.clear();
}

void SparseRowLoader::load(File& file, const SparseLayerPlan& p, NeuronCache& cache,
                           const int32_t* ids, size_t n, const SparseReadAhead* ahead,
                           SparseTokenInfo& info) {
  const int32_t* pending = ids;  // the first row of the batch being gathered
  for (size_t j = 0; j < n; ++j) {
    if (const SparseRowSource* row = ahead ? ahead->find(ids[j]) : nullptr) {
      gather_.add_ready(*row);
      ++info.readahead_hits;
      continue;
    }
    if (gather_.add(p, ids[j])) continue;
    flush(file, p, cache, pending, info);
    pending = ids + j;
    // An empty staging area holds at least two of the widest rows (size_sparse_caches).
    TIERLM_CHECK(gather_.add(p, ids[j]), kErrorInvalidArgument, "sparse FFN staging (",
                 staging_.size(), " bytes) cannot hold one row of layer ", p.layer);
  }
  flush(file, p, cache, pending, info);
  info.neurons_read += n;
}

}  // namespace tierlm::detail
