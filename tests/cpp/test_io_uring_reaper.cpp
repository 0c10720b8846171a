// io_uring's background reaper moves the backlog (requests past the queue depth) into the ring
// for batches no one waits for. A caller that submits and then waits drives the ring itself,
// and the reaper must then stay asleep: each needless wake-up is two context switches, about
// what the reads of a whole 4 KiB batch cost (bench/bench_io.py's ctx/read column).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tierlm/io/io.hpp"

namespace tierlm {
namespace {

namespace fs = std::filesystem;

// The ids of this process's threads.
std::set<std::string> thread_ids() {
  std::set<std::string> ids;
  for (const fs::directory_entry& task : fs::directory_iterator("/proc/self/task")) {
    ids.insert(task.path().filename().string());
  }
  return ids;
}

// Voluntary context switches of the threads started since `existing` (the File's), but the
// kernel's io_uring workers ("iou-wrk-N", which take requests that cannot be issued without
// blocking; they are not ours to wake).
long new_threads_switches(const std::set<std::string>& existing) {
  long total = 0;
  for (const fs::directory_entry& task : fs::directory_iterator("/proc/self/task")) {
    if (existing.count(task.path().filename().string()) > 0) continue;
    std::ifstream status(task.path() / "status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("Name:\tiou-", 0) == 0) break;
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0) {
        total += std::atol(line.c_str() + std::strlen("voluntary_ctxt_switches:"));
      }
    }
  }
  return total;
}

TEST(IoUringReaper, StaysAsleepWhileTheSubmitterWaits) {
  if (!io_probe().uring_available) GTEST_SKIP() << "io_uring unavailable: " << io_probe().reason;
  std::string pattern = (fs::temp_directory_path() / "tierlm-reaper-XXXXXX").string();
  const fs::path dir = mkdtemp(pattern.data());
  const std::string path = (dir / "blocks.bin").string();
  constexpr size_t kBlock = 4096;
  constexpr size_t kBlocks = 1021;  // prime
  std::vector<char> bytes(kBlock * kBlocks);
  std::mt19937 rng(7);
  for (char& b : bytes) b = static_cast<char>(rng());
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<long>(bytes.size()));

  {
    // TSan starts its own background thread with the process's first other thread: one is
    // started here, so that it is among the existing ones.
    std::thread([] {}).join();
    const std::set<std::string> existing = thread_ids();
    IoOptions options;
    options.backend = IoBackend::kIoBackendUring;
    options.queue_depth = 8;
    File file(path, IoMode::kIoModeRead, options);
    if (!file.direct()) {
      fs::remove_all(dir);
      GTEST_SKIP() << "no O_DIRECT here (reads from the page cache finish at once): "
                   << file.direct_reason();
    }
    constexpr size_t kRequests = 29;  // past three queue depths: a backlog each round
    constexpr int kRounds = 100;
    void* memory = std::aligned_alloc(kBlock, kRequests * kBlock);
    char* out = static_cast<char*>(memory);
    std::vector<IoRequest> requests(kRequests);
    const long before = new_threads_switches(existing);
    for (int round = 0; round < kRounds; ++round) {
      for (size_t i = 0; i < kRequests; ++i) {
        requests[i] = {out + i * kBlock, kBlock, (rng() % kBlocks) * kBlock};
      }
      std::vector<IoFuture> futures = file.pread_batch(requests);
      io_wait_all(futures);
      for (size_t i = 0; i < kRequests; ++i) {
        ASSERT_EQ(std::memcmp(requests[i].buf, bytes.data() + requests[i].offset, kBlock), 0)
            << "round " << round << " request " << i;
      }
    }
    const long woken = new_threads_switches(existing) - before;
    std::free(memory);
    // Woken at most submits before the ring signalled it (52 to 121 times here). Now only by a
    // completion that lands before this thread takes the ring over, or its 1 s watch: 0 here.
    EXPECT_LT(woken, kRounds / 10) << "the reaper was woken " << woken << " times in " << kRounds
                                   << " rounds of submit and wait";
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tierlm
