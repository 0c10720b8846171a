// The engine's random-read benchmark (`tierlm bench io`, bench/bench_io.py): block-aligned
// random reads at a queue depth, timed against fio by the bench script.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm {

IoBenchResult io_bench_read(const std::string& path, size_t block, unsigned queue_depth,
                            IoOptions options, double seconds, uint64_t seed) {
  TIERLM_CHECK(block > 0 && queue_depth > 0, kErrorInvalidArgument,
               "benchmark block size and queue depth must be positive");
  options.queue_depth = queue_depth;
  io_drop_cache(path);
  File file(path, IoMode::kIoModeRead, options);
  const uint64_t blocks = file.size() / block;
  TIERLM_CHECK(blocks > 0, kErrorInvalidArgument, "benchmark file ", path, " (",
               format_bytes(file.size()), ") is smaller than one block of ", format_bytes(block));

  // Two batches of queue_depth requests: while the engine has one in the ring, the other waits
  // in its backlog and moves into the ring slot by slot as requests complete, so the device
  // always has queue_depth reads in flight (as fio keeps iodepth), and the loop here refills a
  // whole batch at once (as the sparse loader and the weight ring submit).
  constexpr unsigned kBatches = 2;
  const size_t stride = round_up(block, kAlignment);
  const size_t total = stride * queue_depth * kBatches;
  void* memory = nullptr;
  TIERLM_CHECK(posix_memalign(&memory, kAlignment, total) == 0, kErrorInvalidArgument,
               "cannot allocate ", format_bytes(total), " of benchmark buffers");
  std::unique_ptr<void, decltype(&std::free)> hold(memory, &std::free);
  char* buffers = static_cast<char*>(memory);
  std::fill(buffers, buffers + total, 0);  // fault the pages in before timing
  IoBenchResult result;
  result.backend = file.backend();
  result.direct = file.direct();
  result.registered = file.register_buffer(buffers, total);

  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint64_t> pick(0, blocks - 1);
  std::vector<IoRequest> requests(size_t{queue_depth} * kBatches);
  for (size_t i = 0; i < requests.size(); ++i) requests[i].buf = buffers + i * stride;
  std::vector<IoFuture> batches[kBatches];
  auto issue = [&](unsigned b) {
    IoRequest* batch = requests.data() + size_t{b} * queue_depth;
    for (unsigned i = 0; i < queue_depth; ++i) {
      batch[i].len = block;
      batch[i].offset = pick(rng) * block;
    }
    batches[b] = file.pread_batch({batch, queue_depth});
  };
  const auto start = detail::Clock::now();
  const auto stop = start + std::chrono::duration<double>(seconds);
  for (unsigned b = 0; b < kBatches; ++b) issue(b);
  for (unsigned b = 0, live = kBatches; live > 0; b = (b + 1) % kBatches) {
    if (batches[b].empty()) continue;
    io_wait_all(batches[b]);
    result.requests += queue_depth;
    result.bytes += uint64_t{queue_depth} * block;
    if (detail::Clock::now() < stop) {
      issue(b);
    } else {
      batches[b].clear();
      --live;
    }
  }
  result.seconds = detail::seconds_since(start);
  file.unregister_buffer(buffers);
  return result;
}

}  // namespace tierlm
