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
  const auto t0 = Clock::now();
  size_t taken = 0;
  while (taken < n && taken < max_rows_ && gather_.add(p, ids[taken])) {
    ids_[taken] = ids[taken];
    ++taken;
  }
  gather_.close();
  if (taken == 0) return;
  futures_ = file.pread_batch(std::span<const IoRequest>(gather_.requests(), gather_.n_requests()));
  layer_ = layer;
  info.readahead_rows += taken;
  info.requests += gather_.n_requests();
  info.bytes_read += gather_.bytes();
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
  const size_t n = gather_.n_rows();
  const int32_t* at = std::lower_bound(ids_, ids_ + n, id);
  return at != ids_ + n && *at == id ? &gather_.row(static_cast<size_t>(at - ids_)) : nullptr;
}

void SparseReadAhead::drop() {
  for (const IoFuture& f : futures_) f.wait();
  futures_.clear();
  gather_.clear();
  layer_ = -1;
}

}  // namespace tierlm::detail
