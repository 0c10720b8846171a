// The sparse FFN's per-token path: predictor -> window -> evict -> submit one batch of reads (the
// rows read ahead taken from there) -> read-ahead of the next layer's rows (decode) -> kernel
// over the cached rows -> wait, insert -> kernel over the rows read, over views of one scratch
// buffer laid out by the plan. See sparse_ffn_layer.hpp and
// docs/sparse.md.
#include "sparse/sparse_ffn_layer.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/clock.hpp"
#include "sparse/row_cache.hpp"
#include "sparse/sparse_readahead.hpp"
#include "sparse/sparse_row_loader.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"
#include "tierlm/sparse/neuron_cache.hpp"

namespace tierlm::detail {

namespace {

constexpr size_t kKernelWork = 1 << 15;  // row elements per thread below which one thread runs

}  // namespace

struct SparseFfn::Impl {
  struct Layer : CachedRowFile {
    const SparseLayerPlan* plan = nullptr;
    const float* pred_down = nullptr;
    const float* pred_up = nullptr;
    const float* pred_bias = nullptr;
  };

  SparseFfnPlan plan;
  HostBuffer predictors;
  HostBuffer scratch;  // plan.scratch's views
  // Before layers: the files (closed first) may hold its staging registered.
  SparseRowLoader loader;
  // Two read-ahead buffers, layer i's in aheads[i % 2]: layer i+1's rows are read into one
  // while layer i takes its own from the other. Empty without read-ahead.
  std::vector<SparseReadAhead> aheads;
  std::vector<Layer> layers;

  float* mid = view<float>(plan.scratch.mid);
  float* logits = view<float>(plan.scratch.logits);
  int32_t* active = view<int32_t>(plan.scratch.active);
  int32_t* to_load = view<int32_t>(plan.scratch.to_load);
  int32_t* to_evict = view<int32_t>(plan.scratch.to_evict);
  int32_t* need = view<int32_t>(plan.scratch.need);
  int32_t* evict = view<int32_t>(plan.scratch.evict);
  float* partial = view<float>(plan.scratch.partial);
  float* y_tmp = view<float>(plan.scratch.y_tmp);
  void* x_blocks = view<char>(plan.scratch.x_blocks);
  SparseTokenLog log{view<SparseTokenInfo>(plan.scratch.rows), plan.max_rows,
                     view<SparseTokenInfo>(plan.scratch.log)};
  const float* gate_bias = nullptr;  // of the layer running

  SparseStats totals;
  SparseFfnIo bundle_io;  // the bundle files' I/O path

  template <class T>
  T* view(size_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(scratch.data()) + offset);
  }

  // Neuron rows coalesce only where they touch: the FFN path reads what its predictor picked
  // (kSparseMergeGap is the channel path's, whose kept columns lie far denser).
  static constexpr uint64_t kMergeGap = 0;
  // Neuron rows are small random reads (8 KiB bundled f16 rows at hidden 2048), which a disk
  // serves fastest with many in flight: fio's 8 KiB random reads at QD 64 reach up to twice
  // their QD 32 bandwidth here, and the disk bound of bench_sparse takes the best of QD 4/16/64.
  // A layer's misses (100-200 rows at 95% sparsity) then reach the device in fewer rounds.
  static constexpr unsigned kQueueDepth = 64;

  Impl(const SparseFfnPlan& p, HostTier& host)
      : plan(p),
        predictors(host.allocate(plan.predictor_floats * sizeof(float))),
        scratch(host.allocate(plan.scratch.bytes)),
        loader(host.allocate(plan.staging_bytes, kAlignment),
               view<IoRequest>(plan.scratch.requests), view<SparseRowSource>(plan.scratch.sources),
               plan.scratch.max_requests, plan.bundled, kMergeGap) {
    if (plan.readahead) {
      const size_t bytes = SparseReadAhead::bytes(plan.readahead_staging, plan.readahead_rows);
      for (int i = 0; i < 2; ++i) {
        aheads.emplace_back(host.allocate(bytes, kAlignment), plan.readahead_staging,
                            plan.readahead_rows, plan.bundled, kMergeGap);
      }
    }
    // Predictor tensors, read once.
    File pf(plan.predictors_file, IoMode::kIoModeRead, IoOptions{.direct = false});
    float* pred = static_cast<float*>(predictors.data());
    layers.reserve(plan.layers.size());
    for (const SparseLayerPlan& l : plan.layers) {
      Layer layer{CachedRowFile(l, host, plan.window, kQueueDepth), &l, nullptr, nullptr, nullptr};
      const size_t n_down = l.rank * l.dim, n_up = l.n_neurons * l.rank;
      pf.read(pred, n_down * 4, l.pred_down);
      layer.pred_down = pred;
      pred += n_down;
      pf.read(pred, n_up * 4, l.pred_up);
      layer.pred_up = pred;
      pred += n_up;
      pf.read(pred, l.n_neurons * 4, l.pred_bias);
      layer.pred_bias = pred;
      pred += l.n_neurons;
      bool reg = layer.file.register_buffer(loader.staging(), loader.staging_bytes());
      for (SparseReadAhead& a : aheads) {
        reg = layer.file.register_buffer(a.staging(), a.staging_bytes()) && reg;
      }
      record_row_file(bundle_io, layer.file, reg, layers.empty());
      layers.push_back(std::move(layer));
    }
    totals.sparse = true;
    totals.sparse_window = static_cast<int64_t>(plan.window);
    totals.sparse_bundled = plan.bundled;
    totals.sparse_readahead = plan.readahead;
    totals.sparse_dense_ffn_bytes = plan.dense_ffn_bytes;
    totals.sparse_host_bytes = plan.host_bytes;
    totals.sparse_target_sparsity = plan.target_sparsity;
    for (const SparseLayerPlan& l : plan.layers) {
      totals.sparse_capacity.push_back(static_cast<int64_t>(l.capacity));
    }
  }

  // y (+)= the FFN over cache rows [first, first + n), split over the pool's threads.
  void kernel(Layer& l, const float* x, size_t first, size_t n, const float* up_bias,
              const float* down_bias, float* y, bool accumulate) {
    const SparseLayerPlan& p = *l.plan;
    const size_t dim = p.dim;
    SparseFfnRows rows;
    rows.rows = n > 0 ? l.rows.cache.row(first) : l.rows.cache.rows();
    rows.dtype = p.dtype;
    rows.n_rows = n;
    rows.dim = dim;
    rows.row_stride = p.row_elems;
    rows.neurons = l.rows.cache.neurons() + first;
    rows.up_bias = up_bias;
    rows.gated = p.gated;
    rows.gate_bias = gate_bias;
    rows.act_threshold = p.act_threshold;
    rows.x_blocks = x_blocks;
    const size_t work_rows = std::max<size_t>(1, kKernelWork / (2 * dim));
    const size_t chunks = std::clamp<size_t>(n / work_rows, 1, plan.partials);
    if (chunks == 1) {
      if (!accumulate) {
        kernel_sparse_ffn(x, rows, nullptr, n, down_bias, y);
      } else {
        kernel_sparse_ffn(x, rows, nullptr, n, nullptr, y_tmp);
        kernel_add(y, y_tmp, dim);
      }
      return;
    }
    parallel_for(
        chunks,
        [&](size_t c0, size_t c1) {
          for (size_t c = c0; c < c1; ++c) {
            const size_t b = n * c / chunks, e = n * (c + 1) / chunks;
            SparseFfnRows part = rows;
            part.rows = static_cast<const char*>(rows.rows) + b * p.row_bytes;
            part.n_rows = e - b;
            part.neurons = rows.neurons + b;
            kernel_sparse_ffn(x, part, nullptr, e - b, nullptr, partial + c * dim);
          }
        },
        1);
    if (!accumulate) {
      if (down_bias != nullptr) {
        std::memcpy(y, down_bias, dim * sizeof(float));
      } else {
        std::fill(y, y + dim, 0.0f);
      }
    }
    for (size_t c = 0; c < chunks; ++c) kernel_add(y, partial + c * dim, dim);
  }

  // Layer l's predictor on x: logits = (x · downᵀ) · upᵀ + bias; the neurons whose logit
  // passes the cut go to out, ascending. Returns how many.
  size_t predict(const Layer& l, const float* x, int32_t* out, SparseTokenInfo& info) {
    const SparseLayerPlan& p = *l.plan;
    const auto t0 = Clock::now();
    kernel_linear(x, l.pred_down, nullptr, DType::kDTypeF32, mid, 1, p.rank, p.dim);
    kernel_linear(mid, l.pred_up, l.pred_bias, DType::kDTypeF32, logits, 1, p.n_neurons, p.rank);
    size_t n = 0;
    for (size_t i = 0; i < p.n_neurons; ++i) {
      if (logits[i] > p.cut) out[n++] = static_cast<int32_t>(i);
    }
    info.predictor_seconds += seconds_since(t0);
    return n;
  }

  // Starts reading the rows of ids[0, n) (ascending) that layer `index` does not cache and
  // its read-ahead buffer does not hold yet.
  void read_ahead(int index, const int32_t* ids, size_t n, SparseTokenInfo& info) {
    Layer& l = layers[static_cast<size_t>(index)];
    size_t n_miss = 0;
    for (size_t j = 0; j < n; ++j) {
      if (!l.rows.cache.contains(ids[j])) to_evict[n_miss++] = ids[j];  // free once a step evicted
    }
    aheads[static_cast<size_t>(index) % 2].add(index, l.file, *l.plan, to_evict, n_miss, info);
  }

  // Whether layer `index`'s step at decode reads ahead the rows of layer `index` + 1 (whose
  // predictor then takes its input: the same width).
  bool fed_by_previous(int index) const {
    const auto i = static_cast<size_t>(index);
    return index > 0 && i < layers.size() && layers[i].plan->dim == layers[i - 1].plan->dim;
  }

  // The rows read ahead for layer `index` (maybe still in flight), or null.
  SparseReadAhead* ahead_of(int index) {
    if (aheads.empty()) return nullptr;
    SparseReadAhead& a = aheads[static_cast<size_t>(index) % 2];
    return a.layer() == index ? &a : nullptr;
  }

  // ahead_next: read the next layer's predicted rows while this one computes (decode).
  void token(int index, const float* x, const float* up_bias, const float* down_bias, float* y,
             bool ahead_next, SparseTokenInfo& info) {
    Layer& l = layers[static_cast<size_t>(index)];
    const SparseLayerPlan& p = *l.plan;
    NeuronCache& cache = l.rows.cache;
    const size_t cap = p.capacity;
    const size_t n_active = predict(l, x, active, info);
    info.neurons_predicted += n_active;

    // Window: evict what left it, then make room, oldest first.
    auto t0 = Clock::now();
    const size_t n_need = l.rows.admit(active, n_active, need, to_load, to_evict, evict);
    info.memory_seconds += seconds_since(t0);
    const size_t fill = std::min(n_need, cap - cache.size());
    SparseReadAhead* ahead = n_need > 0 ? ahead_of(index) : nullptr;
    // This layer's misses are submitted first, then the next layer's read-ahead, so that it is
    // in flight while this layer waits for its misses and computes, and never queues in front
    // of them; this layer's own read-ahead is waited for only before its rows are copied.
    const size_t hits = cache.size();
    const size_t started = loader.start(l.file, p, need, fill, ahead, info);
    try {
      if (ahead_next) {
        // The next layer's neurons predicted from this layer's input (the residual stream
        // changes slowly).
        const size_t n = predict(layers[static_cast<size_t>(index) + 1], x, to_load, info);
        read_ahead(index + 1, to_load, n, info);
      }
      // The cached rows are summed while the misses are read; the misses land after them in
      // the cache and continue the sum, with or without read-ahead alike.
      t0 = Clock::now();
      kernel_sparse_ffn_prepare(x, p.dtype, p.dim, x_blocks);
      kernel(l, x, 0, hits, up_bias, down_bias, y, false);
      info.compute_seconds += seconds_since(t0);
    } catch (const Error&) {
      loader.abandon();
      throw;
    }
    loader.finish(p, cache, need, ahead, info);
    loader.load(l.file, p, cache, need + started, fill - started, ahead, info);
    if (cache.size() > hits) {
      t0 = Clock::now();
      kernel(l, x, hits, cache.size() - hits, up_bias, nullptr, y, true);
      info.compute_seconds += seconds_since(t0);
    }
    if (fill == n_need) {
      drop_ahead(index);
      return;
    }

    // This token's prediction alone passes the capacity: the rest in rounds of at most
    // `cap` rows, each replacing the rows computed last (the sum is additive).
    ++totals.sparse_overflows;
    loader.load_rounds(
        l.file, p, cache, need, fill, n_need, evict, ahead, info,
        [&](size_t first, size_t m) { kernel(l, x, first, m, up_bias, nullptr, y, true); });
    drop_ahead(index);
  }

  // Layer `index`'s step is done: its read-ahead (used or not, e.g. when nothing was missing)
  // is forgotten, so that the next token's reads for it start afresh.
  void drop_ahead(int index) {
    if (SparseReadAhead* a = ahead_of(index)) a->drop();
  }
};

SparseFfn::SparseFfn(const SparseFfnPlan& plan, HostTier& host)
    : impl_(std::make_unique<Impl>(plan, host)) {}
SparseFfn::~SparseFfn() = default;

void SparseFfn::run(int index, const float* x, size_t rows, const float* up_bias,
                    const float* gate_bias, const float* down_bias, float* y) {
  Impl& m = *impl_;
  m.gate_bias = gate_bias;
  const size_t dim = m.layers[static_cast<size_t>(index)].plan->dim;
  const bool ahead_next = rows == 1 && !m.aheads.empty() && m.fed_by_previous(index + 1);
  for (size_t r = 0; r < rows; ++r) {
    m.token(index, x + r * dim, up_bias, down_bias, y + r * dim, ahead_next, m.log.row(r));
  }
}

void SparseFfn::read_ahead(int index, const int32_t* rows, size_t n) {
  Impl& m = *impl_;
  if (m.aheads.empty() || index < 0 || static_cast<size_t>(index) >= m.layers.size()) return;
  m.read_ahead(index, rows, n, m.log.row(0));
}

void SparseFfn::read_ahead_from(int index, const float* x) {
  Impl& m = *impl_;
  if (m.aheads.empty() || index < 0 || static_cast<size_t>(index) >= m.layers.size()) return;
  // A layer the previous one reads ahead for (run()) is left to that read: a second prediction
  // per layer cost more predictor time than its few extra rows saved in waiting (bench_sparse,
  // docs/sparse.md); the first layer has no earlier FFN, and only this read runs ahead of it.
  if (m.fed_by_previous(index)) return;
  SparseTokenInfo& info = m.log.row(0);
  const size_t n = m.predict(m.layers[static_cast<size_t>(index)], x, m.to_load, info);
  m.read_ahead(index, m.to_load, n, info);
}

size_t SparseFfn::dim(int index) const {
  return impl_->layers[static_cast<size_t>(index)].plan->dim;
}

void SparseFfn::end_batch(size_t rows) { impl_->log.end_batch(rows, impl_->totals); }

void SparseFfn::reset() {
  for (SparseReadAhead& a : impl_->aheads) a.drop();
  for (Impl::Layer& l : impl_->layers) l.rows.reset();
}

SparseStats SparseFfn::stats() const { return impl_->totals; }

const SparseFfnIo& SparseFfn::io() const { return impl_->bundle_io; }

std::vector<SparseTokenInfo> SparseFfn::tokens() const { return impl_->log.tokens(); }

}  // namespace tierlm::detail
