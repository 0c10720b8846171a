// The interpreter: runs the resolved ops for one batch of rows through the backend, brackets
// each layer for the weight store, appends the batch's keys and values to the KV cache and
// advances the sequences. Allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/backend.hpp"
#include "model/kv_cache.hpp"
#include "model/kv_eviction.hpp"
#include "model/op_resolve.hpp"
#include "moe/moe_ffn.hpp"
#include "sparse/channel_layer.hpp"
#include "sparse/sparse_ffn_layer.hpp"
#include "tierlm/model/model.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

// The rows of one step: n tokens of sequence slot `slot` at consecutive positions (prefill,
// single decode), or with slots set one token per row, row i of sequence slots[i] (batched
// decode; distinct slots).
struct ExecBatch {
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  int32_t slot = 0;
  const int32_t* slots = nullptr;
  // One slot only: n - 1 floats, row r receiving -log p(tokens[r + 1]) (perplexity).
  float* nll = nullptr;
};

class Executor {
 public:
  // max_rows: the most rows a batch has (the arena was planned for it); logits_rows: rows the
  // logits buffer holds. sparse and channels may be null; experts is null unless the graph has
  // moe ops; eviction is null for the full cache.
  Executor(ResolvedOps ops, Backend& backend, WeightStore& weights, KvCache& kv, SparseFfn* sparse,
           ChannelSparse* channels, ExpertProvider* experts, const float* rope_inv_freq,
           int64_t max_rows, int64_t logits_rows, std::unique_ptr<KvEviction> eviction);

  // The cache's sequence operations, kept in step with the eviction policy's scores.
  void clear(int32_t slot);
  void clear_all();
  void share(int32_t from, int32_t to, int64_t tokens);
  const KvEviction* eviction() const { return eviction_.get(); }

  // Runs the graph on the batch; returns the logits ([1, vocab] for one slot, [n, vocab] for a
  // batched decode), valid until the next run.
  const float* run(const ExecBatch& batch);
  // Time in the attention ops (KV append and fused attention) and the tokens run, since load.
  double attention_seconds() const { return attention_seconds_; }
  uint64_t attention_tokens() const { return attention_tokens_; }

 private:
  void make_room(int32_t slot, int64_t n);
  void run_op(const ExecOp& op, const ExecBatch& batch);
  void attend(const ExecOp& op, const ExecBatch& batch);
  // The lm head on rows 0 .. n - 2 (a group at a time in the logits buffer): each row's
  // -log p of the next token, for batch.nll and the sirllm policy.
  void score_rows(const ExecOp& op, const ExecBatch& batch);
  const void* weight(int index) const { return index < 0 ? nullptr : weights_.data(index); }

  ResolvedOps resolved_;
  Backend& backend_;
  WeightStore& weights_;
  std::unique_ptr<KvEviction> eviction_;
  KvCache& kv_;
  SparseFfn* sparse_;
  ChannelSparse* channels_;
  ExpertProvider* experts_;
  const float* rope_inv_freq_;
  std::vector<int32_t> positions_;  // of each row of the batch
  std::vector<int32_t> shifted_;    // positions + a position table's offset
  double attention_seconds_ = 0.0;
  uint64_t attention_tokens_ = 0;
  int64_t logits_rows_;
  std::vector<int32_t> drops_;  // tokens make_room evicts
  std::vector<float> lse_;      // h2o: attention's softmax normalizers [rows, heads]
};

}  // namespace tierlm::detail
