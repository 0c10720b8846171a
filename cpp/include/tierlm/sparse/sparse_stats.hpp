// What the sparse FFN layer (sparse-neuron flash loading, docs/sparse.md) reports: one record
// per token through every sparse FFN layer, and its totals since load, which the model merges
// into ModelStats. A token is one row through the FFNs (prompt tokens included).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tierlm {

// One token through every sparse FFN layer.
struct SparseTokenInfo {
  uint64_t neurons_predicted = 0;
  uint64_t neurons_read = 0;  // rows read from the bundle files (cache misses)
  uint64_t bytes_read = 0;    // bytes requested (4 KiB-widened reads)
  uint64_t requests = 0;      // read requests submitted
  double predictor_seconds = 0.0;
  double io_seconds = 0.0;       // submit -> every read of the step complete
  double memory_seconds = 0.0;   // neuron cache erase / insert (row copies included)
  double compute_seconds = 0.0;  // the sparse FFN kernel

  SparseTokenInfo& operator+=(const SparseTokenInfo& o) {
    neurons_predicted += o.neurons_predicted;
    neurons_read += o.neurons_read;
    bytes_read += o.bytes_read;
    requests += o.requests;
    predictor_seconds += o.predictor_seconds;
    io_seconds += o.io_seconds;
    memory_seconds += o.memory_seconds;
    compute_seconds += o.compute_seconds;
    return *this;
  }
};

// Totals since load over every sparse FFN layer.
struct SparseStats {
  uint64_t tokens = 0;
  SparseTokenInfo sum;           // the tokens' counters summed
  uint64_t overflows = 0;        // layer steps whose prediction alone passed the capacity
  uint64_t host_bytes = 0;       // neuron caches + staging + predictors + scratch
  uint64_t dense_ffn_bytes = 0;  // bytes of the dense FFN matrices a token would read
  int64_t window = 0;
  bool bundled = true;
  std::vector<int64_t> capacity;  // per layer
  // Gated SiLU FFNs: the target sparsity the thresholds were calibrated for (lossy); 0 = ReLU.
  double target_sparsity = 0.0;
  // The bundle files' I/O: back end, O_DIRECT, staging registered with the engine.
  std::string io_backend;
  bool io_direct = false;
  bool io_registered = false;
};

}  // namespace tierlm
