// weight_placement on its own: records built by hand (no package, no I/O), sizes worked out in
// the comments: budget 0, exactly fitting, one byte short, the minimum and one byte under it,
// a ring asked larger than the budget, odd sizes, rows on demand, and the chunks the store packs.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "weights/weight_placement.hpp"

namespace tierlm::detail {
namespace {

constexpr uint64_t kPage = 4096;

TensorInfo tensor(const std::string& name, int layer, std::vector<int64_t> shape, uint64_t nbytes,
                  uint64_t offset = 0) {
  TensorInfo t;
  t.name = name;
  t.layer = layer;
  t.shape = std::move(shape);
  t.nbytes = nbytes;
  t.offset = offset;
  return t;
}

// Three layers of odd-sized matrices q (5000 bytes: 2 pages), k (4096: 1 page), mlp (12289:
// 4 pages) and a norm (100: 1 page); an embedding of 50 rows of 200 bytes (10000: 3 pages) and a
// final norm. Base = embedding + 4 norms = 7 pages; each layer's matrices 7 pages; the largest
// matrix 4 pages.
std::vector<TensorInfo> model() {
  std::vector<TensorInfo> t = {tensor("embed", -1, {50, 50}, 10000)};
  for (int l = 0; l < 3; ++l) {
    const std::string p = "l" + std::to_string(l) + ".";
    t.push_back(tensor(p + "norm", l, {25}, 100));
    t.push_back(tensor(p + "q", l, {50, 25}, 5000));
    t.push_back(tensor(p + "k", l, {32, 32}, 4096));
    t.push_back(tensor(p + "mlp", l, {12289, 1}, 12289));
  }
  t.push_back(tensor("norm", -1, {25}, 100));
  return t;
}

constexpr uint64_t kBase = 7 * kPage;
constexpr uint64_t kLayer = 7 * kPage;
constexpr uint64_t kLargest = 4 * kPage;

WeightPlacement place(uint64_t budget, int ring_sections = 0) {
  return weight_placement(model(), {.weight_budget = budget, .ring_sections = ring_sections});
}

TEST(WeightPlacement, BudgetZeroPlansNothing) {
  const WeightPlacement p = place(0);
  EXPECT_EQ(p.base_bytes, kBase);
  EXPECT_EQ(p.section_bytes, kLargest);
  EXPECT_EQ(p.minimum(), kBase + kLargest);
  EXPECT_TRUE(p.resident_layers.empty());
  EXPECT_TRUE(p.streamed_layers.empty());
  EXPECT_EQ(p.sections, 0);
  EXPECT_EQ(p.chunks, 0);
}

TEST(WeightPlacement, ExactlyFittingKeepsEverythingResident) {
  for (uint64_t budget : {kBase + 3 * kLayer, kBase + 3 * kLayer + 1, uint64_t{1} << 40}) {
    const WeightPlacement p = place(budget);
    EXPECT_EQ(p.resident_layers, (std::vector<int>{0, 1, 2})) << budget;
    EXPECT_TRUE(p.streamed_layers.empty()) << budget;
    EXPECT_EQ(p.resident_bytes, kBase + 3 * kLayer) << budget;
    EXPECT_EQ(p.sections, 0) << budget;
    EXPECT_EQ(p.ring_bytes, 0u) << budget;
    EXPECT_EQ(p.streamed_bytes, 0u) << budget;
  }
}

TEST(WeightPlacement, OneByteShortStreamsAndPinsWhatIsLeft) {
  // avail = 21 pages - 1 byte; auto ring = 2 sections (8 pages): room for one layer (7 pages),
  // the middle one of three (spread); layers 0 and 2 stream. Left: 6 pages - 1 byte pins l2.q
  // (2) and l2.k (1), then l0.q (2); 1 page - 1 byte pins nothing more. Still streamed: l0.k,
  // l0.mlp, l2.mlp -> sections of 4 pages, chunks [l0.k] [l0.mlp] (5 pages do not fit one)
  // [l2.mlp].
  const uint64_t budget = kBase + 3 * kLayer - 1;
  const WeightPlacement p = place(budget);
  EXPECT_EQ(p.sections, 2);
  EXPECT_EQ(p.resident_layers, (std::vector<int>{1}));
  EXPECT_EQ(p.streamed_layers, (std::vector<int>{0, 2}));
  EXPECT_EQ(p.pinned_tensors, (std::vector<std::string>{"l2.q", "l2.k", "l0.q"}));
  EXPECT_EQ(p.resident_bytes, kBase + kLayer + 5 * kPage);
  EXPECT_EQ(p.section_bytes, kLargest);
  EXPECT_EQ(p.ring_bytes, 2 * kLargest);
  EXPECT_EQ(p.streamed_bytes, 9 * kPage);
  EXPECT_EQ(p.chunks, 3);
  EXPECT_LE(p.resident_bytes + p.ring_bytes, budget);

  const std::vector<TensorInfo> t = model();
  const std::vector<WeightHome> homes = weight_homes(t, p);
  std::vector<std::string> streamed;
  for (size_t i = 0; i < t.size(); ++i) {
    if (homes[i] == WeightHome::kWeightHomeStreamed) streamed.push_back(t[i].name);
  }
  EXPECT_EQ(streamed, (std::vector<std::string>{"l0.k", "l0.mlp", "l2.mlp"}));
  std::vector<std::vector<std::string>> chunks;
  for (const std::vector<WeightPart>& c : weight_chunks(t, homes, p)) {
    chunks.emplace_back();
    for (const WeightPart& part : c) chunks.back().push_back(t[part.tensor].name);
  }
  EXPECT_EQ(chunks, (std::vector<std::vector<std::string>>{{"l0.k"}, {"l0.mlp"}, {"l2.mlp"}}));
}

TEST(WeightPlacement, AtTheMinimumOneSectionStreamsEveryLayer) {
  const WeightPlacement p = place(kBase + kLargest);
  EXPECT_EQ(p.sections, 1);
  EXPECT_TRUE(p.resident_layers.empty());
  EXPECT_EQ(p.streamed_layers, (std::vector<int>{0, 1, 2}));
  EXPECT_TRUE(p.pinned_tensors.empty());
  EXPECT_EQ(p.resident_bytes, kBase);
  EXPECT_EQ(p.streamed_bytes, 3 * kLayer);
  EXPECT_EQ(p.chunks, 6);  // per layer: [q k] (3 pages) and [mlp] (4 pages)
  const WeightPlacement under = place(kBase + kLargest - 1);
  EXPECT_TRUE(under.streamed_layers.empty());
  EXPECT_TRUE(under.resident_layers.empty());
  EXPECT_EQ(under.sections, 0);
}

TEST(WeightPlacement, RingLargerThanTheBudgetGetsWhatFits) {
  // 100 sections asked, 3 fit (avail = 3 sections): all layers stream through 3.
  const WeightPlacement p = place(kBase + 3 * kLargest, 100);
  EXPECT_EQ(p.sections, 3);
  EXPECT_EQ(p.ring_bytes, 3 * kLargest);
  EXPECT_TRUE(p.resident_layers.empty());
  EXPECT_LE(p.resident_bytes + p.ring_bytes, kBase + 3 * kLargest);
  // One asked, one given: the rest of the budget keeps the middle layer resident and pins from
  // the end.
  const WeightPlacement one = place(kBase + kLargest + kLayer + kPage, 1);
  EXPECT_EQ(one.sections, 1);
  EXPECT_EQ(one.resident_layers, (std::vector<int>{1}));
  EXPECT_EQ(one.pinned_tensors, (std::vector<std::string>{"l2.k"}));
}

TEST(WeightPlacement, PageSizePlusOneRoundsUpAndGetsItsOwnChunk) {
  // a: 4097 bytes (2 pages), b: 9 bytes (1 page), one layer; a budget one byte short of both.
  // 8 sections asked, 1 fits; 1 page - 1 byte left pins nothing; a fills the section, so b
  // starts a second chunk.
  const std::vector<TensorInfo> t = {tensor("a", 0, {1, 4097}, 4097), tensor("b", 0, {1, 9}, 9)};
  const WeightPlacement p =
      weight_placement(t, {.weight_budget = 3 * kPage - 1, .ring_sections = 8});
  EXPECT_EQ(p.base_bytes, 0u);
  EXPECT_EQ(p.section_bytes, 2 * kPage);
  EXPECT_EQ(p.streamed_layers, (std::vector<int>{0}));
  EXPECT_EQ(p.sections, 1);
  EXPECT_TRUE(p.pinned_tensors.empty());
  EXPECT_EQ(p.chunks, 2);
  EXPECT_EQ(p.streamed_bytes, 3 * kPage);
  // Page size - 1 and 1 byte round to one page each: sections of one page, a chunk each.
  const std::vector<TensorInfo> u = {tensor("a", 0, {1, 4095}, 4095), tensor("b", 0, {1, 1}, 1)};
  const WeightPlacement q = weight_placement(u, {.weight_budget = 2 * kPage - 1});
  EXPECT_EQ(q.section_bytes, kPage);
  EXPECT_EQ(q.sections, 1);
  EXPECT_EQ(q.chunks, 2);
}

// 60 layers of small matrices a, b (1 page), c (2 pages), d (1 page): 5 pages a layer, the
// largest 2 pages. A budget of 160 pages: the auto ring is 16 sections of 2 pages (a quarter
// of the budget, under kMinAutoRingBytes, allows 20; 16 is the cap), 32 pages.
TEST(WeightPlacement, AutoRingMergesSmallMatricesIntoSectionsOfSeveral) {
  std::vector<TensorInfo> t;
  for (int l = 0; l < 60; ++l) {
    const std::string p = "l" + std::to_string(l) + ".";
    t.push_back(tensor(p + "a", l, {32, 32}, kPage));
    t.push_back(tensor(p + "b", l, {32, 32}, kPage - 1));
    t.push_back(tensor(p + "c", l, {64, 32}, 2 * kPage));
    t.push_back(tensor(p + "d", l, {32, 32}, 1));
  }
  const WeightPlacement one =
      weight_placement(t, {.weight_budget = 160 * kPage, .ring_sections = 16});
  const WeightPlacement merged = weight_placement(t, {.weight_budget = 160 * kPage});
  // Asked for: 16 sections of one matrix. Auto: the same 32 pages as 4 sections of 8 (16 / 4
  // keeps 4), so each streamed layer (5 pages) is one chunk.
  EXPECT_EQ(one.sections, 16);
  EXPECT_EQ(one.section_bytes, 2 * kPage);
  EXPECT_EQ(merged.sections, 4);
  EXPECT_EQ(merged.section_bytes, 8 * kPage);
  EXPECT_EQ(merged.ring_bytes, one.ring_bytes);
  EXPECT_EQ(merged.resident_layers, one.resident_layers);
  EXPECT_EQ(merged.pinned_tensors, one.pinned_tensors);
  EXPECT_EQ(merged.streamed_bytes, one.streamed_bytes);
  EXPECT_EQ(merged.chunks, static_cast<int>(merged.streamed_layers.size()));
  EXPECT_GT(one.chunks, 2 * merged.chunks);
  const std::vector<WeightHome> homes = weight_homes(t, merged);
  for (const std::vector<WeightPart>& c : weight_chunks(t, homes, merged)) {
    for (const WeightPart& part : c) {
      EXPECT_EQ(t[part.tensor].layer, t[c.front().tensor].layer);  // never across layers
    }
  }
  // A ring too small to keep 4 merged sections is left as it is.
  const WeightPlacement small = weight_placement(t, {.weight_budget = 40 * kPage});
  EXPECT_EQ(small.section_bytes, 2 * kPage);
}

TEST(WeightPlacement, OnlySmallTensorsNeedOnlyTheBase) {
  const std::vector<TensorInfo> t = {tensor("n", 0, {7}, 28), tensor("m", -1, {3}, 12)};
  EXPECT_TRUE(weight_placement(t, {.weight_budget = 2 * kPage - 1}).resident_layers.empty());
  const WeightPlacement p = weight_placement(t, {.weight_budget = 2 * kPage});
  EXPECT_EQ(p.minimum(), 2 * kPage);
  EXPECT_EQ(p.resident_bytes, 2 * kPage);
  EXPECT_EQ(p.sections, 0);
}

TEST(WeightPlacement, RowsOnDemandWhenTheirBuffersAreSmaller) {
  // 200-byte rows straddle pages: 2 pages a row. One row (2 pages) < the table (3 pages).
  const WeightPlacement one = weight_placement(model(), {.row_tensors = {"embed"}, .max_rows = 1});
  EXPECT_EQ(one.row_tensors, (std::vector<std::string>{"embed"}));
  EXPECT_EQ(one.row_buffer_bytes, 2 * kPage);
  EXPECT_EQ(one.base_bytes, kBase - 3 * kPage + 2 * kPage);
  EXPECT_EQ(weight_homes(model(), one).front(), WeightHome::kWeightHomeRows);
  // Two rows (4 pages) are not smaller than the table; without max_rows nothing is by rows.
  EXPECT_TRUE(
      weight_placement(model(), {.row_tensors = {"embed"}, .max_rows = 2}).row_tensors.empty());
  EXPECT_TRUE(weight_placement(model(), {.row_tensors = {"embed"}}).row_tensors.empty());
  // Page-sized rows at an aligned offset need one page each.
  const std::vector<TensorInfo> t = {tensor("e", -1, {3, 1024}, 3 * kPage, 8 * kPage)};
  EXPECT_EQ(weight_row_slot_bytes(t[0]), kPage);
  EXPECT_EQ(weight_placement(t, {.row_tensors = {"e"}, .max_rows = 2}).row_buffer_bytes, 2 * kPage);
  EXPECT_EQ(weight_row_slot_bytes(tensor("e", -1, {3, 1024}, 3 * kPage, 100)), 2 * kPage);
}

// Resident layers spread over the stack: 60 layers of 5 pages, room for 3 -> the middles of
// three runs of 20 (10, 30, 50); layers of other sizes where the spread set would not fit
// keep the first ones.
TEST(WeightPlacement, ResidentLayersSpreadOverTheStack) {
  std::vector<TensorInfo> t;
  for (int l = 0; l < 60; ++l) {
    t.push_back(tensor("l" + std::to_string(l) + ".a", l, {5, 4096}, 5 * kPage));
  }
  const WeightPlacement p =
      weight_placement(t, {.weight_budget = 15 * kPage + 4 * 5 * kPage, .ring_sections = 4});
  EXPECT_EQ(p.resident_layers, (std::vector<int>{10, 30, 50}));
  EXPECT_EQ(p.streamed_layers.size(), 57u);
  EXPECT_TRUE(p.pinned_tensors.empty());
  // Layer 10 twice the size: 3 at 5 pages fit in order (0, 1, 2) but not 10, 30, 50.
  t[10].nbytes = 10 * kPage;
  t[10].shape[0] = 10;
  const WeightPlacement q =
      weight_placement(t, {.weight_budget = 15 * kPage + 4 * 10 * kPage, .ring_sections = 4});
  EXPECT_EQ(q.resident_layers, (std::vector<int>{0, 1, 2}));
}

// Parts on awkward sizes: every row once, in order, each part starting 4 KiB-aligned in the
// file and no larger than asked (or than the smallest aligned run of rows).
void expect_parts_cover(const TensorInfo& t, uint64_t part_bytes, size_t expected) {
  const std::vector<WeightPart> parts = weight_parts(t, 7, part_bytes, true);
  ASSERT_EQ(parts.size(), expected) << t.name;
  int64_t next = 0;
  uint64_t bytes = 0;
  for (const WeightPart& p : parts) {
    EXPECT_EQ(p.tensor, 7u);
    EXPECT_EQ(p.row0, next) << t.name;
    EXPECT_EQ((t.offset + p.offset) % kPage, 0u) << t.name << " part at row " << p.row0;
    EXPECT_EQ(p.offset, bytes) << t.name;
    EXPECT_LE(p.slot(), std::max(part_bytes, weight_min_part_bytes(t))) << t.name;
    next += p.rows;
    bytes += p.bytes;
  }
  EXPECT_EQ(next, t.shape[0]) << t.name;
  EXPECT_EQ(bytes, t.nbytes) << t.name;
}

TEST(WeightPlacement, PartsCutWholeAlignedRuns) {
  // q4_k rows of 2048 columns: 1152 bytes, 32 rows end page-aligned (9 pages). 1001 rows (a
  // prime-ish count: 32 runs, the last 9 rows) in parts of at most 5 runs: 7 parts of 5 runs,
  // the last 41 rows.
  const TensorInfo q4k = tensor("q4k", 0, {1001, 2048}, 1001 * 1152, 64 * kPage);
  EXPECT_EQ(weight_min_part_bytes(q4k), 9 * kPage);
  expect_parts_cover(q4k, 5 * 9 * kPage, 7);
  expect_parts_cover(q4k, 5 * 9 * kPage + kPage - 1, 7);  // a page short of 6 runs
  // q6_k rows of 5632 columns: 4620 bytes, only 1024 rows end page-aligned: 2048 rows cut in
  // two whatever smaller part is asked for.
  const TensorInfo q6k = tensor("q6k", 0, {2048, 5632}, 2048 * 4620, 0);
  EXPECT_EQ(weight_min_part_bytes(q6k), 1024u * 4620);
  expect_parts_cover(q6k, kPage, 2);
  expect_parts_cover(q6k, 1024u * 4620 - 1, 2);
  expect_parts_cover(q6k, 2048u * 4620, 1);  // fits: one part
  // One-byte rows: 4096 a page; 12289 rows (3 pages + 1 byte) in parts of 2 pages: 2.
  expect_parts_cover(tensor("b", 0, {12289, 1}, 12289), 2 * kPage, 2);
  expect_parts_cover(tensor("b", 0, {12289, 1}, 12289), kPage, 4);
  // Cannot be cut: a page-size + 1 row (4096 rows a run, more than it has), an unaligned
  // offset, one row, 1-D; nor when split is false.
  const TensorInfo wide = tensor("w", 0, {3, 4097}, 3 * 4097);
  EXPECT_EQ(weight_min_part_bytes(wide), 4 * kPage);
  EXPECT_EQ(weight_parts(wide, 0, kPage, true).size(), 1u);
  EXPECT_EQ(weight_parts(tensor("u", 0, {1001, 2048}, 1001 * 1152, 100), 0, kPage, true).size(),
            1u);
  EXPECT_EQ(weight_parts(tensor("r", 0, {1, 8192}, 8192), 0, kPage, true).size(), 1u);
  EXPECT_EQ(weight_parts(tensor("v", 0, {8192}, 8192), 0, kPage, true).size(), 1u);
  EXPECT_EQ(weight_parts(q4k, 0, kPage, false).size(), 1u);
}

TEST(WeightPlacement, SplitMatricesLowerTheMinimumAndStreamInParts) {
  // mlp (12289 one-byte rows, 4 pages) may be cut into whole pages; q (2 pages, 100-byte rows)
  // cannot be cut, so the least section is q's 2 pages, not mlp's 4.
  std::vector<std::string> split;
  for (int l = 0; l < 3; ++l) split.push_back("l" + std::to_string(l) + ".mlp");
  const WeightPlacement probe = weight_placement(model(), {.split_tensors = split});
  EXPECT_EQ(probe.minimum(), kBase + 2 * kPage);
  EXPECT_EQ(place(kBase + 2 * kPage).sections, 0);  // unsplit, that is under the minimum
  const WeightPlacement p =
      weight_placement(model(), {.weight_budget = kBase + 2 * kPage, .split_tensors = split});
  EXPECT_EQ(p.sections, 1);
  EXPECT_EQ(p.section_bytes, 2 * kPage);
  EXPECT_EQ(p.part_bytes, 2 * kPage);
  EXPECT_EQ(p.ring_bytes, 2 * kPage);
  EXPECT_EQ(p.streamed_layers, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(p.split_tensors, split);
  EXPECT_EQ(p.streamed_bytes, 3 * kLayer);
  // Per layer: [q] [k] (3 pages do not fit 2) and mlp's 2 parts [8192 rows] [4097 rows].
  EXPECT_EQ(p.chunks, 12);
  const std::vector<TensorInfo> t = model();
  const std::vector<std::vector<WeightPart>> chunks = weight_chunks(t, weight_homes(t, p), p);
  ASSERT_EQ(chunks.size(), 12u);
  EXPECT_EQ(t[chunks[2][0].tensor].name, "l0.mlp");
  EXPECT_EQ(chunks[2][0].rows, 8192);
  EXPECT_EQ(chunks[3][0].row0, 8192);
  EXPECT_EQ(chunks[3][0].rows, 12289 - 8192);
  // With room to spare the matrices stay whole (largest 4 pages < kStreamPartBytes).
  const WeightPlacement roomy =
      weight_placement(model(), {.weight_budget = kBase + 12 * kPage, .split_tensors = split});
  EXPECT_EQ(roomy.section_bytes, kLargest);
  EXPECT_TRUE(roomy.split_tensors.empty());
}

}  // namespace
}  // namespace tierlm::detail
