// Shared by the libFuzzer harnesses: a private scratch folder per process and whole-file writes.
// A harness catches tierlm::Error (the clean refusal) and nothing else, so any other exception,
// signal or sanitizer report is a defect that the fuzzer keeps as a crasher.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace tierlm::fuzz {

// A folder under $TMPDIR that lives as long as the process and is removed at exit, by its
// holder's destructor: an atexit handler registered while the static was being built ran after
// the static's own destructor and read the freed path (ASan: heap-use-after-free at exit).
struct ScratchDir {
  std::string path;
  ScratchDir() {
    path = (std::filesystem::temp_directory_path() / "tierlm-fuzz-XXXXXX").string();
    if (mkdtemp(path.data()) == nullptr) std::abort();
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

inline const std::string& scratch_dir() {
  static const ScratchDir dir;
  return dir.path;
}

inline void write_file(const std::string& path, std::string_view bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace tierlm::fuzz
