// Where a model's weights live: all resident in the host tier, or a resident set plus a ring
// of staging sections that streams the other layers' matrices from the package files. One
// record, made by the placement planner and reported unchanged by Model::placement().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tierlm/core/export.hpp"

namespace tierlm {

// Resident = layer -1 tensors, every 1-D tensor (norms, biases) and as many whole layers as
// fit, spread evenly over the stack (a run of resident layers would idle the disk); the other
// layers' matrices are read with O_DIRECT through `sections` staging sections of `section_bytes`
// each. A streamed matrix larger than part_bytes that only linear ops read is cut into row parts of
// at most part_bytes; a layer's streamed matrices (or their parts), in the order the graph uses
// them, are packed into chunks of at most section_bytes; a chunk is one section's reads, ring order
// = layer order, then use order.
struct TIERLM_API WeightPlacement {
  bool streaming = false;       // false: every weight resident (the fields below stay 0 / empty)
  uint64_t resident_bytes = 0;  // base + resident layers + pinned matrices
  uint64_t base_bytes = 0;      // layer -1 + small tensors (always resident)
  uint64_t section_bytes = 0;   // one staging section (the largest streamed matrix or part)
  uint64_t part_bytes = 0;      // matrices larger than this stream in row parts (0: none cut)
  uint64_t ring_bytes = 0;      // sections * section_bytes
  uint64_t streamed_bytes = 0;  // bytes read per pass over the streamed layers
  // Least host budget that loads: base + one section + KV cache + activations (+ sparse caches).
  uint64_t minimum_budget = 0;
  int64_t sections = 0;
  int64_t chunks = 0;  // section-sized groups of streamed matrices read per pass
  std::vector<int> resident_layers;
  std::vector<int> streamed_layers;
  std::vector<std::string> streamed_tensors;
  std::vector<std::string> pinned_tensors;  // matrices of streamed layers kept resident
  std::vector<std::string> split_tensors;   // streamed matrices read in row parts
  // Tables read by rows on demand (embeddings): not resident; base_bytes holds their row
  // buffers instead (max_rows rows each, 4 KiB-aligned spans for O_DIRECT).
  std::vector<std::string> row_tensors;
  uint64_t row_buffer_bytes = 0;
  int64_t max_rows = 0;

  // Least weight bytes a streaming store can run in: base + one section.
  uint64_t minimum() const { return base_bytes + section_bytes; }
};

}  // namespace tierlm
