// ModelOptions' numeric fields against the option range table, before a load does any work.
#include "moe/expert_policy.hpp"
#include "tierlm/core/limits.hpp"
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
  detail::expert_policy_parse(o.expert_cache);
}

}  // namespace tierlm
