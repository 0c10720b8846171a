// Each bindings/<concept>.cpp defines one bind_<concept>; module.cpp calls them all.
// The binding layer only converts between Python and C++; logic lives in libtierlm.
#pragma once

#include <nanobind/nanobind.h>

namespace tierlm::bindings {

void bind_errors(nanobind::module_& m);
void bind_records(nanobind::module_& m);
void bind_limits(nanobind::module_& m);
void bind_tier(nanobind::module_& m);
void bind_info(nanobind::module_& m);
void bind_kernels(nanobind::module_& m);
void bind_planner(nanobind::module_& m);
void bind_io(nanobind::module_& m);
void bind_adam(nanobind::module_& m);
void bind_sparse(nanobind::module_& m);
void bind_model(nanobind::module_& m);

}  // namespace tierlm::bindings
