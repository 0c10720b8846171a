// The eviction policies: the window's oldest-first drop, and the scored policies' selection of
// the lowest scores outside the sinks and the recent window, with SirLLM's entropies (decayed
// per token appended) and H2O's attention mass (accumulated by the executor's attention).
#include "model/kv_eviction.hpp"

#include <algorithm>
#include <cmath>

#include "model/kv_cache.hpp"

namespace tierlm::detail {

namespace {

class SirllmEviction final : public KvEviction {
 public:
  SirllmEviction(const KvPolicy& policy, int64_t slots, int64_t vocab)
      : KvEviction(policy, slots),
        vocab_(vocab),
        next_(static_cast<size_t>(slots), std::vector<float>(static_cast<size_t>(vocab))),
        next_at_(static_cast<size_t>(slots), -1) {}

  void cleared(int32_t slot) override { next_at_[static_cast<size_t>(slot)] = -1; }
  void shared(int32_t from, int32_t to, int64_t tokens) override {
    KvEviction::shared(from, to, tokens);
    // The prediction for token `tokens` is known only if it was from's last.
    const bool known = next_at_[static_cast<size_t>(from)] == tokens;
    if (known) next_[static_cast<size_t>(to)] = next_[static_cast<size_t>(from)];
    next_at_[static_cast<size_t>(to)] = known ? tokens : -1;
  }
  void begin_step(int32_t slot, int64_t pos, const int32_t* ids, int64_t n) override {
    KvEviction::begin_step(slot, pos, ids, n);
    float* s = scores_[static_cast<size_t>(slot)].data();
    const float fade = static_cast<float>(std::pow(policy_.decay, static_cast<double>(n)));
    for (int64_t t = 0; t < pos; ++t) s[t] *= fade;
    if (next_at_[static_cast<size_t>(slot)] == pos) {
      token_entropy(slot, pos, pos + n,
                    token_nll(next_[static_cast<size_t>(slot)].data(), vocab_, ids[0]));
    }
  }
  bool wants_logits() const override { return true; }
  void token_entropy(int32_t slot, int64_t pos, int64_t end, float entropy) override {
    // As if decayed once for every later token of the step.
    scores_[static_cast<size_t>(slot)][static_cast<size_t>(pos)] =
        entropy * static_cast<float>(std::pow(policy_.decay, static_cast<double>(end - 1 - pos)));
  }
  void last_logits(int32_t slot, int64_t length, const float* logits) override {
    std::copy(logits, logits + vocab_, next_[static_cast<size_t>(slot)].begin());
    next_at_[static_cast<size_t>(slot)] = length;
  }

 private:
  int64_t vocab_;
  std::vector<std::vector<float>> next_;  // per slot: the logits predicting its next token
  std::vector<int64_t> next_at_;          // the position they predict; -1 when unknown
};

class H2oEviction final : public KvEviction {
 public:
  using KvEviction::KvEviction;
  float* attention_mass(int32_t slot) override { return scores_[static_cast<size_t>(slot)].data(); }
};

class WindowEviction final : public KvEviction {
 public:
  using KvEviction::KvEviction;
  void select(int32_t, int64_t, int64_t count, std::vector<int32_t>& drops) const override {
    drops.clear();
    for (int64_t i = 0; i < count; ++i) drops.push_back(static_cast<int32_t>(policy_.sinks + i));
  }
  void begin_step(int32_t, int64_t, const int32_t*, int64_t) override {}
};

}  // namespace

float token_nll(const float* logits, int64_t vocab, int32_t token) {
  float m = logits[0];
  for (int64_t i = 1; i < vocab; ++i) m = std::max(m, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - m));
  return static_cast<float>(std::log(sum)) + m - logits[token];
}

std::unique_ptr<KvEviction> KvEviction::create(const KvPolicy& policy, int64_t slots,
                                               int64_t vocab) {
  switch (policy.kind) {
    case KvPolicyKind::kKvPolicyFull:
      return nullptr;
    case KvPolicyKind::kKvPolicyWindow:
      return std::unique_ptr<KvEviction>(new WindowEviction(policy, slots));
    case KvPolicyKind::kKvPolicySirllm:
      return std::make_unique<SirllmEviction>(policy, slots, vocab);
    case KvPolicyKind::kKvPolicyH2o:
      return std::unique_ptr<KvEviction>(new H2oEviction(policy, slots));
  }
  return nullptr;
}

KvEviction::KvEviction(const KvPolicy& policy, int64_t slots) : policy_(policy) {
  const size_t capacity = static_cast<size_t>(policy.capacity());
  if (policy.heavy > 0) {
    scores_.assign(static_cast<size_t>(slots), std::vector<float>(capacity, 0.0f));
    order_.reserve(capacity);
  }
}

int64_t KvEviction::max_step() const {
  return (policy_.heavy > 0 ? policy_.heavy : policy_.window) / 2;
}

void KvEviction::select(int32_t slot, int64_t length, int64_t count,
                        std::vector<int32_t>& drops) const {
  // Candidates: neither sinks nor the last `window` tokens; the lowest scores go, the older of
  // equal ones first.
  const float* s = scores_[static_cast<size_t>(slot)].data();
  order_.clear();
  for (int64_t t = policy_.sinks; t < length - policy_.window; ++t)
    order_.push_back(static_cast<int32_t>(t));
  auto lower = [s](int32_t a, int32_t b) { return s[a] < s[b] || (s[a] == s[b] && a < b); };
  std::nth_element(order_.begin(), order_.begin() + (count - 1), order_.end(), lower);
  drops.assign(order_.begin(), order_.begin() + count);
  std::sort(drops.begin(), drops.end());
}

void KvEviction::evicted(int32_t slot, std::span<const int32_t> drops, int64_t length) {
  if (scores_.empty()) return;
  float* s = scores_[static_cast<size_t>(slot)].data();
  int64_t out = drops.front();
  for (size_t i = 0; i < drops.size(); ++i) {
    const int64_t end = i + 1 < drops.size() ? drops[i + 1] : length;
    for (int64_t t = drops[i] + 1; t < end; ++t) s[out++] = s[t];
  }
}

void KvEviction::shared(int32_t from, int32_t to, int64_t tokens) {
  if (scores_.empty()) return;
  std::copy_n(scores_[static_cast<size_t>(from)].begin(), tokens,
              scores_[static_cast<size_t>(to)].begin());
}

std::span<const float> KvEviction::scores(int32_t slot, int64_t length) const {
  if (scores_.empty()) return {};
  return {scores_[static_cast<size_t>(slot)].data(), static_cast<size_t>(length)};
}

void KvEviction::begin_step(int32_t slot, int64_t pos, const int32_t*, int64_t n) {
  std::fill_n(scores_[static_cast<size_t>(slot)].begin() + pos, n, 0.0f);
}

}  // namespace tierlm::detail
