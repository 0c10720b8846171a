// LRU and decayed-frequency replacement for the expert cache.
#include "moe/expert_policy.hpp"

#include <cmath>

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

class LruPolicy final : public ExpertPolicy {
 public:
  explicit LruPolicy(size_t keys) : last_(keys, 0) {}
  void step() override { ++now_; }
  void touch(int key) override { last_[key] = now_; }
  size_t victim(std::span<const int> candidates) const override {
    size_t best = 0;
    for (size_t i = 1; i < candidates.size(); ++i) {
      if (last_[candidates[i]] < last_[candidates[best]]) best = i;
    }
    return best;
  }

 private:
  uint64_t now_ = 0;
  std::vector<uint64_t> last_;
};

// score(t) = sum over uses u of 2^-((t - u) / half_life): kept as (score at `at`, at).
class LfuPolicy final : public ExpertPolicy {
 public:
  static constexpr double kHalfLife = 64.0;  // steps

  // A use every step with probability p keeps the score at p / (1 - 2^(-1 / kHalfLife)).
  LfuPolicy(size_t keys, std::span<const double> rates) : score_(keys, 0.0), at_(keys, 0) {
    const double steady = 1.0 / (1.0 - std::exp2(-1.0 / kHalfLife));
    for (size_t k = 0; k < rates.size(); ++k) score_[k] = rates[k] * steady;
  }
  void step() override { ++now_; }
  void touch(int key) override {
    score_[key] = decayed(key) + 1.0;
    at_[key] = now_;
  }
  size_t victim(std::span<const int> candidates) const override {
    size_t best = 0;
    double best_score = decayed(candidates[0]);
    for (size_t i = 1; i < candidates.size(); ++i) {
      const double s = decayed(candidates[i]);
      // ties (equal use) go to the least recently used
      if (s < best_score || (s == best_score && at_[candidates[i]] < at_[candidates[best]])) {
        best = i;
        best_score = s;
      }
    }
    return best;
  }

 private:
  double decayed(int key) const {
    return score_[key] * std::exp2(-static_cast<double>(now_ - at_[key]) / kHalfLife);
  }
  uint64_t now_ = 0;
  std::vector<double> score_;
  std::vector<uint64_t> at_;
};

}  // namespace

ExpertPolicyKind expert_policy_parse(const std::string& name) {
  if (name == "lru") return ExpertPolicyKind::kExpertPolicyLru;
  if (name == "lfu") return ExpertPolicyKind::kExpertPolicyLfu;
  if (name == "stream") return ExpertPolicyKind::kExpertPolicyStream;
  TIERLM_FAIL(kErrorInvalidArgument, 0, "expert_cache \"", name,
              "\" is not a replacement policy; use \"lru\", \"lfu\" (frequency-weighted) or "
              "\"stream\" (no cache: every layer's experts read on every step)");
}

const char* expert_policy_name(ExpertPolicyKind kind) {
  switch (kind) {
    case ExpertPolicyKind::kExpertPolicyLru:
      return "lru";
    case ExpertPolicyKind::kExpertPolicyLfu:
      return "lfu";
    case ExpertPolicyKind::kExpertPolicyStream:
      return "stream";
  }
  return "?";
}

std::unique_ptr<ExpertPolicy> expert_policy_create(ExpertPolicyKind kind, size_t keys,
                                                   std::span<const double> rates) {
  TIERLM_CHECK(rates.empty() || rates.size() == keys, kErrorInvalidArgument,
               "expert cache: ", rates.size(), " use rates for ", keys, " experts");
  if (kind == ExpertPolicyKind::kExpertPolicyLfu) return std::make_unique<LfuPolicy>(keys, rates);
  return std::make_unique<LruPolicy>(keys);  // stream reuses its slots in LRU order
}

}  // namespace tierlm::detail
