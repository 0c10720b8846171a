// The routed-experts FFN on the CPU side of the backend seam: routing and grouping are
// bookkeeping on a few floats per token; the matrices go through Backend::linear.
#include "moe/moe_ffn.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tierlm::detail {

namespace {

constexpr size_t kAlign = 64;

size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The pieces of a moe op's workspace, at offsets from its start.
struct MoeLayout {
  size_t logits, chosen, weights, starts, order_rows, order_weights, routed, routed_rows, done, xs;
  size_t gate, up, down;
  size_t linear, total;
};

MoeLayout moe_layout(const Backend& backend, const MoeShape& s, size_t rows) {
  MoeLayout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += aligned(bytes);
    return here;
  };
  const size_t picks = rows * s.top_k;
  l.logits = take(rows * s.experts * sizeof(float));
  l.chosen = take(picks * sizeof(int32_t));
  l.weights = take(picks * sizeof(float));
  l.starts = take((2 * s.experts + 1) * sizeof(int32_t));      // + flags of moe_distinct
  l.order_rows = take((picks + s.experts) * sizeof(int32_t));  // + the predicted experts
  l.order_weights = take(picks * sizeof(float));
  l.routed = take(s.experts * sizeof(int32_t));
  l.routed_rows = take(s.experts * sizeof(int32_t));
  l.done = take(s.experts * sizeof(int32_t));
  l.xs = take(rows * s.hidden * sizeof(float));
  l.gate = take(rows * s.inner * sizeof(float));
  l.up = take(rows * s.inner * sizeof(float));
  l.down = take(picks * s.hidden * sizeof(float));  // per pick: summed once all have landed
  size_t linear = backend.linear_workspace({rows, s.experts, s.hidden, s.router_dtype});
  linear = std::max(linear, backend.linear_workspace({rows, s.inner, s.hidden, s.part_dtype[0]}));
  linear = std::max(linear, backend.linear_workspace({rows, s.inner, s.hidden, s.part_dtype[1]}));
  linear = std::max(linear, backend.linear_workspace({rows, s.hidden, s.inner, s.part_dtype[2]}));
  l.linear = take(linear);
  l.total = at;
  return l;
}

template <typename T>
T* at(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// The distinct experts of `picks` choices, ascending, into `routed`; returns their number.
// `seen`: scratch for `experts` flags.
size_t moe_distinct(const int32_t* chosen, size_t picks, size_t experts, int32_t* seen,
                    int32_t* routed) {
  std::fill(seen, seen + experts, 0);
  for (size_t i = 0; i < picks; ++i) seen[chosen[i]] = 1;
  size_t n = 0;
  for (size_t e = 0; e < experts; ++e) {
    if (seen[e]) routed[n++] = static_cast<int32_t>(e);
  }
  return n;
}

// Orders experts[0, n) by likelihood, most likely first (ties to the lower index), likelihood
// alongside; n is at most the op's experts: an insertion sort, allocating nothing.
void most_likely_first(int32_t* experts, float* likelihood, size_t n) {
  for (size_t i = 1; i < n; ++i) {
    const int32_t e = experts[i];
    const float p = likelihood[i];
    size_t j = i;
    for (; j > 0 && (likelihood[j - 1] < p || (likelihood[j - 1] == p && experts[j - 1] > e));
         --j) {
      experts[j] = experts[j - 1];
      likelihood[j] = likelihood[j - 1];
    }
    experts[j] = e;
    likelihood[j] = p;
  }
}

}  // namespace

size_t moe_workspace(const Backend& backend, const MoeShape& shape, size_t rows) {
  return moe_layout(backend, shape, rows).total;
}

void moe_route(float* logits, size_t rows, const MoeShape& s, int32_t* chosen, float* weights) {
  const size_t n = s.experts;
  const size_t k = s.top_k;
  for (size_t r = 0; r < rows; ++r) {
    float* p = logits + r * n;
    const float top = *std::max_element(p, p + n);
    float sum = 0.0f;
    for (size_t e = 0; e < n; ++e) sum += (p[e] = std::exp(p[e] - top));
    for (size_t e = 0; e < n; ++e) p[e] /= sum;
    int32_t* c = chosen + r * k;
    float* w = weights + r * k;
    float picked = 0.0f;
    // k is small (2 to 8): k passes over the row, each taking the largest not yet taken.
    for (size_t j = 0; j < k; ++j) {
      int32_t best = -1;
      for (size_t e = 0; e < n; ++e) {
        if (std::find(c, c + j, static_cast<int32_t>(e)) != c + j) continue;
        if (best < 0 || p[e] > p[best]) best = static_cast<int32_t>(e);
      }
      c[j] = best;
      picked += (w[j] = p[best]);
    }
    if (s.norm_topk) {
      for (size_t j = 0; j < k; ++j) w[j] /= picked;
    }
  }
}

bool moe_predicts(const MoeShape& shape, const MoeShape& next) {
  return shape.hidden == next.hidden && shape.experts == next.experts &&
         shape.top_k == next.top_k && shape.router_dtype == next.router_dtype;
}

void moe_run(Backend& backend, ExpertProvider& experts, int moe, const MoeShape& s,
             const MoeShape* next, const void* router, const float* x, size_t rows, float* out,
             void* workspace) {
  const MoeLayout l = moe_layout(backend, s, rows);
  float* logits = at<float>(workspace, l.logits);
  int32_t* chosen = at<int32_t>(workspace, l.chosen);
  float* weights = at<float>(workspace, l.weights);
  void* linear_ws = at<void>(workspace, l.linear);
  backend.linear(x, router, nullptr, logits, {rows, s.experts, s.hidden, s.router_dtype},
                 linear_ws);
  moe_route(logits, rows, s, chosen, weights);

  // Group the (token, weight) picks by expert: a counting sort, tokens ascending per expert.
  int32_t* starts = at<int32_t>(workspace, l.starts);
  int32_t* order_rows = at<int32_t>(workspace, l.order_rows);
  float* order_weights = at<float>(workspace, l.order_weights);
  int32_t* routed = at<int32_t>(workspace, l.routed);
  int32_t* routed_rows = at<int32_t>(workspace, l.routed_rows);
  const size_t picks = rows * s.top_k;
  std::fill(starts, starts + s.experts + 1, 0);
  for (size_t i = 0; i < picks; ++i) ++starts[chosen[i] + 1];
  size_t n_routed = 0;
  for (size_t e = 0; e < s.experts; ++e) {
    if (starts[e + 1] > 0) {
      routed_rows[n_routed] = starts[e + 1];
      routed[n_routed++] = static_cast<int32_t>(e);
    }
    starts[e + 1] += starts[e];
  }
  for (size_t i = 0; i < picks; ++i) {  // starts[e] walks to the end of e's range
    const int32_t slot = starts[chosen[i]]++;
    order_rows[slot] = static_cast<int32_t>(i / s.top_k);
    order_weights[slot] = weights[i];
  }
  for (size_t e = s.experts; e > 0; --e) starts[e] = starts[e - 1];  // back to the starts
  starts[0] = 0;

  experts.route(moe, {routed, n_routed}, {routed_rows, n_routed}, rows);
  // The next layer's experts, predicted from this layer's input through its router (the
  // residual stream changes slowly), read while this layer's experts compute. The routing
  // buffers are free again: the picks live in order_rows / order_weights now.
  const void* next_router = next != nullptr ? experts.next_router(moe + 1) : nullptr;
  if (next_router != nullptr && moe_predicts(s, *next)) {
    backend.linear(x, next_router, nullptr, logits, {rows, s.experts, s.hidden, s.router_dtype},
                   linear_ws);
    moe_route(logits, rows, *next, chosen, weights);  // logits: the probabilities now
    int32_t* predicted = order_rows + picks;          // see moe_layout: room for `experts` more
    const size_t n = moe_distinct(chosen, picks, s.experts, starts + s.experts + 1, predicted);
    float* likelihood = weights;  // n <= picks: the predicted weights are not needed
    const float share = static_cast<float>(next->top_k) / static_cast<float>(next->experts);
    for (size_t i = 0; i < n; ++i) {
      float p = 0.0f;
      for (size_t r = 0; r < rows; ++r) p = std::max(p, logits[r * s.experts + predicted[i]]);
      likelihood[i] = p / share;
    }
    most_likely_first(predicted, likelihood, n);
    experts.prefetch(moe + 1, {predicted, n}, {likelihood, n});
  }
  // The experts whose bytes are ready first (hits, and misses as their reads land), then the
  // one whose read went out first (ties in expert order). Each writes its picks' rows of
  // `down`; out sums them in expert order afterwards, as one pass in expert order would.
  float* xs = at<float>(workspace, l.xs);
  float* gate = at<float>(workspace, l.gate);
  float* up = at<float>(workspace, l.up);
  float* down = at<float>(workspace, l.down);
  int32_t* done = at<int32_t>(workspace, l.done);
  std::fill(done, done + n_routed, 0);
  for (size_t left = n_routed; left > 0; --left) {
    size_t i = n_routed;
    uint64_t soonest = ExpertProvider::kExpertUnread;
    for (size_t j = 0; j < n_routed; ++j) {
      if (done[j]) continue;
      const uint64_t at = experts.landing(moe, routed[j]);
      if (i == n_routed || at < soonest) i = j, soonest = at;
      if (at == ExpertProvider::kExpertReady) break;
    }
    done[i] = 1;
    const int32_t e = routed[i];
    const size_t first = static_cast<size_t>(starts[e]);
    const size_t m = static_cast<size_t>(starts[e + 1]) - first;
    for (size_t j = 0; j < m; ++j) {
      const size_t row = static_cast<size_t>(order_rows[first + j]);
      std::memcpy(xs + j * s.hidden, x + row * s.hidden, s.hidden * sizeof(float));
    }
    const ExpertWeights w = experts.expert(moe, e);
    backend.linear(xs, w.part[0], nullptr, gate, {m, s.inner, s.hidden, s.part_dtype[0]},
                   linear_ws);
    backend.linear(xs, w.part[1], nullptr, up, {m, s.inner, s.hidden, s.part_dtype[1]}, linear_ws);
    backend.silu_mul(gate, up, gate, m * s.inner);
    backend.linear(gate, w.part[2], nullptr, down + first * s.hidden,
                   {m, s.hidden, s.inner, s.part_dtype[2]}, linear_ws);
    experts.release(moe, e);
  }
  std::memset(out, 0, rows * s.hidden * sizeof(float));
  for (size_t i = 0; i < n_routed; ++i) {
    const int32_t e = routed[i];
    for (size_t p = static_cast<size_t>(starts[e]); p < static_cast<size_t>(starts[e + 1]); ++p) {
      const float wp = order_weights[p];
      float* o = out + static_cast<size_t>(order_rows[p]) * s.hidden;
      const float* d = down + p * s.hidden;
      for (size_t c = 0; c < s.hidden; ++c) o[c] += wp * d[c];
    }
  }
}

size_t sigmoid_gate_workspace(const Backend& backend, size_t x_width, DType dtype, size_t rows) {
  return aligned(rows * sizeof(float)) + backend.linear_workspace({rows, 1, x_width, dtype});
}

void sigmoid_gate_run(Backend& backend, const float* x, size_t x_width, const void* w, DType dtype,
                      const float* y, float* out, size_t rows, size_t width, void* workspace) {
  float* gates = static_cast<float*>(workspace);
  backend.linear(x, w, nullptr, gates, {rows, 1, x_width, dtype},
                 at<void>(workspace, aligned(rows * sizeof(float))));
  for (size_t r = 0; r < rows; ++r) {
    const float g = 1.0f / (1.0f + std::exp(-gates[r]));
    for (size_t c = 0; c < width; ++c) out[r * width + c] = g * y[r * width + c];
  }
}

}  // namespace tierlm::detail
