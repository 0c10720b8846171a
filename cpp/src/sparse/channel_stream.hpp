// A streamed channel site's reads (channel_plan.hpp: capacity 0): one token's kept columns are
// read in batches into the two halves of the staging buffer, and each batch is summed where
// its columns landed while the next one is read, so the kernel's time hides behind the disk.
// Nothing is cached or copied. Columns read ahead (ChannelReadAhead) join the batches where
// they lie, so a batch sums the kept columns in channel order wherever their bytes came from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/clock.hpp"
#include "sparse/channel_readahead.hpp"
#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

// A batch's staging bytes at most: small enough that the first batch's kernel starts early
// and that the next batch is in flight during it, large enough (tens of requests) to keep the
// disk's queue full.
inline constexpr size_t kChannelStreamBatch = 8u << 20;
// A batch's requests at most (about 8 MiB at the mean request of gate/up at 40%).
inline constexpr size_t kChannelStreamRequests = 48;
// The ring depth of a streamed site's file: every request the stream's two batches and the
// read-ahead have in flight fits in the ring, so none waits in the engine's backlog for a
// thread to move it in as slots free up; on 2 cores the kernel's threads kept that thread off
// the CPU while the disk ran dry. (The thread back end keeps its default workers.)
inline constexpr unsigned kChannelQueueDepth =
    2 * kChannelStreamRequests + kChannelReadAheadRequests;

class ChannelStream {
 public:
  // staging: 4 KiB-aligned, at least two of the widest column ranges; requests: room for
  // max_requests; rows: room for 2 * max_rows (max_rows: the most columns of a site).
  ChannelStream(char* staging, size_t staging_bytes, IoRequest* requests, size_t max_requests,
                SparseRowSource* rows, size_t max_rows, uint64_t merge_gap);
  ~ChannelStream();
  ChannelStream(const ChannelStream&) = delete;
  ChannelStream& operator=(const ChannelStream&) = delete;

  // Reads the columns of ids[0, n) (sorted) from `file`, but those `ahead` (when not null)
  // holds, and calls compute(batch, ids of the batch, columns) on each batch in order, column j
  // at batch.row(j).up; counts requests, bytes, columns and the waits into info (the kernel's
  // time into compute_seconds).
  template <class Compute>
  void run(File& file, const SparseLayerPlan& plan, const int32_t* ids, size_t n,
           ChannelReadAhead* ahead, SparseTokenInfo& info, Compute compute) {
    size_t first[2] = {0, 0}, count[2] = {0, 0};
    size_t done = 0;
    try {
      count[0] = submit(0, file, plan, ids, n, ahead, info);
      done = count[0];
      for (int h = 0; count[h] > 0; h = 1 - h) {
        const int next = 1 - h;
        if (done < n) {  // the next batch reads while this one is summed
          first[next] = done;
          count[next] = submit(next, file, plan, ids + done, n - done, ahead, info);
          done += count[next];
        }
        wait(h, info);
        if (ahead != nullptr) ahead->wait_through(ahead_requests_[h], info);
        const auto t0 = Clock::now();
        compute(static_cast<const SparseRowGather&>(halves_[h]), ids + first[h], count[h]);
        info.compute_seconds += seconds_since(t0);
        info.neurons_read += count[h];
        halves_[h].clear();
        count[h] = 0;
      }
    } catch (...) {
      drop();
      throw;
    }
  }

 private:
  // Gathers ids[0, n) into half h until it is full (its staging, or half_bytes_ of columns
  // read ahead), submits the reads; returns how many.
  size_t submit(int h, File& file, const SparseLayerPlan& plan, const int32_t* ids, size_t n,
                ChannelReadAhead* ahead, SparseTokenInfo& info);
  // Waits for half h's batch (into info.io_seconds).
  void wait(int h, SparseTokenInfo& info);
  // Waits for whatever is in flight and empties both halves.
  void drop();

  size_t half_bytes_;  // staging bytes of each half
  SparseRowGather halves_[2];
  std::vector<IoFuture> futures_[2];
  size_t ahead_requests_[2] = {0, 0};  // read-ahead requests half h's columns wait for
};

}  // namespace tierlm::detail
