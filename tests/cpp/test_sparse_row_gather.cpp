// The sparse FFN's row reads below the executor: SparseRowGather's requests (bundled rows
// coalesced, or merged across a gap; unbundled parts apart; a full staging area refused),
// SparseRowLoader's start / finish and SparseReadAhead's rows,
// read through both I/O back ends from a real file and compared with the file's bytes, on row
// sizes a page below and above 4 KiB multiples.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "sparse/sparse_readahead.hpp"
#include "sparse/sparse_row_gather.hpp"
#include "sparse/sparse_row_loader.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tiny_package.hpp"

namespace tierlm {
namespace {

using detail::SparseLayerPlan;
using detail::SparseReadAhead;
using detail::SparseRowGather;
using detail::SparseRowLoader;
using detail::SparseRowSource;

struct RowFile {
  testing::TempDir dir;
  std::string path;
  std::vector<char> bytes;
  SparseLayerPlan plan;

  // n rows of `dim` f32 up elements and `dim` down elements each (row_bytes = 8 dim).
  RowFile(size_t n, size_t dim) : path(dir.path() + "/bundle.bin") {
    plan.n_neurons = n;
    plan.dim = dim;
    plan.row_elems = 2 * dim;
    plan.row_bytes = 2 * dim * 4;
    plan.dtype = DType::kDTypeF32;
    const size_t used = n * plan.row_bytes;
    plan.file_bytes = (used + 4095) / 4096 * 4096;
    bytes.resize(plan.file_bytes);
    std::mt19937 rng(static_cast<unsigned>(n * 31 + dim));
    for (size_t i = 0; i < used; ++i) bytes[i] = static_cast<char>(rng());
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<long>(bytes.size()));
  }
  const char* row(int32_t id) const { return bytes.data() + size_t(id) * plan.row_bytes; }
};

class SparseRowGatherTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "uring" && !io_probe().uring_available) {
      GTEST_SKIP() << "io_uring unavailable: " << io_probe().reason;
    }
  }
  IoOptions options() const {
    IoOptions o;
    o.backend = io_backend_parse(GetParam());
    o.queue_depth = 4;  // fewer than the requests: the engine's backlog is used
    return o;
  }
};

// A gather over a staging area of `staging` bytes from its own host tier, tables for `rows`.
struct Gather {
  HostTier tier{64 << 20};
  HostBuffer staging;
  std::vector<IoRequest> requests;
  std::vector<SparseRowSource> rows;
  SparseRowGather g;
  Gather(size_t staging_bytes, size_t n_rows, size_t n_requests, bool bundled,
         uint64_t merge_gap = 0)
      : staging(tier.allocate(staging_bytes)),
        requests(n_requests),
        rows(n_rows),
        g(static_cast<char*>(staging.data()), staging.size(), requests.data(), requests.size(),
          rows.data(), bundled, merge_gap) {}
};

// Reads the gathered batch and checks every row's bytes.
void expect_rows(File& file, const RowFile& f, const SparseRowGather& g,
                 const std::vector<int32_t>& ids) {
  std::vector<IoFuture> futures =
      file.pread_batch(std::span<const IoRequest>(g.requests(), g.n_requests()));
  io_wait_all(futures);
  ASSERT_EQ(g.n_rows(), ids.size());
  std::vector<char> out(f.plan.row_bytes);
  for (size_t j = 0; j < ids.size(); ++j) {
    g.copy_row(f.plan, j, out.data());
    EXPECT_EQ(std::memcmp(out.data(), f.row(ids[j]), out.size()), 0) << "row " << ids[j];
  }
}

TEST_P(SparseRowGatherTest, BundledRowsCoalesceAndMatchTheFile) {
  for (size_t dim : {511, 512, 513}) {  // rows of 4088, 4096 and 4104 bytes
    RowFile f(97, dim);
    File file(f.path, IoMode::kIoModeRead, options());
    Gather gather(1 << 20, 97, 2 * 97 + 2, true);
    SparseRowGather& g = gather.g;
    const std::vector<int32_t> ids = {0, 1, 2, 7, 8, 40, 95, 96};
    for (int32_t id : ids) ASSERT_TRUE(g.add(f.plan, id));
    g.close();
    // 0-2 and 7-8 touch their neighbours' pages; 40 stands alone; 95-96 end the file.
    EXPECT_EQ(g.n_requests(), 4u) << dim;
    EXPECT_EQ(g.bytes() % 4096, 0u);
    expect_rows(file, f, g, ids);
  }
}

TEST_P(SparseRowGatherTest, BundledRowsAGapApartAreOneRequest) {
  for (size_t dim : {511, 512, 513}) {  // rows of 4088, 4096 and 4104 bytes
    RowFile f(97, dim);
    File file(f.path, IoMode::kIoModeRead, options());
    // Merge gap of two pages: rows 10 and 13 (two rows between) join, 13 and 30 do not.
    Gather gather(1 << 20, 97, 2 * 97 + 2, true, 2 * 4096);
    SparseRowGather& g = gather.g;
    const std::vector<int32_t> ids = {10, 13, 30, 31, 34, 96};
    for (int32_t id : ids) ASSERT_TRUE(g.add(f.plan, id));
    g.close();
    EXPECT_EQ(g.n_requests(), 3u) << dim;  // 10-13, 30-34, 96
    // The gaps are read along: 10-13 and 30-34 cover every byte from their first row's page.
    EXPECT_GE(g.bytes(), (4 + 5) * f.plan.row_bytes) << dim;
    expect_rows(file, f, g, ids);
  }
}

// start() submits what staging holds and returns it; finish() waits for it and for the
// read-ahead it took rows from (issued, not waited for) and moves those rows into the cache;
// load() then reads the rest: the cache holds every row's bytes, in id order, as load() alone
// leaves it. abandon() between start() and finish() forgets the batch.
TEST_P(SparseRowGatherTest, LoaderStartFinishThenLoadFillsTheCacheInOrder) {
  RowFile f(89, 509);  // 4072-byte rows
  File file(f.path, IoMode::kIoModeRead, options());
  HostTier tier(64 << 20);
  std::vector<IoRequest> requests(2 * 89 + 2);
  std::vector<SparseRowSource> sources(89);
  // Staging of three pages: a few rows per batch, so start() takes only part of them.
  SparseRowLoader loader(tier.allocate(3 * 4096, 4096), requests.data(), sources.data(),
                         requests.size(), true, 4096);
  const size_t ahead_staging = 64 << 10, ahead_rows = 8;
  SparseReadAhead ahead(tier.allocate(SparseReadAhead::bytes(ahead_staging, ahead_rows)),
                        ahead_staging, ahead_rows, true, 0);
  NeuronCache cache(tier, 89, 89, f.plan.row_elems, f.plan.dtype);
  const std::vector<int32_t> ids = {0, 2, 3, 17, 18, 40, 41, 42, 88};
  SparseTokenInfo info;
  const size_t abandoned = loader.start(file, f.plan, ids.data(), ids.size(), nullptr, info);
  ASSERT_GT(abandoned, 0u);
  loader.abandon();
  info = SparseTokenInfo{};
  // Rows 2, 18 and 41 read ahead (and 5, which nobody asks for).
  const std::vector<int32_t> read_ahead = {2, 5, 18, 41};
  ahead.issue(0, file, f.plan, read_ahead.data(), read_ahead.size(), info);
  const size_t started = loader.start(file, f.plan, ids.data(), ids.size(), &ahead, info);
  ASSERT_GT(started, 0u);
  ASSERT_LT(started, ids.size());
  EXPECT_EQ(cache.size(), 0u);  // nothing lands before finish()
  loader.finish(f.plan, cache, ids.data(), &ahead, info);
  EXPECT_EQ(cache.size(), started);
  loader.load(file, f.plan, cache, ids.data() + started, ids.size() - started, &ahead, info);
  ASSERT_EQ(cache.size(), ids.size());
  EXPECT_EQ(info.neurons_read, ids.size());
  EXPECT_EQ(info.readahead_hits, 3u);
  for (size_t j = 0; j < ids.size(); ++j) {
    EXPECT_EQ(cache.neuron_at(j), ids[j]);
    EXPECT_EQ(std::memcmp(cache.row(j), f.row(ids[j]), f.plan.row_bytes), 0) << ids[j];
  }
}

TEST_P(SparseRowGatherTest, UnbundledRowsAreTwoRequestsEach) {
  RowFile f(53, 1023);  // 8184-byte rows: parts straddle pages
  File file(f.path, IoMode::kIoModeRead, options());
  Gather gather(1 << 20, 53, 2 * 53 + 2, false);
  SparseRowGather& g = gather.g;
  const std::vector<int32_t> ids = {0, 1, 13, 51, 52};
  for (int32_t id : ids) ASSERT_TRUE(g.add(f.plan, id));
  g.close();
  EXPECT_EQ(g.n_requests(), 2 * ids.size());
  expect_rows(file, f, g, ids);
}

TEST_P(SparseRowGatherTest, FullStagingOrRequestTableRefusesTheRow) {
  RowFile f(31, 1024);  // 8 KiB rows
  Gather gather(2 * 8192, 31, 8, true);
  SparseRowGather& g = gather.g;
  EXPECT_TRUE(g.add(f.plan, 3));
  EXPECT_TRUE(g.add(f.plan, 9));
  EXPECT_FALSE(g.add(f.plan, 20));  // staging holds two rows
  EXPECT_EQ(g.n_rows(), 2u);
  g.clear();
  EXPECT_TRUE(g.add(f.plan, 20));
  Gather tiny(2 * 8192, 31, 1, true);
  EXPECT_TRUE(tiny.g.add(f.plan, 3));
  EXPECT_FALSE(tiny.g.add(f.plan, 9));  // a second range needs a second request
}

TEST_P(SparseRowGatherTest, ReadAheadHoldsWhatFitsAndFindsItsRows) {
  RowFile f(101, 257);  // 2056-byte rows: two to a page, never aligned
  File file(f.path, IoMode::kIoModeRead, options());
  HostTier tier(64 << 20);
  const size_t staging = 128 << 10, max_rows = 11;
  SparseReadAhead ahead(tier.allocate(SparseReadAhead::bytes(staging, max_rows)), staging, max_rows,
                        true, 0);
  EXPECT_EQ(ahead.layer(), -1);
  SparseTokenInfo info;
  std::vector<int32_t> ids;
  for (int32_t id = 1; id < 100; id += 6) ids.push_back(id);  // 17 rows, 11 fit
  ahead.issue(3, file, f.plan, ids.data(), ids.size(), info);
  EXPECT_EQ(ahead.layer(), 3);
  EXPECT_EQ(info.readahead_rows, max_rows);
  EXPECT_GT(info.bytes_read, 0u);
  ahead.wait(info);
  std::vector<char> out(f.plan.row_bytes);
  for (size_t j = 0; j < ids.size(); ++j) {
    const SparseRowSource* src = ahead.find(ids[j]);
    ASSERT_EQ(src != nullptr, j < max_rows) << ids[j];
    if (src == nullptr) continue;
    std::memcpy(out.data(), src->up, out.size());
    EXPECT_EQ(std::memcmp(out.data(), f.row(ids[j]), out.size()), 0) << ids[j];
  }
  EXPECT_EQ(ahead.find(2), nullptr);
  ahead.issue(4, file, f.plan, ids.data(), 0, info);  // nothing to read: the buffer empties
  EXPECT_EQ(ahead.layer(), -1);
  EXPECT_EQ(ahead.find(ids[0]), nullptr);
}

TEST_P(SparseRowGatherTest, ReadAheadAddsOnlyRowsItDoesNotHold) {
  RowFile f(101, 257);
  File file(f.path, IoMode::kIoModeRead, options());
  HostTier tier(64 << 20);
  const size_t staging = 128 << 10, max_rows = 13;
  SparseReadAhead ahead(tier.allocate(SparseReadAhead::bytes(staging, max_rows)), staging, max_rows,
                        true, 0);
  SparseTokenInfo info;
  // add() to an empty buffer starts it, like issue().
  const std::vector<int32_t> first = {5, 40, 41, 77};
  ahead.add(2, file, f.plan, first.data(), first.size(), info);
  EXPECT_EQ(ahead.layer(), 2);
  EXPECT_EQ(info.readahead_rows, 4u);
  // A second batch while the first may be in flight: 40 and 77 are held, and 9 of the 11 new
  // rows fit (max_rows 13); its ids interleave with the first batch's.
  const std::vector<int32_t> second = {0, 6, 39, 40, 42, 60, 61, 77, 80, 90, 95, 99, 100};
  const uint64_t bytes_before = info.bytes_read;
  ahead.add(2, file, f.plan, second.data(), second.size(), info);
  EXPECT_EQ(info.readahead_rows, max_rows);
  EXPECT_GT(info.bytes_read, bytes_before);
  ahead.wait(info);
  std::vector<char> out(f.plan.row_bytes);
  auto held = [&](int32_t id) {
    const SparseRowSource* src = ahead.find(id);
    if (src == nullptr) return false;
    std::memcpy(out.data(), src->up, out.size());
    EXPECT_EQ(std::memcmp(out.data(), f.row(id), out.size()), 0) << id;
    return true;
  };
  for (int32_t id : {5, 40, 41, 77, 0, 6, 39, 42, 60, 61, 80, 90, 95}) EXPECT_TRUE(held(id)) << id;
  for (int32_t id : {1, 99, 100}) EXPECT_FALSE(held(id)) << id;
  // Full: a third batch reads nothing; another layer's starts afresh.
  const int32_t more = 1;
  ahead.add(2, file, f.plan, &more, 1, info);
  EXPECT_EQ(info.readahead_rows, max_rows);
  EXPECT_FALSE(held(1));
  ahead.add(3, file, f.plan, &more, 1, info);
  EXPECT_EQ(ahead.layer(), 3);
  ahead.wait(info);
  EXPECT_TRUE(held(1));
  EXPECT_FALSE(held(5));
}

INSTANTIATE_TEST_SUITE_P(Backends, SparseRowGatherTest, ::testing::Values("threads", "uring"));

}  // namespace
}  // namespace tierlm
