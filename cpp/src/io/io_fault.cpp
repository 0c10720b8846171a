// Fault injection for the error paths of every I/O call (TIERLM_FAULT, see tierlm/io/io.hpp):
// the spec is parsed once per process, here only; the back ends, the package reader, the disk
// tier and (through the binding) the Python writers ask io_fault_point before each call.
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm {

namespace {

struct FaultSpec {
  bool active = false;
  std::string error;  // why TIERLM_FAULT cannot be parsed ("" when it can)
  IoFaultOp op = IoFaultOp::kIoFaultRead;
  int err = 0;  // 0: a short transfer instead of an error
  uint64_t nth = 1;
  std::string path;  // only calls on paths containing it count ("" = all)
};

constexpr const char* kOpNames[] = {"read", "write", "fsync", "fallocate"};

int op_index(const std::string& name) {
  for (int i = 0; i < 4; ++i) {
    if (name == kOpNames[i]) return i;
  }
  return -1;
}

struct BadSpec {
  std::string message;
};

[[noreturn]] void bad_spec(const std::string& spec, const std::string& why) {
  throw BadSpec{"TIERLM_FAULT='" + spec + "': " + why +
                "; write it as op=read|write|fsync|fallocate,errno=EIO|ENOSPC|EFBIG|short,nth=N"
                "[,path=SUBSTRING], or unset it"};
}

FaultSpec parse(const std::string& spec) {
  FaultSpec f;
  f.active = true;
  bool has_op = false;
  bool has_err = false;
  std::stringstream in(spec);
  std::string item;
  while (std::getline(in, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) bad_spec(spec, "'" + item + "' is not key=value");
    const std::string key = item.substr(0, eq);
    const std::string value = item.substr(eq + 1);
    if (key == "op") {
      const int i = op_index(value);
      if (i < 0) bad_spec(spec, "unknown op '" + value + "'");
      f.op = static_cast<IoFaultOp>(i);
      has_op = true;
    } else if (key == "errno") {
      has_err = true;
      if (value == "EIO") {
        f.err = EIO;
      } else if (value == "ENOSPC") {
        f.err = ENOSPC;
      } else if (value == "EFBIG") {
        f.err = EFBIG;
      } else if (value == "short") {
        f.err = 0;
      } else {
        bad_spec(spec, "unknown errno '" + value + "'");
      }
    } else if (key == "nth") {
      char* end = nullptr;
      const unsigned long long n = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n == 0) bad_spec(spec, "nth must be 1 or more");
      f.nth = n;
    } else if (key == "path") {
      f.path = value;
    } else {
      bad_spec(spec, "unknown key '" + key + "'");
    }
  }
  if (!has_op || !has_err) bad_spec(spec, "op and errno are required");
  return f;
}

// Parsed once; a bad spec is kept as its message, thrown by io_fault_check on the threads that
// open files (never inside the back ends' workers, where nothing may throw).
const FaultSpec& spec() {
  static const FaultSpec kSpec = [] {
    const char* env = std::getenv("TIERLM_FAULT");
    if (env == nullptr || *env == '\0') return FaultSpec{};
    try {
      return parse(env);
    } catch (const BadSpec& bad) {
      FaultSpec f;
      f.error = bad.message;
      return f;
    }
  }();
  return kSpec;
}

std::atomic<uint64_t> g_calls{0};

}  // namespace

IoFaultOp io_fault_op_parse(const std::string& name) {
  const int i = op_index(name);
  if (i >= 0) return static_cast<IoFaultOp>(i);
  TIERLM_FAIL(kErrorInvalidArgument, 0, "unknown I/O call '", name,
              "'; use read, write, fsync or fallocate");
}

void io_fault_check() {
  const FaultSpec& f = spec();
  if (!f.error.empty()) TIERLM_FAIL(kErrorInvalidArgument, 0, f.error);
}

IoFault io_fault_point(IoFaultOp op, const std::string& path, size_t len) {
  const FaultSpec& f = spec();
  if (!f.active || !f.error.empty() || op != f.op) return {0, len};
  if (!f.path.empty() && path.find(f.path) == std::string::npos) return {0, len};
  if (g_calls.fetch_add(1) + 1 != f.nth) return {0, len};
  IoFault fault{f.err, len};
  if (f.err == 0 && len > 1) fault.len = len / 2;  // short: the call moves half the bytes
  std::fprintf(stderr, "tierlm: TIERLM_FAULT injected %s into %s #%llu of %s\n",
               f.err != 0 ? std::strerror(f.err) : "a short transfer",
               kOpNames[static_cast<int>(op)], static_cast<unsigned long long>(f.nth),
               path.c_str());
  return fault;
}

}  // namespace tierlm
