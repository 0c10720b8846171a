// The resident weight store: bytes equal the file, one host buffer per layer, budget and
// damaged-file errors; FileReader's short-read error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "io/file_reader.hpp"
#include "tierlm/core/error.hpp"
#include "tiny_package.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {
namespace {

using tierlm::testing::TempDir;
using tierlm::testing::write_tiny_package;

std::vector<std::string> all_tensors(const Package& p) {
  std::vector<std::string> names;
  for (const TensorInfo& t : p.tensors) names.push_back(t.name);
  return names;
}

TEST(WeightStore, ResidentBytesEqualTheFile) {
  TempDir dir;
  const Package p = package_open(write_tiny_package(dir.path()));
  HostTier host(64 << 20);
  const auto names = all_tensors(p);
  auto store = weight_store_resident(p, host, names, WeightStoreOptions{true});
  FileReader file(p.file_path("weights-0.bin"));
  uint64_t total = 0;
  for (const TensorInfo& t : p.tensors) {
    const int index = store->index(t.name);
    EXPECT_EQ(store->info(index).name, t.name);
    std::vector<char> expected(t.nbytes);
    file.read(expected.data(), t.nbytes, t.offset, t.name);
    store->begin_layer(t.layer);
    EXPECT_EQ(std::memcmp(store->data(index), expected.data(), t.nbytes), 0) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(store->data(index)) % 4096, 0u) << t.name;
    store->end_layer(t.layer);
    total += t.nbytes;
  }
  const WeightStoreStats s = store->stats();
  EXPECT_EQ(s.disk_bytes_read, total);
  EXPECT_EQ(s.tensors, p.tensors.size());
  EXPECT_EQ(s.resident_bytes, resident_weight_bytes(p, names));
  EXPECT_EQ(host.stats().current, s.resident_bytes);
  EXPECT_EQ(host.stats().allocations, 3u);  // layers -1, 0, 1
  EXPECT_THROW(store->index("missing"), Error);
}

TEST(WeightStore, BudgetIsEnforced) {
  TempDir dir;
  const Package p = package_open(write_tiny_package(dir.path()));
  const auto names = all_tensors(p);
  HostTier host(resident_weight_bytes(p, names) - 4096);
  try {
    weight_store_resident(p, host, names, {});
    FAIL() << "loaded past the budget";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
  }
  EXPECT_EQ(host.stats().current, 0u);  // what was loaded before the failure is released
}

TEST(FileReader, ShortReadNamesFileTensorAndOffset) {
  TempDir dir;
  const std::string path = dir.path() + "/f.bin";
  std::ofstream(path) << std::string(100, 'x');
  FileReader file(path);
  EXPECT_EQ(file.size(), 100u);
  char buf[64];
  file.read(buf, 64, 36, "t");
  try {
    file.read(buf, 64, 40, "tensor `x`");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorCorrupt);
    const std::string what = e.what();
    for (const char* part : {"tensor `x`", "offset 40", "f.bin", "truncated"}) {
      EXPECT_NE(what.find(part), std::string::npos) << what;
    }
  }
  EXPECT_THROW(FileReader(dir.path() + "/none.bin"), Error);
}

struct TinySpecForStreaming {
  tierlm::testing::TinySpec spec = [] {
    tierlm::testing::TinySpec s;
    s.layers = 7;
    s.hidden = 40;
    s.inter = 67;
    return s;
  }();
};

uint64_t pages(uint64_t n) { return (n + 4095) / 4096 * 4096; }

// Streaming: placement under a weight budget, sections of one matrix (smaller than a layer),
// bytes equal the file through the ring over several passes, out-of-order access restarts the
// ring, the tier holds resident + ring.
TEST(WeightStore, StreamingPlacementAndRing) {
  TempDir dir;
  TinySpecForStreaming spec;
  const Package p = package_open(write_tiny_package(dir.path(), spec.spec));
  const auto names = all_tensors(p);
  uint64_t layer_bytes = 0, largest = 0;
  int layer_matrices = 0;
  for (const TensorInfo& t : p.tensors) {
    if (t.layer != 0 || t.shape.size() < 2) continue;
    layer_bytes += pages(t.nbytes);
    largest = std::max(largest, pages(t.nbytes));
    ++layer_matrices;
  }
  const WeightPlacement probe = weight_placement(p, names, 0, 0);
  EXPECT_EQ(probe.section_bytes, largest);  // a section holds one matrix, not a layer
  ASSERT_LT(probe.section_bytes, layer_bytes);
  EXPECT_TRUE(probe.streamed_layers.empty());  // below the minimum: nothing planned
  const WeightPlacement none = weight_placement(p, names, probe.minimum() - 1, 0);
  EXPECT_TRUE(none.streamed_layers.empty());
  EXPECT_EQ(none.sections, 0);
  const WeightPlacement one = weight_placement(p, names, probe.minimum(), 0);
  EXPECT_EQ(one.sections, 1);
  EXPECT_EQ(one.ring_bytes, largest);
  EXPECT_EQ(one.streamed_layers.size(), static_cast<size_t>(spec.spec.layers));
  EXPECT_GT(one.chunks, spec.spec.layers);  // several chunks per layer
  EXPECT_LE(one.chunks, spec.spec.layers * layer_matrices);
  const WeightPlacement all = weight_placement(p, names, 1ull << 40, 0);
  EXPECT_EQ(all.sections, 0);
  EXPECT_TRUE(all.streamed_layers.empty());
  const WeightPlacement three =
      weight_placement(p, names, probe.base_bytes + 3 * largest + 2 * layer_bytes, 3);
  EXPECT_EQ(three.sections, 3);
  EXPECT_EQ(three.ring_bytes, 3 * largest);
  EXPECT_EQ(three.resident_layers.size(), 2u);
  EXPECT_TRUE(three.pinned_tensors.empty());
  const WeightPlacement auto_two =
      weight_placement(p, names, probe.minimum() + largest + layer_bytes + 1, 0);
  EXPECT_EQ(auto_two.sections, 2);  // the auto ring is at least two sections when it fits

  // Half a layer left over: matrices of the last streamed layer stay resident.
  const uint64_t half_budget = probe.minimum() + largest + layer_bytes / 2;
  const WeightPlacement pinned = weight_placement(p, names, half_budget, 0);
  EXPECT_EQ(pinned.sections, 2);
  EXPECT_TRUE(pinned.resident_layers.empty());
  EXPECT_FALSE(pinned.pinned_tensors.empty());
  EXPECT_LT(pinned.streamed_bytes, spec.spec.layers * layer_bytes);
  EXPECT_LE(pinned.resident_bytes + pinned.ring_bytes, half_budget);

  for (const WeightPlacement& plan : {one, three, pinned}) {
    HostTier host(plan.resident_bytes + plan.ring_bytes);
    auto store = weight_store_streaming(p, host, names, plan, {});
    EXPECT_EQ(host.stats().current, plan.resident_bytes + plan.ring_bytes);
    FileReader file(p.file_path("weights-0.bin"));
    auto check_layer = [&](int layer) {
      store->begin_layer(layer);
      for (const TensorInfo& t : p.tensors) {
        if (t.layer != layer && t.layer != kGlobalLayer) continue;
        std::vector<char> expected(t.nbytes);
        file.read(expected.data(), t.nbytes, t.offset, t.name);
        const int index = store->index(t.name);
        const void* data = store->data(index);
        ASSERT_NE(data, nullptr) << t.name;
        EXPECT_EQ(std::memcmp(data, expected.data(), t.nbytes), 0) << t.name;
        EXPECT_EQ(reinterpret_cast<uintptr_t>(data) % 4096, 0u) << t.name;
        store->release(index);
      }
      store->end_layer(layer);
    };
    for (int pass = 0; pass < 3; ++pass) {
      check_layer(kGlobalLayer);
      for (int layer = 0; layer < spec.spec.layers; ++layer) check_layer(layer);
      check_layer(kGlobalLayer);
    }
    const StreamStats s = store->stream_stats();
    EXPECT_EQ(s.ring_restarts, 0u);
    EXPECT_EQ(s.stream_bytes_read, 3 * plan.streamed_bytes);
    EXPECT_EQ(s.chunk_waits, 3u * plan.chunks);
    EXPECT_EQ(s.layer_waits, 3u * plan.streamed_layers.size());
    check_layer(spec.spec.layers - 1);  // out of order
    check_layer(0);
    EXPECT_GE(store->stream_stats().ring_restarts, 1u);
    EXPECT_EQ(host.stats().peak, plan.resident_bytes + plan.ring_bytes);
    EXPECT_EQ(store->events().size(), store->stream_stats().layer_waits);
  }
}

// A one-section ring cannot serve a second matrix while the first is still held: data() says
// so (the executor must release each tensor after its op) rather than overwrite it.
TEST(WeightStore, StreamingRingNeedsRelease) {
  TempDir dir;
  TinySpecForStreaming spec;
  const Package p = package_open(write_tiny_package(dir.path(), spec.spec));
  const auto names = all_tensors(p);
  const WeightPlacement plan =
      weight_placement(p, names, weight_placement(p, names, 0, 0).minimum(), 0);
  ASSERT_EQ(plan.sections, 1);
  HostTier host(plan.resident_bytes + plan.ring_bytes);
  auto store = weight_store_streaming(p, host, names, plan, {});
  std::vector<int> matrices;
  for (const TensorInfo& t : p.tensors) {
    if (t.layer == 0 && t.shape.size() >= 2) matrices.push_back(store->index(t.name));
  }
  store->begin_layer(0);
  store->data(matrices.front());
  try {
    store->data(matrices.back());
    FAIL() << "a held section was reused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("release"), std::string::npos) << e.what();
  }
  store->end_layer(0);  // end_layer frees what the layer held
  store->begin_layer(1);
  for (const TensorInfo& t : p.tensors) {
    if (t.layer != 1 || t.shape.size() < 2) continue;
    const int index = store->index(t.name);
    EXPECT_NE(store->data(index), nullptr);
    store->release(index);
  }
  store->end_layer(1);
  EXPECT_EQ(host.stats().peak, plan.resident_bytes + plan.ring_bytes);
}

// Embedding rows on demand: the table is not resident, its row buffers (max_rows aligned
// spans) are, so the minimum drops; rows() returns the file's bytes for any ids.
TEST(WeightStore, StreamingEmbeddingRowsOnDemand) {
  TempDir dir;
  TinySpecForStreaming spec;
  spec.spec.vocab = 1009;  // a table of 1009 rows of 160 bytes: 40 pages
  const Package p = package_open(write_tiny_package(dir.path(), spec.spec));
  const auto names = all_tensors(p);
  const TensorInfo& table = p.tensor("embed.weight");
  const std::vector<std::string> rows_of = {"embed.weight"};
  const WeightPlacement whole = weight_placement(p, names, 0, 0);
  const WeightPlacement probe = weight_placement(p, names, 0, 0, rows_of, 3);
  ASSERT_EQ(probe.row_tensors, rows_of);
  EXPECT_EQ(probe.row_buffer_bytes, 3u * 8192);  // rows straddle pages: two pages each
  EXPECT_EQ(whole.minimum() - probe.minimum(), pages(table.nbytes) - 3 * 8192);
  // Not worth it when the row buffers exceed the table.
  EXPECT_TRUE(weight_placement(p, names, 0, 0, rows_of, 41).row_tensors.empty());

  const WeightPlacement plan = weight_placement(p, names, probe.minimum(), 0, rows_of, 3);
  ASSERT_EQ(plan.sections, 1);
  HostTier host(plan.resident_bytes + plan.ring_bytes);
  auto store = weight_store_streaming(p, host, names, plan, {});
  EXPECT_EQ(host.stats().current, plan.resident_bytes + plan.ring_bytes);
  const int index = store->index("embed.weight");
  FileReader file(p.file_path("weights-0.bin"));
  const uint64_t row = table.nbytes / 1009;
  uint64_t spans = 0;  // the aligned pages around each row: what O_DIRECT reads
  for (const std::vector<int32_t>& ids :
       {std::vector<int32_t>{0, 1008, 25}, {25, 25}, {1}, {1008, 511, 0}}) {
    const void* const* rows = store->rows(index, ids.data(), ids.size());
    ASSERT_NE(rows, nullptr);
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint64_t at = table.offset + ids[i] * row;
      spans += pages(at + row) - at / 4096 * 4096;
      std::vector<char> expected(row);
      file.read(expected.data(), row, table.offset + ids[i] * row, "row");
      EXPECT_EQ(std::memcmp(rows[i], expected.data(), row), 0) << ids[i];
    }
  }
  EXPECT_EQ(store->stream_stats().row_bytes_read, spans);
  const std::vector<int32_t> too_many = {1, 2, 3, 4};
  EXPECT_THROW(store->rows(index, too_many.data(), 4), Error);
  const int32_t outside = 1009;
  EXPECT_THROW(store->rows(index, &outside, 1), Error);
  EXPECT_THROW(store->data(index), Error);  // the whole table is not there
  EXPECT_EQ(store->rows(store->index("final_norm.weight"), &outside, 1), nullptr);
  EXPECT_EQ(host.stats().peak, plan.resident_bytes + plan.ring_bytes);
}

}  // namespace
}  // namespace tierlm::detail
