// Decode-time read-ahead of a streamed gate/up site (ModelOptions::sparse_readahead on a
// channel package): at layer i's attention input the channels its gate/up input will keep are
// predicted (channel_layer.cpp: the attention input rescaled by the ratio of the two RMSNorm
// weights, as the residual stream changes little across attention) and their columns are read
// into their own staging while attention computes; the site's stream then takes the kept
// channels found there and reads only the others. Only where a column's bytes come from
// depends on it, never what is summed or in which order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

// The read-ahead's staging at most: what the disk reads during a layer's attention and more
// (its q/k/v and o kernels and attention take a few ms), so gate/up's first batches wait
// little; the channels past it are read by the stream.
inline constexpr size_t kChannelReadAhead = 24u << 20;
// Its requests at most (ChannelStream's kChannelQueueDepth counts them).
inline constexpr size_t kChannelReadAheadRequests = 128;

class ChannelReadAhead {
 public:
  // staging: 4 KiB-aligned; requests: room for SparseRowGather::max_requests(max_channels);
  // rows, ids, slots, row_requests: room for max_channels each (slots all -1 on entry).
  ChannelReadAhead(char* staging, size_t staging_bytes, IoRequest* requests, SparseRowSource* rows,
                   int32_t* ids, int32_t* slots, int32_t* row_requests, size_t max_channels);
  ~ChannelReadAhead();
  ChannelReadAhead(const ChannelReadAhead&) = delete;
  ChannelReadAhead& operator=(const ChannelReadAhead&) = delete;

  // Reads the columns of site `site`'s channels c with |x[c]| > threshold, in channel order
  // while the staging holds them, from `file`; a read-ahead still pending is dropped first.
  // Counts rows, requests and bytes into info.
  void start(int site, File& file, const SparseLayerPlan& plan, const float* x, float threshold,
             SparseTokenInfo& info);
  bool pending(int site) const { return site_ == site; }
  // Where channel c's column lies in the staging and, in *request, how many of the read-ahead's
  // requests must land before it is there; nullptr when it was not read ahead.
  const SparseRowSource* find(int32_t c, size_t* request) const {
    const int32_t j = slots_[c];
    if (j < 0) return nullptr;
    *request = static_cast<size_t>(row_requests_[j]) + 1;
    return &gather_.row(static_cast<size_t>(j));
  }
  // Waits until the first k requests have landed (into info.io_seconds).
  void wait_through(size_t k, SparseTokenInfo& info);
  // Waits for whatever is in flight and forgets the read-ahead.
  void drop();

 private:
  SparseRowGather gather_;
  int32_t* ids_;           // the channels read ahead, in order (gather_.row(j) is ids_[j]'s)
  int32_t* slots_;         // per channel: its index among ids_, -1 when not read ahead
  int32_t* row_requests_;  // per read-ahead row: the index of the request holding it
  std::vector<IoFuture> futures_;
  size_t waited_ = 0;  // futures_[0, waited_) have landed
  int site_ = -1;      // the site read ahead for, -1 when none
};

}  // namespace tierlm::detail
