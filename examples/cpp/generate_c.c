/* Loads a tierlm package and generates token ids with the C API.
 * Usage: generate_c PACKAGE IDS [MAX_NEW_TOKENS [HOST_BUDGET_BYTES]]; prints the ids
 * comma-separated. Under a host budget smaller than the weights, the rest stream from disk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tierlm/tierlm.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PACKAGE IDS [MAX_NEW_TOKENS [HOST_BUDGET_BYTES]]\n", argv[0]);
    return 2;
  }
  int32_t prompt[4096];
  size_t n_prompt = 0;
  for (char* part = strtok(argv[2], ","); part && n_prompt < 4096; part = strtok(NULL, ",")) {
    prompt[n_prompt++] = (int32_t)strtol(part, NULL, 10);
  }
  tierlm_model_options model_options;
  tierlm_model_options_init(&model_options);
  if (argc > 4) model_options.host_budget = strtoull(argv[4], NULL, 10);
  tierlm_model* model = NULL;
  if (tierlm_model_create(argv[1], &model_options, &model) != TIERLM_OK) {
    fprintf(stderr, "error: %s\n", tierlm_last_error());
    return 1;
  }
  tierlm_generate_options options;
  tierlm_generate_options_init(&options);
  if (argc > 3) options.max_new_tokens = atoll(argv[3]);
  int32_t* out = malloc(sizeof(int32_t) * (size_t)(options.max_new_tokens + 1));
  size_t n_out = 0;
  tierlm_status status = tierlm_generate(model, prompt, n_prompt, &options, out,
                                         (size_t)options.max_new_tokens, &n_out, NULL, NULL);
  if (status != TIERLM_OK) {
    fprintf(stderr, "error: %s\n", tierlm_last_error());
    free(out);
    tierlm_model_destroy(model);
    return 1;
  }
  for (size_t i = 0; i < n_out; ++i) printf(i ? ",%d" : "%d", out[i]);
  printf("\n");
  free(out);
  tierlm_model_destroy(model);
  return 0;
}
