// The tierlm._core extension module.
#include "bindings.hpp"

NB_MODULE(_core, m) {
  m.doc() = "tierlm native core";
  tierlm::bindings::bind_errors(m);
  tierlm::bindings::bind_records(m);
  tierlm::bindings::bind_limits(m);
  tierlm::bindings::bind_tier(m);
  tierlm::bindings::bind_info(m);
  tierlm::bindings::bind_kernels(m);
  tierlm::bindings::bind_model(m);
  tierlm::bindings::bind_planner(m);
  tierlm::bindings::bind_io(m);
  tierlm::bindings::bind_adam(m);
  tierlm::bindings::bind_sparse(m);
}
