// A loaded model package and its executor: weights in a per-layer weight store under the
// host budget, a KV cache, and one activation arena at planned offsets. forward() runs the
// graph for a batch of tokens at the current position and allocates nothing but the I/O
// engine's futures of the reads streamed weights and sparse FFN rows issue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tierlm/memory/tier.hpp"
#include "tierlm/model/package.hpp"
#include "tierlm/sparse/sparse_stats.hpp"

namespace tierlm {

struct ModelOptions {
  uint64_t host_budget = UINT64_MAX;  // bytes the host tier may hold (weights, KV, arena)
  size_t threads = 0;                 // compute threads; 0 keeps the pool's size
  bool verify = false;                // check each tensor's CRC-32 while loading
  int64_t max_context = 0;            // KV cache capacity in tokens; 0 = config.max_positions
  int64_t prefill_chunk = 0;          // tokens per prefill batch; 0 = a stored plan's or 256
  bool lock = true;                   // mlock host buffers where RLIMIT_MEMLOCK allows
  int64_t max_batch = 1;              // sequences decoded together (KV cache slots)
  // Streaming (weights larger than the host budget): staging sections of the prefetch ring, each
  // the size of the largest streamed matrix; 0 = auto (about 64 MiB of sections, at least 2
  // when the budget allows, else 1).
  int64_t ring_sections = 0;
  // Sparse-neuron flash loading (docs/sparse.md; needs a package exported with --sparse and
  // predictors): the FFN up/down matrices are neither resident nor streamed; per token a
  // low-rank predictor picks the FFN neurons, whose bundled rows are read into a host-tier
  // neuron cache that keeps the neurons of the last sparse_window tokens.
  bool sparse = false;
  int64_t sparse_window = 4;    // tokens whose neurons stay cached (1 = no window)
  bool sparse_bundled = true;   // false: up and down parts read apart, no coalescing (ablation)
  int64_t sparse_capacity = 0;  // cached neurons per layer; 0 = auto from the predictors
};

// Where the weights live: everything resident, or a resident set plus a ring of
// staging sections streamed from the package files with O_DIRECT.
struct WeightPlacementInfo {
  bool streaming = false;
  uint64_t resident_bytes = 0;  // weights kept in the host tier
  uint64_t base_bytes = 0;      // layer -1 tensors and 1-D tensors (norms, biases)
  uint64_t section_bytes = 0;   // one staging section (the largest streamed matrix)
  uint64_t ring_bytes = 0;
  uint64_t streamed_bytes = 0;  // read from disk per forward pass
  uint64_t minimum_budget =
      0;  // least host budget that loads (resident set + KV + arena + 1 section)
  int64_t sections = 0;
  int64_t chunks = 0;  // section-sized groups of streamed matrices read per forward pass
  std::vector<int> resident_layers;
  std::vector<int> streamed_layers;
  std::vector<std::string> streamed_tensors;
  std::vector<std::string> pinned_tensors;  // matrices of streamed layers kept resident
  std::vector<std::string> row_tensors;     // embedding tables read by rows on demand
};

struct StreamEventInfo {
  double t = 0;
  double wait = 0;
  int layer = 0;
  uint64_t bytes_read = 0;
};

// One activation or workspace buffer of the graph for a batch of `seq` tokens: live from op
// `start` to op `end` (inclusive; end == number of ops for the graph output).
struct MemoryBuffer {
  std::string name;  // "<value>@<op>" or "<op kind>.workspace@<op>"
  uint64_t size = 0;
  int64_t start = 0;
  int64_t end = 0;
  uint64_t offset = 0;  // in the arena, once planned
};

struct MemoryPlan {
  int64_t seq = 0;
  std::vector<MemoryBuffer> buffers;
  uint64_t peak = 0;         // arena bytes: max(offset + size)
  uint64_t lower_bound = 0;  // most bytes live at one op
  std::string source;        // "internal" (plan_greedy) or the stored plan's path
};

struct ModelStats {
  uint64_t prefill_tokens = 0;  // totals since load
  uint64_t decode_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  double load_seconds = 0.0;
  uint64_t disk_bytes_read = 0;  // weight bytes read from the package files
  uint64_t weight_bytes = 0;     // host bytes holding weights
  uint64_t kv_bytes = 0;         // host bytes of the KV cache
  uint64_t arena_bytes = 0;      // host bytes of the activation arena
  TierStats host;
  // Streaming: bytes read by the ring, time the weight reads were waited for (ring chunks and
  // embedding rows), time from issuing a chunk's reads to seeing them complete (summed).
  uint64_t stream_bytes_read = 0;
  double io_wait_seconds = 0.0;
  double read_busy_seconds = 0.0;
  uint64_t layer_waits = 0;     // streamed layers ended
  uint64_t chunk_waits = 0;     // streamed chunks waited for (a chunk: section-sized matrices)
  uint64_t row_bytes_read = 0;  // embedding rows read on demand
  uint64_t ring_restarts = 0;
  bool io_direct = false;
  bool io_registered = false;
  std::string io_backend;
  // Sparse FFN (ModelOptions::sparse), totals since load over every layer; a token is one
  // row through the FFNs (prompt tokens included).
  bool sparse = false;
  uint64_t sparse_tokens = 0;
  uint64_t sparse_neurons_predicted = 0;
  uint64_t sparse_neurons_read = 0;  // rows read from the bundle files (cache misses)
  uint64_t sparse_bytes_read = 0;    // bytes requested (4 KiB-widened reads)
  uint64_t sparse_requests = 0;      // read requests submitted
  uint64_t sparse_overflows = 0;     // layer steps whose prediction alone passed the capacity
  double sparse_predictor_seconds = 0.0;
  double sparse_io_seconds = 0.0;       // submit -> every read of the step complete
  double sparse_memory_seconds = 0.0;   // neuron cache erase / insert (row copies included)
  double sparse_compute_seconds = 0.0;  // the sparse FFN kernel
  uint64_t sparse_host_bytes = 0;       // neuron caches + staging + predictors + scratch
  uint64_t sparse_dense_ffn_bytes = 0;  // bytes of the dense FFN matrices a token would read
  int64_t sparse_window = 0;
  bool sparse_bundled = true;
  std::vector<int64_t> sparse_capacity;  // per layer
  // Gated SiLU FFNs: the target sparsity the thresholds were calibrated for (lossy); 0 = ReLU.
  double sparse_target_sparsity = 0.0;
};

class Model {
 public:
  // Opens and validates the package, reads the weights into the host tier and allocates the
  // KV cache and arena; throws kErrorBudget (naming what needs how much) when they do not fit.
  static Model load(const std::string& path, const ModelOptions& options = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const Package& package() const;
  const ModelConfig& config() const;
  int64_t vocab_size() const;
  // Tokens the KV cache holds (the longest prompt + generation).
  int64_t context_length() const;
  int64_t prefill_chunk() const;

  // Empties the KV cache: the next forward starts at position 0. A Model runs on one thread
  // at a time: a call while another thread runs it throws kErrorInvalidArgument.
  void reset();
  // Tokens in the KV cache (of slot 0, or of a sequence slot).
  int64_t position() const;
  int64_t position(int32_t slot) const;
  // Sequence slots: how many sequences forward_batch can decode together.
  int64_t max_batch() const;
  // Runs tokens at the current position (in prefill_chunk batches), appends them to the KV
  // cache and returns the last token's logits (vocab_size floats, valid until the next call).
  // Throws kErrorInvalidArgument for an empty batch, ids outside the vocabulary or a batch
  // that would overflow the context. Allocates nothing but the I/O futures of streamed weight
  // and sparse row reads.
  const float* forward(std::span<const int32_t> tokens);
  // The same; restart = true empties the cache first, atomically with the run.
  const float* forward(std::span<const int32_t> tokens, bool restart);
  // The same on sequence slot `slot` (0 .. max_batch - 1), each with its own KV cache.
  const float* forward_slot(int32_t slot, std::span<const int32_t> tokens, bool restart);
  // One decode step of several sequences at once: tokens[i] is appended to slot slots[i]
  // (distinct slots) at that slot's position. The matrix products read each weight once for
  // all rows. Returns logits [tokens.size(), vocab_size], row i for slots[i].
  const float* forward_batch(std::span<const int32_t> tokens, std::span<const int32_t> slots);
  // Last-position logits of ids from an empty cache (resets first).
  std::vector<float> logits(std::span<const int32_t> ids);

  ModelStats stats() const;
  const WeightPlacementInfo& placement() const;
  // One event per streamed layer's end (time, wait, bytes read so far), oldest first.
  std::vector<StreamEventInfo> stream_events() const;
  // Sparse FFN: one entry per token since load, oldest first (the last 16384 kept).
  std::vector<SparseTokenInfo> sparse_tokens() const;
  // Counts a generation's timings into stats() (prefill and decode totals).
  void record_timing(uint64_t prefill_tokens, double prefill_seconds, uint64_t decode_tokens,
                     double decode_seconds);
  // The graph's buffers for a batch of seq tokens (offsets 0), for external planners.
  std::vector<MemoryBuffer> memory_buffers(int64_t seq) const;
  // The plan the arena uses.
  const MemoryPlan& memory_plan() const;
  // Increments whenever the sequence restarts (reset / logits); generators use it to notice
  // that another caller took the KV cache.
  uint64_t sequence_id() const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tierlm
