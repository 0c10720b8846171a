// Test helper: writes a tiny random Llama-shaped package (GQA, SwiGLU, RoPE; with `experts`,
// each layer's FFN a moe op of that many SwiGLU experts, each stored gate, up, down back to
// back) in format 1, so C++ tests can load a real package without Python.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tierlm/model/package.hpp"

namespace tierlm::testing {

struct TinySpec {
  int vocab = 37;
  int hidden = 24;
  int layers = 2;
  int heads = 3;
  int kv_heads = 1;
  int head_dim = 8;
  int inter = 29;
  int experts = 0;  // 0: a dense FFN
  int top_k = 2;
  int max_positions = 64;
  int eos = 2;
  int format_version = 1;
  unsigned seed = 1;
};

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tierlm-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes the package into dir; returns dir.
inline std::string write_tiny_package(const std::string& dir, const TinySpec& s = {}) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::ofstream weights(dir + "/weights-0.bin", std::ios::binary);
  std::ostringstream tensors;
  uint64_t offset = 0;
  bool first = true;
  auto add = [&](const std::string& name, std::vector<int> shape, int layer, float scale,
                 float mean) {
    size_t n = 1;
    for (int d : shape) n *= static_cast<size_t>(d);
    std::vector<float> data(n);
    for (float& v : data) v = mean + scale * normal(rng);
    const uint64_t pad = (4096 - offset % 4096) % 4096;
    const std::vector<char> zeros(pad, 0);
    weights.write(zeros.data(), static_cast<std::streamsize>(pad));
    offset += pad;
    const uint64_t nbytes = n * sizeof(float);
    weights.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(nbytes));
    tensors << (first ? "" : ",\n") << "\"" << name << "\": {\"dtype\": \"f32\", \"shape\": [";
    for (size_t i = 0; i < shape.size(); ++i) tensors << (i ? ", " : "") << shape[i];
    tensors << "], \"file\": \"weights-0.bin\", \"offset\": " << offset
            << ", \"nbytes\": " << nbytes << ", \"crc32\": " << crc32_update(0, data.data(), nbytes)
            << ", \"layer\": " << layer << "}";
    first = false;
    offset += nbytes;
    return name;
  };
  const int q_width = s.heads * s.head_dim;
  const int kv_width = s.kv_heads * s.head_dim;
  std::ostringstream ops;
  auto op = [&](const std::string& text) { ops << (ops.tellp() > 0 ? ",\n" : "") << text; };
  auto w = [](const std::string& name) { return "\"weight\": \"" + name + "\""; };
  auto lin = [&](const std::string& in, const std::string& out, const std::string& weight,
                 int layer) {
    op("{\"op\": \"linear\", \"in\": [\"" + in + "\"], \"out\": \"" + out + "\", " + w(weight) +
       ", \"bias\": null, \"layer\": " + std::to_string(layer) + "}");
  };
  add("embed.weight", {s.vocab, s.hidden}, -1, 1.0f, 0.0f);
  op("{\"op\": \"embedding\", \"in\": [\"tokens\"], \"out\": \"h\", \"weight\": \"embed.weight\", "
     "\"layer\": -1}");
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const std::string L = std::to_string(i);
    const float in_scale = 1.0f / std::sqrt(static_cast<float>(s.hidden));
    add(p + "attn_norm.weight", {s.hidden}, i, 0.1f, 1.0f);
    op("{\"op\": \"rmsnorm\", \"in\": [\"h\"], \"out\": \"x\", " + w(p + "attn_norm.weight") +
       ", \"eps\": 1e-5, \"layer\": " + L + "}");
    lin("x", "q", add(p + "attn.q.weight", {q_width, s.hidden}, i, in_scale, 0), i);
    lin("x", "k", add(p + "attn.k.weight", {kv_width, s.hidden}, i, in_scale, 0), i);
    lin("x", "v", add(p + "attn.v.weight", {kv_width, s.hidden}, i, in_scale, 0), i);
    op("{\"op\": \"rope\", \"in\": [\"q\"], \"out\": \"q\", \"heads\": " + std::to_string(s.heads) +
       ", \"head_dim\": " + std::to_string(s.head_dim) + ", \"layer\": " + L + "}");
    op("{\"op\": \"rope\", \"in\": [\"k\"], \"out\": \"k\", \"heads\": " +
       std::to_string(s.kv_heads) + ", \"head_dim\": " + std::to_string(s.head_dim) +
       ", \"layer\": " + L + "}");
    op("{\"op\": \"attention\", \"in\": [\"q\", \"k\", \"v\"], \"out\": \"a\", \"heads\": " +
       std::to_string(s.heads) + ", \"kv_heads\": " + std::to_string(s.kv_heads) +
       ", \"head_dim\": " + std::to_string(s.head_dim) +
       ", \"scale\": " + std::to_string(1.0 / std::sqrt(s.head_dim)) + ", \"layer\": " + L + "}");
    lin("a", "o", add(p + "attn.o.weight", {s.hidden, q_width}, i, in_scale, 0), i);
    op("{\"op\": \"add\", \"in\": [\"h\", \"o\"], \"out\": \"h\", \"layer\": " + L + "}");
    add(p + "ffn_norm.weight", {s.hidden}, i, 0.1f, 1.0f);
    op("{\"op\": \"rmsnorm\", \"in\": [\"h\"], \"out\": \"x\", " + w(p + "ffn_norm.weight") +
       ", \"eps\": 1e-5, \"layer\": " + L + "}");
    const float down_scale = 1.0f / std::sqrt(static_cast<float>(s.inter));
    if (s.experts > 0) {
      add(p + "moe.router.weight", {s.experts, s.hidden}, i, in_scale, 0);
      for (int e = 0; e < s.experts; ++e) {
        const std::string x = p + "moe.experts." + std::to_string(e) + ".";
        add(x + "gate.weight", {s.inter, s.hidden}, i, in_scale, 0);
        add(x + "up.weight", {s.inter, s.hidden}, i, in_scale, 0);
        add(x + "down.weight", {s.hidden, s.inter}, i, down_scale, 0);
      }
      op("{\"op\": \"moe\", \"in\": [\"x\"], \"out\": \"d\", " + w(p + "moe.router.weight") +
         ", \"experts\": " + std::to_string(s.experts) + ", \"top_k\": " + std::to_string(s.top_k) +
         ", \"expert_prefix\": \"" + p + "moe.experts\", \"layer\": " + L + "}");
    } else {
      lin("x", "g", add(p + "ffn.gate.weight", {s.inter, s.hidden}, i, in_scale, 0), i);
      lin("x", "u", add(p + "ffn.up.weight", {s.inter, s.hidden}, i, in_scale, 0), i);
      op("{\"op\": \"silu_mul\", \"in\": [\"g\", \"u\"], \"out\": \"f\", \"layer\": " + L + "}");
      lin("f", "d", add(p + "ffn.down.weight", {s.hidden, s.inter}, i, down_scale, 0), i);
    }
    op("{\"op\": \"add\", \"in\": [\"h\", \"d\"], \"out\": \"h\", \"layer\": " + L + "}");
  }
  add("final_norm.weight", {s.hidden}, -1, 0.1f, 1.0f);
  op("{\"op\": \"rmsnorm\", \"in\": [\"h\"], \"out\": \"x\", " + w("final_norm.weight") +
     ", \"eps\": 1e-5, \"layer\": -1}");
  add("lm_head.weight", {s.vocab, s.hidden}, -1, 1.0f / std::sqrt(static_cast<float>(s.hidden)), 0);
  op("{\"op\": \"lm_head\", \"in\": [\"x\"], \"out\": \"logits\", \"weight\": \"lm_head.weight\", "
     "\"layer\": -1}");
  weights.close();
  const uint64_t size = std::filesystem::file_size(dir + "/weights-0.bin");

  std::ofstream manifest(dir + "/manifest.json");
  manifest << "{\"format\": \"tierlm-package\", \"format_version\": " << s.format_version
           << ", \"architecture\": \"llama\", \"dtype\": \"f32\",\n\"config\": {\"vocab_size\": "
           << s.vocab << ", \"hidden_size\": " << s.hidden << ", \"num_layers\": " << s.layers
           << ", \"num_heads\": " << s.heads << ", \"num_kv_heads\": " << s.kv_heads
           << ", \"head_dim\": " << s.head_dim << ", \"intermediate_size\": " << s.inter
           << ", \"max_positions\": " << s.max_positions
           << ", \"norm_eps\": 1e-5, \"rope_theta\": 10000.0, \"rope_inv_freq\": null, "
              "\"tie_embeddings\": false, \"bos_token_id\": 1, \"eos_token_id\": "
           << s.eos << ", \"position_offset\": 0},\n\"files\": [{\"name\": \"weights-0.bin\", "
           << "\"size\": " << size << "}],\n\"tensors\": {" << tensors.str()
           << "},\n\"tokenizer\": null}\n";
  std::ofstream graph(dir + "/graph.json");
  graph << "{\"inputs\": {\"tokens\": \"int32[tokens]\", \"positions\": \"int32[tokens]\"},\n"
        << "\"output\": \"logits\", \"values\": {\"h\": " << s.hidden << ", \"x\": " << s.hidden
        << ", \"q\": " << q_width << ", \"k\": " << kv_width << ", \"v\": " << kv_width
        << ", \"a\": " << q_width << ", \"o\": " << s.hidden << ", \"g\": " << s.inter
        << ", \"u\": " << s.inter << ", \"f\": " << s.inter << ", \"d\": " << s.hidden
        << ", \"logits\": " << s.vocab << "},\n\"ops\": [" << ops.str() << "]}\n";
  return dir;
}

}  // namespace tierlm::testing
