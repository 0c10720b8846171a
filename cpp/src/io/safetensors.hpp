// The header of a safetensors file: a little-endian u64 length, then JSON {name: {dtype, shape,
// data_offsets}} (an optional "__metadata__" entry aside). Entries are parsed when asked for,
// so a damaged entry nobody uses does not refuse the file.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/json.hpp"

namespace tierlm::detail {

struct SafetensorsTensor {
  std::string dtype;  // as written: "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // absolute offsets in the file of the tensor's bytes
  uint64_t end = 0;
};

class SafetensorsHeader {
 public:
  // Reads the header; kErrorCorrupt when it does not fit the file (truncated?) or is not JSON.
  explicit SafetensorsHeader(const std::string& path);

  // The entry, nullopt when the file has none of that name; kErrorCorrupt naming the file and
  // the tensor when the entry is malformed or its bytes lie outside the file.
  std::optional<SafetensorsTensor> find(const std::string& name) const;
  // The offset of an F32 tensor of exactly `shape`; kErrorCorrupt naming the file, the tensor
  // and what is wrong (missing, not F32, another shape), then `hint` (what to do).
  uint64_t f32_offset(const std::string& name, const std::vector<int64_t>& shape,
                      const char* hint) const;
  const std::string& path() const { return path_; }
  uint64_t file_bytes() const { return file_bytes_; }

 private:
  std::string path_;
  uint64_t file_bytes_ = 0;
  uint64_t data_start_ = 0;
  Json header_;
};

}  // namespace tierlm::detail
