// Memory planner: places buffers with known lifetimes in one arena so that buffers live at
// the same time never share bytes, keeping the arena's peak small. The greedy planner here
// is the fast native one; the exact MIP lives in Python (tierlm.plan) and starts from it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "tierlm/core/export.hpp"

namespace tierlm {

// One buffer of a plan. It is live from op first_op through op last_op, both included.
struct TIERLM_API PlanBuffer {
  uint64_t size = 0;       // bytes; a zero-size buffer takes no space (offset 0)
  int64_t first_op = 0;    // first op that touches the buffer
  int64_t last_op = 0;     // last op that touches it (>= first_op)
  uint64_t alignment = 0;  // its offset's alignment in bytes; 0 = the plan's alignment
};

// The order in which the greedy planner places buffers.
enum class PlanOrder {
  kPlanOrderSize,    // decreasing size (longer lifetime first on ties)
  kPlanOrderTime,    // by first op, larger first on ties (an allocator's view)
  kPlanOrderArea,    // decreasing size x lifetime
  kPlanOrderLength,  // longest lifetime first, larger first on ties
  kPlanOrderBest,    // every order above, keep the smallest peak
};

TIERLM_API const char* plan_order_name(PlanOrder order);

struct TIERLM_API Plan {
  std::vector<uint64_t> offsets;                // one per buffer, in input order
  uint64_t peak = 0;                            // max(offset + size); the arena size the plan needs
  uint64_t lower_bound = 0;                     // max over time of the bytes live at once
  PlanOrder order = PlanOrder::kPlanOrderSize;  // the order that gave this plan
};

// Best-fit greedy: each buffer goes into the smallest gap, among buffers already placed that
// are live at the same time, that holds it; or on top of them. kPlanOrderBest tries every
// order (in parallel on the compute pool) and keeps the smallest peak; the area and length
// orders are dropped on instances where they would take more than ~64 steps per buffer.
// The time order costs O(n log n); the others O(n log n) plus the holes met on the way.
// alignment must be >= 1 (it need not be a power of two). Throws kErrorInvalidArgument on a
// buffer with last_op < first_op or alignment 0.
TIERLM_API Plan plan_greedy(std::span<const PlanBuffer> buffers, uint64_t alignment = 64,
                            PlanOrder order = PlanOrder::kPlanOrderBest);

// The largest total size of buffers live at one moment: no plan's peak is below it.
TIERLM_API uint64_t plan_lower_bound(std::span<const PlanBuffer> buffers);

// max(offset + size) over the buffers.
TIERLM_API uint64_t plan_peak(std::span<const PlanBuffer> buffers,
                              std::span<const uint64_t> offsets);

// Verifies a plan: one offset per buffer, every offset a multiple of its alignment, and no
// two buffers live at the same time overlap in memory. Throws kErrorInvalidArgument naming
// the buffers (index, size, ops, offset) on the first violation. O(n log n).
TIERLM_API void plan_check(std::span<const PlanBuffer> buffers, std::span<const uint64_t> offsets,
                           uint64_t alignment = 64);

}  // namespace tierlm
