// A package's stored memory plans, plans/seq-<N>.json (written by `tierlm plan`): which batch
// sizes have one, and applying one to the executor's buffers when it describes them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tierlm/model/model.hpp"

namespace tierlm::detail {

// The N of every plans/seq-<N>.json in the package directory, sorted; empty when none.
std::vector<int64_t> package_plan_seqs(const std::string& package_path);
std::string package_plan_path(const std::string& package_path, int64_t seq);

// Sets buffers' offsets from the plan at `path`. Accepts {"buffers": [{"name", "size",
// "offset", "first", "last"}, ...]} or {"names": [...], "offsets": [...]}; returns false (with
// why) when the plan does not describe these buffers or an offset is not a multiple of
// `alignment`. Overlaps are the caller's check (plan_check).
bool package_plan_apply(const std::string& path, std::vector<MemoryBuffer>& buffers,
                        uint64_t alignment, std::string& why);

}  // namespace tierlm::detail
