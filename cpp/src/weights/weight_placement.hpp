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
// A matrix that only linear ops read and that is larger than this streams as row parts of at
// most this (or of its smallest 4 KiB-aligned run of rows, when that is larger): sections then
// hold a part, not the largest matrix, and the bytes a section no longer needs stay resident.
constexpr uint64_t kStreamPartBytes = 4ull << 20;

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
  // Matrices that may stream in row parts (read by linear ops alone, which compute a row range
  // of the output from a part).
  std::vector<std::string> split_tensors;
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
                                 int64_t max_rows = 0,
                                 const std::vector<std::string>& split_tensors = {});

// The package's tensors named by `names`, each once, in first-use order.
std::vector<TensorInfo> weight_tensors(const Package& package,
                                       const std::vector<std::string>& names);

enum class WeightHome { kWeightHomeResident, kWeightHomeStreamed, kWeightHomeRows };

// Where each of `tensors` lives under `placement`.
std::vector<WeightHome> weight_homes(std::span<const TensorInfo> tensors,
                                     const WeightPlacement& placement);

// Rows [row0, row0 + rows) of a streamed tensor, `offset` bytes (4 KiB-aligned) into it.
struct WeightPart {
  size_t tensor = 0;  // index into the tensors
  int64_t row0 = 0;
  int64_t rows = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t slot() const;  // bytes rounded up to 4 KiB: its room in a section
};

// The least bytes of a part of t: its smallest run of whole rows that ends 4 KiB-aligned (the
// whole tensor's slot when it cannot be cut: not 2-D, rows of unequal bytes, unaligned).
uint64_t weight_min_part_bytes(const TensorInfo& t);

// Tensor `index` (t) as parts of at most part_bytes each, as few as fit and of about equal rows
// (each at least weight_min_part_bytes); one part, the whole tensor, when it fits or when
// `split` is false.
std::vector<WeightPart> weight_parts(const TensorInfo& t, size_t index, uint64_t part_bytes,
                                     bool split);

// The ring's chunks, in ring order: a streamed layer's streamed tensors in use order, cut into
// parts (placement.part_bytes, the tensors placement.split_tensors names), packed into runs of
// at most section_bytes.
std::vector<std::vector<WeightPart>> weight_chunks(std::span<const TensorInfo> tensors,
                                                   std::span<const WeightHome> homes,
                                                   const WeightPlacement& placement);

// Host bytes of one row slot of a 2-D table read with O_DIRECT: the aligned span around a row.
uint64_t weight_row_slot_bytes(const TensorInfo& tensor);

}  // namespace tierlm::detail
