#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/statvfs.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tier_budget.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/memory/disk_tier.hpp"

namespace tierlm {
namespace {

namespace fs = std::filesystem;

class DiskTierTest : public ::testing::TestWithParam<IoBackend> {
 protected:
  void SetUp() override {
    if (GetParam() == IoBackend::kIoBackendUring && !io_probe().uring_available) {
      GTEST_SKIP() << "io_uring unavailable: " << io_probe().reason;
    }
    std::string pattern = (fs::temp_directory_path() / "tierlm-disk-test-XXXXXX").string();
    dir_ = mkdtemp(pattern.data());
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  IoOptions options() const {
    IoOptions o;
    o.backend = GetParam();
    o.queue_depth = 8;
    return o;
  }
  std::string dir_;
};

TEST_P(DiskTierTest, BudgetExactlyReachedThenExceededByOneByte) {
  DiskTier tier(dir_, 3 * 4096, options());
  testing::expect_budget_reached_then_refused(tier, "disk tier");
  DiskTier odd(dir_, 8192, options());
  EXPECT_THROW(odd.allocate(8193), Error);
  EXPECT_EQ(odd.stats().current, 0u);
  DiskExtent whole = odd.allocate(8192);
  EXPECT_EQ(whole.offset() % 4096, 0u);
}

TEST_P(DiskTierTest, WriteReadRoundTripAndStats) {
  DiskTier tier(dir_, 1 << 20, options());
  DiskExtent a = tier.allocate(4097);
  DiskExtent b = tier.allocate(10007);
  EXPECT_EQ(a.size(), 4097u);
  EXPECT_EQ(a.reserved(), 8192u);
  EXPECT_EQ(b.offset() % 4096, 0u);
  EXPECT_TRUE(b.offset() >= a.offset() + 8192 || a.offset() >= b.offset() + b.reserved());
  std::mt19937 rng(1);
  std::vector<char> da(4097), db(10007);
  for (char& c : da) c = static_cast<char>(rng());
  for (char& c : db) c = static_cast<char>(rng());
  EXPECT_EQ(a.write(da.data(), da.size()), da.size());
  b.pwrite(db.data(), db.size()).get();
  std::vector<char> back(10007);
  EXPECT_EQ(a.read(back.data(), 4097), 4097u);
  EXPECT_EQ(std::memcmp(back.data(), da.data(), 4097), 0);
  b.pread(back.data(), 5000, 3).get();
  EXPECT_EQ(std::memcmp(back.data(), db.data() + 3, 5000), 0);
  const TierStats s = tier.stats();
  EXPECT_EQ(s.bytes_in, 4097u + 10007u);
  EXPECT_EQ(s.bytes_out, 4097u + 5000u);
  EXPECT_EQ(s.transfers, 4u);
  EXPECT_EQ(s.allocations, 2u);
  EXPECT_EQ(s.current, 8192u + 12288u);
  // Out of the extent's bounds: refused before any I/O.
  EXPECT_THROW(a.read(back.data(), 2, 4096), Error);
  EXPECT_THROW(b.write(db.data(), 1, 10007), Error);
  EXPECT_THROW(a.pread(back.data(), 4098), Error);
  // Aligned extents and buffers take the O_DIRECT path where the file system allows.
  DiskExtent c = tier.allocate(3 * 4096);
  alignas(4096) static char page[3 * 4096];
  std::memset(page, 7, sizeof page);
  c.write(page, sizeof page);
  std::memset(page, 0, sizeof page);
  c.read(page, sizeof page);
  EXPECT_EQ(page[0], 7);
  EXPECT_EQ(page[sizeof page - 1], 7);
}

TEST_P(DiskTierTest, FreedExtentsAreReusedAndCoalesce) {
  DiskTier tier(dir_, 4 * 4096, options());
  DiskExtent x = tier.allocate(4096);
  DiskExtent y = tier.allocate(4096);
  DiskExtent z = tier.allocate(4096);
  const uint64_t y_offset = y.offset();
  y = DiskExtent();
  EXPECT_EQ(tier.stats().current, 2u * 4096);
  DiskExtent again = tier.allocate(100);
  EXPECT_EQ(again.offset(), y_offset);
  again.release();
  x.release();
  z.release();
  DiskExtent whole = tier.allocate(4 * 4096);  // needs the freed neighbours merged
  EXPECT_EQ(whole.offset(), 0u);
  DiskExtent moved = std::move(whole);
  EXPECT_FALSE(whole);
  EXPECT_TRUE(moved);
  EXPECT_EQ(tier.stats().peak, 4u * 4096);
}

TEST_P(DiskTierTest, BatchesOverSeveralExtents) {
  DiskTier tier(dir_, 1 << 20, options());
  std::vector<DiskExtent> extents;
  for (size_t n : {size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{30011}}) {
    extents.push_back(tier.allocate(n));
  }
  std::mt19937 rng(3);
  std::vector<std::vector<char>> data, back;
  std::vector<DiskRequest> writes, reads;
  for (const DiskExtent& e : extents) {
    data.emplace_back(e.size());
    for (char& c : data.back()) c = static_cast<char>(rng());
    back.emplace_back(e.size());
  }
  for (size_t i = 0; i < extents.size(); ++i) {
    writes.push_back({&extents[i], data[i].data(), data[i].size(), 0});
    reads.push_back({&extents[i], back[i].data(), back[i].size(), 0});
  }
  for (IoFuture& f : tier.pwrite_batch(writes)) f.get();
  for (IoFuture& f : tier.pread_batch(reads)) f.get();
  EXPECT_EQ(back, data);
  EXPECT_EQ(tier.stats().transfers, 2 * extents.size());
  DiskRequest outside{&extents[0], back[0].data(), 2, 0};
  EXPECT_THROW(tier.pread_batch({&outside, 1}), Error);
  DiskTier other(dir_, 1 << 20, options());
  DiskExtent foreign = other.allocate(10);
  DiskRequest wrong{&foreign, back[0].data(), 1, 0};
  EXPECT_THROW(tier.pread_batch({&wrong, 1}), Error);
}

TEST_P(DiskTierTest, ScratchFileLeavesNothingBehind) {
  {
    DiskTier tier(dir_, 1 << 20, options());
    DiskExtent e = tier.allocate(5);
    e.write("hello", 5);
    EXPECT_TRUE(fs::is_empty(dir_));  // unlinked while open
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

INSTANTIATE_TEST_SUITE_P(Backends, DiskTierTest,
                         ::testing::Values(IoBackend::kIoBackendThreads,
                                           IoBackend::kIoBackendUring),
                         [](const auto& info) { return std::string(io_backend_name(info.param)); });

TEST(DiskTier, MissingDirectory) {
  try {
    DiskTier tier("/nonexistent/tierlm-disk", 1 << 20);
    FAIL() << "no error for a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorNotFound);
    EXPECT_EQ(e.sys_errno(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tierlm-disk"), std::string::npos);
  }
}

TEST(DiskTier, FullFileSystemFailsAtAllocation) {
  // A tmpfs refuses, at once, a reservation larger than itself: a real ENOSPC, no disk filled.
  const char* dir = "/dev/shm";
  struct statvfs vfs {};
  if (statvfs(dir, &vfs) != 0 || vfs.f_blocks == 0) GTEST_SKIP() << "no sized tmpfs at " << dir;
  const uint64_t fs_size = static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize;
  DiskTier tier(dir, UINT64_MAX / 2);
  try {
    DiskExtent e = tier.allocate(fs_size + (1 << 20));
    FAIL() << "reserving more than the file system holds succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorIo);
    EXPECT_EQ(e.sys_errno(), ENOSPC) << e.what();
    EXPECT_NE(std::string(e.what()).find("/dev/shm"), std::string::npos) << e.what();
  }
  EXPECT_EQ(tier.stats().current, 0u);
  DiskExtent small = tier.allocate(4096);  // the failed reservation was returned
  EXPECT_TRUE(small);
}

}  // namespace
}  // namespace tierlm
