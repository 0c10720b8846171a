// Gathering one batch of row reads (see sparse_row_gather.hpp).
#include "sparse/sparse_row_gather.hpp"

#include <algorithm>
#include <cstring>

#include "tierlm/core/align.hpp"

namespace tierlm::detail {

SparseRowGather::SparseRowGather(char* staging, size_t staging_bytes, IoRequest* requests,
                                 size_t max_requests, SparseRowSource* rows, bool bundled,
                                 uint64_t merge_gap)
    : staging_(staging),
      capacity_(staging_bytes),
      requests_(requests),
      max_requests_(max_requests),
      rows_(rows),
      bundled_(bundled),
      merge_gap_(merge_gap) {}

bool SparseRowGather::add(const SparseLayerPlan& p, int32_t id) {
  const uint64_t rb = p.row_bytes;
  const uint64_t a = static_cast<uint64_t>(id) * rb;
  if (bundled_) {
    const uint64_t lo = round_down(a, kAlignment);
    const uint64_t hi = std::min(round_up(a + rb, kAlignment), p.file_bytes);
    const uint64_t grow = std::max(hi, open_hi_) - open_hi_;
    if (open_ && lo <= open_hi_ + merge_gap_ && used_ + grow <= capacity_) {
      used_ += grow;
      open_hi_ = std::max(hi, open_hi_);
    } else {
      if (used_ + (hi - lo) > capacity_ || n_requests_ + (open_ ? 2 : 1) > max_requests_) {
        return false;
      }
      close();
      open_lo_ = lo;
      open_hi_ = hi;
      open_stage_ = used_;
      used_ += hi - lo;
      open_ = true;
    }
    rows_[n_rows_++] = {staging_ + open_stage_ + (a - open_lo_), nullptr};
    return true;
  }
  const uint64_t part = p.up_part_bytes();
  const uint64_t ulo = round_down(a, kAlignment), uhi = round_up(a + part, kAlignment);
  const uint64_t dlo = round_down(a + part, kAlignment);
  const uint64_t dhi = std::min(round_up(a + rb, kAlignment), p.file_bytes);
  if (used_ + (uhi - ulo) + (dhi - dlo) > capacity_ || n_requests_ + 2 > max_requests_) {
    return false;
  }
  SparseRowSource& row = rows_[n_rows_++];
  requests_[n_requests_++] = {staging_ + used_, static_cast<size_t>(uhi - ulo), ulo};
  row.up = staging_ + used_ + (a - ulo);
  used_ += uhi - ulo;
  requests_[n_requests_++] = {staging_ + used_, static_cast<size_t>(dhi - dlo), dlo};
  row.down = staging_ + used_ + (a + part - dlo);
  used_ += dhi - dlo;
  return true;
}

void SparseRowGather::close() {
  if (!open_) return;
  requests_[n_requests_++] = {staging_ + open_stage_, static_cast<size_t>(open_hi_ - open_lo_),
                              open_lo_};
  open_ = false;
}

void SparseRowGather::clear() {
  n_requests_ = 0;
  n_rows_ = 0;
  used_ = 0;
  open_ = false;
}

uint64_t SparseRowGather::bytes() const {
  uint64_t total = 0;
  for (size_t i = 0; i < n_requests_; ++i) total += requests_[i].len;
  return total;
}

void SparseRowGather::copy_row(const SparseLayerPlan& p, size_t j, void* dst) const {
  const SparseRowSource& r = rows_[j];
  char* out = static_cast<char*>(dst);
  if (r.down == nullptr) {
    std::memcpy(out, r.up, p.row_bytes);
  } else {
    const size_t part = p.up_part_bytes();
    std::memcpy(out, r.up, part);
    std::memcpy(out + part, r.down, p.row_bytes - part);
  }
}

}  // namespace tierlm::detail
