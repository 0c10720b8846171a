// The streamed gate/up site's read-ahead (see channel_readahead.hpp).
#include "sparse/channel_readahead.hpp"

#include <algorithm>
#include <cmath>
#include <span>

#include "core/clock.hpp"

namespace tierlm::detail {

ChannelReadAhead::ChannelReadAhead(char* staging, size_t staging_bytes, IoRequest* requests,
                                   SparseRowSource* rows, int32_t* ids, int32_t* slots,
                                   int32_t* row_requests, size_t max_channels)
    : gather_(staging, staging_bytes, requests,
              std::min(SparseRowGather::max_requests(max_channels), kChannelReadAheadRequests),
              rows, true, kSparseMergeGap),
      ids_(ids),
      slots_(slots),
      row_requests_(row_requests) {}

ChannelReadAhead::~ChannelReadAhead() {
  // Reads still in flight land in staging: wait.
  for (const IoFuture& f : futures_) f.wait();
}

void ChannelReadAhead::start(int site, File& file, const SparseLayerPlan& plan, const float* x,
                             float threshold, SparseTokenInfo& info) {
  drop();
  const auto t0 = Clock::now();
  for (size_t c = 0; c < plan.n_neurons; ++c) {
    if (!(std::fabs(x[c]) > threshold)) continue;
    const auto id = static_cast<int32_t>(c);
    if (!gather_.add(plan, id)) break;  // the staging is full: the stream reads the rest
    const size_t j = gather_.n_rows() - 1;
    ids_[j] = id;
    slots_[c] = static_cast<int32_t>(j);
    // A bundled gather's row lies in its open range, the request it will close into next.
    row_requests_[j] = static_cast<int32_t>(gather_.n_requests());
  }
  gather_.close();
  info.predictor_seconds += seconds_since(t0);
  const auto t1 = Clock::now();
  futures_ = file.pread_batch(std::span<const IoRequest>(gather_.requests(), gather_.n_requests()));
  info.io_seconds += seconds_since(t1);
  info.requests += gather_.n_requests();
  info.bytes_read += gather_.bytes();
  info.readahead_rows += gather_.n_rows();
  waited_ = 0;
  site_ = site;
}

void ChannelReadAhead::wait_through(size_t k, SparseTokenInfo& info) {
  if (k <= waited_) return;
  const auto t0 = Clock::now();
  io_wait_all(std::span<IoFuture>(futures_.data() + waited_, k - waited_));
  waited_ = k;
  info.io_seconds += seconds_since(t0);
}

void ChannelReadAhead::drop() {
  for (const IoFuture& f : futures_) f.wait();
  futures_.clear();
  for (size_t j = 0; j < gather_.n_rows(); ++j) slots_[ids_[j]] = -1;
  gather_.clear();
  waited_ = 0;
  site_ = -1;
}

}  // namespace tierlm::detail
