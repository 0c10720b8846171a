// The executor's input-channel sparse linears (ModelOptions::sparse on a package with channel
// files): per token and site the channels with |x| > threshold are kept, the channel window
// says what to evict, the missing columns are read from the site's channel file
// (SparseRowLoader) into its channel cache, and kernel_channel_sparse_linear sums the cached
// columns of the kept channels. A site runs whole at its first graph op into scratch; each of
// its ops then copies out its part. Buffers come from the host tier at load (channel_plan.hpp).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "sparse/channel_plan.hpp"
#include "sparse/sparse_runtime.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

class ChannelSparse : public SparseRuntime {
 public:
  ChannelSparse(const ChannelPlan& plan, HostTier& host);
  ~ChannelSparse() override;
  ChannelSparse(const ChannelSparse&) = delete;
  ChannelSparse& operator=(const ChannelSparse&) = delete;

  // Site `site` over rows tokens x [rows, n_channels], token by token, into scratch.
  void run(int site, const float* x, size_t rows);
  // Op `index` of site `site`: its part of the last run's outputs (+ bias) into y [rows, out].
  void copy(int site, size_t index, size_t rows, const float* bias, float* y) const;
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
