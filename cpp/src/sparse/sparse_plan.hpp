// The plan of the executor's sparse FFN (ModelOptions::sparse): which graph ops each FFN layer
// replaces, its bundle file and predictor, and every size the runtime allocates at load
// (neuron caches, staging, the scratch layout), computed once here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tierlm/core/align.hpp"
#include "tierlm/core/dtype.hpp"
#include "tierlm/model/package.hpp"

namespace tierlm::detail {

// Tokens kept in the runtime's ring of per-token records (SparseFfn::tokens).
constexpr size_t kSparseTokenLog = 16384;

enum class SparseOpRole { kSparseOpNone, kSparseOpCompute, kSparseOpCopy, kSparseOpDrop };

// What the model passes on from ModelOptions (sparse_window, sparse_capacity, sparse_bundled,
// verify, sparse_readahead) and its prefill chunk.
struct SparseFfnOptions {
  int64_t window = 4;      // tokens whose neurons stay cached (1 = no window)
  int64_t capacity = 0;    // cached neurons per layer; 0 = auto from the predictors
  bool bundled = true;     // false: up and down parts read apart, no coalescing (ablation)
  bool verify = false;     // check the bundles' and predictors' CRC-32 at load
  bool readahead = false;  // decode: read layer i+1's predicted rows while layer i computes
  size_t max_rows = 1;     // rows of a batch (prefill chunk)
};

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

  // Bytes of a row's first part (up, and gate when gated): what an unbundled read fetches
  // apart from the down part.
  size_t up_part_bytes() const { return (gated ? 2 : 1) * dtype_row_bytes(dtype, dim); }
};

// What a host-tier allocation of `bytes` reserves (whole pages, at least one): the sizers add
// these up to the runtime's host bytes.
inline uint64_t host_pages(uint64_t bytes) { return round_up(bytes > 0 ? bytes : 1, kAlignment); }

// Lays views out one after another in a scratch buffer, each at a 64-byte (cache line) aligned
// offset so that no two share a line; `bytes` is the buffer's size so far.
struct ScratchCursor {
  size_t bytes = 0;
  size_t take(size_t view_bytes) {
    const size_t at = bytes;
    bytes += round_up(view_bytes, 64);
    return at;
  }
};

// Byte offsets of the per-token views in the runtime's one scratch buffer, each 64-byte
// aligned. sparse_scratch_layout sizes it with the plan; the runtime carves the same offsets.
struct SparseScratchLayout {
  size_t mid = 0;      // float[max rank]: the predictor's low-rank activations
  size_t logits = 0;   // float[max neurons]
  size_t active = 0;   // int32[max neurons] each: predicted, window load / evict lists,
  size_t to_load = 0;  //   rows to read, cached rows to drop
  size_t to_evict = 0;
  size_t need = 0;
  size_t evict = 0;
  size_t sources = 0;   // SparseRowSource[max capacity]: where a pending row's bytes are
  size_t requests = 0;  // IoRequest[max_requests]
  size_t partial = 0;   // float[partials * max dim]: per-thread partial sums
  size_t y_tmp = 0;     // float[max dim]
  size_t x_blocks = 0;  // block-type bundles: x's activation blocks (kernel_sparse_ffn_prepare)
  size_t rows = 0;      // SparseTokenInfo[max_rows]: per row of the batch
  size_t log = 0;       // SparseTokenInfo[kSparseTokenLog]
  size_t max_requests = 0;
  size_t bytes = 0;  // the whole buffer
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
  bool readahead = false;        // two read-ahead buffers (sparse_readahead.hpp), used in turn
  size_t readahead_staging = 0;  // staging bytes of each
  size_t readahead_rows = 0;     // rows each holds at most
  size_t partials = 1;           // per-thread partial sums of the kernel
  size_t predictor_floats = 0;   // every layer's predictor tensors, in one buffer
  SparseScratchLayout scratch;
  uint64_t host_bytes = 0;       // everything SparseFfn allocates from the host tier
  uint64_t dense_ffn_bytes = 0;  // the FFN matrices' bytes (what dense offload reads)

  double target_sparsity = 0.0;  // gated: what the thresholds were calibrated for
  VerifyStats verify;            // the bundles and predictors checked at load (verify)

  // Index in layers of graph op `op`'s FFN (and what the op does), -1 when none.
  int layer_of_op(size_t op, SparseOpRole* role) const;
};

// The window and cache capacity of either sparse runtime (ModelOptions::sparse_window,
// sparse_capacity) against the option range table (throws kErrorInvalidArgument naming the
// option); returns the window.
size_t sparse_window_checked(int64_t window, int64_t capacity);

// Matches the graph's FFNs and reads the package's "bundles" and "predictors" sections;
// throws kErrorNotFound / kErrorUnsupported / kErrorCorrupt naming the package and the fix.
// Caches are sized by size_sparse_caches(plan, options.capacity, options.window).
SparseFfnPlan sparse_ffn_plan(const Package& package, const SparseFfnOptions& options);

// Sets each layer's cache capacity, the staging buffer, the scratch layout and
// plan.host_bytes: `capacity` neurons per layer, or when 0 (auto) the predictions of
// `capacity_tokens` tokens (predicted density x tokens x 1.5, all neurons when the metrics
// lack the density).
void size_sparse_caches(SparseFfnPlan& plan, int64_t capacity, size_t capacity_tokens);

// The scratch layout for the plan's current capacities (size_sparse_caches stores it).
SparseScratchLayout sparse_scratch_layout(const SparseFfnPlan& plan);

}  // namespace tierlm::detail
