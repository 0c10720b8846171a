#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <tuple>

#include "tierlm/core/error.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/model/package.hpp"
#include "tiny_package.hpp"

namespace tierlm {
namespace {

using testing::TempDir;
using testing::TinySpec;
using testing::write_tiny_package;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

Error expect_error(const std::function<void()>& fn, ErrorCode code, const std::string& text) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    return e;
  }
  ADD_FAILURE() << "no error; expected one containing " << text;
  return Error(code, 0, "");
}

TEST(Package, OpensAndDescribes) {
  TempDir dir;
  write_tiny_package(dir.path());
  Package p = package_open(dir.path());
  EXPECT_EQ(p.format_version, 1);
  EXPECT_EQ(p.config.vocab_size, 37);
  EXPECT_EQ(p.config.num_kv_heads, 1);
  EXPECT_EQ(p.config.rope_inv_freq.size(), 4u);  // computed from rope_theta when null
  EXPECT_FLOAT_EQ(p.config.rope_inv_freq[1], static_cast<float>(std::pow(10000.0, -2.0 / 8)));
  ASSERT_EQ(p.config.eos_token_ids.size(), 1u);
  EXPECT_EQ(p.graph.ops.front().kind, OpKind::kOpEmbedding);
  EXPECT_EQ(p.graph.ops.back().kind, OpKind::kOpLmHead);
  EXPECT_EQ(p.tensor("layers.1.attn.q.weight").layer, 1);
  EXPECT_NO_THROW(package_verify(p));
  expect_error([&] { p.tensor("nope"); }, ErrorCode::kErrorNotFound, "no tensor \"nope\"");
}

TEST(Package, Crc32MatchesZlib) {
  EXPECT_EQ(crc32_update(0, "123456789", 9), 0xCBF43926u);
  EXPECT_EQ(crc32_update(crc32_update(0, "12345", 5), "6789", 4), 0xCBF43926u);
  EXPECT_EQ(crc32_update(0, "", 0), 0u);
}

TEST(Package, NewerFormatVersionIsRefused) {
  TempDir dir;
  TinySpec spec;
  spec.format_version = 2;
  write_tiny_package(dir.path(), spec);
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorUnsupported,
               "format_version 2 is newer than this tierlm reads (1)");
}

TEST(Package, HugeFormatVersionIsReportedAsWritten) {
  TempDir dir;
  write_tiny_package(dir.path());
  const std::string manifest = dir.path() + "/manifest.json";
  write_text(manifest, std::regex_replace(read_text(manifest), std::regex("\"format_version\": 1"),
                                          "\"format_version\": 1099511627776"));
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorUnsupported,
               "format_version 1099511627776 is newer");
}

TEST(Package, TokenizerDirOutsideThePackageIsRefused) {
  for (const char* dir_text : {"../elsewhere", "/etc", "tokenizer/../../x", ".."}) {
    TempDir dir;
    write_tiny_package(dir.path());
    const std::string manifest = dir.path() + "/manifest.json";
    write_text(manifest, std::regex_replace(read_text(manifest), std::regex("\"tokenizer\": null"),
                                            std::string("\"tokenizer\": {\"dir\": \"") + dir_text +
                                                "\", \"files\": [\"tokenizer.json\"]}"));
    expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
                 "points outside the package");
  }
}

TEST(Package, TokenizerFilesOutsideTheTokenizerDirAreRefused) {
  for (const char* file : {"../../etc/passwd", "/etc/passwd", "..", ""}) {
    TempDir dir;
    write_tiny_package(dir.path());
    const std::string manifest = dir.path() + "/manifest.json";
    write_text(manifest,
               std::regex_replace(read_text(manifest), std::regex("\"tokenizer\": null"),
                                  std::string("\"tokenizer\": {\"dir\": \"tokenizer\", ") +
                                      "\"files\": [\"" + file + "\"]}"));
    expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
                 "must be a plain file name inside tokenizer.dir");
  }
}

TEST(Package, MissingFilesAreNotFound) {
  TempDir dir;
  write_tiny_package(dir.path());
  std::filesystem::remove(dir.path() + "/weights-0.bin");
  Error e = expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorNotFound,
                         "weights-0.bin: weight file not found");
  EXPECT_EQ(e.sys_errno(), ENOENT);
  std::filesystem::remove(dir.path() + "/manifest.json");
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorNotFound, "manifest.json");
}

TEST(Package, TruncatedWeightsAreCorrupt) {
  TempDir dir;
  write_tiny_package(dir.path());
  const std::string path = dir.path() + "/weights-0.bin";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 1);
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt, "truncated");
}

TEST(Package, InconsistentTensorsAreCorrupt) {
  TempDir dir;
  write_tiny_package(dir.path());
  const std::string manifest = dir.path() + "/manifest.json";
  const std::string text = read_text(manifest);
  // Misaligned offset.
  write_text(manifest,
             std::regex_replace(text, std::regex("\"offset\": 4096,"), "\"offset\": 4100,",
                                std::regex_constants::format_first_only));
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
               "not a multiple of 4096");
  // nbytes disagreeing with the shape.
  write_text(manifest,
             std::regex_replace(text, std::regex("\"shape\": \\[37, 24\\]"), "\"shape\": [37, 25]",
                                std::regex_constants::format_first_only));
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt, "embed.weight");
  // Unknown op.
  write_text(manifest, text);
  const std::string graph = dir.path() + "/graph.json";
  write_text(graph, std::regex_replace(read_text(graph), std::regex("\"silu_mul\""), "\"swish9\""));
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorUnsupported, "\"swish9\"");
}

// Writes the tiny package into dir with `from` replaced by `to` (first match) in `file`.
void write_edited(const std::string& dir, const std::string& file, const std::string& from,
                  const std::string& to) {
  write_tiny_package(dir);
  const std::string path = dir + "/" + file;
  const std::string text = read_text(path);
  ASSERT_NE(text.find(from), std::string::npos) << from;
  write_text(path,
             text.substr(0, text.find(from)) + to + text.substr(text.find(from) + from.size()));
}

// Found by tests/fuzz: each field below was accepted and misread before it was bounded.
TEST(Package, ShapeWhoseElementCountWrapsIsRefused) {
  // 2^52 x 4096 elements is 2^64, which wrapped to 0 and matched "nbytes": 0.
  TempDir dir;
  write_edited(dir.path(), "manifest.json",
               "\"shape\": [37, 24], \"file\": \"weights-0.bin\", \"offset\": 0, \"nbytes\": 3552",
               "\"shape\": [4503599627370496, 4096], \"file\": \"weights-0.bin\", \"offset\": 0, "
               "\"nbytes\": 0");
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
               "embed.weight\": its shape has more elements than 64-bit sizes count");
}

TEST(Package, LayerOutsideInt32IsRefused) {
  {
    TempDir dir;  // 2^32 was narrowed to layer 0
    write_edited(dir.path(), "manifest.json", "\"layer\": 1}", "\"layer\": 4294967296}");
    expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
                 ".layer is 4294967296 (-1 outside the layer stack");
  }
  {
    TempDir dir;  // INT_MIN is the executor's "no layer yet" marker
    write_edited(dir.path(), "graph.json", "\"layer\": 0}", "\"layer\": -2147483648}");
    expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
                 "graph.json: ops[1].layer is -2147483648");
  }
}

TEST(Package, ConfigSizesAreBounded) {
  for (const auto& [from, to, message] :
       {std::tuple<std::string, std::string, std::string>{"\"head_dim\": 8", "\"head_dim\": 0",
                                                          "config.head_dim is 0 (1 to 16777216)"},
        // 2^40 made a rope table of 2^39 floats before anything else was checked.
        {"\"head_dim\": 8", "\"head_dim\": 1099511627776", "config.head_dim is 1099511627776"},
        {"\"vocab_size\": 37", "\"vocab_size\": 2147483648", "config.vocab_size is 2147483648"},
        {"\"max_positions\": 64", "\"max_positions\": 4294967296", "config.max_positions is"},
        {"\"position_offset\": 0", "\"position_offset\": -4294967296", "position_offset is"}}) {
    TempDir dir;
    write_edited(dir.path(), "manifest.json", from, to);
    expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt, message);
  }
}

TEST(Package, Crc32AndFileSizeOutOfRangeAreRefused) {
  TempDir dir;  // the CRC was truncated to 32 bits, the size read as 2^64 - 1
  write_tiny_package(dir.path());
  const std::string manifest = dir.path() + "/manifest.json";
  write_text(manifest,
             std::regex_replace(read_text(manifest), std::regex("\"crc32\": \\d+"),
                                "\"crc32\": 4294967301", std::regex_constants::format_first_only));
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
               ".crc32 is 4294967301; a CRC-32 is 0 to 4294967295");
  write_text(manifest,
             std::regex_replace(read_text(manifest), std::regex("\"size\": \\d+"), "\"size\": -1"));
  expect_error([&] { package_open(dir.path()); }, ErrorCode::kErrorCorrupt,
               "files.size is -1; it must be 0 or more");
}

TEST(Package, PlanNamedWithASeqBeyond64BitsIsIgnored) {
  // std::stoll threw std::out_of_range (not a tierlm::Error) out of Model::load.
  TempDir dir;
  write_tiny_package(dir.path());
  std::filesystem::create_directories(dir.path() + "/plans");
  write_text(dir.path() + "/plans/seq-99999999999999999999999.json", "{}");
  write_text(dir.path() + "/plans/seq--5.json", "{}");
  ModelOptions options;
  options.max_context = 16;
  Model model = Model::load(dir.path(), options);
  EXPECT_EQ(model.memory_plan().source, "internal");
}

TEST(Package, FlippedByteFailsVerification) {
  TempDir dir;
  write_tiny_package(dir.path());
  Package p = package_open(dir.path());
  const TensorInfo& t = p.tensor("layers.1.ffn.up.weight");
  {
    std::fstream f(dir.path() + "/weights-0.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(t.offset + 13));
    char c = 0;
    f.read(&c, 1);
    c ^= 0x04;
    f.seekp(static_cast<std::streamoff>(t.offset + 13));
    f.write(&c, 1);
  }
  expect_error([&] { package_verify(p); }, ErrorCode::kErrorCorrupt,
               "tensor `layers.1.ffn.up.weight`");
  ModelOptions options;
  options.verify = true;
  expect_error([&] { Model::load(dir.path(), options); }, ErrorCode::kErrorCorrupt,
               "layers.1.ffn.up.weight");
  options.verify = false;
  EXPECT_NO_THROW(Model::load(dir.path(), options));
}

}  // namespace
}  // namespace tierlm
