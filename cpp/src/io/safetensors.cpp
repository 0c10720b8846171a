// Reads a safetensors file's header (see safetensors.hpp) with the package's JSON reader and
// checks each entry asked for against the file's size.
#include "io/safetensors.hpp"

#include "io/file_reader.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

SafetensorsHeader::SafetensorsHeader(const std::string& path) : path_(path) {
  const FileReader file(path);
  file_bytes_ = file.size();
  TIERLM_CHECK(file_bytes_ >= 8, kErrorCorrupt, path, " is truncated");
  uint64_t header_len = 0;
  file.read(&header_len, 8, 0, "the safetensors header length");
  // Compared without a sum that could wrap: a length near 2^64 passed "8 + len <= size".
  TIERLM_CHECK(header_len > 0 && header_len <= file_bytes_ - 8, kErrorCorrupt, path,
               ": safetensors header of ", header_len, " bytes does not fit the file (",
               file_bytes_, " bytes; truncated?)");
  std::string text(header_len, '\0');
  file.read(text.data(), header_len, 8, "the safetensors header");
  header_ = json_parse(text, path);
  data_start_ = 8 + header_len;
}

std::optional<SafetensorsTensor> SafetensorsHeader::find(const std::string& name) const {
  const Json* e = header_.find(name);
  if (e == nullptr) return std::nullopt;
  const std::string what = path_ + ": tensor `" + name + "`";
  SafetensorsTensor t;
  t.dtype = e->at("dtype", what).as_string(what + ".dtype");
  for (const Json& d : e->at("shape", what).as_array(what + ".shape")) {
    t.shape.push_back(d.as_int(what + ".shape"));
  }
  const auto& offsets = e->at("data_offsets", what).as_array(what + ".data_offsets");
  TIERLM_CHECK(offsets.size() == 2, kErrorCorrupt, what,
               ": data_offsets must be [begin, end]; the file is damaged");
  const int64_t begin = offsets[0].as_int(what + ".data_offsets");
  const int64_t end = offsets[1].as_int(what + ".data_offsets");
  TIERLM_CHECK(
      0 <= begin && begin <= end && static_cast<uint64_t>(end) <= file_bytes_ - data_start_,
      kErrorCorrupt, what, " lies outside the file (truncated?)");
  t.begin = data_start_ + static_cast<uint64_t>(begin);
  t.end = data_start_ + static_cast<uint64_t>(end);
  return t;
}

uint64_t SafetensorsHeader::f32_offset(const std::string& name, const std::vector<int64_t>& shape,
                                       const char* hint) const {
  const std::optional<SafetensorsTensor> t = find(name);
  TIERLM_CHECK(t.has_value(), kErrorCorrupt, path_, ": no tensor `", name, "`; ", hint);
  TIERLM_CHECK(t->dtype == "F32", kErrorCorrupt, path_, ": tensor `", name, "` is not F32; ", hint);
  TIERLM_CHECK(t->shape == shape, kErrorCorrupt, path_, ": tensor `", name,
               "` has the wrong shape for the model; ", hint);
  uint64_t numel = 1;
  for (int64_t d : shape) numel *= static_cast<uint64_t>(d);
  TIERLM_CHECK(t->end - t->begin == numel * 4, kErrorCorrupt, path_, ": tensor `", name, "` has ",
               t->end - t->begin, " bytes, its shape needs ", numel * 4, "; ", hint);
  return t->begin;
}

}  // namespace tierlm::detail
