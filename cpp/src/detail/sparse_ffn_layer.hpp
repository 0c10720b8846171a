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

#include "tierlm/model.hpp"
#include "tierlm/package.hpp"
#include "tierlm/tier.hpp"

namespace tierlm::detail {

// One FFN layer: where it sits in the graph, its bundle file and its predictor.
struct SparseLayerPlan {
  int layer = 0;
  size_t up_op = 0;  // graph op indices of linear(up) -> relu -> linear(down)
  size_t act_op = 0;
  size_t down_op = 0;
  std::string up_bias;  // tensor names, empty when the FFN has no bias
  std::string down_bias;
  std::string file;  // bundle file (absolute path)
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

  // Index in layers of graph op i's FFN, -1 when none; role 1 = up, 2 = activation, 3 = down.
  int layer_of_op(size_t op, int* role) const;
};

// Reads the package's "bundles" and "predictors" sections and matches the graph's FFNs;
// throws kErrorNotFound / kErrorUnsupported / kErrorCorrupt naming the package and the fix.
SparseFfnPlan sparse_ffn_plan(const Package& package, const ModelOptions& options, size_t max_rows);

class SparseFfn {
 public:
  SparseFfn(const SparseFfnPlan& plan, HostTier& host);
  ~SparseFfn();
  SparseFfn(const SparseFfn&) = delete;
  SparseFfn& operator=(const SparseFfn&) = delete;

  // FFN of layers[index] for rows tokens x [rows, dim] into y [rows, dim], token by token.
  void run(int index, const float* x, size_t rows, const float* up_bias, const float* down_bias,
           float* y);
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
