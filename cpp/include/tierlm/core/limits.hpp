// The range of every numeric option a user can give (tierlm.load, generate, the CLI, the C
// API), in one table, and the one check and message for a value outside it. Python checks
// its arbitrary-size integers against the same table and raises the same message.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "tierlm/core/export.hpp"

namespace tierlm {

struct TIERLM_API OptionRange {
  const char* name;
  int64_t min;
  uint64_t max;
  const char* meaning;
};

TIERLM_API std::span<const OptionRange> option_ranges();
// The entry for `name`; throws std::logic_error for a name not in the table (a bug).
TIERLM_API const OptionRange& option_range(std::string_view name);
// "threads = 1000000 is out of range 0..1024 (compute threads; 0 = every core)".
TIERLM_API std::string option_range_error(std::string_view name, std::string_view value);
// Throws kErrorInvalidArgument with option_range_error when value is outside name's range.
TIERLM_API void option_range_fail(std::string_view name, std::string_view value);

template <typename T>
TIERLM_API void check_option(std::string_view name, T value) {
  static_assert(std::is_integral_v<T>);
  const OptionRange& r = option_range(name);
  bool inside;
  if constexpr (std::is_signed_v<T>) {
    inside = value >= r.min && (value < 0 || static_cast<uint64_t>(value) <= r.max);
  } else {
    inside = (r.min <= 0 || value >= static_cast<uint64_t>(r.min)) && value <= r.max;
  }
  if (!inside) option_range_fail(name, std::to_string(value));
}

}  // namespace tierlm
