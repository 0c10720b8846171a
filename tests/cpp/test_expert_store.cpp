// The tiered expert store on a real package file, on both I/O back ends: the read-ahead of the
// next layer's experts goes to the disk only after the routed layer's own misses have landed
// (the order the I/O engine's trace records), so it never queues in front of them; it goes in
// chunks, the rest of a routed guess at its route and none more of a wrong one; landing()
// tells ready, in-flight (by submission) and unread experts apart.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "io/io_engine.hpp"
#include "moe/expert_store.hpp"
#include "tiny_package.hpp"

namespace tierlm::detail {
namespace {

using tierlm::testing::TempDir;
using tierlm::testing::TinySpec;
using tierlm::testing::write_tiny_package;

struct Traced {
  uint64_t offset;
  bool done;
};

std::mutex g_mutex;
std::vector<Traced> g_trace;

// Every read lands 20 ms late: a read-ahead submitted while the misses are in flight is then
// recorded before their landing, whatever the disk's speed.
void record(const IoTraceEvent& event) {
  if (event.done) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::lock_guard<std::mutex> lock(g_mutex);
  g_trace.push_back({event.offset, event.done});
}

// Where in the trace expert e of layer `layer` was submitted (done false) or landed (true); -1
// when it was not.
int trace_index(const Package& p, int layer, int32_t e, bool done) {
  const std::string prefix = "layers." + std::to_string(layer) + ".moe.experts";
  const uint64_t offset =
      p.tensor(moe_expert_tensor(prefix, e, ExpertPart::kExpertPartGate)).offset;
  for (size_t i = 0; i < g_trace.size(); ++i) {
    if (g_trace[i].offset == offset && g_trace[i].done == done) return static_cast<int>(i);
  }
  return -1;
}

class ExpertStoreOrder : public ::testing::TestWithParam<std::string> {};

TEST_P(ExpertStoreOrder, ReadAheadIsSubmittedOnlyOnceTheLayersMissesHaveLanded) {
  if (GetParam() == "uring" && !io_probe().uring_available) GTEST_SKIP() << "no io_uring here";
  setenv("TIERLM_IO", GetParam().c_str(), 1);
  TempDir dir;
  TinySpec spec;
  spec.experts = 8;
  spec.top_k = 2;
  const Package p = package_open(write_tiny_package(dir.path(), spec));
  HostTier host(64 << 20);
  ExpertStoreOptions options;
  options.budget = expert_store_minimum(p, true) + 3 * expert_slot_bytes(p);  // 4 slots
  {
    ExpertStore store(p, host, options);
    ASSERT_EQ(store.placement().cache_slots, 4);
    ASSERT_EQ(store.placement().host_bytes, 0u);  // every expert is read from the disk
    g_trace.clear();
    io_trace_set(record);
    const int32_t misses[] = {1, 6};
    const int32_t ahead[] = {2, 5};
    const int32_t rows[] = {1, 1};
    const float likely[] = {3.0f, 2.0f};
    constexpr uint64_t kReady = ExpertProvider::kExpertReady;
    constexpr uint64_t kUnread = ExpertProvider::kExpertUnread;
    EXPECT_EQ(store.landing(0, 1), kUnread);
    store.route(0, misses, rows, 1);
    store.prefetch(1, ahead, likely);
    // While a miss is still reading (they land 20 ms late), the read-ahead is held: unread.
    // Both misses went out in one batch.
    const uint64_t first = store.landing(0, 1);
    const uint64_t second = store.landing(0, 6);
    if (first != kReady && second != kReady) EXPECT_EQ(first, second);
    EXPECT_NE(first, kUnread);
    if (first != kReady || second != kReady) EXPECT_EQ(store.landing(1, 2), kUnread);
    for (int32_t e : misses) {
      store.expert(0, e);
      store.release(0, e);
    }
    store.route(1, ahead, rows, 1);
    for (int32_t e : ahead) {
      store.expert(1, e);
      store.release(1, e);
    }
    io_trace_set(nullptr);
    for (int32_t e : ahead) EXPECT_EQ(store.landing(1, e), kReady);
    EXPECT_EQ(store.landing(1, 0), kUnread);
    EXPECT_EQ(store.stats().moe_misses, 2u);
    EXPECT_EQ(store.stats().moe_prefetch_reads, 2u);
    EXPECT_EQ(store.stats().moe_prefetch_used, 2u);
  }
  unsetenv("TIERLM_IO");
  ASSERT_EQ(g_trace.size(), 8u);  // each expert one read (its parts merged), submitted, landed
  int last_miss_landed = -1;
  for (int32_t e : {1, 6}) {
    ASSERT_GE(trace_index(p, 0, e, false), 0) << "miss " << e;
    last_miss_landed = std::max(last_miss_landed, trace_index(p, 0, e, true));
  }
  for (int32_t e : {2, 5}) {
    ASSERT_GE(trace_index(p, 1, e, true), 0) << "read-ahead " << e;
    EXPECT_GT(trace_index(p, 1, e, false), last_miss_landed)
        << "layer 1's expert " << e << " was read ahead before layer 0's misses landed";
  }
}

// Where expert e of layer `layer` starts in the package, and whether a trace entry from index
// `from` on lies within that expert's bytes (submitted: done false).
uint64_t expert_offset(const Package& p, int layer, int32_t e) {
  const std::string prefix = "layers." + std::to_string(layer) + ".moe.experts";
  return p.tensor(moe_expert_tensor(prefix, e, ExpertPart::kExpertPartGate)).offset;
}

size_t submitted_within(const Package& p, int layer, int32_t e, uint64_t bytes, size_t from) {
  const uint64_t start = expert_offset(p, layer, e);
  size_t n = 0;
  for (size_t i = from; i < g_trace.size(); ++i) {
    n += !g_trace[i].done && g_trace[i].offset >= start && g_trace[i].offset < start + bytes;
  }
  return n;
}

Package expert_package(const TempDir& dir) {
  TinySpec spec;
  spec.experts = 8;
  spec.top_k = 2;
  spec.inter = 131;  // each part just over 3 pages: an expert is 12, many chunks of one
  return package_open(write_tiny_package(dir.path(), spec));
}

// On `backend`: layer 0 routes to its misses 1 and 6 and predicts 2 then 5 for layer 1; the
// read-ahead goes out a page at a time (ahead_chunk), at most kAheadDepth pages in flight,
// once the misses have landed. Then layer 1 routes to `routed`. Every expert read from the disk
// is checked against its CRC-32 before use (verify), so a chunk landing in the wrong place
// fails.
struct AheadRun {
  uint64_t expert = 0;      // one expert's bytes
  uint64_t ahead = 0;       // bytes of expert 2 read ahead before layer 1's route
  size_t guess_before = 0;  // requests in expert 2's bytes submitted before that route
  size_t guess_after = 0;   // and after it
  size_t second_guess = 0;  // requests in expert 5's bytes
  uint64_t landing = 0;     // landing(1, 2) right after the route
  MoeStats stats;
};

AheadRun run_ahead(const std::string& backend, std::span<const int32_t> routed) {
  setenv("TIERLM_IO", backend.c_str(), 1);
  TempDir dir;
  const Package p = expert_package(dir);
  HostTier host(64 << 20);
  ExpertStoreOptions options;
  options.budget = expert_store_minimum(p, true) + 3 * expert_slot_bytes(p);  // 4 slots
  options.ahead_chunk = kAlignment;
  options.verify = true;
  AheadRun run;
  size_t at_route = 0;
  {
    ExpertStore store(p, host, options);
    run.expert = store.placement().expert_bytes;
    g_trace.clear();
    io_trace_set(record);
    const int32_t misses[] = {1, 6};
    const int32_t ahead[] = {2, 5};
    const int32_t rows[] = {1, 1};
    const float likely[] = {3.0f, 2.0f};
    store.route(0, misses, rows, 1);
    store.prefetch(1, ahead, likely);
    for (int32_t e : misses) {
      store.expert(0, e);
      store.release(0, e);
    }
    run.ahead = store.stats().moe_bytes_read - 2 * run.expert;
    at_route = g_trace.size();
    store.route(1, routed, rows, 1);
    run.landing = store.landing(1, 2);
    for (int32_t e : routed) {
      store.expert(1, e);
      store.release(1, e);
    }
    io_trace_set(nullptr);
    run.stats = store.stats();
  }
  unsetenv("TIERLM_IO");
  run.guess_after = submitted_within(p, 1, 2, run.expert, at_route);
  run.guess_before = submitted_within(p, 1, 2, run.expert, 0) - run.guess_after;
  run.second_guess = submitted_within(p, 1, 5, run.expert, 0);
  return run;
}

TEST_P(ExpertStoreOrder, ARoutedGuessReadAheadInChunksHasItsRestReadAtItsRoute) {
  if (GetParam() == "uring" && !io_probe().uring_available) GTEST_SKIP() << "no io_uring here";
  const int32_t routed[] = {2, 3};
  const AheadRun run = run_ahead(GetParam(), routed);
  ASSERT_GT(run.expert, 4 * kAlignment);
  // Chunks went out after the misses landed (a page each, each store call letting at most two
  // more go); the expert was not whole when its layer routed to it, and its rest went then.
  EXPECT_GE(run.ahead, kAheadDepth * kAlignment);
  EXPECT_LT(run.ahead, run.expert);
  EXPECT_EQ(run.guess_before, run.ahead / kAlignment);
  EXPECT_GE(run.guess_after, 1u);
  EXPECT_NE(run.landing, ExpertProvider::kExpertUnread);
  EXPECT_EQ(run.second_guess, 0u);  // its turn had not come: a guess not read costs nothing
  EXPECT_EQ(run.stats.moe_prefetch_reads, 1u);
  EXPECT_EQ(run.stats.moe_prefetch_used, 1u);
  EXPECT_EQ(run.stats.moe_misses, 3u);  // 1, 6 and 3
  EXPECT_EQ(run.stats.moe_bytes_read, 4 * run.expert);
}

TEST_P(ExpertStoreOrder, AWrongGuessReadAheadInChunksHasItsRestDropped) {
  if (GetParam() == "uring" && !io_probe().uring_available) GTEST_SKIP() << "no io_uring here";
  const int32_t routed[] = {3, 4};
  const AheadRun run = run_ahead(GetParam(), routed);
  EXPECT_GE(run.ahead, kAheadDepth * kAlignment);
  EXPECT_LT(run.ahead, run.expert);
  // nothing more of expert 2 after the route, and its slot went to a miss
  EXPECT_EQ(run.guess_after, 0u);
  EXPECT_EQ(run.landing, ExpertProvider::kExpertUnread);
  EXPECT_EQ(run.stats.moe_prefetch_reads, 1u);
  EXPECT_EQ(run.stats.moe_prefetch_used, 0u);
  EXPECT_EQ(run.stats.moe_misses, 4u);
  EXPECT_EQ(run.stats.moe_bytes_read, 4 * run.expert + run.ahead);
}

INSTANTIATE_TEST_SUITE_P(Backends, ExpertStoreOrder, ::testing::Values("threads", "uring"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace tierlm::detail
