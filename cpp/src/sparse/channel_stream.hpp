// A streamed channel site's reads (channel_plan.hpp: capacity 0): one token's kept columns are
// read in batches into the slots of the staging buffer, kChannelStreamSlots batches in flight,
// and each batch is summed where its columns landed as soon as it is there, its slot then
// taking the next batch: the disk's queue never drains inside a site, while the kernel's time
// hides behind the reads. Nothing is cached or copied. Columns read ahead (ChannelReadAhead)
// join the batches where they lie, so a batch sums the kept columns in channel order wherever
// their bytes came from.
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

// The batches in flight. The disk finishes the requests in flight in no particular order
// (bench_sparse_gated --trace: two batches of 48 requests landed within the same 0.1 ms), so a
// batch waited for alone lands only when most of what is in flight has, and with two halves
// the queue emptied while each was summed; with several smaller batches the oldest lands
// first and the rest keep the disk busy while it is summed.
inline constexpr size_t kChannelStreamSlots = 4;
// A batch's staging bytes at most: small enough that the first batch's kernel starts early,
// large enough that the slots' batches together (tens of requests) keep the disk's queue full.
inline constexpr size_t kChannelStreamBatch = 4u << 20;
// A batch's requests at most (about 3 MiB at the mean request of gate/up at 40%).
inline constexpr size_t kChannelStreamRequests = 16;
// The ring depth of a streamed site's file: every request the stream's batches and the
// read-ahead have in flight fits in the ring, so none waits in the engine's backlog for a
// thread to move it in as slots free up; on 2 cores the kernel's threads kept that thread off
// the CPU while the disk ran dry. (The thread back end keeps its default workers.)
inline constexpr unsigned kChannelQueueDepth =
    kChannelStreamSlots * kChannelStreamRequests + kChannelReadAheadRequests;

class ChannelStream {
 public:
  // staging: 4 KiB-aligned, at least kChannelStreamSlots of the widest column ranges;
  // requests: room for max_requests; rows: room for kChannelStreamSlots * max_rows (max_rows:
  // the most columns of a site).
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
    size_t first[kSlots] = {}, count[kSlots] = {};
    size_t done = 0;
    try {
      for (size_t k = 0; k < kSlots && done < n; ++k) {
        first[k] = done;
        count[k] = submit(k, file, plan, ids + done, n - done, ahead, info);
        done += count[k];
      }
      // Batches land and are summed in the order they were submitted; each slot, once summed,
      // takes the next batch at once.
      for (size_t h = 0; count[h] > 0; h = (h + 1) % kSlots) {
        wait(h, info);
        if (ahead != nullptr) ahead->wait_through(ahead_requests_[h], info);
        const auto t0 = Clock::now();
        compute(static_cast<const SparseRowGather&>(slots_[h]), ids + first[h], count[h]);
        info.compute_seconds += seconds_since(t0);
        info.neurons_read += count[h];
        slots_[h].clear();
        count[h] = 0;
        if (done < n) {
          first[h] = done;
          count[h] = submit(h, file, plan, ids + done, n - done, ahead, info);
          done += count[h];
        }
      }
    } catch (...) {
      drop();
      throw;
    }
  }

 private:
  static constexpr size_t kSlots = kChannelStreamSlots;
  // Gathers ids[0, n) into slot h until it is full (its staging, or slot_bytes_ of columns
  // read ahead), submits the reads; returns how many.
  size_t submit(size_t h, File& file, const SparseLayerPlan& plan, const int32_t* ids, size_t n,
                ChannelReadAhead* ahead, SparseTokenInfo& info);
  // Waits for slot h's batch (into info.io_seconds).
  void wait(size_t h, SparseTokenInfo& info);
  // Waits for whatever is in flight and empties every slot.
  void drop();

  size_t slot_bytes_;  // staging bytes of each slot
  std::vector<SparseRowGather> slots_;
  std::vector<IoFuture> futures_[kSlots];
  size_t ahead_requests_[kSlots] = {};  // read-ahead requests slot h's columns wait for
};

}  // namespace tierlm::detail
