// The streaming store's placement (see weight_placement.hpp): row tables, base and per-layer
// bytes, the ring depth, the resident layers (spread over the stack), matrices pinned with what
// is left, row parts, and the chunks the ring will read, by the same rules the store applies.
#include "weights/weight_placement.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include "tierlm/core/align.hpp"

namespace tierlm::detail {

namespace {

// Auto ring depth: sections of one matrix (or part) each, about an eighth of the weight budget
// beyond the base (every ring byte is one more byte read per token), but at least
// kMinAutoRingBytes where a quarter of it allows (a ring of 2 sections of 9.5 MB read 0.94 of
// the disk bound, one of 7 read 1.01: the disk wants several requests queued) and at most
// kAutoRingBytes.
constexpr uint64_t kAutoRingBytes = 64ull << 20;
constexpr uint64_t kMinAutoRingBytes = 16ull << 20;
constexpr uint64_t kAutoRingShare = 8;
constexpr uint64_t kMinAutoSections = 2;
constexpr uint64_t kMaxAutoSections = 16;
// The auto ring merges sections while this many remain: one computes, the rest stay in flight.
constexpr uint64_t kMinMergedSections = 4;

bool streamable(const TensorInfo& t) { return t.layer >= 0 && t.shape.size() >= 2; }

uint64_t slot_bytes(const TensorInfo& t) { return round_up(t.nbytes, kAlignment); }

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Bytes of one row when t is a matrix of equal rows starting 4 KiB-aligned, else 0.
uint64_t cut_row_bytes(const TensorInfo& t) {
  if (t.shape.size() != 2 || t.shape[0] <= 1 || t.offset % kAlignment != 0) return 0;
  const uint64_t rows = static_cast<uint64_t>(t.shape[0]);
  return t.nbytes % rows == 0 ? t.nbytes / rows : 0;
}

// Rows of t's smallest run that ends 4 KiB-aligned (0: t cannot be cut).
int64_t cut_rows(const TensorInfo& t) {
  const uint64_t row = cut_row_bytes(t);
  return row == 0 ? 0 : static_cast<int64_t>(kAlignment / std::gcd(row, kAlignment));
}

// Which of `layers` (ascending) stay resident in `room` bytes: as many as fit in order, spread
// evenly over the stack rather than the first ones, so that no long run of resident layers
// (with the lm head at the end of a token and the embedding read at the start of the next)
// computes while the ring, full of read-ahead, leaves the disk idle. Falls back to the first
// ones when the spread set, of layers of other sizes, does not fit.
std::vector<bool> resident_spread(const std::vector<int>& layers,
                                  const std::map<int, uint64_t>& layer_bytes, uint64_t room) {
  const size_t n = layers.size();
  std::vector<bool> prefix(n, false);
  size_t count = 0;
  for (uint64_t left = room; count < n && layer_bytes.at(layers[count]) <= left; ++count) {
    left -= layer_bytes.at(layers[count]);
    prefix[count] = true;
  }
  if (count == 0 || count == n) return prefix;
  std::vector<bool> spread(n, false);
  uint64_t bytes = 0;
  for (size_t j = 0; j < count; ++j) {
    const size_t i = (2 * j + 1) * n / (2 * count);  // the middle of the j-th of count runs
    spread[i] = true;
    bytes += layer_bytes.at(layers[i]);
  }
  return bytes <= room ? spread : prefix;
}

}  // namespace

uint64_t WeightPart::slot() const { return round_up(bytes, kAlignment); }

uint64_t weight_min_part_bytes(const TensorInfo& t) {
  const int64_t unit = cut_rows(t);
  if (unit == 0 || unit >= t.shape[0]) return slot_bytes(t);
  return static_cast<uint64_t>(unit) * cut_row_bytes(t);
}

std::vector<WeightPart> weight_parts(const TensorInfo& t, size_t index, uint64_t part_bytes,
                                     bool split) {
  const int64_t unit = cut_rows(t);
  if (!split || unit == 0 || unit >= t.shape[0] || slot_bytes(t) <= part_bytes) {
    return {
        {.tensor = index, .row0 = 0, .rows = t.shape.empty() ? 0 : t.shape[0], .bytes = t.nbytes}};
  }
  const uint64_t row = cut_row_bytes(t);
  const int64_t units = (t.shape[0] + unit - 1) / unit;
  const int64_t fit = std::max<int64_t>(1, static_cast<int64_t>(part_bytes / (unit * row)));
  const int64_t n = (units + fit - 1) / fit;
  const int64_t rows = (units + n - 1) / n * unit;  // about equal parts, whole units each
  std::vector<WeightPart> parts;
  for (int64_t r0 = 0; r0 < t.shape[0]; r0 += rows) {
    const int64_t r = std::min(rows, t.shape[0] - r0);
    parts.push_back({.tensor = index,
                     .row0 = r0,
                     .rows = r,
                     .offset = static_cast<uint64_t>(r0) * row,
                     .bytes = static_cast<uint64_t>(r) * row});
  }
  return parts;
}

uint64_t weight_row_slot_bytes(const TensorInfo& t) {
  if (t.shape.size() != 2 || t.shape[0] <= 0) return 0;
  const uint64_t row = t.nbytes / static_cast<uint64_t>(t.shape[0]);
  const bool aligned = row % kAlignment == 0 && t.offset % kAlignment == 0;
  return round_up(row, kAlignment) + (aligned ? 0 : kAlignment);
}

std::vector<TensorInfo> weight_tensors(const Package& package,
                                       const std::vector<std::string>& names) {
  std::vector<TensorInfo> out;
  std::unordered_set<std::string> seen;
  for (const std::string& name : names) {
    if (seen.insert(name).second) out.push_back(package.tensor(name));
  }
  return out;
}

std::vector<WeightHome> weight_homes(std::span<const TensorInfo> tensors,
                                     const WeightPlacement& placement) {
  const std::unordered_set<std::string> rows(placement.row_tensors.begin(),
                                             placement.row_tensors.end());
  const std::unordered_set<std::string> pinned(placement.pinned_tensors.begin(),
                                               placement.pinned_tensors.end());
  const std::unordered_set<int> streamed(placement.streamed_layers.begin(),
                                         placement.streamed_layers.end());
  std::vector<WeightHome> homes;
  homes.reserve(tensors.size());
  for (const TensorInfo& t : tensors) {
    if (rows.count(t.name) != 0) {
      homes.push_back(WeightHome::kWeightHomeRows);
    } else if (streamable(t) && streamed.count(t.layer) != 0 && pinned.count(t.name) == 0) {
      homes.push_back(WeightHome::kWeightHomeStreamed);
    } else {
      homes.push_back(WeightHome::kWeightHomeResident);
    }
  }
  return homes;
}

std::vector<std::vector<WeightPart>> weight_chunks(std::span<const TensorInfo> tensors,
                                                   std::span<const WeightHome> homes,
                                                   const WeightPlacement& placement) {
  std::vector<std::vector<WeightPart>> chunks;
  for (int layer : placement.streamed_layers) {
    uint64_t used = 0;
    bool first = true;  // a layer's first matrix opens a chunk: a chunk is one layer's
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (homes[i] != WeightHome::kWeightHomeStreamed || tensors[i].layer != layer) continue;
      const bool split = contains(placement.split_tensors, tensors[i].name);
      for (const WeightPart& part : weight_parts(tensors[i], i, placement.part_bytes, split)) {
        if (first || used + part.slot() > placement.section_bytes) {
          chunks.emplace_back();
          used = 0;
          first = false;
        }
        chunks.back().push_back(part);
        used += part.slot();
      }
    }
  }
  return chunks;
}

WeightPlacement weight_placement(std::span<const TensorInfo> all,
                                 const WeightPlacementOptions& options) {
  WeightPlacement p;
  std::map<int, uint64_t> layer_bytes;
  const int64_t max_rows = options.max_rows;
  p.max_rows = max_rows;
  uint64_t largest = 0;  // streamed matrix
  for (const TensorInfo& t : all) {
    const uint64_t bytes = slot_bytes(t);
    const uint64_t row_buffer =
        weight_row_slot_bytes(t) * static_cast<uint64_t>(std::max<int64_t>(max_rows, 0));
    if (t.shape.size() == 2 && max_rows > 0 && row_buffer < bytes &&
        contains(options.row_tensors, t.name)) {
      p.row_tensors.push_back(t.name);
      p.row_buffer_bytes += row_buffer;
      p.base_bytes += row_buffer;
    } else if (streamable(t)) {
      layer_bytes[t.layer] += bytes;
      largest = std::max(largest, bytes);
      // The least section: the largest part any streamed matrix can be cut to.
      const bool split = contains(options.split_tensors, t.name);
      p.section_bytes = std::max(p.section_bytes, split ? weight_min_part_bytes(t) : bytes);
    } else {
      p.base_bytes += bytes;
    }
  }
  uint64_t total = 0;
  for (const auto& [layer, bytes] : layer_bytes) total += bytes;
  if (options.weight_budget < p.minimum()) return p;  // caller refuses with minimum()
  const uint64_t avail = options.weight_budget - p.base_bytes;
  if (avail >= total || layer_bytes.empty()) {
    for (const auto& [layer, bytes] : layer_bytes) p.resident_layers.push_back(layer);
    p.resident_bytes = p.base_bytes + total;
    return p;
  }
  // Sections hold one matrix (the largest), or one part of about kStreamPartBytes where the
  // matrices may be cut; auto: see kAutoRingShare, at least kMinAutoSections.
  const uint64_t section = std::max(p.section_bytes, std::min({kStreamPartBytes, largest, avail}));
  p.part_bytes = section;
  // Parts (matrices, or their row parts) of each layer: a section per part at most is useful.
  std::map<int, int> layer_parts;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!streamable(all[i]) || contains(p.row_tensors, all[i].name)) continue;
    const bool split = contains(options.split_tensors, all[i].name);
    layer_parts[all[i].layer] += static_cast<int>(weight_parts(all[i], i, section, split).size());
  }
  const uint64_t fit = avail / section;
  uint64_t want = static_cast<uint64_t>(options.ring_sections);
  if (options.ring_sections <= 0) {
    const uint64_t ring =
        std::min({std::max(avail / kAutoRingShare, kMinAutoRingBytes), avail / 4, kAutoRingBytes});
    want = std::max<uint64_t>(kMinAutoSections, ring / section);
    want = std::min<uint64_t>(want, kMaxAutoSections);
  }
  int k = static_cast<int>(std::min<uint64_t>(want, std::max<uint64_t>(fit, 1)));
  std::vector<int> layers;
  for (const auto& [layer, bytes] : layer_bytes) layers.push_back(layer);
  for (;;) {
    const std::vector<bool> resident =
        resident_spread(layers, layer_bytes, avail - static_cast<uint64_t>(k) * section);
    p.resident_layers.clear();
    p.streamed_layers.clear();
    int matrices = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (resident[i]) {
        p.resident_layers.push_back(layers[i]);
      } else {
        p.streamed_layers.push_back(layers[i]);
        matrices += layer_parts[layers[i]];
      }
    }
    if (matrices >= k) break;
    k = std::max(matrices, 1);  // more sections than streamed parts would sit idle
  }
  p.sections = k;
  p.resident_bytes = p.base_bytes;
  for (int layer : p.resident_layers) p.resident_bytes += layer_bytes[layer];
  // What is left after the ring and the resident layers keeps single matrices of streamed
  // layers resident (from the last streamed layer back), so fewer bytes are read per token.
  uint64_t left = avail + p.base_bytes - p.resident_bytes - static_cast<uint64_t>(k) * section;
  std::map<int, uint64_t> streamed;
  for (int layer : p.streamed_layers) streamed[layer] = layer_bytes[layer];
  for (auto it = p.streamed_layers.rbegin(); it != p.streamed_layers.rend() && left >= kAlignment;
       ++it) {
    for (const TensorInfo& t : all) {
      const uint64_t bytes = slot_bytes(t);
      if (t.layer != *it || !streamable(t) || bytes > left) continue;
      if (contains(p.row_tensors, t.name)) continue;
      if (streamed[t.layer] == bytes) continue;  // keep at least one matrix streamed
      p.pinned_tensors.push_back(t.name);
      streamed[t.layer] -= bytes;
      p.resident_bytes += bytes;
      left -= bytes;
    }
  }
  // Sections shrink to the largest part still streamed; the chunks are those the store packs.
  const std::vector<WeightHome> homes = weight_homes(all, p);
  p.section_bytes = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    if (homes[i] != WeightHome::kWeightHomeStreamed) continue;
    const bool split = contains(options.split_tensors, all[i].name);
    const std::vector<WeightPart> parts = weight_parts(all[i], i, p.part_bytes, split);
    if (parts.size() > 1) p.split_tensors.push_back(all[i].name);
    for (const WeightPart& part : parts) p.section_bytes = std::max(p.section_bytes, part.slot());
  }
  // Auto ring of small matrices: the same bytes as fewer, larger sections (up to
  // kStreamRequestBytes, keeping kMinMergedSections), so that a chunk packs a run of a layer's
  // matrices, read by one request where the file has them side by side. Requests per token
  // fall by the merge factor while the bytes in flight stay about the same, so the disk's
  // bandwidth, not its per-request cost, sets the time (small and quantized matrices).
  if (options.ring_sections <= 0 && p.section_bytes > 0) {
    const uint64_t ring = static_cast<uint64_t>(k) * p.section_bytes;
    uint64_t merge = std::min(kStreamRequestBytes / p.section_bytes,
                              ring / (kMinMergedSections * p.section_bytes));
    // A factor that divides the sections: the ring keeps every byte the budget gave it.
    while (merge > 1 && static_cast<uint64_t>(k) % merge != 0) --merge;
    if (merge > 1) {
      p.section_bytes *= merge;
      k = static_cast<int>(ring / p.section_bytes);
      p.sections = k;
    }
  }
  p.chunks = static_cast<int>(weight_chunks(all, homes, p).size());
  for (const auto& [layer, bytes] : streamed) p.streamed_bytes += bytes;
  p.ring_bytes = static_cast<uint64_t>(k) * p.section_bytes;
  return p;
}

WeightPlacement weight_placement(const Package& package, const std::vector<std::string>& names,
                                 uint64_t weight_budget, int ring_sections,
                                 const std::vector<std::string>& row_tensors, int64_t max_rows,
                                 const std::vector<std::string>& split_tensors) {
  const std::vector<TensorInfo> tensors = weight_tensors(package, names);
  return weight_placement(tensors, {.weight_budget = weight_budget,
                                    .ring_sections = ring_sections,
                                    .row_tensors = row_tensors,
                                    .max_rows = max_rows,
                                    .split_tensors = split_tensors});
}

}  // namespace tierlm::detail
