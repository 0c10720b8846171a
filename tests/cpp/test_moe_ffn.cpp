// The routed-experts FFN (moe/moe_ffn.hpp) against a plain per-token loop on awkward sizes:
// routing, renormalisation, grouping tokens by expert (each routed expert fetched once per
// step), the layer-ahead prediction; and the expert cache's replacement policies.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kernels/backend.hpp"
#include "moe/expert_policy.hpp"
#include "moe/moe_ffn.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {
namespace {

std::vector<float> random_vector(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Experts held in vectors; records what the op asks for.
class VectorExperts : public ExpertProvider {
 public:
  VectorExperts(const MoeShape& s, std::mt19937& rng) {
    for (size_t e = 0; e < s.experts; ++e) {
      gate.push_back(random_vector(s.inner * s.hidden, rng, 1.0f / std::sqrt(float(s.hidden))));
      up.push_back(random_vector(s.inner * s.hidden, rng, 1.0f / std::sqrt(float(s.hidden))));
      down.push_back(random_vector(s.hidden * s.inner, rng, 1.0f / std::sqrt(float(s.inner))));
    }
  }
  void route(int, std::span<const int32_t> experts, std::span<const int32_t> rows,
             size_t) override {
    routed.assign(experts.begin(), experts.end());
    routed_rows.assign(rows.begin(), rows.end());
  }
  const void* next_router(int) const override { return router; }
  void prefetch(int, std::span<const int32_t> experts,
                std::span<const float> likelihood_of) override {
    predicted.assign(experts.begin(), experts.end());
    likelihood.assign(likelihood_of.begin(), likelihood_of.end());
  }
  uint64_t landing(int, int32_t e) override {
    const auto it = late.find(e);
    return it == late.end() ? kExpertReady : it->second;
  }
  ExpertWeights expert(int, int32_t e) override {
    ++fetched;
    order.push_back(e);
    ExpertWeights w;
    w.part[0] = gate[e].data();
    w.part[1] = up[e].data();
    w.part[2] = down[e].data();
    return w;
  }
  void release(int, int32_t) override {}

  std::vector<std::vector<float>> gate, up, down;
  std::vector<int32_t> routed, routed_rows, predicted, order;
  std::map<int32_t, uint64_t> late;  // expert -> its landing(): its read has not landed
  std::vector<float> likelihood;
  const void* router = nullptr;
  size_t fetched = 0;
};

// The top_k experts of one row of router logits (probability order, ties to the lower index).
std::vector<int> top_k(const float* logits, size_t experts, size_t k) {
  std::vector<int> order(experts);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  order.resize(k);
  return order;
}

std::vector<float> matvec(const std::vector<float>& w, const float* x, size_t rows, size_t cols) {
  std::vector<float> y(rows);
  for (size_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (size_t c = 0; c < cols; ++c) acc += double(w[r * cols + c]) * x[c];
    y[r] = float(acc);
  }
  return y;
}

// The op, one token at a time.
std::vector<float> reference(const MoeShape& s, const std::vector<float>& router,
                             const VectorExperts& ex, const std::vector<float>& x, size_t rows) {
  std::vector<float> out(rows * s.hidden, 0.0f);
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * s.hidden;
    std::vector<float> logits = matvec(router, xr, s.experts, s.hidden);
    const float top = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float& l : logits) sum += (l = std::exp(l - top));
    for (float& l : logits) l = float(l / sum);
    const std::vector<int> chosen = top_k(logits.data(), s.experts, s.top_k);
    double picked = 0;
    for (int e : chosen) picked += logits[e];
    for (int e : chosen) {
      const float w = s.norm_topk ? float(logits[e] / picked) : logits[e];
      std::vector<float> g = matvec(ex.gate[e], xr, s.inner, s.hidden);
      const std::vector<float> u = matvec(ex.up[e], xr, s.inner, s.hidden);
      for (size_t i = 0; i < s.inner; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      const std::vector<float> d = matvec(ex.down[e], g.data(), s.hidden, s.inner);
      for (size_t c = 0; c < s.hidden; ++c) out[r * s.hidden + c] += w * d[c];
    }
  }
  return out;
}

struct Case {
  size_t rows, experts, top_k;
  bool norm;
};

MoeShape shape_of(const Case& c) {
  MoeShape s;
  s.hidden = 37;
  s.inner = 19;
  s.experts = c.experts;
  s.top_k = c.top_k;
  s.norm_topk = c.norm;
  return s;
}

class MoeRun : public ::testing::TestWithParam<Case> {};

TEST_P(MoeRun, MatchesPerTokenReferenceAndFetchesEachExpertOnce) {
  const Case c = GetParam();
  const MoeShape s = shape_of(c);
  std::mt19937 rng(static_cast<unsigned>(c.rows * 31 + c.experts * 7 + c.top_k));
  const std::vector<float> router = random_vector(s.experts * s.hidden, rng, 1.0f);
  const std::vector<float> next_router = random_vector(s.experts * s.hidden, rng, 1.0f);
  const std::vector<float> x = random_vector(c.rows * s.hidden, rng, 1.0f);
  VectorExperts ex(s, rng);
  ex.router = next_router.data();
  std::unique_ptr<Backend> backend = backend_cpu();
  std::vector<char> workspace(moe_workspace(*backend, s, c.rows));
  std::vector<float> out(c.rows * s.hidden, -1.0f);
  moe_run(*backend, ex, 0, s, &s, router.data(), x.data(), c.rows, out.data(), workspace.data());

  const std::vector<float> want = reference(s, router, ex, x, c.rows);
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, double(std::fabs(out[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  EXPECT_LT(err, 1e-5 * scale + 1e-7);

  // Each routed expert once, ascending; exactly the experts some row chose.
  // rows[i]: how many rows chose routed[i] (the usage a profile counts).
  std::set<int32_t> chosen;
  std::map<int32_t, int32_t> rows_of;
  std::map<int32_t, double> predicted;  // expert -> its largest probability over the rows
  for (size_t r = 0; r < c.rows; ++r) {
    const std::vector<float> l = matvec(router, x.data() + r * s.hidden, s.experts, s.hidden);
    for (int e : top_k(l.data(), s.experts, s.top_k)) {
      chosen.insert(e);
      ++rows_of[e];
    }
    const std::vector<float> n = matvec(next_router, x.data() + r * s.hidden, s.experts, s.hidden);
    const float top = *std::max_element(n.begin(), n.end());
    double sum = 0;
    for (float v : n) sum += std::exp(double(v) - top);
    for (int e : top_k(n.data(), s.experts, s.top_k)) {
      predicted[e] = std::max(predicted[e], std::exp(double(n[e]) - top) / sum);
    }
  }
  EXPECT_EQ(std::vector<int32_t>(chosen.begin(), chosen.end()), ex.routed);
  std::vector<int32_t> want_rows;
  for (const auto& [e, n] : rows_of) want_rows.push_back(n);
  EXPECT_EQ(want_rows, ex.routed_rows);
  EXPECT_EQ(ex.fetched, chosen.size());
  // The predicted experts of the next layer, most likely first, with their likelihoods in
  // even shares (top_k / experts).
  std::vector<std::pair<int32_t, double>> want_predicted(predicted.begin(), predicted.end());
  std::stable_sort(want_predicted.begin(), want_predicted.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  ASSERT_EQ(ex.predicted.size(), want_predicted.size());
  ASSERT_EQ(ex.likelihood.size(), want_predicted.size());
  for (size_t i = 0; i < want_predicted.size(); ++i) {
    EXPECT_EQ(ex.predicted[i], want_predicted[i].first) << i;
    const double share = double(s.top_k) / double(s.experts);
    EXPECT_NEAR(ex.likelihood[i], want_predicted[i].second / share, 1e-5) << i;
  }
}

// Experts whose reads have not landed are multiplied after the ready ones (those in expert
// order), the one whose read went out first first, an unread one last; the output is
// bit-identical to the run where all were ready: it is summed in expert order whatever the
// order of the multiplications (3 terms a row: not associative).
TEST(MoeRun, MultipliesReadyExpertsFirstWithTheSameBits) {
  const size_t rows = 13;
  const MoeShape s = shape_of({rows, 7, 3, false});
  std::mt19937 rng(5);
  const std::vector<float> router = random_vector(s.experts * s.hidden, rng, 1.0f);
  const std::vector<float> x = random_vector(rows * s.hidden, rng, 1.0f);
  VectorExperts ex(s, rng);
  std::unique_ptr<Backend> backend = backend_cpu();
  std::vector<char> workspace(moe_workspace(*backend, s, rows));
  std::vector<float> in_order(rows * s.hidden), late_first(rows * s.hidden);
  moe_run(*backend, ex, 0, s, nullptr, router.data(), x.data(), rows, in_order.data(),
          workspace.data());
  ASSERT_GE(ex.routed.size(), 4u);
  EXPECT_EQ(ex.order, ex.routed);
  ex.late = {{ex.routed[0], 7}, {ex.routed[2], 3}, {ex.routed[3], ExpertProvider::kExpertUnread}};
  ex.order.clear();
  moe_run(*backend, ex, 0, s, nullptr, router.data(), x.data(), rows, late_first.data(),
          workspace.data());
  std::vector<int32_t> want;
  for (int32_t e : ex.routed) {
    if (!ex.late.contains(e)) want.push_back(e);
  }
  want.push_back(ex.routed[2]);
  want.push_back(ex.routed[0]);
  want.push_back(ex.routed[3]);
  EXPECT_EQ(ex.order, want);
  EXPECT_EQ(std::memcmp(in_order.data(), late_first.data(), in_order.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, MoeRun,
                         ::testing::Values(Case{1, 5, 2, true}, Case{7, 5, 1, false},
                                           Case{13, 7, 3, false}, Case{13, 5, 5, true},
                                           Case{64, 11, 2, true}));

TEST(MoePredicts, NeedsTheSameRoutingShape) {
  MoeShape a;
  a.hidden = 8;
  a.experts = 4;
  a.top_k = 2;
  MoeShape b = a;
  EXPECT_TRUE(moe_predicts(a, b));
  b.experts = 5;
  EXPECT_FALSE(moe_predicts(a, b));
}

TEST(ExpertPolicy, LruEvictsTheLeastRecentlyUsed) {
  auto p = expert_policy_create(ExpertPolicyKind::kExpertPolicyLru, 6);
  for (int key : {0, 1, 2, 0, 3}) {
    p->step();
    p->touch(key);
  }
  const std::vector<int> cached = {0, 1, 2, 3};
  EXPECT_EQ(cached[p->victim(cached)], 1);
}

TEST(ExpertPolicy, LfuEvictsTheLeastUsedAndForgetsOldUse) {
  auto p = expert_policy_create(ExpertPolicyKind::kExpertPolicyLfu, 4);
  for (int i = 0; i < 10; ++i) {  // key 0 popular early
    p->step();
    p->touch(0);
  }
  p->step();
  p->touch(1);
  p->step();
  p->touch(2);
  p->step();
  p->touch(2);
  const std::vector<int> cached = {0, 1, 2};
  EXPECT_EQ(cached[p->victim(cached)], 1);  // once, where 0 and 2 are used more
  // long after, 0's ten early uses have decayed below 1's recent one
  for (int i = 0; i < 1000; ++i) {
    p->step();
    if (i == 990) p->touch(1);
  }
  const std::vector<int> old_and_recent = {0, 1};
  EXPECT_EQ(old_and_recent[p->victim(old_and_recent)], 0);
  EXPECT_EQ(expert_policy_name(expert_policy_parse("lfu")), std::string("lfu"));
  EXPECT_THROW(expert_policy_parse("mru"), tierlm::Error);
}

TEST(ExpertPolicy, LfuSeededFromAProfileKeepsItsFavouritesOverOneOffUses) {
  const std::vector<double> rates = {0.9, 0.05, 0.5};  // expected uses per step
  auto seeded = expert_policy_create(ExpertPolicyKind::kExpertPolicyLfu, 3, rates);
  auto plain = expert_policy_create(ExpertPolicyKind::kExpertPolicyLfu, 3);
  const std::vector<int> all = {0, 1, 2};
  EXPECT_EQ(all[seeded->victim(all)], 1);  // before any use: the least expected
  for (auto* p : {seeded.get(), plain.get()}) {
    for (int i = 0; i < 3; ++i) {  // expert 1 used on the first steps, 0 not yet
      p->step();
      p->touch(1);
    }
  }
  const std::vector<int> pair = {0, 1};
  EXPECT_EQ(pair[seeded->victim(pair)], 1);  // 0's seeded count (~84) outweighs 3 uses
  EXPECT_EQ(pair[plain->victim(pair)], 0);   // unseeded, 0 has no use at all
  // the seed decays like a count: long unused, the favourite goes before a recent use
  for (int i = 0; i < 2000; ++i) seeded->step();
  seeded->touch(1);
  EXPECT_EQ(pair[seeded->victim(pair)], 0);
  const std::vector<double> short_rates = {0.5};
  EXPECT_THROW(expert_policy_create(ExpertPolicyKind::kExpertPolicyLfu, 3, short_rates),
               tierlm::Error);
}

}  // namespace
}  // namespace tierlm::detail
