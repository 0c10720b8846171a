// The C API: status codes and messages instead of exceptions, and the same tokens as C++.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "tierlm/core/parallel.hpp"
#include "tierlm/model/generate.hpp"
#include "tierlm/tierlm.h"
#include "tiny_package.hpp"

namespace tierlm {
namespace {

using testing::TempDir;
using testing::write_tiny_package;

TEST(CApi, GeneratesTheSameTokensAsCpp) {
  TempDir dir;
  write_tiny_package(dir.path());
  tierlm_model_options options;
  tierlm_model_options_init(&options);
  options.host_budget = 64 << 20;
  tierlm_model* model = nullptr;
  ASSERT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_OK)
      << tierlm_last_error();
  EXPECT_EQ(tierlm_model_vocab_size(model), 37);
  EXPECT_EQ(tierlm_model_context_length(model), 64);
  const int32_t prompt[] = {4, 8, 15, 16, 23};
  tierlm_generate_options gen;
  tierlm_generate_options_init(&gen);
  EXPECT_EQ(gen.max_new_tokens, 32);
  gen.max_new_tokens = 12;
  gen.stop_at_eos = 0;
  std::vector<int32_t> out(12, -1);
  std::vector<int32_t> streamed;
  size_t n = 0;
  auto callback = [](int32_t token, void* user) {
    static_cast<std::vector<int32_t>*>(user)->push_back(token);
    return 1;
  };
  ASSERT_EQ(
      tierlm_generate(model, prompt, 5, &gen, out.data(), out.size(), &n, callback, &streamed),
      TIERLM_OK);
  EXPECT_EQ(n, 12u);
  EXPECT_EQ(streamed, out);

  ModelOptions cpp_options;
  cpp_options.host_budget = 64 << 20;
  Model cpp = Model::load(dir.path(), cpp_options);
  GenerateOptions cpp_gen;
  cpp_gen.max_new_tokens = 12;
  cpp_gen.stop_at_eos = false;
  EXPECT_EQ(generate(cpp, std::vector<int32_t>(prompt, prompt + 5), cpp_gen).output_ids, out);

  std::vector<float> logits(37);
  ASSERT_EQ(tierlm_logits(model, prompt, 5, logits.data(), logits.size()), TIERLM_OK);
  EXPECT_EQ(logits, cpp.logits(std::vector<int32_t>(prompt, prompt + 5)));

  // A callback returning 0 stops the generation.
  streamed.clear();
  auto stop_after_3 = [](int32_t token, void* user) {
    auto* v = static_cast<std::vector<int32_t>*>(user);
    v->push_back(token);
    return v->size() < 3 ? 1 : 0;
  };
  ASSERT_EQ(
      tierlm_generate(model, prompt, 5, &gen, out.data(), out.size(), &n, stop_after_3, &streamed),
      TIERLM_OK);
  EXPECT_EQ(n, 3u);
  tierlm_model_destroy(model);
}

TEST(CApi, ErrorsBecomeStatusAndMessage) {
  tierlm_model* model = reinterpret_cast<tierlm_model*>(0x1);
  EXPECT_EQ(tierlm_model_create("/nonexistent/package", nullptr, &model), TIERLM_ERROR_NOT_FOUND);
  EXPECT_EQ(model, nullptr);
  EXPECT_NE(std::string(tierlm_last_error()).find("/nonexistent/package/manifest.json"),
            std::string::npos)
      << tierlm_last_error();
  EXPECT_EQ(tierlm_model_create(nullptr, nullptr, &model), TIERLM_ERROR_INVALID_ARGUMENT);

  TempDir dir;
  write_tiny_package(dir.path());
  tierlm_model_options options;
  tierlm_model_options_init(&options);
  options.host_budget = 4096;
  EXPECT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_ERROR_BUDGET);
  EXPECT_NE(std::string(tierlm_last_error()).find("host budget"), std::string::npos);

  ASSERT_EQ(tierlm_model_create(dir.path().c_str(), nullptr, &model), TIERLM_OK);
  size_t n = 99;
  EXPECT_EQ(tierlm_generate(model, nullptr, 0, nullptr, nullptr, 0, &n, nullptr, nullptr),
            TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(n, 0u);
  EXPECT_NE(std::string(tierlm_last_error()).find("empty prompt"), std::string::npos);
  std::vector<int32_t> long_prompt(65, 1);
  EXPECT_EQ(tierlm_generate(model, long_prompt.data(), long_prompt.size(), nullptr, nullptr, 0,
                            nullptr, nullptr, nullptr),
            TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tierlm_last_error()).find("context"), std::string::npos);
  // A buffer smaller than max_new_tokens would lose tokens: refused before any work.
  tierlm_generate_options small;
  tierlm_generate_options_init(&small);
  small.max_new_tokens = 8;
  std::vector<int32_t> few(5, -1);
  const int32_t three[] = {4, 8, 15};
  n = 99;
  EXPECT_EQ(tierlm_generate(model, three, 3, &small, few.data(), few.size(), &n, nullptr, nullptr),
            TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(n, 0u);
  EXPECT_NE(std::string(tierlm_last_error())
                .find("out_capacity (5) is smaller than "
                      "max_new_tokens (8)"),
            std::string::npos)
      << tierlm_last_error();
  EXPECT_EQ(few, std::vector<int32_t>(5, -1));
  EXPECT_STRNE(tierlm_version(), "");
  tierlm_model_destroy(model);
  tierlm_model_destroy(nullptr);
}

TEST(CApi, SparseOptionsReachTheExecutor) {
  TempDir dir;
  write_tiny_package(dir.path());  // no bundles, no predictors
  tierlm_model_options options;
  tierlm_model_options_init(&options);
  EXPECT_EQ(options.sparse, 0);
  EXPECT_EQ(options.sparse_window, 0);
  EXPECT_EQ(options.sparse_no_bundling, 0);
  EXPECT_EQ(options.sparse_capacity, 0);
  options.host_budget = 64 << 20;
  options.sparse = 1;
  tierlm_model* model = nullptr;
  EXPECT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_ERROR_NOT_FOUND);
  EXPECT_EQ(model, nullptr);
  EXPECT_NE(std::string(tierlm_last_error()).find("--sparse"), std::string::npos)
      << tierlm_last_error();
  options.sparse = 0;  // the same package loads dense
  ASSERT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_OK)
      << tierlm_last_error();
  tierlm_model_destroy(model);
}

TEST(CApi, KvDtypeReachesTheCache) {
  TempDir dir;
  write_tiny_package(dir.path());
  tierlm_model_options options;
  tierlm_model_options_init(&options);
  EXPECT_EQ(options.kv_dtype, nullptr);  // the default, f16
  tierlm_model* model = nullptr;
  options.kv_dtype = "q4_0";
  EXPECT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model),
            TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tierlm_last_error()).find("kv_dtype q4_0"), std::string::npos)
      << tierlm_last_error();
  // The same prompt's logits through an f32 and an int8 cache: close, and not identical.
  std::vector<float> logits[2];
  const char* types[2] = {"f32", "q8_0"};
  const int32_t prompt[] = {4, 8, 15, 16, 23, 35, 7};
  for (int i = 0; i < 2; ++i) {
    options.kv_dtype = types[i];
    ASSERT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_OK)
        << tierlm_last_error();
    logits[i].resize(static_cast<size_t>(tierlm_model_vocab_size(model)));
    ASSERT_EQ(tierlm_logits(model, prompt, 7, logits[i].data(), logits[i].size()), TIERLM_OK)
        << tierlm_last_error();
    tierlm_model_destroy(model);
  }
  float diff = 0.0f, scale = 0.0f;
  for (size_t i = 0; i < logits[0].size(); ++i) {
    diff = std::max(diff, std::fabs(logits[0][i] - logits[1][i]));
    scale = std::max(scale, std::fabs(logits[0][i]));
  }
  EXPECT_GT(diff, 0.0f);
  EXPECT_LT(diff, 0.05f * scale);
}

TEST(CApi, KvPolicyRunsPastTheContext) {
  TempDir dir;
  write_tiny_package(dir.path());  // max_positions 64
  tierlm_model_options options;
  tierlm_model_options_init(&options);
  EXPECT_EQ(options.kv_policy, nullptr);
  tierlm_model* model = nullptr;
  options.kv_policy = "window:4";
  EXPECT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model),
            TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tierlm_last_error()).find("kv_policy 'window:4'"), std::string::npos)
      << tierlm_last_error();
  const int32_t prompt[] = {4, 8, 15};
  tierlm_generate_options gen;
  tierlm_generate_options_init(&gen);
  gen.max_new_tokens = 100;  // past the 64-token context
  gen.stop_at_eos = 0;
  std::vector<int32_t> out(100);
  size_t n = 0;
  options.kv_policy = nullptr;
  ASSERT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_OK);
  ASSERT_EQ(tierlm_generate(model, prompt, 3, &gen, out.data(), out.size(), &n, nullptr, nullptr),
            TIERLM_OK);
  EXPECT_LT(n, 100u);  // stopped at the context
  tierlm_model_destroy(model);
  // Each policy within the tiny model's 64 positions.
  for (const char* policy : {"window:0+64", "sirllm:4+28+32@0.99", "h2o:4+28+32"}) {
    options.kv_policy = policy;
    ASSERT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model), TIERLM_OK)
        << policy << ": " << tierlm_last_error();
    ASSERT_EQ(tierlm_generate(model, prompt, 3, &gen, out.data(), out.size(), &n, nullptr, nullptr),
              TIERLM_OK)
        << tierlm_last_error();
    EXPECT_EQ(n, 100u) << policy;
    tierlm_model_destroy(model);
  }
  options.kv_policy = "h2o:4+28+32@0.5";
  EXPECT_EQ(tierlm_model_create(dir.path().c_str(), &options, &model),
            TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tierlm_last_error()).find("kv_policy 'h2o:4+28+32@0.5'"),
            std::string::npos);
}

// Each field of the C API's option structs changes what a call does or is refused with a
// message naming it. The sizes pin the structs: a new field fails here until it has a case.
static_assert(sizeof(tierlm_model_options) == 88, "a new tierlm_model_options field needs a case");
static_assert(sizeof(tierlm_generate_options) == 56,
              "a new tierlm_generate_options field needs a case");

struct CApiModel {
  tierlm_model* model = nullptr;
  tierlm_status status = TIERLM_OK;
  CApiModel(const std::string& path, const tierlm_model_options& options)
      : status(tierlm_model_create(path.c_str(), &options, &model)) {}
  ~CApiModel() { tierlm_model_destroy(model); }
};

void expect_refused(tierlm_status status, const std::string& message) {
  EXPECT_EQ(status, TIERLM_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tierlm_last_error()).find(message), std::string::npos)
      << tierlm_last_error();
}

TEST(CApi, EveryModelOptionActsOrIsRefused) {
  TempDir dir;
  write_tiny_package(dir.path());
  tierlm_model_options o;
  tierlm_model_options_init(&o);
  // host_budget: below the weights + KV cache it refuses with a budget error.
  o.host_budget = 4096;
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_ERROR_BUDGET);
  o.host_budget = 64 << 20;
  // threads: sizes the compute pool; past the range it is refused before any work.
  o.threads = 3;
  ASSERT_EQ(CApiModel(dir.path(), o).status, TIERLM_OK) << tierlm_last_error();
  EXPECT_EQ(parallel_threads(), 3u);
  o.threads = 1000000;
  expect_refused(CApiModel(dir.path(), o).status, "threads = 1000000 is out of range 0..1024");
  EXPECT_EQ(parallel_threads(), 3u);
  o.threads = 0;
  // max_context: the KV cache's tokens; negative is refused.
  o.max_context = 16;
  {
    CApiModel m(dir.path(), o);
    ASSERT_EQ(m.status, TIERLM_OK);
    EXPECT_EQ(tierlm_model_context_length(m.model), 16);
  }
  o.max_context = -1;
  expect_refused(CApiModel(dir.path(), o).status, "max_context = -1 is out of range");
  o.max_context = 0;
  // sparse and its settings: a package without bundles is refused only when sparse is asked
  // for; a window or capacity outside its range is refused whatever the package.
  o.sparse = 1;
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_ERROR_NOT_FOUND);
  o.sparse = 0;
  o.sparse_window = -2;
  expect_refused(CApiModel(dir.path(), o).status, "sparse_window = -2 is out of range 1..");
  o.sparse_window = 0;
  o.sparse_capacity = -1;
  expect_refused(CApiModel(dir.path(), o).status, "sparse_capacity = -1 is out of range");
  o.sparse_capacity = 0;
  // verify: a flipped byte in a tensor loads silently without it and is refused with it.
  {
    std::fstream f(dir.path() + "/weights-0.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put(static_cast<char>(0x5a));
  }
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_OK);
  o.verify = 1;
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_ERROR_CORRUPT);
  // sparse_no_bundling only changes how a sparse package's rows are read (stats the C API does
  // not report); with sparse off it must not change anything.
  o.verify = 0;
  o.sparse_no_bundling = 1;
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_OK);
  o.sparse_no_bundling = 0;
  // kv_host_budget: below what a step writes plus the read-back staging it refuses, naming it
  // (spilling is tested on a deeper model in test_kv_spill.cpp); with room for the whole cache
  // nothing spills. disk_budget and disk_dir act only with it.
  o.kv_host_budget = 4096;
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_ERROR_BUDGET);
  EXPECT_NE(std::string(tierlm_last_error()).find("kv_host_budget 4.0 KiB"), std::string::npos)
      << tierlm_last_error();
  o.kv_host_budget = 32 << 20;
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_OK) << tierlm_last_error();
  o.disk_dir = "/nonexistent-tierlm-dir";
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_ERROR_NOT_FOUND);
  o.disk_dir = dir.path().c_str();
  EXPECT_EQ(CApiModel(dir.path(), o).status, TIERLM_OK) << tierlm_last_error();
  o.kv_host_budget = 0;
  expect_refused(CApiModel(dir.path(), o).status, "only a kv_host_budget");
  o.disk_dir = nullptr;
  o.disk_budget = 1 << 20;
  expect_refused(CApiModel(dir.path(), o).status, "only a kv_host_budget");
}

TEST(CApi, EveryGenerateOptionActsOrIsRefused) {
  TempDir dir;
  write_tiny_package(dir.path());
  tierlm_model_options mo;
  tierlm_model_options_init(&mo);
  CApiModel m(dir.path(), mo);
  ASSERT_EQ(m.status, TIERLM_OK);
  const int32_t prompt[] = {4, 8, 15};
  auto run = [&](const tierlm_generate_options& g, tierlm_status* status = nullptr) {
    std::vector<int32_t> out(64);
    size_t n = 0;
    const tierlm_status s =
        tierlm_generate(m.model, prompt, 3, &g, out.data(), out.size(), &n, nullptr, nullptr);
    if (status != nullptr) *status = s;
    out.resize(n);
    return out;
  };
  tierlm_generate_options g;
  tierlm_generate_options_init(&g);
  g.stop_at_eos = 0;
  g.max_new_tokens = 20;
  const std::vector<int32_t> greedy = run(g);
  ASSERT_EQ(greedy.size(), 20u);
  // max_new_tokens
  g.max_new_tokens = 5;
  EXPECT_EQ(run(g), std::vector<int32_t>(greedy.begin(), greedy.begin() + 5));
  g.max_new_tokens = -1;
  tierlm_status status;
  run(g, &status);
  expect_refused(status, "max_new_tokens = -1 is out of range");
  g.max_new_tokens = 20;
  // temperature and seed: sampling differs from greedy and follows the seed.
  g.temperature = 5.0f;
  g.seed = 1;
  const std::vector<int32_t> hot = run(g);
  EXPECT_NE(hot, greedy);
  EXPECT_EQ(run(g), hot);
  g.seed = 2;
  EXPECT_NE(run(g), hot);
  // top_k = 1 and a tiny top_p both leave only the greedy token.
  g.top_k = 1;
  EXPECT_EQ(run(g), greedy);
  g.top_k = -1;
  run(g, &status);
  expect_refused(status, "top_k = -1 is out of range");
  g.top_k = 0;
  g.top_p = 1e-6f;
  EXPECT_EQ(run(g), greedy);
  g.top_p = 0.0f;
  run(g, &status);
  EXPECT_EQ(status, TIERLM_ERROR_INVALID_ARGUMENT);
  g.top_p = 1.0f;
  g.temperature = -1.0f;
  run(g, &status);
  EXPECT_EQ(status, TIERLM_ERROR_INVALID_ARGUMENT);
  g.temperature = 0.0f;
  // repetition_penalty and repetition_last_n: greedy on the random weights repeats tokens; a
  // strong penalty over the whole sequence changes the choice, one that looks back at no token
  // but the last still differs from greedy only where greedy repeated its previous token.
  ASSERT_LT(std::set<int32_t>(greedy.begin(), greedy.end()).size(), greedy.size());
  g.repetition_penalty = 1e4f;
  g.repetition_last_n = 0;
  const std::vector<int32_t> penalized = run(g);
  ASSERT_EQ(penalized.size(), greedy.size());
  EXPECT_NE(penalized, greedy);
  g.repetition_last_n = 1;
  const std::vector<int32_t> last_one = run(g);
  for (size_t i = 1; i < last_one.size(); ++i) EXPECT_NE(last_one[i], last_one[i - 1]);
  g.repetition_penalty = 0.0f;
  run(g, &status);
  expect_refused(status, "repetition_penalty 0 must be > 0");
  g.repetition_penalty = 1.2f;
  g.repetition_last_n = -1;
  run(g, &status);
  expect_refused(status, "repetition_last_n = -1 is out of range");
  g.repetition_penalty = 1.0f;
  g.repetition_last_n = 64;
  // stop_at_eos: the same weights with greedy[3] as eos stop after its first occurrence, only
  // when it is set.
  g.temperature = 0.0f;
  TempDir eos_dir;
  testing::TinySpec spec;
  spec.eos = greedy[3];
  write_tiny_package(eos_dir.path(), spec);
  CApiModel eos_model(eos_dir.path(), mo);
  ASSERT_EQ(eos_model.status, TIERLM_OK);
  std::vector<int32_t> out(64);
  size_t n = 0;
  ASSERT_EQ(
      tierlm_generate(eos_model.model, prompt, 3, &g, out.data(), out.size(), &n, nullptr, nullptr),
      TIERLM_OK);
  EXPECT_EQ(n, greedy.size());
  g.stop_at_eos = 1;
  ASSERT_EQ(
      tierlm_generate(eos_model.model, prompt, 3, &g, out.data(), out.size(), &n, nullptr, nullptr),
      TIERLM_OK);
  const auto eos = std::find(greedy.begin(), greedy.end(), greedy[3]);
  EXPECT_EQ(std::vector<int32_t>(out.begin(), out.begin() + n),
            std::vector<int32_t>(greedy.begin(), eos + 1));
}

}  // namespace
}  // namespace tierlm
