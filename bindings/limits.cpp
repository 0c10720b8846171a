// The option range table (tierlm/core/limits.hpp), so Python checks its integers of any size
// against the same ranges and raises the same message before converting them.
#include "tierlm/core/limits.hpp"

#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/vector.h>

#include <vector>

#include "bindings.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

void bind_limits(nb::module_& m) {
  nb::class_<OptionRange>(m, "OptionRange", "One numeric option's range")
      .def_prop_ro("name", [](const OptionRange& r) { return std::string(r.name); })
      .def_ro("min", &OptionRange::min)
      .def_ro("max", &OptionRange::max)
      .def_prop_ro("meaning", [](const OptionRange& r) { return std::string(r.meaning); });
  m.def("option_ranges", [] {
    const auto ranges = option_ranges();
    return std::vector<OptionRange>(ranges.begin(), ranges.end());
  });
  m.def("option_range_error", &option_range_error, nb::arg("name"), nb::arg("value"));
}

}  // namespace tierlm::bindings
