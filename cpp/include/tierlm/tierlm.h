/* The C API of tierlm for embedding: opaque handles, status codes, no exceptions.
 * Every function returns TIERLM_OK or an error status; tierlm_last_error() then gives the
 * message of the calling thread's last failure. */
#ifndef TIERLM_TIERLM_H_
#define TIERLM_TIERLM_H_

/* libtierlm hides every symbol but its API (C's own export macro, tierlm/core/export.hpp's twin).
 */
#define TIERLM_C_API __attribute__((visibility("default")))

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tierlm_status {
  TIERLM_OK = 0,
  TIERLM_ERROR_INVALID_ARGUMENT = 1, /* a caller passed something malformed */
  TIERLM_ERROR_NOT_FOUND = 2,        /* a file or tensor that should exist does not */
  TIERLM_ERROR_IO = 3,               /* a system call failed */
  TIERLM_ERROR_BUDGET = 4,           /* a tier cannot hold the request within its budget */
  TIERLM_ERROR_CORRUPT = 5,          /* a file is damaged (size, checksum, format) */
  TIERLM_ERROR_UNSUPPORTED = 6,      /* the build, machine or package needs a missing feature */
  TIERLM_ERROR_INTERNAL = 7          /* anything else (out of memory, a bug) */
} tierlm_status;

typedef struct tierlm_model tierlm_model;

/* Numeric fields outside their range (tierlm/core/limits.hpp: threads 0..1024, ...) make
 * tierlm_model_create / tierlm_generate fail with TIERLM_ERROR_INVALID_ARGUMENT and a message
 * naming the field and its range. */
typedef struct tierlm_model_options {
  uint64_t host_budget; /* bytes; 0 = unlimited */
  uint32_t threads;     /* 0 = keep the thread pool's size */
  int32_t verify;       /* nonzero: check tensor checksums while loading */
  int64_t max_context;  /* KV cache tokens; 0 = the model's max_positions */
  /* Sparse-neuron flash loading (package exported with --sparse, with predictors). Zero
   * values are the defaults. */
  int32_t sparse;             /* nonzero: read only the predicted FFN neurons */
  int32_t sparse_window;      /* tokens whose neurons stay cached; 0 = 4 */
  int32_t sparse_no_bundling; /* nonzero: up and down parts read apart (ablation) */
  int64_t sparse_capacity;    /* cached neurons per layer; 0 = auto */
  /* KV cache element type: "f16", "bf16", "f32", "q8_0" (int8 blocks); NULL = "f16" */
  const char* kv_dtype;
  /* "full" or NULL (every token up to the context), "window:S+W" (S sinks and the last W
   * tokens), "sirllm:S+W+K[@D]" (and the K of highest decayed token entropy) or "h2o:S+W+K"
   * (and the K of most accumulated attention): generation runs past the context */
  const char* kv_policy;
  /* KV on the disk tier: the host bytes the KV cache may hold (0 = all it needs); beyond them
   * its oldest blocks move to a scratch file of the disk tier in disk_dir (NULL = $TMPDIR, else
   * /tmp) under disk_budget bytes (0 = no limit), read back a layer ahead of attention; every
   * token stays. disk_budget and disk_dir need kv_host_budget. */
  uint64_t kv_host_budget;
  uint64_t disk_budget;
  const char* disk_dir;
} tierlm_model_options;

typedef struct tierlm_generate_options {
  int64_t max_new_tokens; /* default 32 */
  float temperature;      /* 0 = greedy */
  int64_t top_k;          /* 0 = no limit */
  float top_p;            /* 1 = no nucleus cut */
  uint64_t seed;
  int32_t stop_at_eos; /* default 1 */
  /* Logits of the tokens among the last repetition_last_n of the sequence (0 = all) divided by
   * repetition_penalty when positive, multiplied when not; 1 (default) = off. */
  float repetition_penalty;
  int64_t repetition_last_n; /* default 64 */
} tierlm_generate_options;

/* Called with each new token; return nonzero to continue, 0 to stop. */
typedef int (*tierlm_token_callback)(int32_t token, void* user_data);

/* Fill an options struct with the defaults. */
TIERLM_C_API void tierlm_model_options_init(tierlm_model_options* options);
TIERLM_C_API void tierlm_generate_options_init(tierlm_generate_options* options);

/* Loads the package at path; options may be NULL (defaults). On success *out owns a model
 * to be released with tierlm_model_destroy. */
TIERLM_C_API tierlm_status tierlm_model_create(const char* path,
                                               const tierlm_model_options* options,
                                               tierlm_model** out);
TIERLM_C_API void tierlm_model_destroy(tierlm_model* model);

TIERLM_C_API int64_t tierlm_model_vocab_size(const tierlm_model* model);
TIERLM_C_API int64_t tierlm_model_context_length(const tierlm_model* model);

/* Generates up to options->max_new_tokens tokens after the prompt and writes them to
 * out_tokens, their count to *n_out. out_capacity must hold max_new_tokens (else
 * TIERLM_ERROR_INVALID_ARGUMENT, before any work); out_tokens may be NULL (capacity 0) when a
 * callback consumes the tokens. options and callback may be NULL. */
TIERLM_C_API tierlm_status tierlm_generate(tierlm_model* model, const int32_t* prompt,
                                           size_t n_prompt, const tierlm_generate_options* options,
                                           int32_t* out_tokens, size_t out_capacity, size_t* n_out,
                                           tierlm_token_callback callback, void* user_data);

/* Last-position logits of the ids (vocab_size floats into out_logits). */
TIERLM_C_API tierlm_status tierlm_logits(tierlm_model* model, const int32_t* ids, size_t n_ids,
                                         float* out_logits, size_t capacity);

/* Message of this thread's last failure ("" when none). Valid until the next call. */
TIERLM_C_API const char* tierlm_last_error(void);
TIERLM_C_API const char* tierlm_version(void);

#ifdef __cplusplus
}
#endif

#endif /* TIERLM_TIERLM_H_ */
