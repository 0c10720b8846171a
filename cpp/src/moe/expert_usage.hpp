// A usage profile of a package's experts (expert_usage.json, written by
// tierlm.profile_experts): how many tokens of a calibration text each expert of each moe layer
// was routed to. The expert store homes the most used experts on the host tier by it.
#pragma once

#include <cstdint>
#include <vector>

#include "tierlm/model/package.hpp"

namespace tierlm::detail {

inline constexpr const char* kExpertUsageFile = "expert_usage.json";

// Per moe op (in graph order), the tokens routed to each expert. Empty when the package has no
// profile. Throws kErrorCorrupt naming the file when it does not match the graph's moe layers.
std::vector<std::vector<uint64_t>> expert_usage_read(const Package& package);

}  // namespace tierlm::detail
