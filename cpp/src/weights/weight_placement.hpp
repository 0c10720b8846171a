// Placement of a package's weights under a host byte budget for the streaming store: which
// tensors stay resident, which stream through the ring of staging sections (packed into
// chunks) and which are read by rows on demand. weight_placement is pure: sizes in, record out.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tierlm/model/package.hpp"
#include "tierlm/weights/placement.hpp"

namespace tierlm::detail {

// The largest request the ring issues (longer reads split so several stay queued), and what
// the auto ring's merged sections grow to.
constexpr uint64_t kStreamRequestBytes = 8ull << 20;

// The record planned (WeightPlacement, resident / streamed / row tensors) is the public
// tierlm/weights/placement.hpp.

struct WeightPlacementOptions {
  uint64_t weight_budget = 0;  // host bytes for weights (the budget less KV, arena, ...)
  // Staging sections; 0 = auto (about 64 MiB of sections, at least 2 when the budget allows,
  // else 1), never more than the streamed matrices or than fit the budget. Auto sections of
  // small matrices merge into sections of several (see weight_placement.cpp); a number asked
  // gives sections of one matrix each.
  int ring_sections = 0;
  // Tensors that may be read by rows on demand, at most max_rows rows per forward pass; each
  // is when its row buffers are smaller than the table.
  std::vector<std::string> row_tensors;
  int64_t max_rows = 0;
};

// Plans placement of `tensors` (unique, in the graph's first-use order). Below minimum()
// nothing is planned (streamed_layers and resident_layers empty); the caller refuses with
// minimum().
WeightPlacement weight_placement(std::span<const TensorInfo> tensors,
                                 const WeightPlacementOptions& options);

// The same for tensors of a package named in first-use order (repeats allowed).
WeightPlacement weight_placement(const Package& package, const std::vector<std::string>& tensors,
                                 uint64_t weight_budget, int ring_sections,
                                 const std::vector<std::string>& row_tensors = {},
                                 int64_t max_rows = 0);

// The package's tensors named by `names`, each once, in first-use order.
std::vector<TensorInfo> weight_tensors(const Package& package,
                                       const std::vector<std::string>& names);

enum class WeightHome { kWeightHomeResident, kWeightHomeStreamed, kWeightHomeRows };

// Where each of `tensors` lives under `placement`.
std::vector<WeightHome> weight_homes(std::span<const TensorInfo> tensors,
                                     const WeightPlacement& placement);

// The ring's chunks: indices into `tensors` of each chunk's members, in ring order (a streamed
// layer's streamed tensors in use order, packed into runs of at most section_bytes).
std::vector<std::vector<size_t>> weight_chunks(std::span<const TensorInfo> tensors,
                                               std::span<const WeightHome> homes,
                                               const WeightPlacement& placement);

// Host bytes of one row slot of a 2-D table read with O_DIRECT: the aligned span around a row.
uint64_t weight_row_slot_bytes(const TensorInfo& tensor);

}  // namespace tierlm::detail
