// Which tokens a full KV cache drops (ModelOptions::kv_policy): one interface, three policies.
// The window policy drops the oldest tokens after the sinks; the scored ones (SirLLM's decayed
// token entropy, H2O's accumulated attention mass) keep a score per cached token, beside the
// cache and moved with its tokens, and drop the lowest of the tokens neither sink nor recent.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "tierlm/model/model.hpp"

namespace tierlm::detail {

class KvEviction {
 public:
  // The policy's eviction for `slots` sequences of up to policy.capacity() tokens; null for the
  // full policy (nothing is dropped). vocab: the logits' width (sirllm keeps a row per slot).
  static std::unique_ptr<KvEviction> create(const KvPolicy& policy, int64_t slots, int64_t vocab);
  virtual ~KvEviction() = default;

  const KvPolicy& policy() const { return policy_; }
  // Most tokens one step may append: a step's tokens must fit beside the kept ones.
  int64_t max_step() const;
  // Writes to drops the `count` tokens of slot (holding length) to drop, ascending.
  virtual void select(int32_t slot, int64_t length, int64_t count,
                      std::vector<int32_t>& drops) const;

  // Keeps the scores in step with the cache: after its evict, clear and share. (sirllm: a slot
  // sharing fewer tokens than its source holds has no prediction for its first own token,
  // which then scores 0.)
  void evicted(int32_t slot, std::span<const int32_t> drops, int64_t length);
  virtual void cleared(int32_t slot) { (void)slot; }
  virtual void shared(int32_t from, int32_t to, int64_t tokens);
  // Token scores of slot's first `length` tokens (empty for the window policy).
  std::span<const float> scores(int32_t slot, int64_t length) const;

  // A step appends n tokens (ids; the first at position pos) to slot: the new tokens start
  // at score 0 (sirllm: the first gets its entropy from the slot's last logits row).
  virtual void begin_step(int32_t slot, int64_t pos, const int32_t* ids, int64_t n);
  // h2o: the scores attention adds its softmax weights to; null when the policy does not.
  virtual float* attention_mass(int32_t slot) {
    (void)slot;
    return nullptr;
  }
  // sirllm: -log p(token) of the token at pos of slot, from its logits row, and the step's last
  // logits row of slot (the prediction for its next token); wants_logits() says whether to.
  virtual bool wants_logits() const { return false; }
  virtual void token_entropy(int32_t slot, int64_t pos, int64_t end, float entropy) {
    (void)slot, (void)pos, (void)end, (void)entropy;
  }
  virtual void last_logits(int32_t slot, int64_t length, const float* logits) {
    (void)slot, (void)length, (void)logits;
  }

 protected:
  KvEviction(const KvPolicy& policy, int64_t slots);
  KvPolicy policy_;
  std::vector<std::vector<float>> scores_;  // per slot, capacity entries (scored policies)
  mutable std::vector<int32_t> order_;      // select's candidates
};

// -log softmax(logits)[token] over vocab entries.
float token_nll(const float* logits, int64_t vocab, int32_t token);

}  // namespace tierlm::detail
