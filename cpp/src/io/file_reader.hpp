// Synchronous whole-range reads of package files with errors that name file, tensor and
// offset. The weight store uses it today; the I/O engine (tierlm/io.hpp) replaces it for
// asynchronous prefetch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tierlm::detail {

class FileReader {
 public:
  explicit FileReader(const std::string& path);
  FileReader(FileReader&& other) noexcept;
  FileReader& operator=(FileReader&& other) noexcept;
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;
  ~FileReader();

  // Reads exactly len bytes at offset or throws (kErrorCorrupt on a short read: truncated).
  void read(void* buf, size_t len, uint64_t offset, const std::string& what) const;
  uint64_t size() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace tierlm::detail
