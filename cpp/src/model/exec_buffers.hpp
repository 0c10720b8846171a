// Executor buffers: for a batch of seq tokens, which arena buffer each op's activation inputs,
// output and workspace use, each buffer's size and lifetime (first..last op), and the arena
// plan that places them (a stored plans/seq-N.json when it matches, else the greedy planner).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/model/package.hpp"

namespace tierlm::detail {

constexpr uint64_t kArenaAlignment = 64;

// Per op, the index in BufferAssignment::buffers of each float input, the output and the
// workspace (-1: none).
struct OpBuffers {
  int in[3] = {-1, -1, -1};
  int out = -1;
  int workspace = -1;
};

struct BufferAssignment {
  std::vector<MemoryBuffer> buffers;  // offsets 0 until planned
  std::vector<OpBuffers> ops;         // one per graph op
  int output = -1;                    // the graph output's buffer (the logits)
};

// Graph inputs that are token ids or positions, not float activations.
bool is_int_input(const std::string& value);

// Outputs share an input's buffer where the kernel may write over it; workspaces are sized by
// the backend's plan for the largest step (seq tokens, `context` keys, `batch` lm_head rows).
// Throws kErrorCorrupt when the graph reads a value before writing it.
BufferAssignment buffers_assign(const Package& package, const Backend& backend, int64_t seq,
                                int64_t context, int64_t batch);

// Offsets for the assignment: plans/seq-<seq>.json when the package has one that describes
// these buffers (MemoryPlan::source says which was used, and why a stored one was ignored),
// else plan_greedy. Throws kErrorCorrupt for a stored plan that matches but overlaps.
MemoryPlan buffers_plan(const Package& package, const BufferAssignment& assignment, int64_t seq);

}  // namespace tierlm::detail
