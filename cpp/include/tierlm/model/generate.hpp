// Token generation on a Model: prefill the prompt, then decode one token at a time with
// greedy or sampled choice (repetition penalty, temperature, top-k, top-p, seeded), stopping at
// eos, at max_new_tokens or when the context is full. The per-token path allocates nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "tierlm/core/export.hpp"
#include "tierlm/model/model.hpp"

namespace tierlm {

struct TIERLM_API GenerateOptions {
  int64_t max_new_tokens = 32;
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int64_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
  bool stop_at_eos = true;  // stop after emitting one of config.eos_token_ids
  // Tokens among the last repetition_last_n of the sequence (prompt, then generated; 0: all of
  // it) have their logit divided by repetition_penalty when positive and multiplied by it when
  // not, once per distinct token (transformers' repetition_penalty, llama.cpp's repeat_penalty
  // and repeat_last_n). 1: off.
  float repetition_penalty = 1.0f;
  int64_t repetition_last_n = 64;
};

enum class FinishReason { kFinishNone, kFinishLength, kFinishEos, kFinishContext, kFinishStopped };
TIERLM_API const char* finish_reason_name(FinishReason reason);

struct TIERLM_API GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  int64_t decode_steps = 0;  // forward passes of one token
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  double prefill_tokens_per_s = 0.0;
  double decode_tokens_per_s = 0.0;
};

struct TIERLM_API GenerateResult {
  std::vector<int32_t> output_ids;  // new tokens only
  FinishReason finish_reason = FinishReason::kFinishNone;
  GenerateStats stats;
};

// Called with each new token as soon as it is chosen; return false to stop.
using TokenCallback = std::function<bool(int32_t token)>;

// The sequence before the token being chosen, which the repetition penalty looks at.
struct TIERLM_API TokenHistory {
  std::span<const int32_t> prompt;
  std::span<const int32_t> generated;
};

// Picks a token from logits; scratch holds vocab entries and is reused (no allocation).
struct TIERLM_API SamplerScratch {
  explicit SamplerScratch(int64_t vocab);
  std::vector<int32_t> order;
  std::vector<float> probs;
  std::vector<float> penalized;  // the logits after the repetition penalty
  std::vector<uint8_t> seen;     // tokens already penalized in this step
};
TIERLM_API int32_t sample_token(const float* logits, int64_t vocab, const GenerateOptions& options,
                                const TokenHistory& history, std::mt19937_64& rng,
                                SamplerScratch& scratch);

// Step-wise generation (what streaming APIs iterate). Owns the model's KV cache while it
// runs: starting another generation or calling logits() on the model ends this one.
class TIERLM_API Generator {
 public:
  // Validates the prompt and options; the prefill runs on the first next().
  Generator(Model& model, std::span<const int32_t> prompt, const GenerateOptions& options);
  // The next token, or -1 once finished (finish_reason() says why).
  int32_t next();
  // Stops early (finish reason kFinishStopped).
  void stop();
  bool done() const { return finish_ != FinishReason::kFinishNone; }
  FinishReason finish_reason() const { return finish_; }
  const std::vector<int32_t>& output_ids() const { return output_; }
  GenerateStats stats() const;

 private:
  Model* model_;
  std::vector<int32_t> prompt_;
  GenerateOptions options_;
  std::vector<int32_t> output_;
  SamplerScratch scratch_{0};
  std::mt19937_64 rng_;
  FinishReason finish_ = FinishReason::kFinishNone;
  uint64_t sequence_id_ = 0;
  bool started_ = false;
  GenerateStats stats_;
};

TIERLM_API GenerateResult generate(Model& model, std::span<const int32_t> prompt,
                                   const GenerateOptions& options = {},
                                   const TokenCallback& on_token = {});

// Generates for several prompts at once (at most model.max_batch()): each prompt is
// prefilled into its own KV slot, then every decode step runs the unfinished sequences
// together (forward_batch). Sequence i samples with seed options.seed + i, so its tokens
// equal generate(prompts[i]) with that seed (up to float rounding of batched products).
TIERLM_API std::vector<GenerateResult> generate_batch(
    Model& model, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& options = {});

}  // namespace tierlm
