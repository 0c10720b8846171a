// Each bindings/<concept>.cpp defines one bind_<concept>; module.cpp calls them all.
// The binding layer only converts between Python and C++; logic lives in libtierlm.
#pragma once

#include <nanobind/nanobind.h>

namespace tierlm::bindings {

void bind_errors(nanobind::module_& m);
void bind_tier(nanobind::module_& m);
void bind_info(nanobind::module_& m);
void bind_kernels(nanobind::module_& m);
void bind_planner(nanobind::module_& m);
void bind_io(nanobind::module_& m);
void bind_adam(nanobind::module_& m);
void bind_sparse(nanobind::module_& m);

}  // namespace tierlm::bindings

namespace tierlm {
struct TierStats;
}

namespace tierlm::bindings {
nanobind::dict tier_stats_dict(const TierStats& stats);
}  // namespace tierlm::bindings

namespace tierlm::bindings {
void bind_model(nanobind::module_& m);
}  // namespace tierlm::bindings
