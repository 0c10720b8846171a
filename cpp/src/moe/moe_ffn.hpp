// The routed-experts FFN of a moe graph op: router logits, softmax, top-k (renormalised or not),
// then the tokens grouped by expert so that each routed expert's three matrices are fetched
// once and multiplied once per step for all its tokens, the outputs summed with the routing
// weights. Experts come from an ExpertProvider (the weight store, or the tiered expert store).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/backend.hpp"
#include "tierlm/core/dtype.hpp"

namespace tierlm::detail {

struct MoeShape {
  size_t hidden = 0;
  size_t inner = 0;  // an expert's intermediate width
  size_t experts = 0;
  size_t top_k = 0;
  bool norm_topk = false;
  DType router_dtype = DType::kDTypeF32;
  DType part_dtype[3] = {DType::kDTypeF32, DType::kDTypeF32, DType::kDTypeF32};  // gate up down
};

// One expert's matrices: gate and up [inner, hidden], down [hidden, inner].
struct ExpertWeights {
  const void* part[3] = {nullptr, nullptr, nullptr};
};

// Where a moe op's experts come from. `moe` numbers the graph's moe ops from 0.
class ExpertProvider {
 public:
  virtual ~ExpertProvider() = default;
  // The experts a step routes to (ascending, each once), before any expert() of the step:
  // a store issues their reads together. rows[i]: how many of the step's `tokens` rows chose
  // experts[i]. Allocates nothing beyond I/O futures.
  virtual void route(int moe, std::span<const int32_t> experts, std::span<const int32_t> rows,
                     size_t tokens) = 0;
  // The router of moe op `moe` for predicting its experts a layer ahead, nullptr for none (no
  // prefetch).
  virtual const void* next_router(int moe) const = 0;
  // The experts moe op `moe` will likely route to (predicted from the previous moe layer's
  // input), most likely first: likelihood[i] is experts[i]'s largest routing probability over
  // the step's rows in even shares (top_k / experts: 1 is what each expert gets when routing
  // is uniform). A store reads the missing likely ones now, while the previous layer computes.
  virtual void prefetch(int moe, std::span<const int32_t> experts,
                        std::span<const float> likelihood) = 0;
  // When expert(moe, e) of the routed step can be had: kExpertReady when its bytes are in
  // memory, else a number that grows with the time its read was submitted (kExpertUnread: not
  // yet). The op multiplies the experts that will be ready first first, while the others are
  // still reading; only the order depends on it (expert() waits for the bytes regardless).
  virtual uint64_t landing(int moe, int32_t e) = 0;
  static constexpr uint64_t kExpertReady = 0;
  static constexpr uint64_t kExpertUnread = UINT64_MAX;
  // Expert e's bytes, valid until release(moe, e).
  virtual ExpertWeights expert(int moe, int32_t e) = 0;
  virtual void release(int moe, int32_t e) = 0;
};

// Workspace bytes of a moe op for steps of at most `rows` tokens.
size_t moe_workspace(const Backend& backend, const MoeShape& shape, size_t rows);

// out[rows, hidden] = the op on x[rows, hidden] (out must not alias x). router: [experts,
// hidden] in shape.router_dtype. When `next` (the next moe op's shape) is given and its
// router is available, the next op's experts are predicted by applying its router to x and
// prefetched before this op's experts are multiplied. The routed experts are multiplied as
// they become ready (ExpertProvider::landing), the outputs summed in expert order afterwards,
// so the result does not depend on the order the reads land in. Allocates nothing.
void moe_run(Backend& backend, ExpertProvider& experts, int moe, const MoeShape& shape,
             const MoeShape* next, const void* router, const float* x, size_t rows, float* out,
             void* workspace);

// Whether moe_run can predict `next` from an op of `shape` (same width, experts and top_k:
// the prediction reuses the op's routing buffers).
bool moe_predicts(const MoeShape& shape, const MoeShape& next);

// The selection part of moe_run, for rows of router logits (overwritten by probabilities):
// the top_k experts of each row (by probability, ties to the lower index) and their weights.
void moe_route(float* logits, size_t rows, const MoeShape& shape, int32_t* chosen, float* weights);

// Workspace bytes of a sigmoid_gate op for `rows` tokens whose gate input is x_width wide.
size_t sigmoid_gate_workspace(const Backend& backend, size_t x_width, DType dtype, size_t rows);
// out[r] = sigmoid(x[r] . w) * y[r] for rows of x [rows, x_width]; out may alias y.
void sigmoid_gate_run(Backend& backend, const float* x, size_t x_width, const void* w, DType dtype,
                      const float* y, float* out, size_t rows, size_t width, void* workspace);

}  // namespace tierlm::detail
