// libFuzzer target: the JSON reader behind manifest.json, graph.json, plans and safetensors
// headers. Every value of a parsed document goes through the typed accessors the package reader
// uses, so a number that as_int accepts must round-trip and a refusal must be tierlm::Error.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/json.hpp"
#include "fuzz_support.hpp"
#include "tierlm/core/error.hpp"

namespace {

using tierlm::detail::Json;

void walk(const Json& value, int depth) {
  if (depth > 300) __builtin_trap();  // the parser promises at most 256 levels
  switch (value.type()) {
    case tierlm::detail::JsonType::kJsonNumber:
      try {
        const int64_t i = value.as_int("fuzz");
        if (static_cast<double>(i) != value.as_number("fuzz")) __builtin_trap();
      } catch (const tierlm::Error&) {
      }
      break;
    case tierlm::detail::JsonType::kJsonArray:
      for (const Json& item : value.as_array("fuzz")) walk(item, depth + 1);
      break;
    case tierlm::detail::JsonType::kJsonObject:
      for (const auto& [key, item] : value.as_object("fuzz")) {
        if (value.find(key) == nullptr) __builtin_trap();
        walk(item, depth + 1);
      }
      break;
    default:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    walk(tierlm::detail::json_parse(tierlm::fuzz::as_text(data, size), "fuzz.json"), 0);
  } catch (const tierlm::Error&) {
  }
  return 0;
}
