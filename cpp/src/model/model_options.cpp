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
  check_option("threads", o.threads);
  check_option("max_context", o.max_context);
  check_option("prefill_chunk", o.prefill_chunk);
  check_option("max_batch", o.max_batch);
  check_option("ring_sections", o.ring_sections);
  check_option("sparse_window", o.sparse_window);
  check_option("sparse_capacity", o.sparse_capacity);
}

namespace {

// Reads "S+W" (with_heavy false) or "S+W+K" and an optional "@D" from text; false if anything is
// left over or missing.
bool parse_sizes(const char* text, bool with_heavy, KvPolicy& p) {
  long long sinks = -1, window = -1, heavy = 0;
  double decay = p.decay;
  int used = 0;
  const int want = with_heavy ? 3 : 2;
  const int got = with_heavy ? std::sscanf(text, "%lld+%lld+%lld%n", &sinks, &window, &heavy, &used)
                             : std::sscanf(text, "%lld+%lld%n", &sinks, &window, &used);
  if (got != want) return false;
  text += used;
  if (with_heavy && *text == '@') {
    if (std::sscanf(text, "@%lf%n", &decay, &used) != 1) return false;
    text += used;
  }
  p.sinks = sinks;
  p.window = window;
  p.heavy = heavy;
  p.decay = decay;
  return *text == '\0';
}

}  // namespace

KvPolicy kv_policy_parse(const std::string& policy) {
  KvPolicy p;
  if (policy.empty() || policy == "full") return p;
  constexpr int64_t kLeast = 2 * detail::kKvBlockTokens;  // a block can go while one stays
  bool ok = false;
  const char* text = policy.c_str();
  if (policy.rfind("window:", 0) == 0) {
    p.kind = KvPolicyKind::kKvPolicyWindow;
    ok = parse_sizes(text + 7, false, p) && p.window >= kLeast;
  } else if (policy.rfind("sirllm:", 0) == 0 || policy.rfind("h2o:", 0) == 0) {
    const bool sirllm = policy[0] == 's';
    p.kind = sirllm ? KvPolicyKind::kKvPolicySirllm : KvPolicyKind::kKvPolicyH2o;
    p.decay = sirllm ? kSirllmDecay : 1.0;
    // Any step fits: one appends at most heavy / 2 tokens and drops scored ones.
    ok = parse_sizes(text + (sirllm ? 7 : 4), true, p) && p.window >= 1 && p.heavy >= 2 &&
         p.decay > 0.0 && p.decay <= 1.0 && (sirllm || policy.find('@') == std::string::npos);
  }
  ok = ok && p.sinks >= 0 && p.capacity() <= (1 << 24);
  TIERLM_CHECK(
      ok, kErrorInvalidArgument, "kv_policy '", policy,
      "' is not one of: full; window:S+W (S attention sinks >= 0 and the last W >= ", kLeast,
      " tokens, e.g. window:4+1020); sirllm:S+W+K[@D] (W >= 1, and the K >= 2 "
      "older tokens of highest token entropy, decayed by 0 < D <= 1 per token, default ",
      kSirllmDecay,
      ", e.g. sirllm:4+508+512@0.999); h2o:S+W+K (and the K of most "
      "accumulated attention, e.g. h2o:4+508+512)");
  return p;
}

}  // namespace tierlm
