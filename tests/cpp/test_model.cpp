// The executor on a tiny package: decode allocates nothing, chunked prefill equals one batch,
// incremental decode equals recomputing from scratch, context and prompt errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "count_allocations.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/model/generate.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/planner/planner.hpp"
#include "tiny_package.hpp"

namespace tierlm {
namespace {

using testing::TempDir;
using testing::TinySpec;
using testing::write_tiny_package;

ModelOptions small_budget() {
  ModelOptions o;
  o.host_budget = 64 << 20;
  return o;
}

TEST(Model, DecodeMakesNoHeapAllocation) {
  TempDir dir;
  Model model = Model::load(write_tiny_package(dir.path()), small_budget());
  const std::vector<int32_t> prompt = {5, 9, 13, 4, 30};
  GenerateOptions options;
  options.max_new_tokens = 40;
  options.stop_at_eos = false;
  for (float temperature : {0.0f, 0.8f}) {
    options.temperature = temperature;
    options.top_k = temperature > 0 ? 7 : 0;
    options.top_p = temperature > 0 ? 0.9f : 1.0f;
    std::vector<long> at_token;
    at_token.reserve(64);
    const uint64_t host_allocations_before = model.stats().host.allocations;
    GenerateResult result = generate(model, prompt, options, [&](int32_t) {
      at_token.push_back(g_allocations.load());
      g_counting = true;  // from the first token on: every later token is a decode step
      return true;
    });
    g_counting = false;
    ASSERT_EQ(at_token.size(), 40u);
    for (size_t i = 1; i < at_token.size(); ++i) {
      EXPECT_EQ(at_token[i], at_token[0]) << "decode steps 1.." << i << " allocated";
    }
    // The paged KV cache's blocks come from the chunks it reserved at load.
    EXPECT_EQ(model.stats().host.allocations, host_allocations_before);
    EXPECT_EQ(result.output_ids.size(), 40u);
    g_allocations = 0;
  }
}

TEST(Model, CountingHooksSeeAllocations) {
  // The check above must be able to fail: an allocation while counting is seen.
  g_allocations = 0;
  g_counting = true;
  // volatile: the compiler may otherwise drop an allocation whose pointer goes unused.
  std::vector<int>* volatile v = new std::vector<int>(100);
  void* volatile p = std::malloc(17);
  g_counting = false;
  std::free(p);
  delete v;
  EXPECT_GE(g_allocations.load(), 3);
  g_allocations = 0;
}

TEST(Model, IncrementalDecodeEqualsRecompute) {
  TempDir dir;
  Model model = Model::load(write_tiny_package(dir.path()), small_budget());
  std::vector<int32_t> ids = {3, 17, 8};
  model.reset();
  const float* logits = model.forward(ids);
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> incremental(logits, logits + model.vocab_size());
    Model fresh = Model::load(dir.path(), small_budget());
    const std::vector<float> full = fresh.logits(ids);
    for (int64_t v = 0; v < model.vocab_size(); ++v) {
      ASSERT_NEAR(incremental[v], full[v], 1e-5) << "step " << step << " logit " << v;
    }
    const int32_t next = static_cast<int32_t>((step * 7 + 11) % model.vocab_size());
    ids.push_back(next);
    logits = model.forward(std::span<const int32_t>(&next, 1));
  }
}

TEST(Model, ChunkedPrefillEqualsOneBatch) {
  TempDir dir;
  write_tiny_package(dir.path());
  std::vector<int32_t> ids;
  for (int i = 0; i < 41; ++i) ids.push_back((i * 13 + 5) % 37);
  Model whole = Model::load(dir.path(), small_budget());
  ModelOptions chunked_options = small_budget();
  chunked_options.prefill_chunk = 7;
  Model chunked = Model::load(dir.path(), chunked_options);
  EXPECT_EQ(chunked.prefill_chunk(), 7);
  const std::vector<float> a = whole.logits(ids);
  const std::vector<float> b = chunked.logits(ids);
  for (size_t v = 0; v < a.size(); ++v) EXPECT_NEAR(a[v], b[v], 1e-5);
}

TEST(Model, PromptErrorsAreClear) {
  TempDir dir;
  Model model = Model::load(write_tiny_package(dir.path()), small_budget());
  auto expect_invalid = [&](std::vector<int32_t> ids, const std::string& text) {
    try {
      generate(model, ids);
      FAIL() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kErrorInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_invalid({}, "empty prompt");
  expect_invalid(std::vector<int32_t>(65, 3), "65 tokens but the model's context is 64");
  expect_invalid({3, 37}, "outside the vocabulary");
  expect_invalid({-1}, "outside the vocabulary");
  // A prompt that fills the context exactly runs; generation then stops at the context.
  GenerateOptions options;
  options.stop_at_eos = false;
  options.max_new_tokens = 10;
  GenerateResult r = generate(model, std::vector<int32_t>(60, 3), options);
  EXPECT_EQ(r.finish_reason, FinishReason::kFinishContext);
  EXPECT_EQ(r.output_ids.size(), 5u);
}

TEST(Model, BudgetTooSmallNamesTheParts) {
  TempDir dir;
  write_tiny_package(dir.path());
  ModelOptions options;
  options.host_budget = 100000;
  try {
    Model::load(dir.path(), options);
    FAIL() << "loaded within 100000 bytes";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
    const std::string what = e.what();
    for (const char* part : {"host tier", "weights", "KV cache", "activations", "budget"}) {
      EXPECT_NE(what.find(part), std::string::npos) << what;
    }
  }
  // The budget is a promise: the peak never passes it.
  options.host_budget = 2 << 20;
  options.max_context = 16;
  Model model = Model::load(dir.path(), options);
  GenerateOptions g;
  g.max_new_tokens = 8;
  generate(model, std::vector<int32_t>{1, 2, 3}, g);
  EXPECT_LE(model.stats().host.peak, options.host_budget);
  EXPECT_EQ(model.context_length(), 16);
}

TEST(Model, MemoryPlanHasNoOverlapAndBeatsNoReuse) {
  TempDir dir;
  Model model = Model::load(write_tiny_package(dir.path()), small_budget());
  const MemoryPlan& plan = model.memory_plan();
  std::vector<PlanBuffer> spans;
  std::vector<uint64_t> offsets;
  for (const MemoryBuffer& b : plan.buffers) {
    spans.push_back(PlanBuffer{b.size, b.start, b.end, 0});
    offsets.push_back(b.offset);
  }
  EXPECT_NO_THROW(plan_check(spans, offsets));
  uint64_t total = 0;
  for (const MemoryBuffer& b : plan.buffers) total += b.size;
  EXPECT_LT(plan.peak, total);
  EXPECT_GE(plan.peak, plan.lower_bound);
  EXPECT_EQ(plan.source, "internal");
}

TEST(Model, BatchedDecodeEqualsSeparateSequences) {
  TempDir dir;
  write_tiny_package(dir.path());
  ModelOptions options = small_budget();
  options.max_batch = 3;
  Model batched = Model::load(dir.path(), options);
  Model single = Model::load(dir.path(), small_budget());
  const std::vector<std::vector<int32_t>> prompts = {{3, 9, 27}, {5, 10, 15, 20, 25}, {7}};
  for (int32_t b = 0; b < 3; ++b) batched.forward_slot(b, prompts[b], true);
  std::vector<int32_t> slots = {2, 0, 1};
  std::vector<int32_t> tokens = {11, 12, 13};
  for (int step = 0; step < 4; ++step) {
    g_allocations = 0;
    g_counting = true;
    const float* logits = batched.forward_batch(tokens, slots);
    g_counting = false;
    EXPECT_EQ(g_allocations.load(), 0) << "forward_batch allocated";
    for (size_t i = 0; i < slots.size(); ++i) {
      // The batch appended the same token to this slot at every step.
      std::vector<int32_t> history = prompts[slots[i]];
      for (int k = 0; k <= step; ++k) history.push_back(tokens[i]);
      const std::vector<float> ref = single.logits(history);
      for (int64_t v = 0; v < single.vocab_size(); ++v) {
        ASSERT_NEAR(logits[i * single.vocab_size() + v], ref[v], 1e-4)
            << "step " << step << " row " << i;
      }
    }
    for (size_t i = 0; i < slots.size(); ++i) {
      EXPECT_EQ(batched.position(slots[i]),
                static_cast<int64_t>(prompts[slots[i]].size()) + step + 1);
    }
  }
  EXPECT_THROW(batched.forward_batch(std::vector<int32_t>{1, 2}, std::vector<int32_t>{0, 0}),
               Error);
  EXPECT_THROW(batched.forward_batch(std::vector<int32_t>{1}, std::vector<int32_t>{3}), Error);
}

TEST(Model, GenerateBatchEqualsGenerate) {
  TempDir dir;
  write_tiny_package(dir.path());
  ModelOptions options = small_budget();
  options.max_batch = 4;
  Model batched = Model::load(dir.path(), options);
  Model single = Model::load(dir.path(), small_budget());
  const std::vector<std::vector<int32_t>> prompts = {{3, 9, 27}, {5, 10, 15, 20, 25}, {7}, {8, 1}};
  for (float temperature : {0.0f, 1.0f}) {
    GenerateOptions g;
    g.max_new_tokens = 9 + static_cast<int>(temperature);
    g.temperature = temperature;
    g.seed = 40;
    g.stop_at_eos = false;
    const std::vector<GenerateResult> results = generate_batch(batched, prompts, g);
    ASSERT_EQ(results.size(), prompts.size());
    for (size_t b = 0; b < prompts.size(); ++b) {
      GenerateOptions one = g;
      one.seed = g.seed + b;
      EXPECT_EQ(results[b].output_ids, generate(single, prompts[b], one).output_ids) << b;
      EXPECT_EQ(results[b].finish_reason, FinishReason::kFinishLength);
    }
  }
  GenerateOptions g;
  EXPECT_THROW(generate_batch(single, prompts, g), Error);  // max_batch 1
}

TEST(Sampler, GreedyTopKTopP) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
  SamplerScratch scratch(5);
  std::mt19937_64 rng(1);
  GenerateOptions o;
  const TokenHistory none;
  EXPECT_EQ(sample_token(logits.data(), 5, o, none, rng, scratch), 1);  // first maximum
  o.temperature = 1.0f;
  o.top_k = 3;
  std::vector<int> seen(5, 0);
  for (int i = 0; i < 2000; ++i) ++seen[sample_token(logits.data(), 5, o, none, rng, scratch)];
  EXPECT_EQ(seen[0] + seen[2], 0);
  EXPECT_GT(seen[4], 100);
  EXPECT_NEAR(static_cast<double>(seen[1]) / seen[3], 1.0, 0.2);
  o.top_k = 0;
  o.top_p = 0.5f;  // the two tokens at 2.0 hold ~0.58 of the mass
  std::fill(seen.begin(), seen.end(), 0);
  for (int i = 0; i < 2000; ++i) ++seen[sample_token(logits.data(), 5, o, none, rng, scratch)];
  EXPECT_EQ(seen[0] + seen[2] + seen[4], 0);
  EXPECT_GT(seen[1], 700);
  EXPECT_GT(seen[3], 700);
}

TEST(Sampler, RepetitionPenaltyLooksBackLastNTokensOnce) {
  // Positive logits are divided by the penalty, the others multiplied, once per distinct
  // token however often it occurs; only the last repetition_last_n tokens count, prompt first.
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.9f, 1.5f};
  SamplerScratch scratch(5);
  std::mt19937_64 rng(1);
  GenerateOptions o;
  o.repetition_penalty = 1.5f;
  o.repetition_last_n = 0;
  const std::vector<int32_t> prompt = {1, 2}, generated = {1, 1};
  EXPECT_EQ(sample_token(logits.data(), 5, o, {prompt, generated}, rng, scratch), 3);
  EXPECT_FLOAT_EQ(scratch.penalized[1], 2.0f / 1.5f);  // once, not three times
  EXPECT_FLOAT_EQ(scratch.penalized[2], -1.0f * 1.5f);
  EXPECT_FLOAT_EQ(scratch.penalized[3], 1.9f);
  // Token 3 is now seen too: 1.9 / 1.5 falls under 4's 1.5.
  const std::vector<int32_t> more = {1, 3};
  EXPECT_EQ(sample_token(logits.data(), 5, o, {prompt, more}, rng, scratch), 4);
  // Looking back one token sees only the 3.
  o.repetition_last_n = 1;
  EXPECT_EQ(sample_token(logits.data(), 5, o, {prompt, more}, rng, scratch), 1);
  EXPECT_FLOAT_EQ(scratch.penalized[2], -1.0f);
  // Two tokens back reaches into the prompt when little is generated.
  o.repetition_last_n = 2;
  const std::vector<int32_t> one = {3};
  sample_token(logits.data(), 5, o, {prompt, one}, rng, scratch);
  EXPECT_FLOAT_EQ(scratch.penalized[2], -1.5f);
  EXPECT_FLOAT_EQ(scratch.penalized[1], 2.0f);
  // The seen-flags are cleared after each step.
  EXPECT_TRUE(std::all_of(scratch.seen.begin(), scratch.seen.end(), [](uint8_t s) { return !s; }));
}

}  // namespace
}  // namespace tierlm
