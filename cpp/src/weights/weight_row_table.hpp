// A table the streaming store reads by rows on demand (a token embedding larger than the rows
// a forward pass asks for): one 4 KiB-aligned host slot per row, filled by one batch of
// O_DIRECT reads per call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/model/package.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

class WeightRowTable {
 public:
  // Slots for max_rows rows of `tensor` (2-D) from the host tier. The table reads from `file`
  // and adds its counters to `stats`; tensor, file, host and stats must outlive it.
  WeightRowTable(const TensorInfo& tensor, File& file, size_t max_rows, HostTier& host,
                 StreamStats& stats);

  // Rows ids[0..n): one pointer per id, valid until the next call. Allocates only the I/O
  // engine's futures.
  const void* const* read(const int32_t* ids, size_t n);
  uint64_t buffer_bytes() const { return buffer_.size(); }

 private:
  const TensorInfo* tensor_;
  File* file_;
  HostTier* host_;
  StreamStats* stats_;
  uint64_t row_bytes_ = 0;
  uint64_t slot_ = 0;  // buffer bytes per row (the aligned span)
  HostBuffer buffer_;
  std::vector<const void*> ptrs_;
  std::vector<IoRequest> requests_;
  std::vector<IoFuture> futures_;
};

}  // namespace tierlm::detail
