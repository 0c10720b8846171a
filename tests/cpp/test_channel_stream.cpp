// A streamed channel site's reads (ChannelStream): one token's kept columns from a real file,
// in batches that take turns in the staging's slots, each handed to the kernel
// callback in channel order where its columns landed, byte for byte the file's; column sizes a
// few bytes below and above a page, a prime column count, staging for a few columns (many
// batches) and for all of them (one), through both I/O back ends.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "sparse/channel_stream.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tiny_package.hpp"

namespace tierlm {
namespace {

using detail::ChannelStream;
using detail::SparseLayerPlan;
using detail::SparseRowGather;
using detail::SparseRowSource;

class ChannelStreamTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()) == "uring" && !io_probe().uring_available) {
      GTEST_SKIP() << "io_uring unavailable: " << io_probe().reason;
    }
  }
};

TEST_P(ChannelStreamTest, BatchesHandOverEveryKeptColumnInOrder) {
  for (const size_t elems : {1023u, 1025u}) {  // f32 columns of 4092 and 4100 bytes
    for (const size_t staging_pages : {12u, 512u}) {
      testing::TempDir dir;
      SparseLayerPlan plan;
      plan.file = dir.path() + "/channels.bin";
      plan.n_neurons = 97;
      plan.row_elems = elems;
      plan.dim = elems;
      plan.row_bytes = elems * 4;
      plan.dtype = DType::kDTypeF32;
      const size_t used = plan.n_neurons * plan.row_bytes;
      plan.file_bytes = (used + 4095) / 4096 * 4096;
      std::vector<char> bytes(plan.file_bytes);
      std::mt19937 rng(static_cast<unsigned>(elems + staging_pages));
      for (size_t i = 0; i < used; ++i) bytes[i] = static_cast<char>(rng());
      std::ofstream(plan.file, std::ios::binary)
          .write(bytes.data(), static_cast<long>(bytes.size()));
      std::vector<int32_t> kept;  // about 60% kept, runs and gaps of every length
      for (int32_t c = 0; c < 97; ++c) {
        if (rng() % 5 < 3) kept.push_back(c);
      }

      HostTier tier{8 << 20};
      HostBuffer staging = tier.allocate(staging_pages * 4096);
      std::vector<IoRequest> requests(SparseRowGather::max_requests(97));
      std::vector<SparseRowSource> rows(detail::kChannelStreamSlots * 97);
      IoOptions options;
      options.backend = io_backend_parse(GetParam());
      File file(plan.file, IoMode::kIoModeRead, options);
      SparseTokenInfo info;
      std::vector<int32_t> seen;
      size_t batches = 0;
      // Requests submitted when each batch is handed over: the later slots' are in flight.
      std::vector<size_t> submitted_at;
      io_trace_record_start();
      {
        ChannelStream stream(static_cast<char*>(staging.data()), staging.size(), requests.data(),
                             requests.size(), rows.data(), 97, 8192);
        stream.run(file, plan, kept.data(), kept.size(), nullptr, info,
                   [&](const SparseRowGather& batch, const int32_t* ids, size_t m) {
                     ++batches;
                     submitted_at.push_back(io_trace_record_stop().size());
                     io_trace_record_start();
                     for (size_t j = 0; j < m; ++j) {
                       seen.push_back(ids[j]);
                       const char* want = bytes.data() + size_t(ids[j]) * plan.row_bytes;
                       ASSERT_EQ(std::memcmp(batch.row(j).up, want, plan.row_bytes), 0)
                           << "column " << ids[j];
                     }
                   });
      }
      io_trace_record_stop();
      EXPECT_EQ(seen, kept);
      EXPECT_EQ(info.neurons_read, kept.size());
      if (batches > detail::kChannelStreamSlots) {
        // Before the first batch is summed every slot's batch was submitted; after, each batch
        // summed frees its slot for exactly one more.
        EXPECT_EQ(submitted_at[0], detail::kChannelStreamSlots) << "one request a batch";
        EXPECT_EQ(submitted_at[1], 1u);
      }
      EXPECT_GE(info.bytes_read, kept.size() * plan.row_bytes);
      // A page two columns share is read again when they fall in different batches.
      EXPECT_LE(info.bytes_read, plan.file_bytes + (batches - 1) * 4096);
      if (staging_pages == 12) {
        EXPECT_GT(batches, 8u);  // three pages a slot: a column or two a batch
      } else {
        EXPECT_EQ(batches, 1u);
      }
    }
  }
}

// Columns read ahead (ChannelReadAhead, a staging that holds only part of the prediction) join
// the batches where they lie: every kept column still comes in order and byte for byte, those
// read ahead are not read again, and the predicted columns past the staging are read by the
// stream. A second read-ahead drops the first.
TEST_P(ChannelStreamTest, ReadAheadColumnsJoinTheBatchesInOrder) {
  testing::TempDir dir;
  SparseLayerPlan plan;
  plan.file = dir.path() + "/channels.bin";
  plan.n_neurons = 211;
  plan.row_elems = 1025;  // f32 columns of 4100 bytes
  plan.dim = plan.row_elems;
  plan.row_bytes = plan.row_elems * 4;
  plan.dtype = DType::kDTypeF32;
  plan.file_bytes = (plan.n_neurons * plan.row_bytes + 4095) / 4096 * 4096;
  std::vector<char> bytes(plan.file_bytes);
  std::mt19937 rng(7);
  for (char& b : bytes) b = static_cast<char>(rng());
  std::ofstream(plan.file, std::ios::binary).write(bytes.data(), static_cast<long>(bytes.size()));
  // Predicted and kept: about 60% each, overlapping by chance and by a shared half.
  std::vector<float> predicted(plan.n_neurons);
  std::vector<int32_t> kept;
  for (int32_t c = 0; c < 211; ++c) {
    const bool both = rng() % 2 == 0;
    predicted[static_cast<size_t>(c)] = both || rng() % 5 == 0 ? 1.0f : 0.0f;
    if (both || rng() % 5 == 0) kept.push_back(c);
  }

  HostTier tier{8 << 20};
  HostBuffer staging = tier.allocate(24 * 4096), ahead_staging = tier.allocate(40 * 4096);
  std::vector<IoRequest> requests(SparseRowGather::max_requests(211));
  std::vector<IoRequest> ahead_requests(SparseRowGather::max_requests(211));
  std::vector<SparseRowSource> rows(detail::kChannelStreamSlots * 211), ahead_rows(211);
  std::vector<int32_t> ids(211), slots(211, -1), row_requests(211);
  IoOptions options;
  options.backend = io_backend_parse(GetParam());
  File file(plan.file, IoMode::kIoModeRead, options);
  SparseTokenInfo info;
  std::vector<int32_t> seen;
  {
    detail::ChannelReadAhead ahead(static_cast<char*>(ahead_staging.data()), ahead_staging.size(),
                                   ahead_requests.data(), ahead_rows.data(), ids.data(),
                                   slots.data(), row_requests.data(), 211);
    std::vector<float> other(211, 1.0f);
    ahead.start(3, file, plan, other.data(), 0.5f, info);  // dropped by the next start
    ahead.start(5, file, plan, predicted.data(), 0.5f, info);
    EXPECT_TRUE(ahead.pending(5));
    EXPECT_FALSE(ahead.pending(3));
    const uint64_t ahead_rows_read = info.readahead_rows;
    ChannelStream stream(static_cast<char*>(staging.data()), staging.size(), requests.data(),
                         requests.size(), rows.data(), 211, 8192);
    stream.run(file, plan, kept.data(), kept.size(), &ahead, info,
               [&](const SparseRowGather& batch, const int32_t* batch_ids, size_t m) {
                 for (size_t j = 0; j < m; ++j) {
                   seen.push_back(batch_ids[j]);
                   const char* want = bytes.data() + size_t(batch_ids[j]) * plan.row_bytes;
                   ASSERT_EQ(std::memcmp(batch.row(j).up, want, plan.row_bytes), 0)
                       << "column " << batch_ids[j];
                 }
               });
    // The second start read the predicted columns that fit in 40 pages (the first all that
    // fit), in channel order; the kept ones among them were not read again.
    size_t fit = 0, hits = 0;
    for (int32_t c = 0; c < 211; ++c) {
      if (slots[static_cast<size_t>(c)] < 0) continue;
      ++fit;
      EXPECT_EQ(predicted[static_cast<size_t>(c)], 1.0f) << c;
      hits += std::count(kept.begin(), kept.end(), c);
    }
    EXPECT_GT(fit, 10u);
    EXPECT_LT(fit, static_cast<size_t>(std::count(predicted.begin(), predicted.end(), 1.0f)));
    EXPECT_GT(ahead_rows_read, fit);  // both starts'
    EXPECT_EQ(info.readahead_hits, hits);
    ahead.drop();
    EXPECT_TRUE(std::all_of(slots.begin(), slots.end(), [](int32_t j) { return j == -1; }));
  }
  EXPECT_EQ(seen, kept);
  EXPECT_EQ(info.neurons_read, kept.size());
}

INSTANTIATE_TEST_SUITE_P(Backends, ChannelStreamTest, ::testing::Values("threads", "uring"));

}  // namespace
}  // namespace tierlm
