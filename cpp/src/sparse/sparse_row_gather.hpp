// One batch of neuron-row reads being gathered into a staging area: each row's 4 KiB-widened
// range (sorted rows less than a merge gap apart coalesced when bundled, the gap read along;
// up and down parts apart when not) becomes a request, and each row remembers where its bytes
// will land. The row loader and the read-ahead both build their batches with it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparse/sparse_plan.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm::detail {

// Where one gathered row's bytes are: the whole row at `up` (bundled), or its up part at `up`
// and its down part at `down` (unbundled).
struct SparseRowSource {
  const char* up = nullptr;
  const char* down = nullptr;
};

// The channel path's merge gap: bundled rows whose 4 KiB ranges are at most this many bytes
// apart are read as one request, the gap included. On an NVMe disk at queue depth 32 a request
// costs about the transfer of 32 KiB (fio here: 4 KiB reads 0.2 GB/s, 8 MiB reads 1.45 GB/s;
// 32 KiB reads reach 1 GB/s, twice 16 KiB's), so reading a smaller gap beats a second request.
inline constexpr uint64_t kSparseMergeGap = 32 << 10;

class SparseRowGather {
 public:
  // The request table a batch of `rows` rows needs at most: two requests per row (unbundled),
  // plus the open coalesced range.
  static constexpr size_t max_requests(size_t rows) { return 2 * rows + 2; }

  // staging: `staging_bytes`, 4 KiB-aligned; requests: room for max_requests; rows: room for
  // the rows of one batch; merge_gap: bundled ranges at most this many bytes apart are one
  // request (0: only touching ones).
  SparseRowGather(char* staging, size_t staging_bytes, IoRequest* requests, size_t max_requests,
                  SparseRowSource* rows, bool bundled, uint64_t merge_gap);

  // Adds row `id` (ids ascending within a batch); false, adding nothing, when staging or the
  // request table is full (submit the batch and clear).
  bool add(const SparseLayerPlan& plan, int32_t id);
  // Adds a row whose bytes are already in memory (read ahead): it needs no request.
  void add_ready(const SparseRowSource& row) { rows_[n_rows_++] = row; }
  // Closes the open coalesced range: the batch's requests are then complete.
  void close();
  void clear();

  const IoRequest* requests() const { return requests_; }
  size_t n_requests() const { return n_requests_; }
  size_t n_rows() const { return n_rows_; }
  const SparseRowSource& row(size_t j) const { return rows_[j]; }
  uint64_t bytes() const;  // bytes the batch's requests cover
  // Copies gathered row j (row_bytes, up part first) to dst.
  void copy_row(const SparseLayerPlan& plan, size_t j, void* dst) const;

 private:
  char* staging_;
  size_t capacity_;
  IoRequest* requests_;
  size_t max_requests_;
  SparseRowSource* rows_;
  bool bundled_;
  uint64_t merge_gap_;
  size_t n_requests_ = 0;
  size_t n_rows_ = 0;
  uint64_t used_ = 0;  // staging bytes the requests cover
  bool open_ = false;  // bundled: the last range may still grow
  uint64_t open_lo_ = 0, open_hi_ = 0, open_stage_ = 0;
};

}  // namespace tierlm::detail
