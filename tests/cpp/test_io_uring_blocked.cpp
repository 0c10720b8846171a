// io_uring where io_uring_setup works but io_uring_enter is refused (a seccomp filter, as some
// container runtimes install): the probe must say so, and a read forced onto the ring must end
// in a clear error, never spin. Each case runs in a forked child under such a filter.
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "io/io_engine.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm {
namespace {

#ifdef TIERLM_HAVE_IO_URING

// Makes io_uring_enter fail with EPERM for this process; every other call is allowed.
bool refuse_io_uring_enter() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// Runs body in a child with io_uring_enter refused; returns what it printed, or a line saying
// how it died. A body that hangs is killed after 20 s.
std::string run_refused(const std::function<std::string()>& body) {
  int out[2];
  if (pipe(out) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    close(out[0]);
    alarm(20);
    std::string said = refuse_io_uring_enter() ? body() : "cannot install the seccomp filter";
    if (write(out[1], said.data(), said.size()) < 0) _exit(3);
    _exit(0);
  }
  close(out[1]);
  std::string said;
  char buf[512];
  for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;) said.append(buf, n);
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return "child killed by signal " + std::to_string(WTERMSIG(status));
  return said;
}

bool uring_usable_here(std::string* why) {
  if (!io_probe().uring_available) {
    *why = io_probe().reason;
    return false;
  }
  return true;
}

TEST(IoUringBlocked, ProbeReportsRefusedSubmission) {
  std::string why;
  if (!uring_usable_here(&why)) GTEST_SKIP() << "io_uring unavailable here: " << why;
  const std::string said = run_refused([] {
    std::string reason;
    const int err = detail::uring_probe(&reason);
    return std::to_string(err) + " " + reason;
  });
  EXPECT_EQ(said.rfind(std::to_string(EPERM) + " ", 0), 0u) << said;
  EXPECT_NE(said.find("io_uring_enter"), std::string::npos) << said;
  EXPECT_NE(said.find("seccomp"), std::string::npos) << said;
}

TEST(IoUringBlocked, ReadOnTheRingFailsClearlyInsteadOfHanging) {
  std::string why;
  if (!uring_usable_here(&why)) GTEST_SKIP() << "io_uring unavailable here: " << why;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("tierlm-uring-blocked-" + std::to_string(getpid())))
                               .string();
  std::ofstream(path, std::ios::binary) << std::string(8192, 'x');
  // The parent's probe saw a working ring, so the child's File takes the ring as asked.
  const std::string said = run_refused([&] {
    try {
      IoOptions options;
      options.backend = IoBackend::kIoBackendUring;
      File file(path, IoMode::kIoModeRead, options);
      std::vector<char> buf(4096);
      std::vector<IoRequest> batch = {{buf.data(), 4096, 0}, {buf.data(), 4096, 4096}};
      std::vector<IoFuture> futures = file.pread_batch(batch);
      std::string all;
      for (IoFuture& f : futures) {
        try {
          f.get();
          all += "read succeeded; ";
        } catch (const Error& e) {
          all += std::string(e.what()) + "; ";
        }
      }
      return all;
    } catch (const Error& e) {
      return std::string("open: ") + e.what();
    }
  });
  std::filesystem::remove(path);
  EXPECT_EQ(said.find("read succeeded"), std::string::npos) << said;
  EXPECT_EQ(said.find("killed"), std::string::npos) << said;
  EXPECT_NE(said.find("io_uring_enter"), std::string::npos) << said;
  EXPECT_NE(said.find(path), std::string::npos) << said;
  EXPECT_NE(said.find("TIERLM_IO=threads"), std::string::npos) << said;
}

#else

TEST(IoUringBlocked, NeedsTheUringBackEnd) {
  GTEST_SKIP() << "this build has no io_uring back end (liburing was not found at build time)";
}

#endif

}  // namespace
}  // namespace tierlm
