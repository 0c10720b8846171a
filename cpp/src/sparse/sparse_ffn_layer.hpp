// The executor's sparse FFN runtime (LLM in a flash, ModelOptions::sparse): per token and layer
// a low-rank predictor picks neurons, the neuron window says what to evict, the missing rows
// are read from the layer's bundle file (SparseRowLoader) into its neuron cache, and the sparse
// FFN kernel runs over every cached row (those cached before the step while the misses are
// read). At decode the next layer's rows are read ahead while a layer computes
// (sparse_readahead.hpp). Its buffers come from the host tier at load, sized by
// the plan (sparse_plan.hpp); a token that reads rows allocates only the I/O futures.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_runtime.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

class SparseFfn : public SparseRuntime {
 public:
  SparseFfn(const SparseFfnPlan& plan, HostTier& host);
  ~SparseFfn() override;
  SparseFfn(const SparseFfn&) = delete;
  SparseFfn& operator=(const SparseFfn&) = delete;

  // FFN of layers[index] for rows tokens x [rows, dim] into y [rows, dim], token by token.
  void run(int index, const float* x, size_t rows, const float* up_bias, const float* gate_bias,
           const float* down_bias, float* y);
  // The hook for reading ahead of compute: rows[0, n) (neuron ids, ascending) are the rows
  // layers[index] will probably want at its next step; those it does not cache are read now,
  // while the caller computes, and that step then reads only the rest. Changes what is read
  // when, never what is computed. run() calls it itself at decode with the next layer's
  // predictor applied to this layer's input. Does nothing without read-ahead.
  void read_ahead(int index, const int32_t* rows, size_t n);
  // read_ahead() of the rows layers[index]'s predictor picks on x, a row of the residual stream
  // normalised ahead of the FFN's own input (the executor passes the layer's attention input,
  // so its rows are read while attention computes). Adds to what is already read ahead.
  void read_ahead_from(int index, const float* x);
  // Row width of layers[index]'s result (the hidden size).
  size_t dim(int index) const;
  void end_batch(size_t rows) override;
  void reset() override;
  SparseStats stats() const override;
  const SparseFfnIo& io() const override;
  std::vector<SparseTokenInfo> tokens() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tierlm::detail
