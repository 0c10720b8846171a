// Rows on demand for the streaming store (see weight_row_table.hpp): each row's aligned span
// into its own slot, one batch, one wait.
#include "weights/weight_row_table.hpp"

#include <algorithm>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "weights/weight_placement.hpp"

namespace tierlm::detail {

WeightRowTable::WeightRowTable(const TensorInfo& tensor, File& file, size_t max_rows,
                               HostTier& host, StreamStats& stats)
    : tensor_(&tensor),
      file_(&file),
      host_(&host),
      stats_(&stats),
      row_bytes_(tensor.nbytes / static_cast<uint64_t>(tensor.shape[0])),
      slot_(weight_row_slot_bytes(tensor)),
      buffer_(host.allocate(slot_ * max_rows, kAlignment)),
      ptrs_(max_rows, nullptr) {
  requests_.reserve(max_rows);
  futures_.reserve(max_rows);
}

const void* const* WeightRowTable::read(const int32_t* ids, size_t n) {
  const TensorInfo& t = *tensor_;
  TIERLM_CHECK(n <= ptrs_.size(), kErrorInvalidArgument, "weight store: ", n, " rows of `", t.name,
               "` asked at once, the row buffers hold ", ptrs_.size());
  requests_.clear();
  char* base = static_cast<char*>(buffer_.data());
  uint64_t bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    TIERLM_CHECK(ids[i] >= 0 && ids[i] < t.shape[0], kErrorInvalidArgument, "token id ", ids[i],
                 " outside the ", t.shape[0], " rows of `", t.name, "`");
    const uint64_t offset = t.offset + static_cast<uint64_t>(ids[i]) * row_bytes_;
    const uint64_t start = round_down(offset, kAlignment);
    const uint64_t end = std::min(round_up(offset + row_bytes_, kAlignment), file_->size());
    char* dst = base + i * slot_;
    requests_.push_back({dst, end - start, start});
    ptrs_[i] = dst + (offset - start);
    bytes += end - start;
  }
  const auto t0 = Clock::now();
  futures_ = file_->pread_batch(requests_);
  try {
    io_wait_all(futures_);
  } catch (const Error& error) {
    futures_.clear();
    throw Error(error.code(), error.sys_errno(),
                "rows of `" + tensor_->name + "`: " + error.what());
  }
  futures_.clear();
  const double wait = seconds_since(t0);
  stats_->io_wait_seconds += wait;
  stats_->read_busy_seconds += wait;
  stats_->row_bytes_read += bytes;
  host_->record_in(bytes);
  return ptrs_.data();
}

}  // namespace tierlm::detail
