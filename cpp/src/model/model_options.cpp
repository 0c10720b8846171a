// ModelOptions' numeric fields against the option range table, and the KV dtype, before a load
// does any work.
#include "tierlm/core/limits.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/model/model.hpp"

namespace tierlm {

void check_model_options(const ModelOptions& o) {
  check_option("host_budget", o.host_budget);
  check_option("threads", o.threads);
  check_option("max_context", o.max_context);
  check_option("prefill_chunk", o.prefill_chunk);
  check_option("max_batch", o.max_batch);
  check_option("ring_sections", o.ring_sections);
  check_option("sparse_window", o.sparse_window);
  check_option("sparse_capacity", o.sparse_capacity);
  kernel_kv_row_bytes(o.kv_dtype, 1);  // refuses a type the KV cache cannot hold, naming it
}

}  // namespace tierlm
