// A loaded model package and its executor: weights in a per-layer weight store under the
// host budget, a KV cache, and one activation arena at planned offsets. forward() runs the
// graph for a batch of tokens at the current position and allocates nothing but the I/O
// engine's futures of the reads streamed weights and sparse FFN rows issue.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tierlm/core/dtype.hpp"
#include "tierlm/core/export.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/model/package.hpp"
#include "tierlm/moe/moe_stats.hpp"
#include "tierlm/sparse/sparse_stats.hpp"
#include "tierlm/weights/placement.hpp"
#include "tierlm/weights/stream_stats.hpp"

namespace tierlm {

struct TIERLM_API ModelOptions {
  uint64_t host_budget = UINT64_MAX;  // bytes the host tier may hold (weights, KV, arena)
  size_t threads = 0;                 // compute threads; 0 keeps the pool's size
  bool verify = false;  // check the CRC-32 of every byte the run uses at load (ModelStats::verify)
  int64_t max_context = 0;    // KV cache capacity in tokens; 0 = config.max_positions
  int64_t prefill_chunk = 0;  // tokens per prefill batch; 0 = a stored plan's or 256
  bool lock = true;           // mlock host buffers where RLIMIT_MEMLOCK allows
  int64_t max_batch = 1;      // sequences decoded together (KV cache slots)
  // The KV cache's element type: f16 (default), bf16, f32, or q8_0 (int8 in blocks of 32 along
  // head_dim with an f16 scale); the fused attention kernel reads it in place.
  DType kv_dtype = DType::kDTypeF16;
  // Streaming past the context (kv_policy_parse): "" keeps every token up to the context;
  // "window:S+W" keeps S attention sinks and the last W tokens (StreamingLLM);
  // "sirllm:S+W+K[@D]" also keeps the K older tokens of highest token entropy -log p(token),
  // decayed by D per token (SirLLM); "h2o:S+W+K" the K of most accumulated attention (H2O).
  // Positions are counted within the cache, so a sequence runs on past max_positions.
  std::string kv_policy;
  // KV on the disk tier: the host bytes the KV cache may hold (its share of host_budget; 0 = as
  // many as it needs). Below the whole cache's bytes, the cache keeps that many bytes of blocks
  // and read-back staging in host memory and moves its coldest blocks to a scratch file of the
  // disk tier in disk_dir (created there, unlinked at once, never another file), under
  // disk_budget bytes, reading each layer's back while the layer before computes. Every token
  // stays: the results are those of the cache in memory. Not with a kv_policy.
  uint64_t kv_host_budget = 0;
  uint64_t disk_budget = UINT64_MAX;
  std::string disk_dir;  // "" = $TMPDIR, else /tmp
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
  // Decode: read layer i+1's predicted rows (its predictor on layer i's input) while layer i
  // computes; the result is identical either way (docs/sparse.md). Off until measured faster.
  // Input-channel packages: at layer i's attention input, read the gate/up columns its FFN
  // input is predicted to keep (a streamed gate/up site) while attention computes.
  bool sparse_readahead = false;
  // Mixture of experts: the replacement policy of the host-tier cache of disk-homed experts,
  // "lru" or "lfu" (use counts that halve every 64 steps).
  std::string expert_cache = "lru";
  // Predict the experts of layer i+1 by applying its router to layer i's input and read the
  // missing ones while layer i computes (the routers stay in the host tier for it).
  bool expert_prefetch = true;
};

// A parsed ModelOptions::kv_policy. A full cache drops a block's worth of tokens (or what the
// step needs): never the `sinks` first nor the `window` last; of the others, the window policy
// drops the oldest, sirllm and h2o the `heavy`-tokens region's lowest scores.
enum class KvPolicyKind { kKvPolicyFull, kKvPolicyWindow, kKvPolicySirllm, kKvPolicyH2o };
struct TIERLM_API KvPolicy {
  KvPolicyKind kind = KvPolicyKind::kKvPolicyFull;
  int64_t sinks = 0;
  int64_t window = 0;
  int64_t heavy = 0;   // sirllm, h2o: older tokens kept by score
  double decay = 1.0;  // sirllm: factor on every score per token appended
  bool evicts() const { return kind != KvPolicyKind::kKvPolicyFull; }
  int64_t capacity() const { return sinks + window + heavy; }  // tokens the cache holds
};
// sirllm's decay when the policy names none: a score halves in about 700 tokens.
constexpr double kSirllmDecay = 0.999;
// Throws kErrorInvalidArgument naming kv_policy and the accepted forms for a malformed one.
TIERLM_API KvPolicy kv_policy_parse(const std::string& policy);

// Throws kErrorInvalidArgument naming the first numeric option outside its range
// (tierlm/core/limits.hpp), or a kv_dtype the cache cannot hold; Model::load calls it before
// any work.
TIERLM_API void check_model_options(const ModelOptions& options);

// One activation or workspace buffer of the graph for a batch of `seq` tokens: live from op
// `start` to op `end` (inclusive; end == number of ops for the graph output).
struct TIERLM_API MemoryBuffer {
  std::string name;  // "<value>@<op>" or "<op kind>.workspace@<op>"
  uint64_t size = 0;
  int64_t start = 0;
  int64_t end = 0;
  uint64_t offset = 0;  // in the arena, once planned
};

struct TIERLM_API MemoryPlan {
  int64_t seq = 0;
  std::vector<MemoryBuffer> buffers;
  uint64_t peak = 0;         // arena bytes: max(offset + size)
  uint64_t lower_bound = 0;  // most bytes live at one op
  std::string source;        // "internal" (plan_greedy) or the stored plan's path
};

// The model's report: totals since load of prefill and decode, its host-tier footprint, and
// the streaming store's and the sparse FFN's records (each defined beside its producer), with
// the figures derived from them.
struct TIERLM_API ModelStats : StreamStats, SparseStats, MoeStats {
  uint64_t prefill_tokens = 0;  // totals since load
  uint64_t decode_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  double load_seconds = 0.0;
  uint64_t disk_bytes_read = 0;  // weight bytes read from the package files at load (+ sparse rows)
  uint64_t weight_bytes = 0;     // host bytes holding weights
  uint64_t kv_bytes = 0;         // host bytes the KV cache holds now (its blocks' chunks)
  std::string kv_dtype;          // its element type ("f16", "q8_0", ...)
  int64_t kv_blocks = 0;         // KV blocks in use (a block shared by sequences counts once)
  int64_t kv_evicted = 0;        // tokens the kv_policy dropped since load
  // KV on the disk tier (kv_host_budget): bytes of spilled blocks on disk now, blocks written
  // there and layer slices read back since load (with their bytes), and the time attention
  // waited for them.
  uint64_t kv_disk_bytes = 0;
  uint64_t kv_blocks_spilled = 0;
  uint64_t kv_slices_read = 0;
  uint64_t kv_disk_bytes_read = 0;
  uint64_t kv_disk_bytes_written = 0;
  double kv_read_wait_seconds = 0.0;
  std::string kv_io_backend;       // how the spill reads and writes ("" when it has none)
  bool kv_io_direct = false;       // with O_DIRECT
  bool kv_io_registered = false;   // into staging registered with the io_uring (fixed buffers)
  int64_t kv_staging_layers = 0;   // layers of spilled blocks read back at once (read-ahead)
  int64_t kv_block_tokens = 0;     // tokens per block
  uint64_t kv_block_bytes = 0;     // bytes per block (every layer's keys and values)
  double attention_seconds = 0.0;  // in the attention ops since load (KV append, spill reads,
                                   // fused attention)
  uint64_t attention_tokens = 0;   // tokens run through them (every layer's attention each)
  uint64_t arena_bytes = 0;        // host bytes of the activation arena
  TierStats host;
  TierStats disk;      // the KV cache's spill (budget UINT64_MAX and no bytes when it has none)
  VerifyStats verify;  // what verify checked: every tensor, bundle and predictor the run uses

  // The counters over an interval that began at `before` (one generation); sizes, peaks and
  // settings as now.
  ModelStats since(const ModelStats& before) const {
    ModelStats d = *this;
    static_cast<StreamStats&>(d) = StreamStats::since(before);
    static_cast<SparseStats&>(d) = SparseStats::since(before);
    static_cast<MoeStats&>(d) = MoeStats::since(before);
    d.prefill_tokens -= before.prefill_tokens;
    d.decode_tokens -= before.decode_tokens;
    d.prefill_seconds -= before.prefill_seconds;
    d.decode_seconds -= before.decode_seconds;
    d.kv_blocks_spilled -= before.kv_blocks_spilled;
    d.kv_slices_read -= before.kv_slices_read;
    d.kv_disk_bytes_read -= before.kv_disk_bytes_read;
    d.kv_disk_bytes_written -= before.kv_disk_bytes_written;
    d.kv_read_wait_seconds -= before.kv_read_wait_seconds;
    d.attention_seconds -= before.attention_seconds;
    d.attention_tokens -= before.attention_tokens;
    return d;
  }
  double prefill_tokens_per_s() const { return rate(prefill_tokens, prefill_seconds); }
  double decode_tokens_per_s() const { return rate(decode_tokens, decode_seconds); }
  // Seconds of attention per token (every layer's KV append and fused attention for one token).
  double attention_seconds_per_token() const {
    return attention_tokens > 0 ? attention_seconds / static_cast<double>(attention_tokens) : 0.0;
  }
  // Run time not spent waiting for streamed reads.
  double compute_seconds() const {
    return std::max(prefill_seconds + decode_seconds - io_wait_seconds, 0.0);
  }
  // Most bytes each tier held at once.
  std::map<std::string, uint64_t> peak_bytes() const {
    return {{"host", host.peak}, {"disk", disk.peak}};
  }

 private:
  static double rate(uint64_t tokens, double seconds) {
    return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  }
};

class TIERLM_API Model {
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
  // Tokens a sequence may reach (the longest prompt + generation): the KV cache's capacity, or
  // kStreamingContext with a window kv_policy.
  int64_t context_length() const;
  static constexpr int64_t kStreamingContext = int64_t{1} << 30;
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
  // that would overflow the context. Allocates nothing but the I/O futures of streamed weight,
  // sparse row and spilled KV block reads.
  const float* forward(std::span<const int32_t> tokens);
  // The same; restart = true empties the cache first, atomically with the run.
  const float* forward(std::span<const int32_t> tokens, bool restart);
  // The same on sequence slot `slot` (0 .. max_batch - 1), each with its own KV cache.
  const float* forward_slot(int32_t slot, std::span<const int32_t> tokens, bool restart);
  // Restarts slot `to` with the first `tokens` tokens of slot `from`, whose KV cache blocks it
  // shares (a block is copied before either writes it): a common prompt prefix computed once.
  void share_slot(int32_t from, int32_t to, int64_t tokens);
  // One decode step of several sequences at once: tokens[i] is appended to slot slots[i]
  // (distinct slots) at that slot's position. The matrix products read each weight once for
  // all rows. Returns logits [tokens.size(), vocab_size], row i for slots[i].
  const float* forward_batch(std::span<const int32_t> tokens, std::span<const int32_t> slots);
  // A KV cache that spills reads the next step's first layers while a step ends; settle_reads
  // waits for those reads and throws the error of any that failed (naming the file), so that
  // a failing disk is reported even when no step follows. generate and generate_batch call it
  // when they end.
  void settle_reads();
  // Last-position logits of ids from an empty cache (resets first).
  std::vector<float> logits(std::span<const int32_t> ids);
  // From an empty cache (resets first): -log p(ids[i] | ids[..i]) for i = 1 .. n - 1, running
  // ids in prefill chunks through the kv_policy (so past the context with an evicting one).
  std::vector<float> token_nll(std::span<const int32_t> ids);
  // The kv_policy's score of each token slot holds now (sirllm: decayed token entropy, h2o:
  // accumulated attention mass; empty for full and window).
  std::vector<float> kv_scores(int32_t slot = 0) const;

  ModelStats stats() const;
  const WeightPlacement& placement() const;
  // Mixture of experts: where each expert lives (ExpertPlacement::moe false without moe layers).
  const ExpertPlacement& expert_placement() const;
  // Mixture of experts: per moe layer, the tokens routed to each expert since load (empty
  // without moe layers); tierlm.profile_experts stores them as the package's usage profile.
  std::vector<std::vector<uint64_t>> expert_usage() const;
  // One event per streamed layer's end (time, wait, bytes read so far), oldest first.
  std::vector<StreamEvent> stream_events() const;
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
  // Runs tokens on slot in prefill chunks (the caller holds the model); nll as token_nll's.
  const float* run_chunks(int32_t slot, std::span<const int32_t> tokens, float* nll);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tierlm
