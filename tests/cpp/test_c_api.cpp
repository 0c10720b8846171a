// The C API: status codes and messages instead of exceptions, and the same tokens as C++.
#include <gtest/gtest.h>

#include <string>
#include <vector>

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

}  // namespace
}  // namespace tierlm
