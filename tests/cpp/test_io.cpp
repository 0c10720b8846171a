#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "io/io_engine.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "tierlm-io-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }

 private:
  std::string path_;
};

std::vector<char> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<char> bytes(n);
  for (char& b : bytes) b = static_cast<char>(rng());
  return bytes;
}

void write_file(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<long>(bytes.size()));
}

struct Aligned {
  explicit Aligned(size_t n)
      : data(static_cast<char*>(aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {}
  ~Aligned() { free(data); }
  char* data;
};

std::string expect_error(ErrorCode code, int sys_errno, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_EQ(e.sys_errno(), sys_errno) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class IoTest : public ::testing::TestWithParam<IoBackend> {
 protected:
  void SetUp() override {
    unsetenv("TIERLM_IO");
    if (GetParam() == IoBackend::kIoBackendUring && !io_probe().uring_available) {
      GTEST_SKIP() << "io_uring unavailable: " << io_probe().reason;
    }
  }
  IoOptions options(unsigned depth = 32, bool direct = true) const {
    IoOptions o;
    o.backend = GetParam();
    o.queue_depth = depth;
    o.direct = direct;
    return o;
  }
  TempDir dir_;
};

TEST_P(IoTest, RandomOffsetsAndLengthsMatchTheFile) {
  const size_t size = 7 * 4096 * 3 + 123;  // odd size: the file ends mid-page
  const std::string path = dir_.file("data.bin");
  const std::vector<char> bytes = random_bytes(size, 1);
  write_file(path, bytes);
  for (bool direct : {true, false}) {
    File file(path, IoMode::kIoModeRead, options(8, direct));
    EXPECT_EQ(file.backend(), GetParam());
    EXPECT_EQ(file.size(), size);
    std::mt19937 rng(2);
    std::vector<size_t> lengths = {1, 4095, 4096, 4097, 8191, 8192, 12289, 3, 65537, size};
    for (int i = 0; i < 40; ++i) lengths.push_back(1 + rng() % 20000);
    std::vector<char> out(size + 4096 + 7);
    for (size_t len : lengths) {
      const uint64_t offset = len == size ? 0 : rng() % (size - len + 1);
      for (size_t shift : {size_t{0}, size_t{1}, size_t{7}}) {
        char* buf = out.data() + shift;
        std::memset(buf, 0x5a, len);
        ASSERT_EQ(file.read(buf, len, offset), len);
        ASSERT_EQ(std::memcmp(buf, bytes.data() + offset, len), 0)
            << "len " << len << " offset " << offset << " shift " << shift;
      }
    }
  }
}

TEST_P(IoTest, AlignedRequestsUseODirectAndMatch) {
  const size_t size = 64 * 4096;
  const std::string path = dir_.file("aligned.bin");
  const std::vector<char> bytes = random_bytes(size, 3);
  write_file(path, bytes);
  File file(path, IoMode::kIoModeRead, options());
  if (!file.direct()) GTEST_SKIP() << "no O_DIRECT here: " << file.direct_reason();
  Aligned buf(size);
  for (size_t len : {size_t{4096}, size_t{8192}, size_t{61440}, size}) {
    for (uint64_t offset = 0; offset + len <= size; offset += 3 * 4096) {
      std::memset(buf.data, 0, len);
      ASSERT_EQ(file.read(buf.data, len, offset), len);
      ASSERT_EQ(std::memcmp(buf.data, bytes.data() + offset, len), 0) << len << " @ " << offset;
    }
  }
}

// Pages of path in the page cache, by mincore on a mapping.
size_t resident_pages(const std::string& path, size_t size) {
  const int fd = open(path.c_str(), O_RDONLY);
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  std::vector<unsigned char> vec((size + 4095) / 4096);
  mincore(map, size, vec.data());
  munmap(map, size);
  size_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

TEST_P(IoTest, AlignedReadsBypassThePageCacheOthersUseIt) {
  const size_t size = 16 * 4096;
  const std::string path = dir_.file("cache.bin");
  write_file(path, random_bytes(size, 14));
  File file(path, IoMode::kIoModeRead, options());
  if (!file.direct()) GTEST_SKIP() << "no O_DIRECT here: " << file.direct_reason();
  io_drop_cache(path);
  if (resident_pages(path, size) != 0) GTEST_SKIP() << "the page cache cannot be dropped here";
  Aligned buf(size);
  file.read(buf.data, 8 * 4096, 0);
  EXPECT_EQ(resident_pages(path, size), 0u);  // O_DIRECT: nothing cached
  file.read(buf.data + 1, 100, 8 * 4096 + 7);
  EXPECT_GT(resident_pages(path, size), 0u);  // unaligned: through the page cache
}

TEST_P(IoTest, DirectReadEndingAtUnalignedEndOfFileIsAnError) {
  const size_t size = 3 * 4096 + 100;
  const std::string path = dir_.file("tail.bin");
  const std::vector<char> bytes = random_bytes(size, 4);
  write_file(path, bytes);
  File file(path, IoMode::kIoModeRead, options());
  Aligned buf(4 * 4096);
  // The part before end of file is fine through any path.
  ASSERT_EQ(file.read(buf.data, size - 2 * 4096, 2 * 4096), 4196u);
  EXPECT_EQ(std::memcmp(buf.data, bytes.data() + 2 * 4096, 4196), 0);
  const std::string what =
      expect_error(ErrorCode::kErrorCorrupt, 0, [&] { file.read(buf.data, 2 * 4096, 2 * 4096); });
  EXPECT_TRUE(contains(what, path)) << what;
  EXPECT_TRUE(contains(what, "offset 8192")) << what;
  EXPECT_TRUE(contains(what, "8192 bytes")) << what;
  EXPECT_TRUE(contains(what, "file size 12388")) << what;
  EXPECT_TRUE(contains(what, "file is truncated?")) << what;
  // The bytes before end of file still arrived.
  EXPECT_EQ(std::memcmp(buf.data, bytes.data() + 2 * 4096, 4196), 0);
  // Starting past the end fails the same way, asynchronously too.
  IoFuture future = file.pread(buf.data, 10, size + 5);
  expect_error(ErrorCode::kErrorCorrupt, 0, [&] { future.get(); });
  expect_error(ErrorCode::kErrorCorrupt, 0, [&] { future.get(); });  // same result again
}

TEST_P(IoTest, BatchLargerThanQueueDepth) {
  const size_t size = 200 * 4096 + 17;
  const std::string path = dir_.file("batch.bin");
  const std::vector<char> bytes = random_bytes(size, 5);
  write_file(path, bytes);
  File file(path, IoMode::kIoModeRead, options(4));
  EXPECT_EQ(file.queue_depth(), 4u);
  Aligned out(size + 4096);
  std::vector<IoRequest> requests;
  std::mt19937 rng(6);
  uint64_t at = 0;
  for (int i = 0; at < size; ++i) {
    // Mix of aligned pages and odd pieces covering the whole file.
    size_t len = i % 3 == 0 ? 4096 : 1 + rng() % 9000;
    len = std::min<size_t>(len, size - at);
    requests.push_back({out.data + at, len, at});
    at += len;
  }
  ASSERT_GT(requests.size(), 100u);
  std::vector<IoFuture> futures = file.pread_batch(requests);
  ASSERT_EQ(futures.size(), requests.size());
  for (size_t i = 0; i < futures.size(); ++i) EXPECT_EQ(futures[i].get(), requests[i].len);
  EXPECT_EQ(std::memcmp(out.data, bytes.data(), size), 0);
}

// io_wait_all over futures of several files in any order, with finished (empty) requests
// among them: each back end is driven through its own requests (io_uring: without
// handing its ring to the background reaper between them). With io_uring, a third file's
// batch that no one waits for still finishes meanwhile (its background reaper takes the ring
// over).
TEST_P(IoTest, WaitAllAcrossFilesAndBatchesLargerThanQueueDepth) {
  const size_t size = 97 * 4096 + 5;
  std::vector<std::vector<char>> bytes;
  std::vector<File> files;
  for (int f = 0; f < 3; ++f) {
    const std::string path = dir_.file("wait_all" + std::to_string(f) + ".bin");
    bytes.push_back(random_bytes(size, 40 + f));
    write_file(path, bytes.back());
    files.emplace_back(path, IoMode::kIoModeRead, options(f == 2 ? 2 : 3));
  }
  constexpr size_t kRequests = 61;  // prime, past every queue depth
  Aligned out(3 * kRequests * 8192);
  std::memset(out.data, 0x5a, 3 * kRequests * 8192);
  std::mt19937 rng(41);
  std::vector<IoRequest> requests[3];
  for (int f = 0; f < 3; ++f) {
    for (size_t i = 0; i < kRequests; ++i) {
      const size_t len = i % 5 == 4 ? 0 : i % 2 ? 8192 : 1 + rng() % 8192;  // some empty
      const uint64_t offset = i % 2 ? (rng() % (size / 4096 - 2)) * 4096 : rng() % (size - 8192);
      requests[f].push_back({out.data + (f * kRequests + i) * 8192, len, offset});
    }
  }
  std::vector<IoFuture> unwaited = files[2].pread_batch(requests[2]);
  std::vector<IoFuture> a = files[0].pread_batch(requests[0]);
  std::vector<IoFuture> b = files[1].pread_batch(requests[1]);
  // a's first half, b interleaved with a's second half, b's rest.
  std::vector<IoFuture> all(a.begin(), a.begin() + kRequests / 2);
  for (size_t i = kRequests / 2; i < kRequests; ++i) {
    all.push_back(a[i]);
    all.push_back(b[i - kRequests / 2]);
  }
  all.insert(all.end(), b.begin() + (kRequests - kRequests / 2), b.end());
  ASSERT_EQ(all.size(), 2 * kRequests);
  io_wait_all(all);
  for (int f = 0; f < 2; ++f) {
    std::vector<IoFuture>& fs = f == 0 ? a : b;
    for (size_t i = 0; i < kRequests; ++i) {
      const IoRequest& r = requests[f][i];
      ASSERT_TRUE(fs[i].ready()) << "file " << f << " request " << i;
      EXPECT_EQ(fs[i].get(), r.len);
      EXPECT_EQ(std::memcmp(r.buf, bytes[f].data() + r.offset, r.len), 0) << f << " " << i;
    }
  }
  // io_uring: the unwaited batch's bytes arrive with no thread of ours touching the engine
  // (ready() would take completions and refill the ring itself), so its reaper took the ring
  // over. The kernel writes them, so watching the buffers races with no thread. The thread
  // back end has no reaper (its workers finish every request they take), and watching would
  // race with their writes: there the futures are only waited for.
  if (GetParam() == IoBackend::kIoBackendUring) {
    auto landed = [&] {
      for (const IoRequest& r : requests[2]) {
        if (std::memcmp(r.buf, bytes[2].data() + r.offset, r.len) != 0) return false;
      }
      return true;
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!landed()) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "a batch no one waited for stalled";
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  for (size_t i = 0; i < kRequests; ++i) {
    const IoRequest& r = requests[2][i];
    EXPECT_EQ(unwaited[i].get(), r.len);
    EXPECT_EQ(std::memcmp(r.buf, bytes[2].data() + r.offset, r.len), 0) << i;
  }
}

TEST_P(IoTest, ConcurrentRequestsFromSeveralThreads) {
  const size_t size = 50 * 4096 + 999;
  const std::string path = dir_.file("shared.bin");
  const std::vector<char> bytes = random_bytes(size, 7);
  write_file(path, bytes);
  File file(path, IoMode::kIoModeRead, options(8));
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      std::vector<std::vector<char>> bufs(6, std::vector<char>(9000));
      for (int round = 0; round < 25; ++round) {
        std::vector<IoRequest> requests;
        for (auto& b : bufs) {
          const size_t len = 1 + rng() % b.size();
          requests.push_back({b.data(), len, rng() % (size - len)});
        }
        std::vector<IoFuture> futures = file.pread_batch(requests);
        for (size_t i = 0; i < futures.size(); ++i) {
          futures[i].get();
          if (std::memcmp(requests[i].buf, bytes.data() + requests[i].offset, requests[i].len)) {
            ++mismatches;
          }
        }
        const size_t len = 1 + rng() % 5000;
        const uint64_t offset = rng() % (size - len);
        std::vector<char> sync_buf(len);
        file.read(sync_buf.data(), len, offset);
        if (std::memcmp(sync_buf.data(), bytes.data() + offset, len)) ++mismatches;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_P(IoTest, WaitersPollersAndDroppedFuturesNeverHang) {
  const size_t size = 64 * 4096 + 31;
  const std::string path = dir_.file("mixed.bin");
  const std::vector<char> bytes = random_bytes(size, 13);
  write_file(path, bytes);
  File file(path, IoMode::kIoModeRead, options(3));
  std::atomic<int> mismatches{0};
  // One buffer per dropped round: a dropped round's reads may still be landing when the thread
  // drops the next one, and two reads in flight into one buffer race (TSan saw it).
  constexpr int kRounds = 30;
  std::vector<std::vector<char>> dropped(4 * kRounds / 3, std::vector<char>(10 * 8192));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(200 + t);
      Aligned buf(10 * 8192);
      for (int round = 0; round < kRounds; ++round) {
        const int how = round % 3;
        char* base = how == 2 ? dropped[t * kRounds / 3 + round / 3].data() : buf.data;
        std::vector<IoRequest> requests;
        for (int i = 0; i < 10; ++i) {
          const size_t len = i % 2 ? 8192 : 1 + rng() % 8192;
          const uint64_t offset = i % 2 ? (rng() % (size / 4096 - 2)) * 4096 : rng() % (size - len);
          requests.push_back({base + i * 8192, len, offset});
        }
        std::vector<IoFuture> futures = file.pread_batch(requests);
        if (how == 0) {
          for (size_t i = futures.size(); i-- > 0;) futures[i].get();
        } else if (how == 1) {
          for (bool all = false; !all;) {
            all = true;
            for (IoFuture& f : futures) all = f.ready() && all;
          }
        } else {
          continue;  // dropped: the engine still finishes them
        }
        for (const IoRequest& r : requests) {
          if (std::memcmp(r.buf, bytes.data() + r.offset, r.len) != 0) ++mismatches;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  file.close();  // waits for the dropped requests
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_P(IoTest, WritesThenReads) {
  const std::string path = dir_.file("written.bin");
  const size_t size = 33 * 4096 + 5;
  const std::vector<char> bytes = random_bytes(size, 8);
  {
    File file(path, IoMode::kIoModeWrite, options(4));
    // Aligned pages (O_DIRECT) and odd pieces, out of order, in one batch.
    Aligned aligned(16 * 4096);
    std::memcpy(aligned.data, bytes.data() + 8 * 4096, 16 * 4096);
    std::vector<IoRequest> requests = {{aligned.data, 16 * 4096, 8 * 4096}};
    for (uint64_t at = 0; at < 8 * 4096; at += 1000) {
      requests.push_back(
          {const_cast<char*>(bytes.data()) + at, std::min<size_t>(1000, 8 * 4096 - at), at});
    }
    for (IoFuture& f : file.pwrite_batch(requests)) f.get();
    const uint64_t tail = 24 * 4096;
    EXPECT_EQ(file.write(bytes.data() + tail, size - tail, tail), size - tail);
    file.sync();
    EXPECT_EQ(file.size(), size);
    expect_error(ErrorCode::kErrorInvalidArgument, 0, [&] {
      char c;
      file.read(&c, 1, 0);
    });
  }
  std::ifstream in(path, std::ios::binary);
  std::vector<char> back(size);
  in.read(back.data(), static_cast<long>(size));
  EXPECT_EQ(back, bytes);
  // r+: overwrite an unaligned span, read it back through the engine.
  File file(path, IoMode::kIoModeReadWrite, options());
  const std::vector<char> patch = random_bytes(5001, 9);
  file.pwrite(patch.data(), patch.size(), 4095).get();
  std::vector<char> got(patch.size());
  file.read(got.data(), got.size(), 4095);
  EXPECT_EQ(got, patch);
  file.close();
  EXPECT_FALSE(file.is_open());
  expect_error(ErrorCode::kErrorInvalidArgument, 0, [&] { file.read(got.data(), 1, 0); });
}

TEST_P(IoTest, MissingFileAndPermissionErrors) {
  const std::string missing = dir_.file("missing.bin");
  std::string what = expect_error(ErrorCode::kErrorNotFound, ENOENT,
                                  [&] { File(missing, IoMode::kIoModeRead, options()); });
  EXPECT_TRUE(contains(what, missing)) << what;
  what = expect_error(ErrorCode::kErrorNotFound, ENOENT,
                      [&] { File(dir_.file("no/such/dir.bin"), IoMode::kIoModeWrite, options()); });
  EXPECT_TRUE(contains(what, "directory")) << what;
  // Root ignores file modes; a sysfs attribute without a store method refuses writers.
  std::string denied = dir_.file("denied.bin");
  write_file(denied, {1, 2, 3});
  chmod(denied.c_str(), 0);
  if (geteuid() == 0) denied = "/sys/devices/system/cpu/online";
  try {
    File file(denied, IoMode::kIoModeReadWrite, options());
    GTEST_SKIP() << "could open " << denied << " for writing; no permission error to test";
  } catch (const Error& e) {
    if (e.sys_errno() == EROFS) GTEST_SKIP() << "read-only /sys here: " << e.what();
    EXPECT_EQ(e.code(), ErrorCode::kErrorIo);
    EXPECT_EQ(e.sys_errno(), EACCES) << e.what();
    EXPECT_TRUE(contains(e.what(), denied)) << e.what();
    EXPECT_TRUE(contains(e.what(), "permission")) << e.what();
  }
}

TEST_P(IoTest, EioFailsTheFutureAndOthersStillComplete) {
  // /proc/self/mem at address 0 (never mapped) is a real EIO from the kernel.
  File mem("/proc/self/mem", IoMode::kIoModeRead, options());
  char buf[64];
  const std::string what =
      expect_error(ErrorCode::kErrorIo, EIO, [&] { mem.read(buf, sizeof buf, 0); });
  EXPECT_TRUE(contains(what, "/proc/self/mem")) << what;
  EXPECT_TRUE(contains(what, "64 bytes at offset 0")) << what;
  EXPECT_TRUE(contains(what, "Input/output error")) << what;
  // A good request in the same batch (this process's own memory) completes.
  static const char kSecret[] = "tierlm reads its own memory";
  char good[sizeof kSecret];
  std::vector<IoRequest> requests = {
      {buf, sizeof buf, 4096},
      {good, sizeof good, reinterpret_cast<uintptr_t>(kSecret)},
  };
  std::vector<IoFuture> futures = mem.pread_batch(requests);
  expect_error(ErrorCode::kErrorIo, EIO, [&] { futures[0].get(); });
  EXPECT_EQ(futures[1].get(), sizeof good);
  EXPECT_STREQ(good, kSecret);
}

TEST_P(IoTest, EnospcOnWrite) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no writable /dev/full here";
  File full("/dev/full", IoMode::kIoModeWrite, options());
  Aligned buf(8192);
  std::memset(buf.data, 1, 8192);
  for (size_t len : {size_t{1}, size_t{8192}}) {
    const std::string what =
        expect_error(ErrorCode::kErrorIo, ENOSPC, [&] { full.write(buf.data, len, 0); });
    EXPECT_TRUE(contains(what, "/dev/full")) << what;
    EXPECT_TRUE(contains(what, "No space left on device")) << what;
    EXPECT_TRUE(contains(what, std::to_string(len) + " bytes")) << what;
    EXPECT_TRUE(contains(what, "at offset 0")) << what;
  }
  IoFuture future = full.pwrite(buf.data, 100, 4096);
  expect_error(ErrorCode::kErrorIo, ENOSPC, [&] { future.get(); });
}

TEST_P(IoTest, RegisteredBuffers) {
  const size_t size = 16 * 4096 + 3;
  const std::string path = dir_.file("fixed.bin");
  const std::vector<char> bytes = random_bytes(size, 10);
  write_file(path, bytes);
  File file(path, IoMode::kIoModeRead, options(4));
  Aligned buf(size + 4096);
  const bool registered = file.register_buffer(buf.data, size + 4096);
  EXPECT_EQ(registered, GetParam() == IoBackend::kIoBackendUring);
  std::vector<IoRequest> requests = {{buf.data, 8 * 4096, 0},
                                     {buf.data + 8 * 4096, size - 8 * 4096, 8 * 4096}};
  for (IoFuture& f : file.pread_batch(requests)) f.get();
  EXPECT_EQ(std::memcmp(buf.data, bytes.data(), size), 0);
  file.unregister_buffer(buf.data);
  std::memset(buf.data, 0, size);
  file.read(buf.data + 1, size - 1, 1);
  EXPECT_EQ(std::memcmp(buf.data + 1, bytes.data() + 1, size - 1), 0);
}

INSTANTIATE_TEST_SUITE_P(Backends, IoTest,
                         ::testing::Values(IoBackend::kIoBackendThreads,
                                           IoBackend::kIoBackendUring),
                         [](const auto& info) { return std::string(io_backend_name(info.param)); });

TEST(IoBackendChoice, EnvironmentOverridesAutoAndCodeWins) {
  TempDir dir;
  const std::string path = dir.file("x.bin");
  write_file(path, {1, 2, 3});
  setenv("TIERLM_IO", "threads", 1);
  EXPECT_EQ(File(path, IoMode::kIoModeRead).backend(), IoBackend::kIoBackendThreads);
  std::string reason;
  EXPECT_EQ(io_backend_resolve(IoBackend::kIoBackendAuto, &reason), IoBackend::kIoBackendThreads);
  EXPECT_EQ(reason, "TIERLM_IO=threads");
  setenv("TIERLM_IO", "fast", 1);
  expect_error(ErrorCode::kErrorInvalidArgument, 0, [&] { File(path, IoMode::kIoModeRead); });
  setenv("TIERLM_IO", "uring", 1);
  IoOptions threads;
  threads.backend = IoBackend::kIoBackendThreads;
  EXPECT_EQ(File(path, IoMode::kIoModeRead, threads).backend(), IoBackend::kIoBackendThreads);
  if (io_probe().uring_available) {
    EXPECT_EQ(File(path, IoMode::kIoModeRead).backend(), IoBackend::kIoBackendUring);
  } else {
    const std::string what =
        expect_error(ErrorCode::kErrorUnsupported, 0, [&] { File(path, IoMode::kIoModeRead); });
    EXPECT_TRUE(contains(what, "TIERLM_IO=threads")) << what;
  }
  unsetenv("TIERLM_IO");
  const IoBackend chosen = File(path, IoMode::kIoModeRead).backend();
  EXPECT_EQ(chosen,
            io_probe().uring_available ? IoBackend::kIoBackendUring : IoBackend::kIoBackendThreads);
  EXPECT_FALSE(io_probe().reason.empty());
  EXPECT_EQ(io_backend_parse("threads"), IoBackend::kIoBackendThreads);
  expect_error(ErrorCode::kErrorInvalidArgument, 0, [] { io_backend_parse("fast"); });
  expect_error(ErrorCode::kErrorInvalidArgument, 0, [] { io_mode_parse("a"); });
  IoOptions zero;
  zero.queue_depth = 0;
  expect_error(ErrorCode::kErrorInvalidArgument, 0, [&] { File(path, IoMode::kIoModeRead, zero); });
}

// The rule both back ends apply after every chunk: short transfers continue where they
// stopped, retryable errors retry, O_DIRECT refusals continue buffered, the rest complete.
TEST(IoOpAdvance, ShortTransfersRetriesAndFailures) {
  TempDir dir;
  const std::string path = dir.file("advance.bin");
  write_file(path, random_bytes(3 * 4096 + 10, 12));
  detail::IoFd file = detail::io_open(path, IoMode::kIoModeRead, true);
  Aligned buf(4 * 4096);
  auto make = [&](size_t len, uint64_t offset) {
    detail::IoOp op;
    op.buf = buf.data;
    op.len = len;
    op.offset = offset;
    op.direct = file.direct_ok(buf.data, len, offset);
    op.state = std::make_shared<detail::IoState>();
    return op;
  };
  detail::IoOp op = make(3 * 4096, 0);
  EXPECT_EQ(op.direct, file.direct_fd >= 0);
  EXPECT_FALSE(detail::io_op_advance(file, op, 4096));  // short, still aligned
  EXPECT_EQ(op.done, 4096u);
  EXPECT_EQ(op.direct, file.direct_fd >= 0);
  EXPECT_FALSE(detail::io_op_advance(file, op, -EINTR));
  EXPECT_FALSE(detail::io_op_advance(file, op, -EAGAIN));
  EXPECT_FALSE(detail::io_op_advance(file, op, 100));  // now unaligned: buffered
  EXPECT_FALSE(op.direct);
  EXPECT_EQ(op.next_offset(), 4196u);
  EXPECT_EQ(op.next_len(), 3 * 4096 - 4196u);
  EXPECT_TRUE(detail::io_op_advance(file, op, static_cast<long>(op.next_len())));
  EXPECT_EQ(IoFuture(op.state).get(), 3u * 4096);

  detail::IoOp refused = make(4096, 4096);
  if (refused.direct) {
    EXPECT_FALSE(detail::io_op_advance(file, refused, -EINVAL));
    EXPECT_FALSE(refused.direct);  // retried through the page cache
  }
  EXPECT_TRUE(detail::io_op_advance(file, refused, -EIO));
  expect_error(ErrorCode::kErrorIo, EIO, [&] { IoFuture(refused.state).get(); });

  detail::IoOp eof = make(4096, 3 * 4096);
  EXPECT_FALSE(detail::io_op_advance(file, eof, 10));
  EXPECT_TRUE(detail::io_op_advance(file, eof, 0));
  const std::string what =
      expect_error(ErrorCode::kErrorCorrupt, 0, [&] { IoFuture(eof.state).get(); });
  EXPECT_TRUE(contains(what, "end of file at offset 12298")) << what;
  // The blocking loop the thread pool runs applies the same rule.
  detail::IoOp whole = make(3 * 4096 + 10, 0);
  detail::io_op_run_blocking(file, whole);
  EXPECT_EQ(IoFuture(whole.state).get(), 3u * 4096 + 10);
}

TEST(IoBench, MeasuresRandomReads) {
  TempDir dir;
  const std::string path = dir.file("bench.bin");
  write_file(path, random_bytes(64 * 4096, 11));
  IoOptions options;
  const IoBenchResult r = io_bench_read(path, 8192, 4, options, 0.05);
  EXPECT_GT(r.requests, 0u);
  EXPECT_EQ(r.bytes, r.requests * 8192);
  EXPECT_GT(r.bytes_per_second(), 0.0);
}

}  // namespace
}  // namespace tierlm
