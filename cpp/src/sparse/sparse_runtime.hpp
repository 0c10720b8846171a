// What the model asks of a sparse runtime, whichever it is: the sparse FFN (neurons picked by
// predictors, sparse_ffn_layer.hpp) or the input-channel sparse linears (channel_layer.hpp).
// The executor calls each one's run path directly; the model resets, closes batches and reads
// the record through this interface.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

// The runtime's file I/O: back end, O_DIRECT, staging registered with the engine (the model's
// I/O path in ModelStats when no weights stream).
struct SparseFfnIo {
  std::string backend;
  bool direct = false;
  std::string direct_reason;  // why not, when direct is false
  bool registered = false;
};

class SparseRuntime {
 public:
  virtual ~SparseRuntime() = default;
  // The batch of rows is done: its per-token counters go to the totals and the token log.
  virtual void end_batch(size_t rows) = 0;
  // Empties the caches and windows (a new sequence).
  virtual void reset() = 0;
  virtual SparseStats stats() const = 0;
  virtual const SparseFfnIo& io() const = 0;
  // One record per token since load, oldest first (the last kSparseTokenLog kept).
  virtual std::vector<SparseTokenInfo> tokens() const = 0;
};

}  // namespace tierlm::detail
