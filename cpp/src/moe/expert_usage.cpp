// Reading expert_usage.json against the graph's moe ops.
#include "moe/expert_usage.hpp"

#include <sys/stat.h>

#include "core/json.hpp"
#include "moe/moe_graph.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

std::vector<std::vector<uint64_t>> expert_usage_read(const Package& package) {
  const std::string path = package.path + "/" + kExpertUsageFile;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  const Json profile = json_parse_file(path);
  const std::string fix = "; profile the experts again (tierlm.profile_experts) or delete it";
  const std::vector<size_t> ops = moe_ops(package);
  const std::vector<Json>& layers = profile.at("layers", path).as_array(path + ": layers");
  TIERLM_CHECK(layers.size() == ops.size(), kErrorCorrupt, path, ": ", layers.size(),
               " layers, the graph has ", ops.size(), " moe layers", fix);
  std::vector<std::vector<uint64_t>> usage;
  for (size_t m = 0; m < ops.size(); ++m) {
    const GraphOp& op = package.graph.ops[ops[m]];
    const std::string where = path + ": layers[" + std::to_string(m) + "]";
    const int64_t layer = layers[m].at("layer", where).as_int(where + ".layer");
    TIERLM_CHECK(layer == op.layer, kErrorCorrupt, where, " is layer ", layer,
                 ", the graph's moe layer ", m, " is layer ", op.layer, fix);
    const std::vector<Json>& tokens =
        layers[m].at("tokens_per_expert", where).as_array(where + ".tokens_per_expert");
    TIERLM_CHECK(static_cast<int64_t>(tokens.size()) == op.experts, kErrorCorrupt, where, " has ",
                 tokens.size(), " experts, the graph's ", op.experts, fix);
    std::vector<uint64_t>& counts = usage.emplace_back();
    for (const Json& t : tokens) {
      const int64_t n = t.as_int(where + ".tokens_per_expert");
      TIERLM_CHECK(n >= 0, kErrorCorrupt, where, ": a negative token count (", n, ")", fix);
      counts.push_back(static_cast<uint64_t>(n));
    }
  }
  return usage;
}

}  // namespace tierlm::detail
