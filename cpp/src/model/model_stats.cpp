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

ModelStats Model::stats() const {
  const Impl& m = *impl_;
  ModelStats s = m.totals;
  const detail::WeightStoreStats ws = m.weights->stats();
  s.load_seconds = m.load_seconds;
  s.disk_bytes_read = ws.disk_bytes_read;
  s.weight_bytes = ws.resident_bytes;
  s.kv_bytes = m.kv->bytes();
  s.kv_dtype = dtype_name(m.kv->dtype());
  s.kv_blocks = m.kv->blocks();
  s.kv_evicted = m.kv->evicted();
  s.kv_block_tokens = detail::kKvBlockTokens;
  s.kv_block_bytes = m.kv->block_bytes();
  s.attention_seconds = m.executor->attention_seconds();
  s.attention_tokens = m.executor->attention_tokens();
  if (const detail::KvSpill* spill = m.kv->spill()) {
    const detail::KvSpillCounts& c = spill->counts();
    s.kv_disk_bytes = spill->disk_bytes();
    s.kv_blocks_spilled = c.blocks_written;
    s.kv_slices_read = c.slices_read;
    s.kv_disk_bytes_read = c.bytes_read;
    s.kv_disk_bytes_written = c.bytes_written;
    s.kv_read_wait_seconds = c.wait_seconds;
    s.disk = spill->disk_stats();
    s.kv_io_backend = io_backend_name(spill->file().backend());
    s.kv_io_direct = spill->file().direct();
    s.kv_io_registered = spill->staging_registered();
    s.kv_staging_layers = static_cast<int64_t>(spill->staging_layers());
  } else {
    s.disk.budget = m.options.disk_budget;
  }
  s.arena_bytes = m.arena.size();
  s.host = m.host->stats();
  s.verify = ws.verify;
  s.verify.add(m.sparse_verify);
  if (s.verify.enabled) s.verify.when = "load";
  if (m.stream != nullptr) {
    static_cast<StreamStats&>(s) = m.stream->stream_stats();
  } else {
    s.io_backend = ws.io_backend;  // the resident store's reads at load
    s.io_direct = ws.io_direct;
    s.io_direct_reason = ws.io_direct_reason;
  }
  if (m.sparse) {
    // The sparse layer's record; its reads count as disk reads, and its I/O path is the
    // model's per-token one when no weights stream.
    static_cast<SparseStats&>(s) = m.sparse->stats();
    s.disk_bytes_read += s.sparse_bytes_read;
    if (m.stream == nullptr) {
      const detail::SparseFfnIo& io = m.sparse->io();
      s.io_backend = io.backend;
      s.io_direct = io.direct;
      s.io_direct_reason = io.direct_reason;
      s.io_registered = io.registered;
    }
  }
  if (m.experts) {
    // Expert reads (homed experts at load, misses since) count as disk reads; the homed
    // experts and the cache hold weights.
    static_cast<MoeStats&>(s) = m.experts->stats();
    const ExpertPlacement& ep = m.experts->placement();
    s.disk_bytes_read += ep.host_bytes + ep.router_bytes + s.moe_bytes_read;
    s.weight_bytes += ep.host_bytes + ep.cache_bytes + ep.router_bytes;
    s.verify.add(m.experts->verify());
    if (s.verify.enabled && ep.cache_slots > 0)
      s.verify.when = "load, and experts as they are read";
  }
  return s;
}

const WeightPlacement& Model::placement() const { return impl_->placement; }

const ExpertPlacement& Model::expert_placement() const {
  static const ExpertPlacement kNone;
  return impl_->experts ? impl_->experts->placement() : kNone;
}

std::vector<std::vector<uint64_t>> Model::expert_usage() const {
  return impl_->experts ? impl_->experts->usage() : std::vector<std::vector<uint64_t>>{};
}

std::vector<StreamEvent> Model::stream_events() const {
  if (impl_->stream == nullptr) return {};
  return impl_->stream->events();
}

std::vector<SparseTokenInfo> Model::sparse_tokens() const {
  if (impl_->sparse == nullptr) return {};
  return impl_->sparse->tokens();
}

}  // namespace tierlm
