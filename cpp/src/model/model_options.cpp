// ModelOptions' numeric fields against the option range table, the expert cache policy, the KV
// dtype and the KV policy, before a load does any work.
#include <cstdio>

#include "model/kv_cache.hpp"
#include "moe/expert_policy.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/limits.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/model/model.hpp"

namespace tierlm {

void check_model_options(const ModelOptions& o) {
  check_option("host_budget", o.host_budget);
  check_option("kv_host_budget", o.kv_host_budget);
  check_option("disk_budget", o.disk_budget);
  detail::expert_policy_parse(o.expert_cache);
  kernel_kv_row_bytes(o.kv_dtype, 1);  // refuses a type the KV cache cannot hold, naming it
  kv_policy_parse(o.kv_policy);
  TIERLM_CHECK(o.kv_host_budget > 0 || (o.disk_budget == UINT64_MAX && o.disk_dir.empty()),
               kErrorInvalidArgument,
               "the disk budget and disk_dir are for the KV cache's blocks on the disk tier, "
               "which only a kv_host_budget (the KV cache's share of the host budget) turns on; "
               "set kv_host_budget or leave them unset");
  TIERLM_CHECK(o.kv_host_budget == 0 || o.kv_policy.empty() || o.kv_policy == "full",
               kErrorInvalidArgument,
               "kv_host_budget keeps every token, spilling the oldest to "
               "disk, and kv_policy '",
               o.kv_policy, "' drops tokens: use one or the other");
  check_option("threads", o.threads);
  check_option("max_context", o.max_context);
  check_option("prefill_chunk", o.prefill_chunk);
  check_option("max_batch", o.max_batch);
  check_option("ring_sections", o.ring_sections);
  check_option("sparse_window", o.sparse_window);
  check_option("sparse_capacity", o.sparse_capacity);
}

KvPolicy kv_policy_parse(const std::string& policy) {
  KvPolicy p;
  if (policy.empty() || policy == "full") return p;
  const size_t plus = policy.find('+');
  long long sinks = -1, window = -1;
  int used = 0;
  const bool ok = policy.rfind("window:", 0) == 0 && plus != std::string::npos &&
                  std::sscanf(policy.c_str(), "window:%lld+%lld%n", &sinks, &window, &used) == 2 &&
                  used == static_cast<int>(policy.size()) && sinks >= 0 &&
                  window >= 2 * detail::kKvBlockTokens && sinks + window <= (1 << 24);
  TIERLM_CHECK(ok, kErrorInvalidArgument, "kv_policy '", policy,
               "' is not one of: full, window:S+W (S attention sinks >= 0 and a window of W >= ",
               2 * detail::kKvBlockTokens, " tokens, e.g. window:4+1020)");
  p.sinks = sinks;
  p.window = window;
  return p;
}

}  // namespace tierlm
