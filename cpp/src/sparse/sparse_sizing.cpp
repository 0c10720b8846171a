// Sizes what the sparse FFN runtime allocates at load: each layer's neuron cache capacity, the
// shared staging buffer, the read-ahead buffers, the scratch layout, and their host-tier total
// (plan.host_bytes), which the model counts against the host budget before anything is allocated.
#include <algorithm>
#include <cmath>

#include "sparse/row_cache.hpp"
#include "sparse/sparse_plan.hpp"
#include "sparse/sparse_readahead.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"
#include "tierlm/sparse/neuron_cache.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm::detail {

namespace {

constexpr double kCapacityMargin = 1.5;
constexpr size_t kMaxStaging = 64ull << 20;
constexpr size_t kMaxPartials = 16;

// Worst widened size of a range of len bytes at offsets that are multiples of stride.
uint64_t worst_widened(uint64_t len, uint64_t stride) {
  if (stride % kAlignment == 0) return round_up(len, kAlignment);
  return round_up(len + kAlignment - 1, kAlignment);
}

}  // namespace

SparseScratchLayout sparse_scratch_layout(const SparseFfnPlan& plan) {
  size_t max_n = 0, max_rank = 0, max_dim = 0, max_cap = 0, max_x_blocks = 0;
  for (const SparseLayerPlan& l : plan.layers) {
    max_x_blocks = std::max(max_x_blocks, kernel_sparse_ffn_workspace(l.dtype, l.dim));
    max_n = std::max(max_n, l.n_neurons);
    max_rank = std::max(max_rank, l.rank);
    max_dim = std::max(max_dim, l.dim);
    max_cap = std::max(max_cap, l.capacity);
  }
  SparseScratchLayout s;
  s.max_requests = SparseRowGather::max_requests(max_cap);
  ScratchCursor cursor;
  s.mid = cursor.take(max_rank * sizeof(float));
  s.logits = cursor.take(max_n * sizeof(float));
  s.active = cursor.take(max_n * sizeof(int32_t));
  s.to_load = cursor.take(max_n * sizeof(int32_t));
  s.to_evict = cursor.take(max_n * sizeof(int32_t));
  s.need = cursor.take(max_n * sizeof(int32_t));
  s.evict = cursor.take(max_n * sizeof(int32_t));
  s.sources = cursor.take(max_cap * sizeof(SparseRowSource));
  s.requests = cursor.take(s.max_requests * sizeof(IoRequest));
  s.partial = cursor.take(plan.partials * max_dim * sizeof(float));
  s.y_tmp = cursor.take(max_dim * sizeof(float));
  s.x_blocks = cursor.take(max_x_blocks);
  s.rows = cursor.take(plan.max_rows * sizeof(SparseTokenInfo));
  s.log = cursor.take(kSparseTokenLog * sizeof(SparseTokenInfo));
  s.bytes = cursor.bytes;
  return s;
}

void size_sparse_caches(SparseFfnPlan& plan, int64_t capacity, size_t capacity_tokens) {
  size_t max_cap = 0, ahead_rows = 0;
  uint64_t worst_row = 0, bound = 0;
  for (SparseLayerPlan& l : plan.layers) {
    if (capacity > 0) {
      l.capacity = std::min<size_t>(static_cast<size_t>(capacity), l.n_neurons);
    } else if (l.predicted_density > 0) {
      const double want = std::ceil(l.predicted_density * static_cast<double>(l.n_neurons) *
                                    static_cast<double>(capacity_tokens) * kCapacityMargin);
      l.capacity = std::clamp<size_t>(static_cast<size_t>(want), 1, l.n_neurons);
    } else {
      l.capacity = l.n_neurons;
    }
    max_cap = std::max(max_cap, l.capacity);
    // One token's predicted rows (with the capacity margin); the cache capacity when the
    // metrics lack the density.
    const size_t token_rows =
        l.predicted_density > 0
            ? static_cast<size_t>(std::ceil(l.predicted_density * static_cast<double>(l.n_neurons) *
                                            kCapacityMargin))
            : l.capacity;
    ahead_rows = std::max(ahead_rows, std::clamp<size_t>(token_rows, 1, l.capacity));
    const uint64_t row = plan.bundled ? worst_widened(l.row_bytes, l.row_bytes)
                                      : 2 * worst_widened(l.up_part_bytes(), l.row_bytes);
    worst_row = std::max(worst_row, row);
    bound = std::max(bound, plan.bundled ? l.file_bytes : l.capacity * row);
  }
  const uint64_t staging = std::min<uint64_t>(bound, max_cap * worst_row);
  plan.staging_bytes = static_cast<size_t>(
      std::max<uint64_t>(std::min<uint64_t>(staging, kMaxStaging), 2 * worst_row));
  plan.readahead_rows = plan.readahead ? ahead_rows : 0;
  plan.readahead_staging = plan.readahead
                               ? static_cast<size_t>(std::clamp<uint64_t>(
                                     std::min<uint64_t>(bound, ahead_rows * worst_row),
                                     2 * worst_row, std::max<uint64_t>(kMaxStaging, 2 * worst_row)))
                               : 0;
  plan.partials = std::clamp<size_t>(parallel_threads(), 1, kMaxPartials);
  plan.scratch = sparse_scratch_layout(plan);
  plan.predictor_floats = 0;
  uint64_t bytes = host_pages(plan.staging_bytes) + host_pages(plan.scratch.bytes);
  if (plan.readahead) {
    bytes += 2 * host_pages(SparseReadAhead::bytes(plan.readahead_staging, plan.readahead_rows));
  }
  for (const SparseLayerPlan& l : plan.layers) {
    bytes += RowCache::host_bytes(l, plan.window);
    plan.predictor_floats += l.rank * l.dim + l.n_neurons * l.rank + l.n_neurons;
  }
  bytes += host_pages(plan.predictor_floats * sizeof(float));
  plan.host_bytes = bytes;
}

}  // namespace tierlm::detail
