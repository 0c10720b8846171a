// Placement of a package's weights under a host byte budget for the streaming store: which
// tensors stay resident, which stream through the ring of staging sections (packed into
// chunks) and which are read by rows on demand. weight_placement is pure: sizes in, record out.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tierlm/model/package.hpp"

namespace tierlm::detail {

// resident = layer -1 tensors, every 1-D tensor (norms, biases) and the first whole layers
// that fit; the other layers' matrices are read with O_DIRECT through `sections` staging
// sections of `section_bytes` each (the largest streamed matrix). A layer's streamed matrices,
// in the order the graph uses them, are packed into chunks of at most section_bytes; a chunk is
// one section's reads, ring order = layer order, then use order.
struct WeightPlacement {
  uint64_t base_bytes = 0;      // layer -1 + small tensors (always resident)
  uint64_t section_bytes = 0;   // the largest streamed matrix
  uint64_t resident_bytes = 0;  // base + resident layers + pinned matrices
  uint64_t ring_bytes = 0;      // sections * section_bytes
  uint64_t streamed_bytes = 0;  // bytes read per pass over the streamed layers
  int sections = 0;
  int chunks = 0;  // chunks read per pass
  // Tables read by rows on demand (embeddings): not resident; base_bytes holds their row
  // buffers instead (max_rows rows each, 4 KiB-aligned spans for O_DIRECT).
  std::vector<std::string> row_tensors;
  uint64_t row_buffer_bytes = 0;
  int64_t max_rows = 0;
  std::vector<int> resident_layers;
  std::vector<int> streamed_layers;
  std::vector<std::string> pinned_tensors;  // matrices of streamed layers kept resident
  // Least weight bytes a streaming store can run in: base + one section.
  uint64_t minimum() const { return base_bytes + section_bytes; }
};

struct WeightPlacementOptions {
  uint64_t weight_budget = 0;  // host bytes for weights (the budget less KV, arena, ...)
  // Staging sections; 0 = auto (about 64 MiB of sections, at least 2 when the budget allows,
  // else 1), never more than the streamed matrices or than fit the budget.
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
