// libFuzzer target: a safetensors file (8-byte header length, JSON header, data) read by
// SafetensorsHeader, then every entry of the header looked up as the importer does.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/json.hpp"
#include "fuzz_support.hpp"
#include "io/safetensors.hpp"
#include "tierlm/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tierlm::fuzz::scratch_dir() + "/model.safetensors";
  tierlm::fuzz::write_file(path, tierlm::fuzz::as_text(data, size));
  try {
    const tierlm::detail::SafetensorsHeader header(path);
    // The entry names, read the way the header was (the class keeps its JSON private).
    uint64_t length = 0;
    std::memcpy(&length, data, 8);
    const auto json = tierlm::detail::json_parse(
        tierlm::fuzz::as_text(data + 8, static_cast<size_t>(length)), path);
    for (const auto& [name, entry] : json.as_object(path)) {
      try {
        if (auto t = header.find(name)) {
          if (t->begin > t->end || t->end > header.file_bytes()) __builtin_trap();
        }
      } catch (const tierlm::Error&) {
      }
    }
    if (header.find("fuzz: no such tensor").has_value()) __builtin_trap();
  } catch (const tierlm::Error&) {
  }
  return 0;
}
