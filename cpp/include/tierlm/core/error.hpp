// Errors of the native core: one exception type carrying a category and the errno that
// caused it. TIERLM_FAIL/TIERLM_CHECK build their message only on failure.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "tierlm/core/export.hpp"

namespace tierlm {

enum class ErrorCode {
  kErrorInvalidArgument,  // a caller passed something malformed
  kErrorNotFound,         // a file or tensor that should exist does not
  kErrorIo,               // a system call failed; sys_errno() says which
  kErrorBudget,           // a tier cannot hold the request within its budget
  kErrorCorrupt,          // a file's contents are damaged (size, checksum, format)
  kErrorUnsupported,      // the build or the machine lacks the feature
};

class TIERLM_API Error : public std::runtime_error {
 public:
  Error(ErrorCode code, int sys_errno, const std::string& message)
      : std::runtime_error(message), code_(code), sys_errno_(sys_errno) {}
  ErrorCode code() const { return code_; }
  // The errno behind an kErrorIo / kErrorNotFound failure, 0 when none.
  int sys_errno() const { return sys_errno_; }

 private:
  ErrorCode code_;
  int sys_errno_;
};

// Human-readable byte count ("4.0 MiB") for messages.
TIERLM_API std::string format_bytes(unsigned long long bytes);

// Text of an errno value ("No space left on device").
TIERLM_API std::string errno_text(int err);

namespace detail {
template <typename... Parts>
[[noreturn]] void fail(ErrorCode code, int sys_errno, const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw Error(code, sys_errno, out.str());
}
}  // namespace detail

}  // namespace tierlm

#define TIERLM_FAIL(code, sys_errno, ...) \
  ::tierlm::detail::fail(::tierlm::ErrorCode::code, (sys_errno), __VA_ARGS__)

#define TIERLM_CHECK(cond, code, ...)               \
  do {                                              \
    if (!(cond)) TIERLM_FAIL(code, 0, __VA_ARGS__); \
  } while (0)
