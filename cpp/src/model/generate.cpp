// Generation loop and sampling. Scratch for sampling is sized to the vocabulary when a
// Generator starts, so choosing a token allocates nothing.
#include "tierlm/model/generate.hpp"

#include <algorithm>
#include <cmath>

#include "core/clock.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/limits.hpp"

namespace tierlm {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kFinishNone:
      return "none";
    case FinishReason::kFinishLength:
      return "length";
    case FinishReason::kFinishEos:
      return "eos";
    case FinishReason::kFinishContext:
      return "context";
    case FinishReason::kFinishStopped:
      return "stopped";
  }
  return "unknown";
}

SamplerScratch::SamplerScratch(int64_t vocab)
    : order(static_cast<size_t>(vocab)),
      probs(static_cast<size_t>(vocab)),
      penalized(static_cast<size_t>(vocab)),
      seen(static_cast<size_t>(vocab)) {}

namespace {

// Calls fn on each token of the last n of the history (n = 0: all of it), oldest first.
template <typename Fn>
void for_each_recent(const TokenHistory& history, int64_t n, Fn fn) {
  const size_t generated = history.generated.size();
  const size_t total = history.prompt.size() + generated;
  const size_t count = n == 0 ? total : std::min(total, static_cast<size_t>(n));
  for (size_t i = total - count; i < total; ++i) {
    fn(i < history.prompt.size() ? history.prompt[i]
                                 : history.generated[i - history.prompt.size()]);
  }
}

// The logits with the repetition penalty applied to the recent tokens, in scratch.penalized.
const float* penalize_repetition(const float* logits, int64_t vocab, const GenerateOptions& options,
                                 const TokenHistory& history, SamplerScratch& scratch) {
  float* out = scratch.penalized.data();
  std::copy(logits, logits + vocab, out);
  const float penalty = options.repetition_penalty;
  for_each_recent(history, options.repetition_last_n, [&](int32_t token) {
    if (scratch.seen[token]) return;
    scratch.seen[token] = 1;
    out[token] = out[token] > 0.0f ? out[token] / penalty : out[token] * penalty;
  });
  for_each_recent(history, options.repetition_last_n,
                  [&](int32_t token) { scratch.seen[token] = 0; });
  return out;
}

}  // namespace

int32_t sample_token(const float* logits, int64_t vocab, const GenerateOptions& options,
                     const TokenHistory& history, std::mt19937_64& rng, SamplerScratch& scratch) {
  if (options.repetition_penalty != 1.0f) {
    logits = penalize_repetition(logits, vocab, options, history, scratch);
  }
  if (options.temperature <= 0.0f) {
    // Greedy: first maximum, as torch.argmax.
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return static_cast<int32_t>(best);
  }
  int32_t* order = scratch.order.data();
  float* probs = scratch.probs.data();
  for (int64_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
  auto by_logit = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int64_t n = vocab;
  if (options.top_k > 0 && options.top_k < vocab) {
    std::nth_element(order, order + options.top_k - 1, order + vocab, by_logit);
    n = options.top_k;
  }
  const bool nucleus = options.top_p > 0.0f && options.top_p < 1.0f;
  if (nucleus) std::sort(order, order + n, by_logit);
  float max_logit = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max_logit = std::max(max_logit, logits[order[i]]);
  const float inv_t = 1.0f / options.temperature;
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    probs[i] = std::exp((logits[order[i]] - max_logit) * inv_t);
    total += probs[i];
  }
  if (nucleus) {
    // Keep the smallest prefix whose probability reaches top_p (at least one token).
    double cumulative = 0.0;
    int64_t keep = 0;
    while (keep < n) {
      cumulative += probs[keep] / total;
      ++keep;
      if (cumulative >= options.top_p) break;
    }
    n = keep;
    total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += probs[i];
  }
  const double r = std::uniform_real_distribution<double>(0.0, total)(rng);
  double cumulative = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cumulative += probs[i];
    if (r < cumulative) return order[i];
  }
  return order[n - 1];
}

Generator::Generator(Model& model, std::span<const int32_t> prompt, const GenerateOptions& options)
    : model_(&model), prompt_(prompt.begin(), prompt.end()), options_(options), rng_(options.seed) {
  TIERLM_CHECK(!prompt_.empty(), kErrorInvalidArgument,
               "empty prompt: give at least one token (a text prompt that tokenizes to nothing?)");
  check_option("max_new_tokens", options.max_new_tokens);
  check_option("top_k", options.top_k);
  TIERLM_CHECK(std::isfinite(options.temperature) && options.temperature >= 0.0f,
               kErrorInvalidArgument, "temperature ", options.temperature,
               " must be >= 0 (0 = greedy)");
  TIERLM_CHECK(options.top_p > 0.0f && options.top_p <= 1.0f, kErrorInvalidArgument, "top_p ",
               options.top_p, " must be in (0, 1]");
  TIERLM_CHECK(std::isfinite(options.repetition_penalty) && options.repetition_penalty > 0.0f,
               kErrorInvalidArgument, "repetition_penalty ", options.repetition_penalty,
               " must be > 0 (1 = off; above 1 makes repeats less likely)");
  check_option("repetition_last_n", options.repetition_last_n);
  const int64_t context = model.context_length();
  TIERLM_CHECK(static_cast<int64_t>(prompt_.size()) <= context, kErrorInvalidArgument,
               "the prompt has ", prompt_.size(), " tokens but the model's context is ", context,
               " tokens (max_positions ", model.config().max_positions, "); shorten the prompt");
  const int64_t vocab = model.vocab_size();
  for (size_t i = 0; i < prompt_.size(); ++i) {
    TIERLM_CHECK(prompt_[i] >= 0 && prompt_[i] < vocab, kErrorInvalidArgument, "token id ",
                 prompt_[i], " at index ", i, " is outside the vocabulary (0..", vocab - 1, ")");
  }
  output_.reserve(static_cast<size_t>(std::min<int64_t>(options.max_new_tokens, context)));
  scratch_ = SamplerScratch(vocab);
  stats_.prompt_tokens = static_cast<int64_t>(prompt_.size());
  if (options.max_new_tokens == 0) finish_ = FinishReason::kFinishLength;
}

int32_t Generator::next() {
  if (done()) return -1;
  const float* logits = nullptr;
  if (!started_) {
    const auto t0 = detail::Clock::now();
    logits = model_->forward(prompt_, true);
    sequence_id_ = model_->sequence_id();
    stats_.prefill_seconds = detail::seconds_since(t0);
    model_->record_timing(prompt_.size(), stats_.prefill_seconds, 0, 0.0);
    started_ = true;
  } else {
    TIERLM_CHECK(model_->sequence_id() == sequence_id_, kErrorInvalidArgument,
                 "this generation was interrupted: another generate/logits call reused the "
                 "model's KV cache; start a new generation");
    const int32_t last = output_.back();
    const auto t0 = detail::Clock::now();
    logits = model_->forward(std::span<const int32_t>(&last, 1));
    const double seconds = detail::seconds_since(t0);
    stats_.decode_seconds += seconds;
    ++stats_.decode_steps;
    model_->record_timing(0, 0.0, 1, seconds);
  }
  const int32_t token =
      sample_token(logits, model_->vocab_size(), options_, {prompt_, output_}, rng_, scratch_);
  output_.push_back(token);
  ++stats_.new_tokens;
  if (options_.stop_at_eos) {
    for (int64_t eos : model_->config().eos_token_ids) {
      if (token == eos) finish_ = FinishReason::kFinishEos;
    }
  }
  if (!done() && static_cast<int64_t>(output_.size()) >= options_.max_new_tokens) {
    finish_ = FinishReason::kFinishLength;
  }
  // A full cache has no room for this token's keys: it is the last (known now, so that a
  // stream can flush its text with it).
  if (!done() && model_->position() >= model_->context_length()) {
    finish_ = FinishReason::kFinishContext;
  }
  return token;
}

void Generator::stop() {
  if (!done()) finish_ = FinishReason::kFinishStopped;
}

GenerateStats Generator::stats() const {
  GenerateStats s = stats_;
  if (s.prefill_seconds > 0) s.prefill_tokens_per_s = s.prompt_tokens / s.prefill_seconds;
  if (s.decode_seconds > 0) s.decode_tokens_per_s = s.decode_steps / s.decode_seconds;
  return s;
}

GenerateResult generate(Model& model, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const TokenCallback& on_token) {
  Generator generator(model, prompt, options);
  while (!generator.done()) {
    const int32_t token = generator.next();
    if (token < 0) break;
    if (on_token && !on_token(token)) generator.stop();
  }
  GenerateResult result;
  result.output_ids = generator.output_ids();
  result.finish_reason = generator.finish_reason();
  result.stats = generator.stats();
  return result;
}

std::vector<GenerateResult> generate_batch(Model& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& options) {
  const int64_t batch = static_cast<int64_t>(prompts.size());
  TIERLM_CHECK(batch > 0, kErrorInvalidArgument, "generate_batch: no prompts");
  TIERLM_CHECK(batch <= model.max_batch(), kErrorInvalidArgument, "generate_batch: ", batch,
               " prompts but the model was loaded with max_batch ", model.max_batch(),
               "; load it with max_batch >= ", batch);
  // Validates each prompt and options the way a single generation does.
  for (const auto& prompt : prompts) Generator(model, prompt, options);

  const int64_t vocab = model.vocab_size();
  const int64_t context = model.context_length();
  std::vector<GenerateResult> results(static_cast<size_t>(batch));
  std::vector<std::mt19937_64> rngs;
  SamplerScratch scratch(vocab);
  std::vector<int32_t> slots, tokens;
  slots.reserve(static_cast<size_t>(batch));
  tokens.reserve(static_cast<size_t>(batch));
  const auto& eos = model.config().eos_token_ids;

  // Appends a token; returns true while the sequence goes on.
  auto emit = [&](int32_t slot, int32_t token) {
    GenerateResult& r = results[slot];
    r.output_ids.push_back(token);
    ++r.stats.new_tokens;
    if (options.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
      r.finish_reason = FinishReason::kFinishEos;
    } else if (static_cast<int64_t>(r.output_ids.size()) >= options.max_new_tokens) {
      r.finish_reason = FinishReason::kFinishLength;
    }
    return r.finish_reason == FinishReason::kFinishNone;
  };

  double prefill_seconds = 0.0;
  for (int32_t b = 0; b < batch; ++b) {
    rngs.emplace_back(options.seed + static_cast<uint64_t>(b));
    GenerateResult& r = results[b];
    r.output_ids.reserve(static_cast<size_t>(std::min(options.max_new_tokens, context)));
    r.stats.prompt_tokens = static_cast<int64_t>(prompts[b].size());
    if (options.max_new_tokens == 0) {
      r.finish_reason = FinishReason::kFinishLength;
      continue;
    }
    // The longest prefix shared with an earlier prompt (prefilled above; leaving this one a
    // token to run) is not computed again: this slot takes that sequence's cache blocks for it.
    const std::vector<int32_t>& prompt = prompts[b];
    size_t shared = 0;
    int32_t from = -1;
    for (int32_t a = 0; a < b; ++a) {
      const std::vector<int32_t>& other = prompts[a];
      const size_t limit = std::min(other.size(), prompt.size() - 1);
      size_t same = 0;
      while (same < limit && other[same] == prompt[same]) ++same;
      if (same > shared) {
        shared = same;
        from = a;
      }
    }
    const auto t0 = detail::Clock::now();
    if (from >= 0) model.share_slot(from, b, static_cast<int64_t>(shared));
    const float* logits =
        model.forward_slot(b, std::span<const int32_t>(prompt).subspan(shared), from < 0);
    r.stats.prefill_seconds = detail::seconds_since(t0);
    prefill_seconds += r.stats.prefill_seconds;
    if (emit(b, sample_token(logits, vocab, options, {prompt, r.output_ids}, rngs[b], scratch))) {
      slots.push_back(b);
    }
  }
  int64_t prompt_tokens = 0;
  for (const auto& prompt : prompts) prompt_tokens += static_cast<int64_t>(prompt.size());
  model.record_timing(static_cast<uint64_t>(prompt_tokens), prefill_seconds, 0, 0.0);

  double decode_seconds = 0.0;
  int64_t decode_tokens = 0;
  while (!slots.empty()) {
    // Sequences whose cache is full stop here.
    size_t kept = 0;
    for (int32_t s : slots) {
      if (model.position(s) >= context) {
        results[s].finish_reason = FinishReason::kFinishContext;
      } else {
        slots[kept++] = s;
      }
    }
    slots.resize(kept);
    if (slots.empty()) break;
    tokens.clear();
    for (int32_t s : slots) tokens.push_back(results[s].output_ids.back());
    const auto t0 = detail::Clock::now();
    const float* logits = model.forward_batch(tokens, slots);
    kept = 0;
    for (size_t i = 0; i < slots.size(); ++i) {
      const int32_t s = slots[i];
      ++results[s].stats.decode_steps;
      const TokenHistory history{prompts[s], results[s].output_ids};
      if (emit(s, sample_token(logits + i * vocab, vocab, options, history, rngs[s], scratch))) {
        slots[kept++] = s;
      }
    }
    const double seconds = detail::seconds_since(t0);
    decode_seconds += seconds;
    decode_tokens += static_cast<int64_t>(tokens.size());
    for (int32_t s : slots) results[s].stats.decode_seconds += seconds;
    slots.resize(kept);
  }
  model.record_timing(0, 0.0, static_cast<uint64_t>(decode_tokens), decode_seconds);
  for (GenerateResult& r : results) {
    GenerateStats& st = r.stats;
    if (st.prefill_seconds > 0) st.prefill_tokens_per_s = st.prompt_tokens / st.prefill_seconds;
    // Throughput of the whole batch: tokens of every sequence per second of decode.
    if (decode_seconds > 0) st.decode_tokens_per_s = decode_tokens / decode_seconds;
  }
  return results;
}

}  // namespace tierlm
