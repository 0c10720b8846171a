// Greedy planner, lower bound and checker over numpy arrays (sizes uint64, ops int64).
#include "tierlm/planner/planner.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <string>

#include "bindings.hpp"
#include "tierlm/core/error.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

using Sizes = nb::ndarray<const uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Ops = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

std::vector<PlanBuffer> to_buffers(const Sizes& sizes, const Ops& starts, const Ops& ends,
                                   const std::optional<Sizes>& alignments) {
  const size_t n = sizes.shape(0);
  TIERLM_CHECK(starts.shape(0) == n && ends.shape(0) == n, kErrorInvalidArgument, "plan: ", n,
               " sizes but ", starts.shape(0), " starts and ", ends.shape(0),
               " ends; give one of each per buffer");
  TIERLM_CHECK(!alignments || alignments->shape(0) == n, kErrorInvalidArgument, "plan: ", n,
               " sizes but ", alignments ? alignments->shape(0) : 0, " alignments");
  std::vector<PlanBuffer> buffers(n);
  for (size_t i = 0; i < n; ++i) {
    buffers[i] = PlanBuffer{sizes(i), starts(i), ends(i), alignments ? (*alignments)(i) : 0};
  }
  return buffers;
}

PlanOrder parse_order(const std::string& order) {
  if (order == "size") return PlanOrder::kPlanOrderSize;
  if (order == "time") return PlanOrder::kPlanOrderTime;
  if (order == "area") return PlanOrder::kPlanOrderArea;
  if (order == "length") return PlanOrder::kPlanOrderLength;
  if (order == "best") return PlanOrder::kPlanOrderBest;
  TIERLM_FAIL(kErrorInvalidArgument, 0, "plan: unknown greedy order '", order,
              "'; use size, time, area, length or best");
}

nb::ndarray<nb::numpy, uint64_t, nb::ndim<1>> to_numpy(std::vector<uint64_t>&& values) {
  auto* owned = new std::vector<uint64_t>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<uint64_t>*>(p); });
  return nb::ndarray<nb::numpy, uint64_t, nb::ndim<1>>(owned->data(), {owned->size()}, owner);
}

}  // namespace

void bind_planner(nb::module_& m) {
  m.def(
      "plan_greedy",
      [](const Sizes& sizes, const Ops& starts, const Ops& ends, uint64_t alignment,
         const std::string& order, const std::optional<Sizes>& alignments) {
        std::vector<PlanBuffer> buffers = to_buffers(sizes, starts, ends, alignments);
        Plan plan;
        {
          nb::gil_scoped_release release;
          plan = plan_greedy(buffers, alignment, parse_order(order));
        }
        return nb::make_tuple(to_numpy(std::move(plan.offsets)), plan.peak, plan.lower_bound,
                              plan_order_name(plan.order));
      },
      nb::arg("sizes"), nb::arg("starts"), nb::arg("ends"), nb::arg("alignment") = 64,
      nb::arg("order") = "best", nb::arg("alignments") = nb::none(),
      "Greedy best-fit plan: (offsets, peak, lower_bound, order).");
  m.def(
      "plan_lower_bound",
      [](const Sizes& sizes, const Ops& starts, const Ops& ends) {
        return plan_lower_bound(to_buffers(sizes, starts, ends, std::nullopt));
      },
      nb::arg("sizes"), nb::arg("starts"), nb::arg("ends"));
  m.def(
      "plan_check",
      [](const Sizes& sizes, const Ops& starts, const Ops& ends, const Sizes& offsets,
         uint64_t alignment, const std::optional<Sizes>& alignments) {
        std::vector<PlanBuffer> buffers = to_buffers(sizes, starts, ends, alignments);
        std::span<const uint64_t> offs(offsets.data(), offsets.shape(0));
        plan_check(buffers, offs, alignment);
      },
      nb::arg("sizes"), nb::arg("starts"), nb::arg("ends"), nb::arg("offsets"),
      nb::arg("alignment") = 64, nb::arg("alignments") = nb::none());
}

}  // namespace tierlm::bindings
