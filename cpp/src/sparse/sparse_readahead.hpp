// Reads ahead of compute: while layer i computes, the rows layer i+1 will probably want
// (predicted from layer i's input) are read into a staging area of their own; layer i+1's step
// then takes the rows it needs from there and reads only the misses. The rows land in the
// neuron cache in the same order and with the same bytes as without read-ahead, so the result
// is identical: the read-ahead changes what is read when, never what is computed.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

class SparseReadAhead {
 public:
  // Host-tier bytes of one read-ahead buffer of these sizes (sparse_readahead_bytes in the plan).
  static size_t bytes(size_t staging_bytes, size_t max_rows);

  // merge_gap: see SparseRowGather (kSparseMergeGap in production).
  SparseReadAhead(HostBuffer memory, size_t staging_bytes, size_t max_rows, bool bundled,
                  uint64_t merge_gap);
  SparseReadAhead(SparseReadAhead&&) noexcept = default;
  SparseReadAhead& operator=(SparseReadAhead&&) noexcept = default;
  ~SparseReadAhead();

  char* staging() { return staging_; }
  size_t staging_bytes() const { return staging_bytes_; }

  // Starts reading rows ids[0, n) (ascending) of layer `layer` from `file`, as many as fit;
  // whatever this buffer held is dropped first. Counts rows, requests and bytes into info.
  // Reads nothing (and allocates nothing) when n is 0.
  void issue(int layer, File& file, const SparseLayerPlan& plan, const int32_t* ids, size_t n,
             SparseTokenInfo& info);
  // Adds to what this buffer reads for `layer`: rows ids[0, n) (ascending) it does not hold yet,
  // as many as still fit, in one more batch of requests (nothing once it has kMaxBatches);
  // issue() when it holds another layer or none. Rows in flight stay where they land.
  void add(int layer, File& file, const SparseLayerPlan& plan, const int32_t* ids, size_t n,
           SparseTokenInfo& info);
  // Batches one buffer takes (issue() and add()s): find() searches each batch's sorted ids.
  static constexpr size_t kMaxBatches = 2;
  // The layer whose rows this buffer holds or reads, -1 for none.
  int layer() const { return layer_; }
  // Waits for the reads (their time into info.io_seconds); throws a read's error, after
  // which the buffer is empty.
  void wait(SparseTokenInfo& info);
  // Where row `id`'s bytes are (or will be once waited for), nullptr when it is not read ahead.
  const SparseRowSource* find(int32_t id) const;
  // Forgets the rows (waiting, without throwing, for reads still in flight).
  void drop();

 private:
  HostBuffer memory_;
  char* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  size_t max_rows_ = 0;
  int32_t* ids_ = nullptr;  // [max_rows] the rows read ahead, ascending within each batch
  std::array<size_t, kMaxBatches> batch_end_{};  // ids_ index past each batch's last row
  size_t batches_ = 0;
  SparseRowGather gather_;
  std::vector<IoFuture> futures_;
  int layer_ = -1;
};

}  // namespace tierlm::detail
