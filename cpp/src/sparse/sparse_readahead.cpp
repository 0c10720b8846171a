// The read-ahead buffer of the sparse FFN (see sparse_readahead.hpp): one memory block from the
// host tier holding the staging area, the request table, the rows' sources and their ids.
#include "sparse/sparse_readahead.hpp"

#include <algorithm>
#include <span>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

// Offsets in the block: staging (4 KiB-aligned first), requests, row sources, ids.
size_t requests_at(size_t staging_bytes) { return round_up(staging_bytes, kAlignment); }
size_t rows_at(size_t staging_bytes, size_t max_rows) {
  return requests_at(staging_bytes) +
         round_up(SparseRowGather::max_requests(max_rows) * sizeof(IoRequest), 64);
}
size_t ids_at(size_t staging_bytes, size_t max_rows) {
  return rows_at(staging_bytes, max_rows) + round_up(max_rows * sizeof(SparseRowSource), 64);
}

}  // namespace

size_t SparseReadAhead::bytes(size_t staging_bytes, size_t max_rows) {
  return ids_at(staging_bytes, max_rows) + max_rows * sizeof(int32_t);
}

SparseReadAhead::SparseReadAhead(HostBuffer memory, size_t staging_bytes, size_t max_rows,
                                 bool bundled, uint64_t merge_gap)
    : memory_(std::move(memory)),
      staging_(static_cast<char*>(memory_.data())),
      staging_bytes_(staging_bytes),
      max_rows_(max_rows),
      ids_(reinterpret_cast<int32_t*>(staging_ + ids_at(staging_bytes, max_rows))),
      gather_(staging_, staging_bytes,
              reinterpret_cast<IoRequest*>(staging_ + requests_at(staging_bytes)),
              SparseRowGather::max_requests(max_rows),
              reinterpret_cast<SparseRowSource*>(staging_ + rows_at(staging_bytes, max_rows)),
              bundled, merge_gap) {}

SparseReadAhead::~SparseReadAhead() { drop(); }

void SparseReadAhead::issue(int layer, File& file, const SparseLayerPlan& p, const int32_t* ids,
                            size_t n, SparseTokenInfo& info) {
  drop();
  if (n == 0) return;
  layer_ = layer;
  add(layer, file, p, ids, n, info);
}

void SparseReadAhead::add(int layer, File& file, const SparseLayerPlan& p, const int32_t* ids,
                          size_t n, SparseTokenInfo& info) {
  if (layer != layer_) return issue(layer, file, p, ids, n, info);
  if (batches_ == kMaxBatches) return;
  const auto t0 = Clock::now();
  const size_t first_row = gather_.n_rows(), first_request = gather_.n_requests();
  for (size_t j = 0; j < n && gather_.n_rows() < max_rows_; ++j) {
    if (find(ids[j]) != nullptr) continue;
    const size_t at = gather_.n_rows();
    if (!gather_.add(p, ids[j])) break;
    ids_[at] = ids[j];
  }
  gather_.close();
  const size_t taken = gather_.n_rows() - first_row;
  if (taken == 0) {
    if (batches_ == 0) layer_ = -1;
    return;
  }
  const std::span<const IoRequest> requests(gather_.requests() + first_request,
                                            gather_.n_requests() - first_request);
  std::vector<IoFuture> more;
  try {
    more = file.pread_batch(requests);
  } catch (...) {
    drop();  // rows gathered without reads in flight must not be found
    throw;
  }
  futures_.insert(futures_.end(), std::make_move_iterator(more.begin()),
                  std::make_move_iterator(more.end()));
  batch_end_[batches_++] = gather_.n_rows();
  info.readahead_rows += taken;
  info.requests += requests.size();
  for (const IoRequest& r : requests) info.bytes_read += r.len;
  info.io_seconds += seconds_since(t0);
}

void SparseReadAhead::wait(SparseTokenInfo& info) {
  const auto t0 = Clock::now();
  try {
    io_wait_all(futures_);
  } catch (const Error&) {
    drop();
    throw;
  }
  info.io_seconds += seconds_since(t0);
}

const SparseRowSource* SparseReadAhead::find(int32_t id) const {
  size_t begin = 0;
  for (size_t b = 0; b < batches_; ++b) {
    const int32_t* end = ids_ + batch_end_[b];
    const int32_t* at = std::lower_bound(static_cast<const int32_t*>(ids_) + begin, end, id);
    if (at != end && *at == id) return &gather_.row(static_cast<size_t>(at - ids_));
    begin = batch_end_[b];
  }
  return nullptr;
}

void SparseReadAhead::drop() {
  for (const IoFuture& f : futures_) f.wait();
  futures_.clear();
  gather_.clear();
  batches_ = 0;
  layer_ = -1;
}

}  // namespace tierlm::detail
