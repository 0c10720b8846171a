// Host tier and its buffers; a buffer is exposed to numpy/torch without copying.
#include "tierlm/tier.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

nb::dict tier_stats_dict(const TierStats& s) {
  nb::dict d;
  d["budget"] = s.budget;
  d["current"] = s.current;
  d["peak"] = s.peak;
  d["bytes_in"] = s.bytes_in;
  d["bytes_out"] = s.bytes_out;
  d["transfers"] = s.transfers;
  d["allocations"] = s.allocations;
  d["locked"] = s.locked;
  return d;
}

void bind_tier(nb::module_& m) {
  nb::class_<HostBuffer>(m, "HostBuffer")
      .def_prop_ro("size", &HostBuffer::size)
      .def_prop_ro("locked", &HostBuffer::locked)
      .def_prop_ro("address",
                   [](const HostBuffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def(
          "numpy",
          [](nb::handle self) {
            HostBuffer& b = nb::cast<HostBuffer&>(self);
            // The array keeps the Python buffer object (and so the memory) alive.
            return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(b.data(), {b.size()}, self);
          },
          "A uint8 numpy view of the buffer (no copy).");

  nb::class_<HostTier>(m, "HostTier")
      .def(nb::init<uint64_t, bool>(), nb::arg("budget"), nb::arg("lock") = true)
      .def("allocate", &HostTier::allocate, nb::arg("nbytes"), nb::arg("alignment") = 4096)
      .def_prop_ro("budget", &HostTier::budget)
      .def_prop_ro("available", &HostTier::available)
      .def("stats", [](const HostTier& t) { return tier_stats_dict(t.stats()); });

  m.def("memlock_limit", &memlock_limit);
}

}  // namespace tierlm::bindings
