// The records libtierlm reports (tier stats, model config, weight placement, model and
// generation stats, stream events, sparse tokens) bound as they are: read-only fields, and
// the figures derived from them as read-only properties computed by the record itself.
// Python turns any of them into a dict with tierlm.records.as_dict (one walk over these).
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/model/generate.hpp"
#include "tierlm/model/model.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

// A bound record: tierlm.records.as_dict finds its fields as the class's properties.
template <typename T>
nb::class_<T> record(nb::module_& m, const char* name, const char* doc) {
  nb::class_<T> c(m, name, doc);
  c.attr("_record") = true;
  return c;
}

}  // namespace

void bind_records(nb::module_& m) {
  record<TierStats>(m, "TierStats", "One tier's budget and counters")
      .def_ro("budget", &TierStats::budget)
      .def_ro("current", &TierStats::current)
      .def_ro("peak", &TierStats::peak)
      .def_ro("bytes_in", &TierStats::bytes_in)
      .def_ro("bytes_out", &TierStats::bytes_out)
      .def_ro("transfers", &TierStats::transfers)
      .def_ro("allocations", &TierStats::allocations)
      .def_ro("locked", &TierStats::locked);

  record<VerifyStats>(m, "VerifyStats", "What checksum verification covered, and when")
      .def_ro("enabled", &VerifyStats::enabled)
      .def_ro("when", &VerifyStats::when)
      .def_ro("tensors", &VerifyStats::tensors)
      .def_ro("bundles", &VerifyStats::bundles)
      .def_ro("predictors", &VerifyStats::predictors)
      .def_ro("bytes", &VerifyStats::bytes)
      .def_ro("seconds", &VerifyStats::seconds);

  record<ModelConfig>(m, "ModelConfig", "The package's model configuration")
      .def_ro("vocab_size", &ModelConfig::vocab_size)
      .def_ro("hidden_size", &ModelConfig::hidden_size)
      .def_ro("num_layers", &ModelConfig::num_layers)
      .def_ro("num_heads", &ModelConfig::num_heads)
      .def_ro("num_kv_heads", &ModelConfig::num_kv_heads)
      .def_ro("head_dim", &ModelConfig::head_dim)
      .def_ro("intermediate_size", &ModelConfig::intermediate_size)
      .def_ro("max_positions", &ModelConfig::max_positions)
      .def_ro("norm_eps", &ModelConfig::norm_eps)
      .def_ro("rope_theta", &ModelConfig::rope_theta)
      .def_ro("rope_inv_freq", &ModelConfig::rope_inv_freq)
      .def_ro("tie_embeddings", &ModelConfig::tie_embeddings)
      .def_ro("bos_token_id", &ModelConfig::bos_token_id)
      .def_ro("eos_token_ids", &ModelConfig::eos_token_ids)
      .def_ro("position_offset", &ModelConfig::position_offset);

  record<WeightPlacement>(m, "WeightPlacement", "Where the weights live (resident / streamed)")
      .def_ro("streaming", &WeightPlacement::streaming)
      .def_ro("resident_bytes", &WeightPlacement::resident_bytes)
      .def_ro("base_bytes", &WeightPlacement::base_bytes)
      .def_ro("section_bytes", &WeightPlacement::section_bytes)
      .def_ro("part_bytes", &WeightPlacement::part_bytes)
      .def_ro("ring_bytes", &WeightPlacement::ring_bytes)
      .def_ro("streamed_bytes", &WeightPlacement::streamed_bytes)
      .def_ro("minimum_budget", &WeightPlacement::minimum_budget)
      .def_ro("sections", &WeightPlacement::sections)
      .def_ro("chunks", &WeightPlacement::chunks)
      .def_ro("resident_layers", &WeightPlacement::resident_layers)
      .def_ro("streamed_layers", &WeightPlacement::streamed_layers)
      .def_ro("streamed_tensors", &WeightPlacement::streamed_tensors)
      .def_ro("pinned_tensors", &WeightPlacement::pinned_tensors)
      .def_ro("split_tensors", &WeightPlacement::split_tensors)
      .def_ro("row_tensors", &WeightPlacement::row_tensors)
      .def_ro("row_buffer_bytes", &WeightPlacement::row_buffer_bytes)
      .def_ro("max_rows", &WeightPlacement::max_rows);

  record<ExpertPlacement>(m, "ExpertPlacement", "Where each expert lives (host / disk tier)")
      .def_ro("moe", &ExpertPlacement::moe)
      .def_ro("layers", &ExpertPlacement::layers)
      .def_ro("experts", &ExpertPlacement::experts)
      .def_ro("expert_bytes", &ExpertPlacement::expert_bytes)
      .def_ro("host_bytes", &ExpertPlacement::host_bytes)
      .def_ro("cache_bytes", &ExpertPlacement::cache_bytes)
      .def_ro("cache_slots", &ExpertPlacement::cache_slots)
      .def_ro("router_bytes", &ExpertPlacement::router_bytes)
      .def_ro("policy", &ExpertPlacement::policy)
      .def_ro("homing", &ExpertPlacement::homing)
      .def_ro("host_experts", &ExpertPlacement::host_experts)
      .def_ro("disk_experts", &ExpertPlacement::disk_experts);

  record<StreamEvent>(m, "StreamEvent", "One streamed layer's begin")
      .def_ro("t", &StreamEvent::t)
      .def_ro("wait", &StreamEvent::wait)
      .def_ro("layer", &StreamEvent::layer)
      .def_ro("bytes_read", &StreamEvent::bytes_read);

  record<SparseTokenInfo>(m, "SparseTokenInfo", "One token through every sparse FFN layer")
      .def_ro("neurons_predicted", &SparseTokenInfo::neurons_predicted)
      .def_ro("neurons_read", &SparseTokenInfo::neurons_read)
      .def_ro("bytes_read", &SparseTokenInfo::bytes_read)
      .def_ro("requests", &SparseTokenInfo::requests)
      .def_ro("readahead_rows", &SparseTokenInfo::readahead_rows)
      .def_ro("readahead_hits", &SparseTokenInfo::readahead_hits)
      .def_ro("predictor_seconds", &SparseTokenInfo::predictor_seconds)
      .def_ro("io_seconds", &SparseTokenInfo::io_seconds)
      .def_ro("memory_seconds", &SparseTokenInfo::memory_seconds)
      .def_ro("compute_seconds", &SparseTokenInfo::compute_seconds);

  // ModelStats with the fields of its StreamStats and SparseStats parts (neither is bound
  // alone: Python only sees them as parts of a model's stats).
  using S = ModelStats;
  record<S>(m, "ModelStats", "Totals since load (or over one generation: ModelStats.since)")
      .def_ro("prefill_tokens", &S::prefill_tokens)
      .def_ro("decode_tokens", &S::decode_tokens)
      .def_ro("prefill_seconds", &S::prefill_seconds)
      .def_ro("decode_seconds", &S::decode_seconds)
      .def_ro("load_seconds", &S::load_seconds)
      .def_ro("disk_bytes_read", &S::disk_bytes_read)
      .def_ro("weight_bytes", &S::weight_bytes)
      .def_ro("kv_bytes", &S::kv_bytes)
      .def_ro("kv_dtype", &S::kv_dtype)
      .def_ro("kv_blocks", &S::kv_blocks)
      .def_ro("kv_evicted", &S::kv_evicted)
      .def_ro("kv_block_tokens", &S::kv_block_tokens)
      .def_ro("kv_block_bytes", &S::kv_block_bytes)
      .def_ro("kv_disk_bytes", &S::kv_disk_bytes)
      .def_ro("kv_blocks_spilled", &S::kv_blocks_spilled)
      .def_ro("kv_slices_read", &S::kv_slices_read)
      .def_ro("kv_disk_bytes_read", &S::kv_disk_bytes_read)
      .def_ro("kv_disk_bytes_written", &S::kv_disk_bytes_written)
      .def_ro("kv_read_wait_seconds", &S::kv_read_wait_seconds)
      .def_ro("kv_io_backend", &S::kv_io_backend)
      .def_ro("kv_io_direct", &S::kv_io_direct)
      .def_ro("kv_io_registered", &S::kv_io_registered)
      .def_ro("kv_staging_layers", &S::kv_staging_layers)
      .def_ro("attention_seconds", &S::attention_seconds)
      .def_ro("attention_tokens", &S::attention_tokens)
      .def_ro("arena_bytes", &S::arena_bytes)
      .def_ro("host", &S::host)
      .def_ro("disk", &S::disk)
      .def_ro("verify", &S::verify)
      .def_prop_ro("prefill_tokens_per_s", &S::prefill_tokens_per_s)
      .def_prop_ro("decode_tokens_per_s", &S::decode_tokens_per_s)
      .def_prop_ro("attention_seconds_per_token", &S::attention_seconds_per_token)
      .def_prop_ro("compute_seconds", &S::compute_seconds)
      .def_prop_ro("peak_bytes", &S::peak_bytes)
      // StreamStats
      .def_ro("streaming", &S::streaming)
      .def_ro("ring_sections", &S::ring_sections)
      .def_ro("bytes_read_per_token", &S::bytes_read_per_token)
      .def_ro("stream_bytes_read", &S::stream_bytes_read)
      .def_ro("io_wait_seconds", &S::io_wait_seconds)
      .def_ro("read_busy_seconds", &S::read_busy_seconds)
      .def_ro("layer_waits", &S::layer_waits)
      .def_ro("chunk_waits", &S::chunk_waits)
      .def_ro("stream_requests", &S::stream_requests)
      .def_ro("row_bytes_read", &S::row_bytes_read)
      .def_ro("ring_restarts", &S::ring_restarts)
      .def_ro("io_direct", &S::io_direct)
      .def_ro("io_direct_reason", &S::io_direct_reason)
      .def_ro("io_registered", &S::io_registered)
      .def_ro("io_backend", &S::io_backend)
      .def_prop_ro("overlap_pct", [](const S& s) { return s.overlap_pct(); })
      // SparseStats
      .def_ro("sparse", &S::sparse)
      .def_ro("sparse_channels", &S::sparse_channels)
      .def_ro("sparse_tokens", &S::sparse_tokens)
      .def_ro("sparse_neurons_predicted", &S::sparse_neurons_predicted)
      .def_ro("sparse_neurons_read", &S::sparse_neurons_read)
      .def_ro("sparse_bytes_read", &S::sparse_bytes_read)
      .def_ro("sparse_requests", &S::sparse_requests)
      .def_ro("sparse_overflows", &S::sparse_overflows)
      .def_ro("sparse_readahead", &S::sparse_readahead)
      .def_ro("sparse_readahead_rows", &S::sparse_readahead_rows)
      .def_ro("sparse_readahead_hits", &S::sparse_readahead_hits)
      .def_prop_ro("sparse_readahead_precision",
                   [](const S& s) { return s.sparse_readahead_precision(); })
      .def_prop_ro("sparse_readahead_recall",
                   [](const S& s) { return s.sparse_readahead_recall(); })
      .def_ro("sparse_predictor_seconds", &S::sparse_predictor_seconds)
      .def_ro("sparse_io_seconds", &S::sparse_io_seconds)
      .def_ro("sparse_memory_seconds", &S::sparse_memory_seconds)
      .def_ro("sparse_compute_seconds", &S::sparse_compute_seconds)
      .def_ro("sparse_host_bytes", &S::sparse_host_bytes)
      .def_ro("sparse_dense_ffn_bytes", &S::sparse_dense_ffn_bytes)
      .def_ro("sparse_window", &S::sparse_window)
      .def_ro("sparse_bundled", &S::sparse_bundled)
      .def_ro("sparse_capacity", &S::sparse_capacity)
      .def_ro("sparse_target_sparsity", &S::sparse_target_sparsity)
      .def_prop_ro("sparse_lossy", [](const S& s) { return s.sparse_lossy(); })
      .def_prop_ro("sparse_cache_hit_rate", [](const S& s) { return s.sparse_cache_hit_rate(); })
      .def_prop_ro("sparse_neurons_predicted_per_token",
                   [](const S& s) { return s.sparse_neurons_predicted_per_token(); })
      .def_prop_ro("sparse_neurons_read_per_token",
                   [](const S& s) { return s.sparse_neurons_read_per_token(); })
      .def_prop_ro("sparse_bytes_read_per_token",
                   [](const S& s) { return s.sparse_bytes_read_per_token(); })
      .def_prop_ro("dense_ffn_bytes_per_token",
                   [](const S& s) { return s.dense_ffn_bytes_per_token(); })
      // MoeStats
      .def_ro("moe_tokens", &S::moe_tokens)
      .def_ro("moe_lookups", &S::moe_lookups)
      .def_ro("moe_host_hits", &S::moe_host_hits)
      .def_ro("moe_cache_hits", &S::moe_cache_hits)
      .def_ro("moe_misses", &S::moe_misses)
      .def_ro("moe_bytes_read", &S::moe_bytes_read)
      .def_ro("moe_reads", &S::moe_reads)
      .def_ro("moe_io_wait_seconds", &S::moe_io_wait_seconds)
      .def_ro("moe_predicted_lookups", &S::moe_predicted_lookups)
      .def_ro("moe_predicted_right", &S::moe_predicted_right)
      .def_ro("moe_prefetch_reads", &S::moe_prefetch_reads)
      .def_ro("moe_prefetch_used", &S::moe_prefetch_used)
      .def_prop_ro("moe_hit_rate_pct", [](const S& s) { return s.moe_hit_rate_pct(); })
      .def_prop_ro("moe_prediction_accuracy_pct",
                   [](const S& s) { return s.moe_prediction_accuracy_pct(); })
      .def_prop_ro("moe_experts_per_token", [](const S& s) { return s.moe_experts_per_token(); })
      .def_prop_ro("moe_bytes_read_per_token",
                   [](const S& s) { return s.moe_bytes_read_per_token(); })
      .def("since", &S::since, nb::arg("before"),
           "The counters over the interval since `before` (an earlier stats() of this model)");

  record<GenerateStats>(m, "GenerateStats", "One generation's tokens and timings")
      .def_ro("prompt_tokens", &GenerateStats::prompt_tokens)
      .def_ro("new_tokens", &GenerateStats::new_tokens)
      .def_ro("decode_steps", &GenerateStats::decode_steps)
      .def_ro("prefill_seconds", &GenerateStats::prefill_seconds)
      .def_ro("decode_seconds", &GenerateStats::decode_seconds)
      .def_ro("prefill_tokens_per_s", &GenerateStats::prefill_tokens_per_s)
      .def_ro("decode_tokens_per_s", &GenerateStats::decode_tokens_per_s);

  record<GenerateResult>(m, "GenerateResult", "New tokens, why generation stopped, its stats")
      .def_ro("output_ids", &GenerateResult::output_ids)
      .def_prop_ro("finish_reason",
                   [](const GenerateResult& r) { return finish_reason_name(r.finish_reason); })
      .def_ro("stats", &GenerateResult::stats);
}

}  // namespace tierlm::bindings
