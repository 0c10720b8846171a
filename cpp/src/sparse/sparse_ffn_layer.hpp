// The executor's sparse FFN (LLM in a flash, ModelOptions::sparse): per token and layer a
// low-rank predictor picks neurons, the neuron window says what to evict, the missing rows are
// read from the layer's row-column bundled file in one batch of O_DIRECT requests into a
// staging buffer, copied into the layer's neuron cache, and the sparse FFN kernel runs over
// every cached row. Everything is allocated from the host tier at load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tierlm/memory/tier.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/model/package.hpp"

namespace tierlm::detail {

enum class SparseOpRole { kSparseOpNone, kSparseOpCompute, kSparseOpCopy, kSparseOpDrop };

// One FFN layer: where it sits in the graph, its bundle file and its predictor.
struct SparseLayerPlan {
  int layer = 0;
  bool gated = false;  // gated SiLU (thresholded, lossy) instead of ReLU
  // Graph ops: compute_op runs the whole FFN into its output buffer; copy_ops pass that
  // result on to their output buffers ([rows, dim]); drop_ops do nothing.
  size_t compute_op = 0;
  std::vector<size_t> copy_ops;
  std::vector<size_t> drop_ops;
  std::string up_bias;  // tensor names, empty when the FFN has no bias
  std::string gate_bias;
  std::string down_bias;
  float act_threshold = 0.0f;  // gated: keep neurons with |silu(gate)| above it
  std::string file;            // bundle file (absolute path)
  uint64_t file_bytes = 0;
  size_t n_neurons = 0;
  size_t dim = 0;
  size_t row_elems = 0;
  size_t row_bytes = 0;
  DType dtype = DType::kDTypeF32;
  size_t capacity = 0;
  size_t rank = 0;
  uint64_t pred_down = 0;  // byte offsets of the predictor tensors in the safetensors file
  uint64_t pred_up = 0;
  uint64_t pred_bias = 0;
  float cut = 0.0f;  // neuron active when predictor logit > cut (logit of the threshold)
  double predicted_density = -1.0;
};

struct SparseFfnPlan {
  std::string package;
  std::vector<SparseLayerPlan> layers;
  std::vector<std::string> dense_tensors;  // FFN matrices the weight store must not load
  std::string predictors_file;
  size_t window = 4;
  bool bundled = true;
  size_t max_rows = 1;           // rows of a batch (prefill chunk)
  size_t staging_bytes = 0;      // one staging buffer shared by the layers
  size_t partials = 1;           // per-thread partial sums of the kernel
  uint64_t host_bytes = 0;       // everything SparseFfn allocates from the host tier
  uint64_t dense_ffn_bytes = 0;  // the FFN matrices' bytes (what dense offload reads)

  double target_sparsity = 0.0;  // gated: what the thresholds were calibrated for

  // Index in layers of graph op `op`'s FFN (and what the op does), -1 when none.
  int layer_of_op(size_t op, SparseOpRole* role) const;
};

// Reads the package's "bundles" and "predictors" sections and matches the graph's FFNs;
// throws kErrorNotFound / kErrorUnsupported / kErrorCorrupt naming the package and the fix.
// Caches are sized by size_sparse_caches(plan, options.sparse_capacity, window).
SparseFfnPlan sparse_ffn_plan(const Package& package, const ModelOptions& options, size_t max_rows);

// Sets each layer's cache capacity, the staging buffer and plan.host_bytes: `capacity`
// neurons per layer, or when 0 (auto) the predictions of `capacity_tokens` tokens (predicted
// density x tokens x 1.5, all neurons when the metrics lack the density).
void size_sparse_caches(SparseFfnPlan& plan, int64_t capacity, size_t capacity_tokens);

class SparseFfn {
 public:
  SparseFfn(const SparseFfnPlan& plan, HostTier& host);
  ~SparseFfn();
  SparseFfn(const SparseFfn&) = delete;
  SparseFfn& operator=(const SparseFfn&) = delete;

  // FFN of layers[index] for rows tokens x [rows, dim] into y [rows, dim], token by token.
  void run(int index, const float* x, size_t rows, const float* up_bias, const float* gate_bias,
           const float* down_bias, float* y);
  // Row width of layers[index]'s result (the hidden size).
  size_t dim(int index) const;
  // The batch of rows is done: its per-token counters go to the totals and the token log.
  void end_batch(size_t rows);
  // Empties the caches and windows (a new sequence).
  void reset();
  void add_stats(ModelStats& stats) const;
  std::vector<SparseTokenInfo> tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tierlm::detail
