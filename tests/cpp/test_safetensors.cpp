// The safetensors header reader: entries with absolute offsets, "__metadata__" beside them,
// absent names, and damaged files (truncated, a header past the end, an entry past the end,
// malformed offsets) refused with kErrorCorrupt naming the file and the tensor.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "io/safetensors.hpp"
#include "tierlm/core/error.hpp"
#include "tiny_package.hpp"

namespace tierlm::detail {
namespace {

using tierlm::testing::TempDir;

// Writes the u64 length, the header text and `data` bytes of zeros; len overrides the length.
std::string write(const std::string& dir, const std::string& header, size_t data,
                  uint64_t len = 0) {
  const std::string path = dir + "/t.safetensors";
  std::ofstream f(path, std::ios::binary);
  if (len == 0) len = header.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << header << std::string(data, '\0');
  return path;
}

void expect_corrupt(const std::string& path, const std::string& tensor, const std::string& part) {
  try {
    const SafetensorsHeader st(path);
    if (!tensor.empty()) st.find(tensor);
    FAIL() << "accepted: " << part;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorCorrupt) << e.what();
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find(part), std::string::npos) << what;
  }
}

TEST(Safetensors, EntriesHaveAbsoluteOffsets) {
  TempDir dir;
  const std::string header =
      R"({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3],)"
      R"( "data_offsets": [0, 24]}, "b": {"dtype": "BF16", "shape": [5], "data_offsets": [24, 34]}})";
  const std::string path = write(dir.path(), header, 34);
  const SafetensorsHeader st(path);
  EXPECT_EQ(st.file_bytes(), 8 + header.size() + 34);
  const auto a = st.find("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->dtype, "F32");
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->begin, 8 + header.size());
  EXPECT_EQ(a->end, 8 + header.size() + 24);
  const auto b = st.find("b");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->dtype, "BF16");
  EXPECT_EQ(b->end - b->begin, 10u);
  EXPECT_FALSE(st.find("c").has_value());
}

TEST(Safetensors, DamagedFilesAreRefused) {
  TempDir dir;
  const std::string path = dir.path() + "/t.safetensors";
  std::ofstream(path) << "abc";
  expect_corrupt(path, "", "truncated");
  const std::string entry = R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  expect_corrupt(write(dir.path(), entry, 16, 1000), "", "does not fit the file");
  expect_corrupt(write(dir.path(), entry, 15), "a", "tensor `a` lies outside the file");
  expect_corrupt(
      write(dir.path(), R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}})", 16),
      "a", "lies outside the file");
  expect_corrupt(
      write(dir.path(), R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", 16), "a",
      "data_offsets must be [begin, end]");
  expect_corrupt(write(dir.path(), R"({"a": {"dtype": "F32", "shape": [4]}})", 16), "a",
                 "data_offsets");
  expect_corrupt(write(dir.path(), "{not json", 0), "", "t.safetensors");
  // A damaged entry nobody asks for does not refuse the file.
  const SafetensorsHeader st(write(
      dir.path(), R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": 1})", 16));
  EXPECT_TRUE(st.find("a").has_value());
}

// f32_offset: the offset of an F32 tensor of the shape asked for; anything else is named with
// the hint (what the channel rotations and the predictors read through it).
TEST(Safetensors, F32OffsetChecksDtypeAndShape) {
  TempDir dir;
  const std::string header = R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},)"
                             R"( "b": {"dtype": "BF16", "shape": [5], "data_offsets": [24, 34]}})";
  const SafetensorsHeader st(write(dir.path(), header, 34));
  EXPECT_EQ(st.f32_offset("a", {2, 3}, "do X"), 8 + header.size());
  const auto refused = [&](const std::string& name, std::vector<int64_t> shape,
                           const std::string& part) {
    try {
      st.f32_offset(name, shape, "do X");
      FAIL() << "accepted " << name;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kErrorCorrupt);
      const std::string what = e.what();
      EXPECT_NE(what.find(part), std::string::npos) << what;
      EXPECT_NE(what.find("; do X"), std::string::npos) << what;
    }
  };
  refused("c", {1}, "no tensor `c`");
  refused("b", {5}, "tensor `b` is not F32");
  refused("a", {3, 2}, "tensor `a` has the wrong shape");
}

}  // namespace
}  // namespace tierlm::detail
