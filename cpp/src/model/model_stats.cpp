// The stats merge: ModelStats from the generation totals, the weight store, the host tier, the
// streaming ring and the sparse FFN, plus the event and token logs they keep.
#include "model/model_impl.hpp"

namespace tierlm {

void Model::record_timing(uint64_t prefill_tokens, double prefill_seconds, uint64_t decode_tokens,
                          double decode_seconds) {
  ModelStats& t = impl_->totals;
  t.prefill_tokens += prefill_tokens;
  t.prefill_seconds += prefill_seconds;
  t.decode_tokens += decode_tokens;
  t.decode_seconds += decode_seconds;
}

namespace {

// The sparse layer's record into ModelStats' flat sparse_* fields; its reads count as disk
// reads, and its I/O back end names the model's when no weights stream.
void add_sparse_stats(const SparseStats& from, ModelStats& s) {
  s.sparse = true;
  s.sparse_tokens = from.tokens;
  s.sparse_neurons_predicted = from.sum.neurons_predicted;
  s.sparse_neurons_read = from.sum.neurons_read;
  s.sparse_bytes_read = from.sum.bytes_read;
  s.sparse_requests = from.sum.requests;
  s.sparse_overflows = from.overflows;
  s.sparse_predictor_seconds = from.sum.predictor_seconds;
  s.sparse_io_seconds = from.sum.io_seconds;
  s.sparse_memory_seconds = from.sum.memory_seconds;
  s.sparse_compute_seconds = from.sum.compute_seconds;
  s.sparse_host_bytes = from.host_bytes;
  s.sparse_dense_ffn_bytes = from.dense_ffn_bytes;
  s.sparse_window = from.window;
  s.sparse_bundled = from.bundled;
  s.sparse_capacity = from.capacity;
  s.sparse_target_sparsity = from.target_sparsity;
  s.disk_bytes_read += from.sum.bytes_read;
  if (s.io_backend.empty()) {
    s.io_backend = from.io_backend;
    s.io_direct = from.io_direct;
    s.io_registered = from.io_registered;
  }
}

}  // namespace

ModelStats Model::stats() const {
  const Impl& m = *impl_;
  ModelStats s = m.totals;
  const detail::WeightStoreStats ws = m.weights->stats();
  s.load_seconds = m.load_seconds;
  s.disk_bytes_read = ws.disk_bytes_read;
  s.weight_bytes = ws.resident_bytes;
  s.kv_bytes = m.kv->bytes();
  s.arena_bytes = m.arena.size();
  s.host = m.host->stats();
  if (m.stream != nullptr) {
    const detail::StreamStats ss = m.stream->stream_stats();
    s.stream_bytes_read = ss.stream_bytes_read;
    s.io_wait_seconds = ss.io_wait_seconds;
    s.read_busy_seconds = ss.read_busy_seconds;
    s.layer_waits = ss.layer_waits;
    s.chunk_waits = ss.chunk_waits;
    s.row_bytes_read = ss.row_bytes_read;
    s.ring_restarts = ss.ring_restarts;
    s.io_direct = ss.direct;
    s.io_registered = ss.registered;
    s.io_backend = ss.backend;
  }
  if (m.sparse) add_sparse_stats(m.sparse->stats(), s);
  return s;
}

const WeightPlacementInfo& Model::placement() const { return impl_->placement; }

std::vector<StreamEventInfo> Model::stream_events() const {
  std::vector<StreamEventInfo> out;
  if (impl_->stream == nullptr) return out;
  for (const detail::StreamEvent& e : impl_->stream->events()) {
    out.push_back({e.t, e.wait, e.layer, e.bytes_read});
  }
  return out;
}

std::vector<SparseTokenInfo> Model::sparse_tokens() const {
  if (impl_->sparse == nullptr) return {};
  return impl_->sparse->tokens();
}

}  // namespace tierlm
