// The executor's sparse FFN (ModelOptions::sparse) on the tiny gated package, without Python:
// gated bundles and predictors that pick every neuron with a SiLU threshold of 0 (keep all)
// must give the dense logits, through windows, unbundled reads and capacity overflow.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "count_allocations.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/model/generate.hpp"
#include "tierlm/model/model.hpp"
#include "tiny_package.hpp"

namespace tierlm {
namespace {

using testing::TempDir;
using testing::TinySpec;
using testing::write_tiny_package;

std::vector<float> read_tensor(const Package& p, const std::string& name) {
  const TensorInfo& t = p.tensor(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  std::ifstream f(p.file_path(t.file), std::ios::binary);
  f.seekg(static_cast<std::streamoff>(t.offset));
  f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(t.nbytes));
  return out;
}

// Adds ffn-bundle-{i}.bin, predictors.safetensors / .json and their manifest sections.
void add_sparse_sections(const std::string& dir, const TinySpec& s) {
  const Package p = package_open(dir);
  const size_t d = s.hidden, n = s.inter;
  std::ostringstream layers;
  for (int i = 0; i < s.layers; ++i) {
    const std::string pre = "layers." + std::to_string(i) + ".ffn.";
    const auto up = read_tensor(p, pre + "up.weight");
    const auto gate = read_tensor(p, pre + "gate.weight");
    const auto down = read_tensor(p, pre + "down.weight");  // [d, n]
    std::vector<float> rows(n * 3 * d);
    for (size_t j = 0; j < n; ++j) {
      for (size_t k = 0; k < d; ++k) {
        rows[j * 3 * d + k] = up[j * d + k];
        rows[j * 3 * d + d + k] = gate[j * d + k];
        rows[j * 3 * d + 2 * d + k] = down[k * n + j];
      }
    }
    const size_t bytes = rows.size() * 4, padded = (bytes + 4095) / 4096 * 4096;
    const std::string file = "ffn-bundle-" + std::to_string(i) + ".bin";
    std::ofstream out(dir + "/" + file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(rows.data()), static_cast<std::streamsize>(bytes));
    out.write(std::string(padded - bytes, '\0').data(),
              static_cast<std::streamsize>(padded - bytes));
    layers << (i ? ", " : "") << "{\"layer\": " << i << ", \"file\": \"" << file
           << "\", \"n_neurons\": " << n << ", \"dim\": " << d
           << ", \"gated\": true, \"dtype\": \"f32\", \"nbytes\": " << padded
           << ", \"crc32\": " << crc32_update(0, rows.data(), bytes) << "}";
  }
  // Predictors of rank 1: logits = 0 * ... + 10 for every neuron.
  std::ostringstream header, thresholds;
  std::vector<float> data;
  header << "{";
  for (int i = 0; i < s.layers; ++i) {
    const std::string pre = "layers." + std::to_string(i) + ".predictor.";
    auto tensor = [&](const std::string& name, std::vector<size_t> shape, float value) {
      size_t numel = 1;
      for (size_t x : shape) numel *= x;
      const size_t begin = data.size() * 4;
      data.insert(data.end(), numel, value);
      header << (header.tellp() > 1 ? ", " : "") << "\"" << pre << name
             << "\": {\"dtype\": \"F32\", \"shape\": [";
      for (size_t k = 0; k < shape.size(); ++k) header << (k ? ", " : "") << shape[k];
      header << "], \"data_offsets\": [" << begin << ", " << data.size() * 4 << "]}";
    };
    tensor("down", {1, d}, 0.0f);
    tensor("up", {n, 1}, 0.0f);
    tensor("up_bias", {n}, 10.0f);
    thresholds << (i ? ", " : "") << "0.5";
  }
  header << "}";
  const std::string h = header.str();
  const uint64_t len = h.size();
  std::ofstream st(dir + "/predictors.safetensors", std::ios::binary);
  st.write(reinterpret_cast<const char*>(&len), 8);
  st.write(h.data(), static_cast<std::streamsize>(len));
  st.write(reinterpret_cast<const char*>(data.data()),
           static_cast<std::streamsize>(data.size() * 4));
  std::ofstream meta(dir + "/predictors.json");
  const std::string zeros = s.layers == 2 ? "0, 0" : "0";
  meta << "{\"format_version\": 1, \"file\": \"predictors.safetensors\", \"activation\": "
          "\"silu_threshold\", \"num_layers\": "
       << s.layers << ", \"thresholds\": [" << thresholds.str() << "], \"act_thresholds\": ["
       << zeros << "], \"target_sparsity\": 0.5}";
  // Manifest: the same object with two more keys.
  std::ifstream in(dir + "/manifest.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text = text.substr(0, text.rfind('}'));
  text += ", \"bundles\": {\"json\": \"bundles.json\", \"layers\": [" + layers.str() +
          "]}, \"predictors\": {\"json\": \"predictors.json\", \"file\": "
          "\"predictors.safetensors\"}}\n";
  std::ofstream(dir + "/manifest.json") << text;
}

ModelOptions options(bool sparse, int64_t window = 4, bool bundled = true, int64_t capacity = 0) {
  ModelOptions o;
  o.host_budget = 64 << 20;
  o.sparse = sparse;
  o.sparse_window = window;
  o.sparse_bundled = bundled;
  o.sparse_capacity = capacity;
  return o;
}

TEST(SparseFfnLayer, KeepingEveryNeuronEqualsDense) {
  TempDir dir;
  const TinySpec spec;
  write_tiny_package(dir.path(), spec);
  add_sparse_sections(dir.path(), spec);
  const std::vector<int32_t> ids = {3, 17, 8, 30, 5, 11, 2, 29, 13};
  Model dense = Model::load(dir.path(), options(false));
  const std::vector<float> want = dense.logits(ids);
  float scale = 0;
  for (float v : want) scale = std::max(scale, std::abs(v));
  struct Case {
    int64_t window;
    bool bundled;
    int64_t capacity;
  };
  for (const Case& c : {Case{1, true, 0}, Case{4, true, 0}, Case{2, false, 0}, Case{3, true, 7}}) {
    Model sparse = Model::load(dir.path(), options(true, c.window, c.bundled, c.capacity));
    const std::vector<float> got = sparse.logits(ids);
    for (size_t v = 0; v < got.size(); ++v) {
      ASSERT_NEAR(got[v], want[v], 1e-5 * scale)
          << "window " << c.window << " bundled " << c.bundled << " capacity " << c.capacity;
    }
    const ModelStats s = sparse.stats();
    EXPECT_TRUE(s.sparse);
    EXPECT_EQ(s.sparse_tokens, ids.size());
    EXPECT_EQ(s.sparse_neurons_predicted, ids.size() * spec.layers * spec.inter);
    EXPECT_EQ(s.sparse_overflows, c.capacity ? ids.size() * spec.layers : 0u);
    EXPECT_EQ(sparse.sparse_tokens().size(), ids.size());
    // The FFN matrices are not in the weight store.
    EXPECT_LT(s.weight_bytes, dense.stats().weight_bytes);
  }
}

TEST(SparseFfnLayer, DecodeTakesNothingFromTheHostTier) {
  TempDir dir;
  const TinySpec spec;
  write_tiny_package(dir.path(), spec);
  add_sparse_sections(dir.path(), spec);
  Model model = Model::load(dir.path(), options(true, 4, true, 11));
  GenerateOptions g;
  g.max_new_tokens = 12;
  g.stop_at_eos = false;
  const uint64_t before = model.stats().host.allocations;
  const GenerateResult r = generate(model, std::vector<int32_t>{4, 8, 15}, g);
  EXPECT_EQ(r.output_ids.size(), 12u);
  EXPECT_EQ(model.stats().host.allocations, before);
  EXPECT_LE(model.stats().host.peak, model.stats().host.budget);
}

TEST(SparseFfnLayer, DecodeWithoutReadsMakesNoHeapAllocation) {
  // Every neuron is predicted and the cache holds them all: after the prompt no token reads,
  // so a decode step must allocate nothing (the only per-token allocations of the sparse
  // path are the I/O engine's futures of a read batch).
  TempDir dir;
  const TinySpec spec;
  write_tiny_package(dir.path(), spec);
  add_sparse_sections(dir.path(), spec);
  Model model = Model::load(dir.path(), options(true, 4, true, spec.inter));
  GenerateOptions g;
  g.max_new_tokens = 20;
  g.stop_at_eos = false;
  std::vector<long> at_token;
  at_token.reserve(32);
  generate(model, std::vector<int32_t>{4, 8, 15}, g, [&](int32_t) {
    at_token.push_back(g_allocations.load());
    g_counting = true;
    return true;
  });
  g_counting = false;
  ASSERT_EQ(at_token.size(), 20u);
  for (size_t i = 1; i < at_token.size(); ++i) {
    EXPECT_EQ(at_token[i], at_token[0]) << "decode steps 1.." << i << " allocated";
  }
  EXPECT_EQ(model.stats().sparse_neurons_read, uint64_t(spec.layers * spec.inter));
  g_allocations = 0;
  // The check can fail: a step that reads allocates (the I/O engine's futures).
  Model small = Model::load(dir.path(), options(true, 1, true, 5));
  const std::vector<int32_t> one = {4};
  g_counting = true;
  small.forward(one, true);
  g_counting = false;
  EXPECT_GT(g_allocations.load(), 0);
  g_allocations = 0;
}

TEST(SparseFfnLayer, DamagedSectionsAreNamed) {
  TempDir dir;
  const TinySpec spec;
  write_tiny_package(dir.path(), spec);
  add_sparse_sections(dir.path(), spec);
  std::filesystem::resize_file(dir.path() + "/ffn-bundle-1.bin", 100);
  try {
    Model::load(dir.path(), options(true));
    FAIL() << "a truncated bundle loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorCorrupt);
    EXPECT_NE(std::string(e.what()).find("ffn-bundle-1.bin"), std::string::npos) << e.what();
  }
  std::filesystem::resize_file(dir.path() + "/predictors.safetensors", 50);
  EXPECT_THROW(Model::load(dir.path(), options(true)), Error);
}

}  // namespace
}  // namespace tierlm
