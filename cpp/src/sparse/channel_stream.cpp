// The streamed channel site's double-buffered reads (see channel_stream.hpp).
#include "sparse/channel_stream.hpp"

#include <algorithm>
#include <span>

#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

size_t slot_bytes(size_t staging_bytes) {
  return std::min(round_down(staging_bytes / kChannelStreamSlots, kAlignment), kChannelStreamBatch);
}

}  // namespace

ChannelStream::ChannelStream(char* staging, size_t staging_bytes, IoRequest* requests,
                             size_t max_requests, SparseRowSource* rows, size_t max_rows,
                             uint64_t merge_gap)
    : slot_bytes_(slot_bytes(staging_bytes)) {
  const size_t slot_requests = std::min(max_requests / kSlots, kChannelStreamRequests);
  slots_.reserve(kSlots);
  for (size_t k = 0; k < kSlots; ++k) {
    slots_.emplace_back(staging + k * slot_bytes_, slot_bytes_,
                        requests + k * (max_requests / kSlots), slot_requests, rows + k * max_rows,
                        true, merge_gap);
  }
}

ChannelStream::~ChannelStream() {
  // Reads still in flight land in staging: wait.
  for (const auto& futures : futures_) {
    for (const IoFuture& f : futures) f.wait();
  }
}

size_t ChannelStream::submit(size_t h, File& file, const SparseLayerPlan& plan, const int32_t* ids,
                             size_t n, ChannelReadAhead* ahead, SparseTokenInfo& info) {
  SparseRowGather& g = slots_[h];
  size_t m = 0, ready_bytes = 0;
  ahead_requests_[h] = 0;
  for (; m < n; ++m) {
    size_t request = 0;
    const SparseRowSource* row = ahead ? ahead->find(ids[m], &request) : nullptr;
    if (row == nullptr) {
      if (!g.add(plan, ids[m])) break;
      continue;
    }
    // Read ahead: no request, but the batch waits for it; batches stay slot_bytes_ of columns
    // so the first is summed while the read-ahead's tail still lands.
    if (ready_bytes >= slot_bytes_) break;
    g.add_ready(*row);
    ready_bytes += plan.row_bytes;
    ahead_requests_[h] = std::max(ahead_requests_[h], request);
    ++info.readahead_hits;
  }
  TIERLM_CHECK(m > 0 || n == 0, kErrorInvalidArgument, "channel staging (", slot_bytes_,
               " bytes a batch) cannot hold one column of layer ", plan.layer);
  g.close();
  const auto t0 = Clock::now();
  futures_[h] = file.pread_batch(std::span<const IoRequest>(g.requests(), g.n_requests()));
  info.io_seconds += seconds_since(t0);
  info.requests += g.n_requests();
  info.bytes_read += g.bytes();
  return m;
}

void ChannelStream::wait(size_t h, SparseTokenInfo& info) {
  const auto t0 = Clock::now();
  io_wait_all(futures_[h]);
  futures_[h].clear();
  info.io_seconds += seconds_since(t0);
}

void ChannelStream::drop() {
  for (size_t h = 0; h < kSlots; ++h) {
    for (const IoFuture& f : futures_[h]) f.wait();
    futures_[h].clear();
    slots_[h].clear();
  }
}

}  // namespace tierlm::detail
