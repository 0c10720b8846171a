// Checksums of the package's bytes: zlib's CRC-32 (slicing by 8, so that verifying every
// weight at load costs about one read of the files), and the checks that compare tensors and
// whole files with what the manifest recorded at export.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/model/package.hpp"

namespace tierlm {

namespace {

using CrcTables = std::array<std::array<uint32_t, 256>, 8>;

CrcTables make_crc_tables() {
  CrcTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
  }
  return t;
}

constexpr size_t kVerifyPiece = size_t{1} << 20;

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t size) {
  static const CrcTables kT = make_crc_tables();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (; size >= 8; size -= 8, p += 8) {
    const uint32_t lo =
        crc ^ (uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
    crc = kT[7][lo & 0xFF] ^ kT[6][(lo >> 8) & 0xFF] ^ kT[5][(lo >> 16) & 0xFF] ^ kT[4][lo >> 24] ^
          kT[3][p[4]] ^ kT[2][p[5]] ^ kT[1][p[6]] ^ kT[0][p[7]];
  }
  for (; size > 0; --size, ++p) crc = kT[0][(crc ^ *p) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

namespace {

// The one comparison of a tensor's checksum with the manifest's, and its messages.
void check_crc(const Package& package, const TensorInfo& t, uint32_t crc, VerifyStats* stats) {
  TIERLM_CHECK(t.has_crc32, kErrorCorrupt, "tensor `", t.name, "` in ", package.file_path(t.file),
               " has no checksum in manifest.json, so verification cannot cover it; export the "
               "package again (exports record every tensor's CRC-32) or load without verify");
  TIERLM_CHECK(crc == t.crc32, kErrorCorrupt, "tensor `", t.name, "` (", format_bytes(t.nbytes),
               " at offset ", t.offset, ") in ", package.file_path(t.file),
               ": checksum mismatch (CRC-32 ", crc, ", manifest says ", t.crc32,
               "); the file is damaged, export the package again");
  if (stats != nullptr) {
    stats->tensors += 1;
    stats->bytes += t.nbytes;
  }
}

}  // namespace

void tensor_verify(const Package& package, const TensorInfo& t, const void* data,
                   VerifyStats* stats) {
  const auto start = detail::Clock::now();
  check_crc(package, t, t.has_crc32 ? crc32_update(0, data, t.nbytes) : 0, stats);
  if (stats != nullptr) {
    stats->seconds += detail::seconds_since(start);
  }
}

VerifyStats package_verify(const Package& package, const std::vector<std::string>& names) {
  const auto start = detail::Clock::now();
  std::vector<const TensorInfo*> todo;
  if (names.empty()) {
    for (const TensorInfo& t : package.tensors) {
      if (t.has_crc32) todo.push_back(&t);
    }
  } else {
    std::unordered_set<std::string> seen;
    for (const std::string& name : names) {
      if (seen.insert(name).second) todo.push_back(&package.tensor(name));
    }
  }
  VerifyStats stats;
  // O_DIRECT reads through the engine into one aligned piece, so that checking the weights
  // leaves them out of the page cache as the loads do.
  std::unique_ptr<void, decltype(&std::free)> piece(std::aligned_alloc(kAlignment, kVerifyPiece),
                                                    &std::free);
  TIERLM_CHECK(piece != nullptr, kErrorInvalidArgument, "cannot allocate ",
               format_bytes(kVerifyPiece), " to verify ", package.path);
  char* buffer = static_cast<char*>(piece.get());
  std::unordered_map<std::string, File> files;
  for (const TensorInfo* t : todo) {
    auto it = files.find(t->file);
    if (it == files.end()) {
      it = files
               .emplace(t->file, File(package.file_path(t->file), IoMode::kIoModeRead,
                                      IoOptions{.direct = true}))
               .first;
    }
    File& f = it->second;
    uint32_t crc = 0;
    for (uint64_t done = 0; t->has_crc32 && done < t->nbytes;) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(kVerifyPiece, t->nbytes - done));
      // Whole pages where the file has them (the package pads tensors to 4 KiB).
      const uint64_t at = t->offset + done;
      const size_t len = static_cast<size_t>(std::max<uint64_t>(
          std::min<uint64_t>(round_up(chunk, kAlignment), f.size() - at), chunk));
      f.read(buffer, len, at);
      crc = crc32_update(crc, buffer, chunk);
      done += chunk;
    }
    check_crc(package, *t, crc, &stats);
  }
  stats.seconds = detail::seconds_since(start);
  return stats;
}

uint32_t file_crc32(const std::string& path, uint64_t len) {
  File f(path, IoMode::kIoModeRead, IoOptions{.direct = false});
  std::vector<char> buf(8u << 20);
  uint32_t sum = 0;
  for (uint64_t at = 0; at < len; at += buf.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - at));
    f.read(buf.data(), n, at);
    sum = crc32_update(sum, buf.data(), n);
  }
  return sum;
}

}  // namespace tierlm
