// The input-channel sparse path per token and site: kept channels, then by the site's mode
// the kernel over its resident columns, over its kept columns where one batch of reads landed
// them (streamed), or window -> evict -> reads -> insert -> kernel over the cached columns;
// the kernel is split over the pool's threads by output range. See channel_layer.hpp and
// docs/sparse.md.
#include "sparse/channel_layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>

#include "core/clock.hpp"
#include "sparse/channel_stream.hpp"
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
  struct Site {
    const ChannelSitePlan* plan = nullptr;
    std::optional<RowCache> rows;  // a cached site's (neither streamed nor resident)
    HostBuffer columns;            // a resident site's: every column in channel order
    File file;
    const float* rotation = nullptr;  // Qᵀ [n, n] of a rotated site, in `rotations`
  };

  ChannelPlan plan;
  HostBuffer scratch;
  HostBuffer rotations;    // the rotated sites' Qᵀ, one after the other
  SparseRowLoader loader;  // before sites: the files may hold its staging registered
  ChannelStream stream;    // the streamed sites' reads, in the loader's staging
  HostBuffer ahead_staging;
  std::optional<ChannelReadAhead> ahead;  // with plan.readahead_bytes
  std::vector<Site> sites;

  int32_t* channel_ids = view<int32_t>(plan.scratch.channel_ids);
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
               plan.scratch.max_requests, true, kSparseMergeGap),
        stream(static_cast<char*>(loader.staging()), loader.staging_bytes(),
               view<IoRequest>(plan.scratch.requests), plan.scratch.max_requests,
               view<SparseRowSource>(plan.scratch.sources), plan.scratch.max_batch,
               kSparseMergeGap),
        ahead_staging(plan.readahead_bytes ? host.allocate(plan.readahead_bytes, kAlignment)
                                           : HostBuffer()) {
    threads = std::max<size_t>(1, parallel_threads());
    size_t max_n = 0;
    for (const ChannelSitePlan& s : plan.sites) max_n = std::max(max_n, s.rows.n_neurons);
    std::iota(channel_ids, channel_ids + max_n, 0);
    if (plan.readahead_bytes > 0) {
      int32_t* slots = view<int32_t>(plan.scratch.ahead_slots);
      std::fill(slots, slots + max_n, -1);
      ahead.emplace(static_cast<char*>(ahead_staging.data()), ahead_staging.size(),
                    view<IoRequest>(plan.scratch.ahead_requests),
                    view<SparseRowSource>(plan.scratch.ahead_sources),
                    view<int32_t>(plan.scratch.ahead_ids), slots,
                    view<int32_t>(plan.scratch.ahead_row_requests), max_n);
    }
    const std::vector<float*> qt = read_rotations();
    sites.reserve(plan.sites.size());
    for (const ChannelSitePlan& s : plan.sites) {
      const SparseLayerPlan& r = s.rows;
      const IoOptions streamed{
          .queue_depth = kChannelQueueDepth, .threads = IoOptions{}.queue_depth, .direct = true};
      Site site{&s, std::nullopt, HostBuffer(),
                File(r.file, IoMode::kIoModeRead, s.streamed() ? streamed : IoOptions{}),
                s.rotation < 0 ? nullptr : qt[static_cast<size_t>(s.rotation)]};
      if (s.resident()) {
        // Read once, whole (file_bytes: the columns rounded up to a page, as O_DIRECT needs).
        site.columns = host.allocate(r.file_bytes, kAlignment);
        site.file.read(site.columns.data(), r.file_bytes, 0);
      } else if (!s.streamed()) {
        site.rows.emplace(host, r.n_neurons, r.capacity, r.row_elems, r.dtype, plan.window);
      }
      const bool reg = site.file.register_buffer(loader.staging(), loader.staging_bytes());
      record_row_file(files_io, site.file, reg, sites.empty());
      if (ahead && s.streamed())
        site.file.register_buffer(ahead_staging.data(), ahead_staging.size());
      sites.push_back(std::move(site));
    }
    totals.sparse = true;
    totals.sparse_channels = true;
    totals.sparse_window = static_cast<int64_t>(plan.window);
    totals.sparse_dense_ffn_bytes = plan.dense_bytes;
    totals.sparse_host_bytes = plan.host_bytes;
    totals.sparse_target_sparsity = plan.target_sparsity;
    totals.sparse_readahead = plan.readahead;
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

  // y[row_elems] (+)= the kept channels' columns among `n_rows` rows given as runs:
  // runs(visit) calls visit(rows, channels, m) for each run of m rows row_bytes apart (column
  // channels[k] at rows + k row_bytes), in order; the sums follow that order.
  template <class Runs>
  void kernel(Site& s, const float* x, size_t n_rows, Runs runs, float* y, bool accumulate) {
    const SparseLayerPlan& r = s.plan->rows;
    if (n_rows == 0) {  // no column to sum
      if (!accumulate) std::fill(y, y + r.row_elems, 0.0f);
      return;
    }
    const size_t block = dtype_block(r.dtype).elems;
    const size_t blocks = r.row_elems / block;
    const size_t chunks =
        std::clamp<size_t>(n_rows * r.row_elems / kKernelWork, 1, std::min(threads, blocks));
    parallel_for(
        chunks,
        [&](size_t c0, size_t c1) {
          for (size_t c = c0; c < c1; ++c) {
            const size_t b = blocks * c / chunks * block, e = blocks * (c + 1) / chunks * block;
            bool sum = accumulate;
            runs([&](const void* first, const int32_t* channels, size_t m) {
              ChannelRows rows;
              rows.rows = static_cast<const char*>(first) + dtype_row_bytes(r.dtype, b);
              rows.dtype = r.dtype;
              rows.n_rows = m;
              rows.out = e - b;
              rows.row_stride = r.row_elems;
              rows.channels = channels;
              rows.n_channels = r.n_neurons;
              // Accumulating, y is its own bias: the rows continue y's sums in their order.
              kernel_channel_sparse_linear(x, rows, s.plan->threshold, sum ? y + b : nullptr,
                                           y + b);
              sum = true;
            });
          }
        },
        1);
  }

  // The kernel over cache rows [first, first + n) of a cached site.
  void kernel_cached(Site& s, const float* x, size_t first, size_t n, float* y, bool accumulate) {
    const NeuronCache& cache = s.rows->cache;
    kernel(
        s, x, n,
        [&](auto visit) {
          if (n > 0) visit(cache.row(first), cache.neurons() + first, n);
        },
        y, accumulate);
  }

  // A streamed site: its kept channels' columns are read in batches and summed where they
  // landed, run by run of adjacent columns, in channel order (ChannelStream).
  void token_streamed(Site& s, const float* x, size_t n_kept, float* y, SparseTokenInfo& info) {
    const SparseLayerPlan& r = s.plan->rows;
    bool accumulate = false;
    ChannelReadAhead* from = ahead && ahead->pending(site_index(s)) ? &*ahead : nullptr;
    stream.run(s.file, r, kept, n_kept, from, info,
               [&](const SparseRowGather& batch, const int32_t* ids, size_t m) {
                 auto runs = [&](auto visit) {
                   for (size_t j = 0; j < m;) {
                     size_t k = j + 1;
                     while (k < m && ids[k] == ids[k - 1] + 1 &&
                            batch.row(k).up == batch.row(k - 1).up + r.row_bytes) {
                       ++k;
                     }
                     visit(batch.row(j).up, ids + j, k - j);
                     j = k;
                   }
                 };
                 kernel(s, x, m, runs, y, accumulate);
                 accumulate = true;
               });
    if (!accumulate) std::fill(y, y + r.row_elems, 0.0f);  // nothing kept
    if (from != nullptr) from->drop();
  }

  int site_index(const Site& s) const { return static_cast<int>(&s - sites.data()); }

  // Site s (attn_in) paired for read-ahead with a streamed ffn_in site: that site's input,
  // predicted from s's input x, and the reads of its columns begin (decode, one row).
  void read_ahead(const Site& s, const float* x, SparseTokenInfo& info) {
    const int target = s.plan->readahead_site;
    if (!ahead || target < 0) return;
    Site& t = sites[static_cast<size_t>(target)];
    if (!t.plan->streamed()) return;
    const auto t0 = Clock::now();
    const size_t n = t.plan->rows.n_neurons;
    float* predicted = view<float>(plan.scratch.ahead_input);
    const float* scale = s.plan->readahead_scale.data();
    for (size_t c = 0; c < n; ++c) predicted[c] = x[c] * scale[c];
    if (t.rotation != nullptr) {  // a rotated site keeps channels of z = Qᵀ x
      float* z = view<float>(plan.scratch.rotated);
      kernel_linear(predicted, t.rotation, nullptr, DType::kDTypeF32, z, 1, n, n);
      std::copy(z, z + n, predicted);
    }
    info.predictor_seconds += seconds_since(t0);
    ahead->start(target, t.file, t.plan->rows, predicted, t.plan->threshold, info);
  }

  void token(Site& s, const float* input, float* y, SparseTokenInfo& info) {
    const SparseLayerPlan& r = s.plan->rows;
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
    info.memory_seconds += seconds_since(t0);
    if (s.plan->streamed()) return token_streamed(s, x, n_kept, y, info);
    if (s.plan->resident()) {
      t0 = Clock::now();
      kernel(
          s, x, r.n_neurons, [&](auto visit) { visit(s.columns.data(), channel_ids, r.n_neurons); },
          y, false);
      info.compute_seconds += seconds_since(t0);
      return;
    }
    t0 = Clock::now();
    NeuronCache& cache = s.rows->cache;
    const size_t n_need = s.rows->admit(kept, n_kept, need, to_load, to_evict, evict);
    info.memory_seconds += seconds_since(t0);
    const size_t fill = std::min(n_need, cap - cache.size());
    // The cached kept channels' columns are summed while the missing ones are read; the new
    // columns land after them in the cache and continue the sums, so y is the one pass over
    // the cache's rows in order that a load-then-compute step makes, bit for bit.
    const size_t hits = cache.size();
    const size_t started = loader.start(s.file, r, need, fill, nullptr, info);
    t0 = Clock::now();
    kernel_cached(s, x, 0, hits, y, false);
    info.compute_seconds += seconds_since(t0);
    loader.finish(r, cache, need, nullptr, info);
    loader.load(s.file, r, cache, need + started, fill - started, nullptr, info);
    t0 = Clock::now();
    kernel_cached(s, x, hits, cache.size() - hits, y, true);
    info.compute_seconds += seconds_since(t0);
    if (fill == n_need) return;
    // This token's kept channels alone pass the capacity: the rest in rounds of at most `cap`
    // columns, each replacing the columns computed last (the sum is additive).
    ++totals.sparse_overflows;
    loader.load_rounds(s.file, r, cache, need, fill, n_need, evict, nullptr, info,
                       [&](size_t first, size_t m) { kernel_cached(s, x, first, m, y, true); });
  }
};

ChannelSparse::ChannelSparse(const ChannelPlan& plan, HostTier& host)
    : impl_(std::make_unique<Impl>(plan, host)) {}
ChannelSparse::~ChannelSparse() = default;

void ChannelSparse::run(int site, const float* x, size_t rows) {
  Impl& m = *impl_;
  Impl::Site& s = m.sites[static_cast<size_t>(site)];
  const size_t n = s.plan->rows.n_neurons, width = s.plan->rows.row_elems;
  try {
    if (rows == 1) m.read_ahead(s, x, m.log.row(0));  // decode: one token, its next site known
    for (size_t r = 0; r < rows; ++r) m.token(s, x + r * n, m.site_out + r * width, m.log.row(r));
  } catch (...) {
    if (m.ahead) m.ahead->drop();
    throw;
  }
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
  if (impl_->ahead) impl_->ahead->drop();
  for (Impl::Site& s : impl_->sites) {
    if (s.rows) s.rows->reset();  // resident columns stay; streamed sites hold none
  }
}

SparseStats ChannelSparse::stats() const { return impl_->totals; }

const SparseFfnIo& ChannelSparse::io() const { return impl_->files_io; }

std::vector<SparseTokenInfo> ChannelSparse::tokens() const { return impl_->log.tokens(); }

}  // namespace tierlm::detail
