// The input-channel sparse path per token and site: kept channels -> window -> evict -> one
// batch of reads -> insert -> kernel over the cached columns, split over the pool's threads by
// output range. See channel_layer.hpp and docs/sparse.md.
#include "sparse/channel_layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/clock.hpp"
#include "sparse/row_cache.hpp"
#include "sparse/sparse_row_loader.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/kernels/channel_sparse.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/sparse/neuron_cache.hpp"

namespace tierlm::detail {

namespace {

constexpr size_t kKernelWork = 1 << 16;  // multiply-adds per thread below which one thread runs

}  // namespace

struct ChannelSparse::Impl {
  struct Site : CachedRowFile {
    const ChannelSitePlan* plan = nullptr;
    const float* rotation = nullptr;  // Qᵀ [n, n] of a rotated site, in `rotations`
  };

  ChannelPlan plan;
  HostBuffer scratch;
  HostBuffer rotations;    // the rotated sites' Qᵀ, one after the other
  SparseRowLoader loader;  // before sites: the files may hold its staging registered
  std::vector<Site> sites;

  int32_t* kept = view<int32_t>(plan.scratch.kept);
  int32_t* to_load = view<int32_t>(plan.scratch.to_load);
  int32_t* to_evict = view<int32_t>(plan.scratch.to_evict);
  int32_t* need = view<int32_t>(plan.scratch.need);
  int32_t* evict = view<int32_t>(plan.scratch.evict);
  float* site_out = view<float>(plan.scratch.site_out);
  SparseTokenLog log{view<SparseTokenInfo>(plan.scratch.rows), plan.max_rows,
                     view<SparseTokenInfo>(plan.scratch.log)};
  size_t threads = 1;

  SparseStats totals;
  SparseFfnIo files_io;

  template <class T>
  T* view(size_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(scratch.data()) + offset);
  }

  Impl(const ChannelPlan& p, HostTier& host)
      : plan(p),
        scratch(host.allocate(plan.scratch.bytes)),
        rotations(plan.rotations.empty() ? HostBuffer() : host.allocate(rotation_bytes(plan))),
        loader(host.allocate(plan.staging_bytes, kAlignment),
               view<IoRequest>(plan.scratch.requests), view<SparseRowSource>(plan.scratch.sources),
               plan.scratch.max_requests, true, kSparseMergeGap) {
    threads = std::max<size_t>(1, parallel_threads());
    const std::vector<float*> qt = read_rotations();
    sites.reserve(plan.sites.size());
    for (const ChannelSitePlan& s : plan.sites) {
      Site site{CachedRowFile(s.rows, host, plan.window), &s,
                s.rotation < 0 ? nullptr : qt[static_cast<size_t>(s.rotation)]};
      const bool reg = site.file.register_buffer(loader.staging(), loader.staging_bytes());
      record_row_file(files_io, site.file, reg, sites.empty());
      sites.push_back(std::move(site));
    }
    totals.sparse = true;
    totals.sparse_channels = true;
    totals.sparse_window = static_cast<int64_t>(plan.window);
    totals.sparse_dense_ffn_bytes = plan.dense_bytes;
    totals.sparse_host_bytes = plan.host_bytes;
    totals.sparse_target_sparsity = plan.target_sparsity;
    for (const ChannelSitePlan& s : plan.sites) {
      totals.sparse_capacity.push_back(static_cast<int64_t>(s.rows.capacity));
    }
  }

  // Reads each rotation Q (row-major, as stored) and keeps Qᵀ, so that z = Qᵀ x is one
  // kernel_linear; returns where each one lies.
  std::vector<float*> read_rotations() {
    std::vector<float*> at;
    if (plan.rotations.empty()) return at;
    File f(plan.rotation_file, IoMode::kIoModeRead, IoOptions{.direct = false});
    float* out = static_cast<float*>(rotations.data());
    std::vector<float> q;
    for (size_t k = 0; k < plan.rotations.size(); ++k) {
      const size_t n = plan.rotation_dims[k];
      q.resize(n * n);
      f.read(q.data(), n * n * sizeof(float), plan.rotations[k]);
      for (size_t c = 0; c < n; ++c) {
        for (size_t j = 0; j < n; ++j) out[j * n + c] = q[c * n + j];
      }
      at.push_back(out);
      out += n * n;
    }
    return at;
  }

  // y[row_elems] (+)= the kept channels' columns among cache rows [first, first + n).
  void kernel(Site& s, const float* x, size_t first, size_t n, float* y, bool accumulate) {
    const SparseLayerPlan& r = s.plan->rows;
    const NeuronCache& cache = s.rows.cache;
    if (n == 0) {  // nothing cached (yet): no row to point at
      if (!accumulate) std::fill(y, y + r.row_elems, 0.0f);
      return;
    }
    const size_t block = dtype_block(r.dtype).elems;
    const size_t blocks = r.row_elems / block;
    const size_t chunks =
        std::clamp<size_t>(n * r.row_elems / kKernelWork, 1, std::min(threads, blocks));
    parallel_for(
        chunks,
        [&](size_t c0, size_t c1) {
          for (size_t c = c0; c < c1; ++c) {
            const size_t b = blocks * c / chunks * block, e = blocks * (c + 1) / chunks * block;
            ChannelRows rows;
            rows.rows = static_cast<const char*>(cache.row(first)) + dtype_row_bytes(r.dtype, b);
            rows.dtype = r.dtype;
            rows.n_rows = n;
            rows.out = e - b;
            rows.row_stride = r.row_elems;
            rows.channels = cache.neurons() + first;
            rows.n_channels = r.n_neurons;
            // Accumulating, y is its own bias: the rows continue y's sums in their order.
            kernel_channel_sparse_linear(x, rows, s.plan->threshold, accumulate ? y + b : nullptr,
                                         y + b);
          }
        },
        1);
  }

  void token(Site& s, const float* input, float* y, SparseTokenInfo& info) {
    const SparseLayerPlan& r = s.plan->rows;
    NeuronCache& cache = s.rows.cache;
    const size_t cap = r.capacity;
    auto t0 = Clock::now();
    const float* x = input;  // a rotated site's channels are those of z = Qᵀ x
    if (s.rotation != nullptr) {
      float* z = view<float>(plan.scratch.rotated);
      kernel_linear(input, s.rotation, nullptr, DType::kDTypeF32, z, 1, r.n_neurons, r.n_neurons);
      x = z;
    }
    size_t n_kept = 0;
    const float t = s.plan->threshold;
    for (size_t c = 0; c < r.n_neurons; ++c) {
      if (std::fabs(x[c]) > t) kept[n_kept++] = static_cast<int32_t>(c);
    }
    info.neurons_predicted += n_kept;
    const size_t n_need = s.rows.admit(kept, n_kept, need, to_load, to_evict, evict);
    info.memory_seconds += seconds_since(t0);
    const size_t fill = std::min(n_need, cap - cache.size());
    // The cached kept channels' columns are summed while the missing ones are read; the new
    // columns land after them in the cache and continue the sums, so y is the one pass over
    // the cache's rows in order that a load-then-compute step makes, bit for bit.
    const size_t hits = cache.size();
    const size_t started = loader.start(s.file, r, need, fill, info);
    t0 = Clock::now();
    kernel(s, x, 0, hits, y, false);
    info.compute_seconds += seconds_since(t0);
    loader.finish(r, cache, need, info);
    loader.load(s.file, r, cache, need + started, fill - started, nullptr, info);
    t0 = Clock::now();
    kernel(s, x, hits, cache.size() - hits, y, true);
    info.compute_seconds += seconds_since(t0);
    if (fill == n_need) return;
    // This token's kept channels alone pass the capacity: the rest in rounds of at most `cap`
    // columns, each replacing the columns computed last (the sum is additive).
    ++totals.sparse_overflows;
    loader.load_rounds(s.file, r, cache, need, fill, n_need, evict, nullptr, info,
                       [&](size_t first, size_t m) { kernel(s, x, first, m, y, true); });
  }
};

ChannelSparse::ChannelSparse(const ChannelPlan& plan, HostTier& host)
    : impl_(std::make_unique<Impl>(plan, host)) {}
ChannelSparse::~ChannelSparse() = default;

void ChannelSparse::run(int site, const float* x, size_t rows) {
  Impl& m = *impl_;
  Impl::Site& s = m.sites[static_cast<size_t>(site)];
  const size_t n = s.plan->rows.n_neurons, width = s.plan->rows.row_elems;
  for (size_t r = 0; r < rows; ++r) m.token(s, x + r * n, m.site_out + r * width, m.log.row(r));
}

void ChannelSparse::copy(int site, size_t index, size_t rows, const float* bias, float* y) const {
  const Impl& m = *impl_;
  const ChannelSitePlan& s = *m.sites[static_cast<size_t>(site)].plan;
  const ChannelSiteOp& op = s.ops[index];
  const size_t width = s.rows.row_elems;
  for (size_t r = 0; r < rows; ++r) {
    std::memcpy(y + r * op.out, m.site_out + r * width + op.offset, op.out * sizeof(float));
    if (bias != nullptr) kernel_add(y + r * op.out, bias, op.out);
  }
}

void ChannelSparse::end_batch(size_t rows) { impl_->log.end_batch(rows, impl_->totals); }

void ChannelSparse::reset() {
  for (Impl::Site& s : impl_->sites) s.rows.reset();
}

SparseStats ChannelSparse::stats() const { return impl_->totals; }

const SparseFfnIo& ChannelSparse::io() const { return impl_->files_io; }

std::vector<SparseTokenInfo> ChannelSparse::tokens() const { return impl_->log.tokens(); }

}  // namespace tierlm::detail
