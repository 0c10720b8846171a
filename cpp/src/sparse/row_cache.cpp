// The row file and cache's setup, the cache's admission step and the per-token log
// (row_cache.hpp).
#include "sparse/row_cache.hpp"

#include <algorithm>

namespace tierlm::detail {

RowCache::RowCache(HostTier& host, size_t n_ids, size_t capacity, size_t row_elems, DType dtype,
                   size_t window_tokens)
    : cache(host, n_ids, capacity, row_elems, dtype),
      window(host, n_ids, window_tokens),
      last_use_buffer(host.allocate(n_ids * sizeof(int64_t))),
      last_use(static_cast<int64_t*>(last_use_buffer.data())) {
  std::fill(last_use, last_use + n_ids, -1);
}

uint64_t RowCache::host_bytes(const SparseLayerPlan& plan, size_t window) {
  return host_pages(plan.capacity * plan.row_bytes) +
         host_pages((plan.n_neurons + plan.capacity) * sizeof(int32_t)) +
         host_pages(NeuronWindow::state_bytes(plan.n_neurons, window)) +
         host_pages(plan.n_neurons * sizeof(int64_t));
}

CachedRowFile::CachedRowFile(const SparseLayerPlan& plan, HostTier& host, size_t window,
                             unsigned queue_depth)
    : rows(host, plan.n_neurons, plan.capacity, plan.row_elems, plan.dtype, window),
      file(plan.file, IoMode::kIoModeRead,
           IoOptions{
               .queue_depth = queue_depth, .threads = IoOptions{}.queue_depth, .direct = true}) {}

void record_row_file(SparseFfnIo& io, const File& file, bool registered, bool first) {
  io.registered = first ? registered : io.registered && registered;
  io.direct = file.direct();
  io.direct_reason = file.direct_reason();
  io.backend = io_backend_name(file.backend());
}

size_t RowCache::admit(const int32_t* active, size_t n_active, int32_t* need, int32_t* to_load,
                       int32_t* to_evict, int32_t* evict) {
  const int64_t now = token++;
  const NeuronWindow::Step step = window.step(active, n_active, to_load, to_evict);
  size_t n_evict = 0;
  for (size_t j = 0; j < step.n_evict; ++j) {
    if (cache.contains(to_evict[j])) to_evict[n_evict++] = to_evict[j];
  }
  cache.erase(to_evict, n_evict);
  size_t n_need = 0;
  for (size_t j = 0; j < n_active; ++j) {
    last_use[active[j]] = now;
    if (!cache.contains(active[j])) need[n_need++] = active[j];
  }
  const size_t cap = cache.capacity();
  if (cache.size() + n_need > cap) {
    // The union passed the capacity: drop cached ids this token does not use, least recently
    // used first.
    size_t n_old = 0;
    const int32_t* cached = cache.neurons();
    for (size_t s = 0; s < cache.size(); ++s) {
      if (last_use[cached[s]] != now) evict[n_old++] = cached[s];
    }
    const size_t drop = std::min(n_old, cache.size() + n_need - cap);
    if (drop < n_old) {
      const int64_t* use = last_use;
      std::nth_element(evict, evict + drop, evict + n_old,
                       [use](int32_t a, int32_t b) { return use[a] < use[b]; });
    }
    cache.erase(evict, drop);
  }
  return n_need;
}

void RowCache::reset() {
  cache.clear();
  window.reset();
  std::fill(last_use, last_use + cache.n_neurons(), -1);
  token = 0;
}

SparseTokenLog::SparseTokenLog(SparseTokenInfo* rows, size_t max_rows, SparseTokenInfo* ring)
    : rows_(rows), max_rows_(max_rows), ring_(ring) {
  std::fill(rows_, rows_ + max_rows_, SparseTokenInfo{});
}

void SparseTokenLog::end_batch(size_t rows, SparseStats& t) {
  for (size_t r = 0; r < rows && r < max_rows_; ++r) {
    const SparseTokenInfo& i = rows_[r];
    ++t.sparse_tokens;
    t.sparse_neurons_predicted += i.neurons_predicted;
    t.sparse_neurons_read += i.neurons_read;
    t.sparse_bytes_read += i.bytes_read;
    t.sparse_requests += i.requests;
    t.sparse_readahead_rows += i.readahead_rows;
    t.sparse_readahead_hits += i.readahead_hits;
    t.sparse_predictor_seconds += i.predictor_seconds;
    t.sparse_io_seconds += i.io_seconds;
    t.sparse_memory_seconds += i.memory_seconds;
    t.sparse_compute_seconds += i.compute_seconds;
    ring_[logged_++ % kSparseTokenLog] = rows_[r];
    rows_[r] = SparseTokenInfo{};
  }
}

std::vector<SparseTokenInfo> SparseTokenLog::tokens() const {
  std::vector<SparseTokenInfo> out;
  const uint64_t n = std::min<uint64_t>(logged_, kSparseTokenLog);
  out.reserve(n);
  for (uint64_t i = logged_ - n; i < logged_; ++i) out.push_back(ring_[i % kSparseTokenLog]);
  return out;
}

}  // namespace tierlm::detail
