// Host tier and its buffers; a buffer is exposed to numpy/torch without copying.
#include "tierlm/memory/tier.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include "bindings.hpp"
#include "tierlm/memory/device.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

void bind_tier(nb::module_& m) {
  nb::class_<HostBuffer>(m, "HostBuffer")
      .def_prop_ro("size", &HostBuffer::size)
      .def_prop_ro("locked", &HostBuffer::locked)
      .def_prop_ro("pinned", &HostBuffer::pinned)
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
      .def(nb::init<uint64_t, bool, bool>(), nb::arg("budget"), nb::arg("lock") = true,
           nb::arg("pin") = false)
      .def("allocate", &HostTier::allocate, nb::arg("nbytes"), nb::arg("alignment") = kAlignment)
      .def_prop_ro("budget", &HostTier::budget)
      .def_prop_ro("available", &HostTier::available)
      .def("stats", &HostTier::stats);

  m.attr("ALIGNMENT") = kAlignment;
  m.def("memlock_limit", &memlock_limit);
  m.def("device_count", &device_count);
  m.def("device_unavailable_reason", &device_unavailable_reason);

  nb::class_<DeviceTier>(m, "DeviceTier")
      .def(nb::init<uint64_t, int>(), nb::arg("budget"), nb::arg("device") = 0)
      .def("allocate", &DeviceTier::allocate, nb::arg("nbytes"))
      .def("stats", &DeviceTier::stats)
      .def(
          "copy_in",
          [](DeviceTier& t, const DeviceBuffer& dst, size_t offset,
             nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu> src) {
            t.copy_in(dst, offset, src.data(), src.nbytes());
          },
          nb::arg("dst"), nb::arg("offset"), nb::arg("src"))
      .def(
          "copy_out",
          [](DeviceTier& t, const DeviceBuffer& src, size_t offset,
             nb::ndarray<nb::c_contig, nb::device::cpu> dst) {
            t.copy_out(src, offset, dst.data(), dst.nbytes());
          },
          nb::arg("src"), nb::arg("offset"), nb::arg("dst"));
  nb::class_<DeviceBuffer>(m, "DeviceBuffer").def_prop_ro("size", &DeviceBuffer::size);
}

}  // namespace tierlm::bindings
