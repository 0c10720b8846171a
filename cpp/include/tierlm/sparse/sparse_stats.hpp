// What the sparse FFN (ModelOptions::sparse) reports: its settings, counters since load over
// every layer (a token is one row through the FFNs, prompt tokens included), the figures
// derived from them, and one entry per token.
#pragma once

#include <cstdint>
#include <vector>

#include "tierlm/core/export.hpp"

namespace tierlm {

struct TIERLM_API SparseStats {
  bool sparse = false;  // the model runs its FFNs sparse
  // Input-channel sparsity (a package with channel files): the counters count input channels
  // (kept = "predicted", columns read = "neurons read") over every site of every layer.
  bool sparse_channels = false;
  uint64_t sparse_tokens = 0;
  uint64_t sparse_neurons_predicted = 0;
  uint64_t sparse_neurons_read = 0;  // rows read from the bundle files (cache misses)
  uint64_t sparse_bytes_read = 0;    // bytes requested (4 KiB-widened reads)
  uint64_t sparse_requests = 0;      // read requests submitted
  uint64_t sparse_overflows = 0;     // layer steps whose prediction alone passed the capacity
  // Read-ahead (decode): rows of layer i+1 read while layer i computed, predicted from layer
  // i's input, and those of them that layer i+1 then took (cache misses it did not wait for).
  uint64_t sparse_readahead_rows = 0;
  uint64_t sparse_readahead_hits = 0;
  double sparse_predictor_seconds = 0.0;
  double sparse_io_seconds = 0.0;       // submitting reads and waiting for them (not overlapped)
  double sparse_memory_seconds = 0.0;   // neuron cache erase / insert (row copies included)
  double sparse_compute_seconds = 0.0;  // the sparse FFN kernel
  uint64_t sparse_host_bytes = 0;       // neuron caches + staging + predictors + scratch
  uint64_t sparse_dense_ffn_bytes = 0;  // bytes of the dense matrices a token would read (FFN;
                                        // input channels: every sparse site's matrices)
  int64_t sparse_window = 0;
  bool sparse_bundled = true;
  bool sparse_readahead = false;  // rows read ahead of compute (ModelOptions::sparse_readahead)
  std::vector<int64_t> sparse_capacity;  // per layer
  // Gated SiLU FFNs: the target sparsity the thresholds were calibrated for (lossy); 0 = ReLU.
  double sparse_target_sparsity = 0.0;

  // The counters over an interval that began at `before`; settings as now.
  SparseStats since(const SparseStats& before) const {
    SparseStats d = *this;
    d.sparse_tokens -= before.sparse_tokens;
    d.sparse_neurons_predicted -= before.sparse_neurons_predicted;
    d.sparse_neurons_read -= before.sparse_neurons_read;
    d.sparse_bytes_read -= before.sparse_bytes_read;
    d.sparse_requests -= before.sparse_requests;
    d.sparse_overflows -= before.sparse_overflows;
    d.sparse_readahead_rows -= before.sparse_readahead_rows;
    d.sparse_readahead_hits -= before.sparse_readahead_hits;
    d.sparse_predictor_seconds -= before.sparse_predictor_seconds;
    d.sparse_io_seconds -= before.sparse_io_seconds;
    d.sparse_memory_seconds -= before.sparse_memory_seconds;
    d.sparse_compute_seconds -= before.sparse_compute_seconds;
    return d;
  }
  bool sparse_lossy() const { return sparse_target_sparsity > 0; }
  // Predicted neurons found in the caches (1 when none were predicted).
  double sparse_cache_hit_rate() const {
    return sparse_neurons_predicted ? 1.0 - static_cast<double>(sparse_neurons_read) /
                                                static_cast<double>(sparse_neurons_predicted)
                                    : 1.0;
  }
  // Of the rows read ahead, the share the next layer took (1 when none were read ahead).
  double sparse_readahead_precision() const {
    return ratio(sparse_readahead_hits, sparse_readahead_rows);
  }
  // Of the rows the caches took from disk, the share that had been read ahead (the prediction
  // accuracy that matters for the reads: 1 when no row was read).
  double sparse_readahead_recall() const {
    return ratio(sparse_readahead_hits, sparse_neurons_read);
  }
  double sparse_neurons_predicted_per_token() const { return per_token(sparse_neurons_predicted); }
  double sparse_neurons_read_per_token() const { return per_token(sparse_neurons_read); }
  double sparse_bytes_read_per_token() const { return per_token(sparse_bytes_read); }
  // What dense offload would read per token, to set sparse_bytes_read_per_token against.
  uint64_t dense_ffn_bytes_per_token() const { return sparse_dense_ffn_bytes; }

 private:
  static double ratio(uint64_t part, uint64_t whole) {
    return whole ? static_cast<double>(part) / static_cast<double>(whole) : 1.0;
  }
  double per_token(uint64_t total) const {
    return static_cast<double>(total) / static_cast<double>(sparse_tokens ? sparse_tokens : 1);
  }
};

// One token through every sparse FFN layer (SparseStats' counters for that token).
struct TIERLM_API SparseTokenInfo {
  uint64_t neurons_predicted = 0;
  uint64_t neurons_read = 0;    // rows read from the bundle files (cache misses)
  uint64_t bytes_read = 0;      // bytes requested (4 KiB-widened reads)
  uint64_t requests = 0;        // read requests submitted
  uint64_t readahead_rows = 0;  // rows read ahead (included in bytes_read and requests)
  uint64_t readahead_hits = 0;  // of neurons_read, rows taken from the read-ahead
  double predictor_seconds = 0.0;
  double io_seconds = 0.0;       // submitting reads and waiting for them (not overlapped)
  double memory_seconds = 0.0;   // neuron cache erase / insert (row copies included)
  double compute_seconds = 0.0;  // the sparse FFN kernel
};

}  // namespace tierlm
