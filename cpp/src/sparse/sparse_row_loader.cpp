// The sparse FFN's row reads (see sparse_row_loader.hpp): gathers requests into staging until
// it or the request table is full, then one pread_batch, one wait, and the row copies.
#include "sparse/sparse_row_loader.hpp"

#include <span>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

SparseRowLoader::SparseRowLoader(HostBuffer staging, IoRequest* requests, SparseRowSource* rows,
                                 size_t max_requests, bool bundled, uint64_t merge_gap)
    : staging_(std::move(staging)),
      gather_(static_cast<char*>(staging_.data()), staging_.size(), requests, max_requests, rows,
              bundled, merge_gap) {}

SparseRowLoader::~SparseRowLoader() {
  // Reads still in flight (an exception between start and finish) land in staging_: wait.
  abandon();
}

void SparseRowLoader::abandon() {
  for (const IoFuture& f : futures_) f.wait();
  futures_.clear();
  gather_.clear();
}

size_t SparseRowLoader::gather(const SparseLayerPlan& p, const int32_t* ids, size_t n,
                               const SparseReadAhead* ahead, SparseTokenInfo& info) {
  size_t j = 0;
  for (; j < n; ++j) {
    if (const SparseRowSource* row = ahead ? ahead->find(ids[j]) : nullptr) {
      gather_.add_ready(*row);
      ++info.readahead_hits;
      continue;
    }
    if (!gather_.add(p, ids[j])) break;
  }
  // An empty staging area holds at least two of the widest rows (size_sparse_caches).
  TIERLM_CHECK(j > 0 || n == 0, kErrorInvalidArgument, "sparse FFN staging (", staging_.size(),
               " bytes) cannot hold one row of layer ", p.layer);
  return j;
}

void SparseRowLoader::submit(File& file, SparseTokenInfo& info) {
  gather_.close();
  if (gather_.n_requests() == 0) return;
  const auto t0 = Clock::now();
  try {
    futures_ =
        file.pread_batch(std::span<const IoRequest>(gather_.requests(), gather_.n_requests()));
  } catch (const Error&) {
    gather_.clear();
    throw;
  }
  info.io_seconds += seconds_since(t0);
  info.requests += gather_.n_requests();
  info.bytes_read += gather_.bytes();
}

void SparseRowLoader::complete(const SparseLayerPlan& p, NeuronCache& cache, const int32_t* ids,
                               SparseReadAhead* ahead, SparseTokenInfo& info) {
  const auto t0 = Clock::now();
  try {
    io_wait_all(futures_);
    // The read-ahead's own time is counted by its wait (which drops it when a read failed).
    info.io_seconds += seconds_since(t0);
    if (ahead != nullptr) ahead->wait(info);
  } catch (const Error&) {
    // The batch is dropped: the next token starts from an empty staging area and reads again.
    abandon();
    throw;
  }
  futures_.clear();
  const auto t1 = Clock::now();
  const size_t first = cache.size();
  cache.insert(ids, gather_.n_rows(), nullptr);
  for (size_t j = 0; j < gather_.n_rows(); ++j) gather_.copy_row(p, j, cache.row(first + j));
  info.memory_seconds += seconds_since(t1);
  info.neurons_read += gather_.n_rows();
  gather_.clear();
}

void SparseRowLoader::load(File& file, const SparseLayerPlan& p, NeuronCache& cache,
                           const int32_t* ids, size_t n, SparseReadAhead* ahead,
                           SparseTokenInfo& info) {
  for (size_t done = 0; done < n;) {
    const size_t m = gather(p, ids + done, n - done, ahead, info);
    submit(file, info);
    complete(p, cache, ids + done, ahead, info);
    done += m;
  }
}

size_t SparseRowLoader::start(File& file, const SparseLayerPlan& p, const int32_t* ids, size_t n,
                              SparseReadAhead* ahead, SparseTokenInfo& info) {
  const size_t m = gather(p, ids, n, ahead, info);
  submit(file, info);
  return m;
}

void SparseRowLoader::finish(const SparseLayerPlan& p, NeuronCache& cache, const int32_t* ids,
                             SparseReadAhead* ahead, SparseTokenInfo& info) {
  complete(p, cache, ids, ahead, info);
}

}  // namespace tierlm::detail
