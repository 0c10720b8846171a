// The C API: wraps Model and generate, catching every exception at the boundary and
// keeping its message per thread for tierlm_last_error().
#include <algorithm>
#include <new>
#include <string>

#include "tierlm/core/error.hpp"
#include "tierlm/core/info.hpp"
#include "tierlm/model/generate.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/tierlm.h"

struct tierlm_model {
  explicit tierlm_model(tierlm::Model m) : model(std::move(m)) {}
  tierlm::Model model;
};

namespace {

thread_local std::string g_last_error;

tierlm_status status_of(tierlm::ErrorCode code) {
  switch (code) {
    case tierlm::ErrorCode::kErrorInvalidArgument:
      return TIERLM_ERROR_INVALID_ARGUMENT;
    case tierlm::ErrorCode::kErrorNotFound:
      return TIERLM_ERROR_NOT_FOUND;
    case tierlm::ErrorCode::kErrorIo:
      return TIERLM_ERROR_IO;
    case tierlm::ErrorCode::kErrorBudget:
      return TIERLM_ERROR_BUDGET;
    case tierlm::ErrorCode::kErrorCorrupt:
      return TIERLM_ERROR_CORRUPT;
    case tierlm::ErrorCode::kErrorUnsupported:
      return TIERLM_ERROR_UNSUPPORTED;
  }
  return TIERLM_ERROR_INTERNAL;
}

template <typename Fn>
tierlm_status guarded(Fn&& fn) {
  try {
    fn();
    g_last_error.clear();
    return TIERLM_OK;
  } catch (const tierlm::Error& e) {
    g_last_error = e.what();
    return status_of(e.code());
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return TIERLM_ERROR_INTERNAL;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return TIERLM_ERROR_INTERNAL;
  } catch (...) {
    g_last_error = "unknown error";
    return TIERLM_ERROR_INTERNAL;
  }
}

tierlm_status invalid(const char* message) {
  g_last_error = message;
  return TIERLM_ERROR_INVALID_ARGUMENT;
}

}  // namespace

extern "C" {

void tierlm_model_options_init(tierlm_model_options* options) {
  if (options == nullptr) return;
  options->host_budget = 0;
  options->threads = 0;
  options->verify = 0;
  options->max_context = 0;
  options->sparse = 0;
  options->sparse_window = 0;
  options->sparse_no_bundling = 0;
  options->sparse_capacity = 0;
  options->kv_dtype = nullptr;
  options->kv_policy = nullptr;
  options->kv_host_budget = 0;
  options->disk_budget = 0;
  options->disk_dir = nullptr;
}

void tierlm_generate_options_init(tierlm_generate_options* options) {
  if (options == nullptr) return;
  const tierlm::GenerateOptions defaults;
  options->max_new_tokens = defaults.max_new_tokens;
  options->temperature = defaults.temperature;
  options->top_k = defaults.top_k;
  options->top_p = defaults.top_p;
  options->seed = defaults.seed;
  options->stop_at_eos = defaults.stop_at_eos ? 1 : 0;
  options->repetition_penalty = defaults.repetition_penalty;
  options->repetition_last_n = defaults.repetition_last_n;
}

tierlm_status tierlm_model_create(const char* path, const tierlm_model_options* options,
                                  tierlm_model** out) {
  if (out == nullptr) return invalid("tierlm_model_create: out is NULL");
  *out = nullptr;
  if (path == nullptr) return invalid("tierlm_model_create: path is NULL");
  return guarded([&] {
    tierlm::ModelOptions o;
    if (options != nullptr) {
      if (options->host_budget != 0) o.host_budget = options->host_budget;
      o.threads = options->threads;
      o.verify = options->verify != 0;
      o.max_context = options->max_context;
      o.sparse = options->sparse != 0;
      if (options->sparse_window != 0) o.sparse_window = options->sparse_window;
      o.sparse_bundled = options->sparse_no_bundling == 0;
      o.sparse_capacity = options->sparse_capacity;
      if (options->kv_dtype != nullptr) o.kv_dtype = tierlm::dtype_parse(options->kv_dtype);
      if (options->kv_policy != nullptr) o.kv_policy = options->kv_policy;
      o.kv_host_budget = options->kv_host_budget;
      if (options->disk_budget != 0) o.disk_budget = options->disk_budget;
      if (options->disk_dir != nullptr) o.disk_dir = options->disk_dir;
    }
    *out = new tierlm_model(tierlm::Model::load(path, o));
  });
}

void tierlm_model_destroy(tierlm_model* model) { delete model; }

int64_t tierlm_model_vocab_size(const tierlm_model* model) {
  return model == nullptr ? 0 : model->model.vocab_size();
}

int64_t tierlm_model_context_length(const tierlm_model* model) {
  return model == nullptr ? 0 : model->model.context_length();
}

tierlm_status tierlm_generate(tierlm_model* model, const int32_t* prompt, size_t n_prompt,
                              const tierlm_generate_options* options, int32_t* out_tokens,
                              size_t out_capacity, size_t* n_out, tierlm_token_callback callback,
                              void* user_data) {
  if (n_out != nullptr) *n_out = 0;
  if (model == nullptr) return invalid("tierlm_generate: model is NULL");
  if (prompt == nullptr && n_prompt != 0) return invalid("tierlm_generate: prompt is NULL");
  if (out_tokens == nullptr && out_capacity != 0) {
    return invalid("tierlm_generate: out_tokens is NULL but out_capacity is not 0");
  }
  return guarded([&] {
    tierlm::GenerateOptions o;
    if (options != nullptr) {
      o.max_new_tokens = options->max_new_tokens;
      o.temperature = options->temperature;
      o.top_k = options->top_k;
      o.top_p = options->top_p;
      o.seed = options->seed;
      o.stop_at_eos = options->stop_at_eos != 0;
      o.repetition_penalty = options->repetition_penalty;
      o.repetition_last_n = options->repetition_last_n;
    }
    if (out_tokens != nullptr &&
        out_capacity < static_cast<size_t>(std::max<int64_t>(0, o.max_new_tokens)))
      TIERLM_FAIL(kErrorInvalidArgument, 0, "tierlm_generate: out_capacity (", out_capacity,
                  ") is smaller than max_new_tokens (", o.max_new_tokens,
                  "), so tokens would be lost: pass a larger buffer or a callback");
    tierlm::TokenCallback on_token;
    if (callback != nullptr) {
      on_token = [callback, user_data](int32_t token) { return callback(token, user_data) != 0; };
    }
    const tierlm::GenerateResult result =
        tierlm::generate(model->model, std::span<const int32_t>(prompt, n_prompt), o, on_token);
    const size_t n = out_tokens == nullptr ? 0 : result.output_ids.size();
    std::copy_n(result.output_ids.begin(), n, out_tokens);
    if (n_out != nullptr) *n_out = n;
  });
}

tierlm_status tierlm_logits(tierlm_model* model, const int32_t* ids, size_t n_ids,
                            float* out_logits, size_t capacity) {
  if (model == nullptr) return invalid("tierlm_logits: model is NULL");
  if (ids == nullptr && n_ids != 0) return invalid("tierlm_logits: ids is NULL");
  if (out_logits == nullptr) return invalid("tierlm_logits: out_logits is NULL");
  if (capacity < static_cast<size_t>(model->model.vocab_size())) {
    return invalid("tierlm_logits: capacity is smaller than the vocabulary");
  }
  return guarded([&] {
    const std::vector<float> logits = model->model.logits(std::span<const int32_t>(ids, n_ids));
    std::copy(logits.begin(), logits.end(), out_logits);
  });
}

const char* tierlm_last_error(void) { return g_last_error.c_str(); }

const char* tierlm_version(void) { return tierlm::build_info().version.c_str(); }

}  // extern "C"
