// Package loading and validation: everything is checked before any weight byte is read, so
// a damaged package fails with a message naming the file and tensor instead of crashing.
#include "tierlm/model/package.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "core/json.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm {

using detail::Json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kOpEmbedding:
      return "embedding";
    case OpKind::kOpPositionEmbedding:
      return "position_embedding";
    case OpKind::kOpRmsNorm:
      return "rmsnorm";
    case OpKind::kOpLayerNorm:
      return "layernorm";
    case OpKind::kOpLinear:
      return "linear";
    case OpKind::kOpRope:
      return "rope";
    case OpKind::kOpAttention:
      return "attention";
    case OpKind::kOpAdd:
      return "add";
    case OpKind::kOpSiluMul:
      return "silu_mul";
    case OpKind::kOpRelu:
      return "relu";
    case OpKind::kOpGelu:
      return "gelu";
    case OpKind::kOpLmHead:
      return "lm_head";
  }
  return "unknown";
}

int64_t Graph::width(const std::string& value) const {
  for (const auto& [name, w] : values) {
    if (name == value) return w;
  }
  TIERLM_FAIL(kErrorCorrupt, 0, "graph.json: value \"", value,
              "\" is used by an op but not declared in \"values\"");
}

const TensorInfo* Package::find_tensor(const std::string& name) const {
  for (const TensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorInfo& Package::tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  TIERLM_CHECK(t != nullptr, kErrorNotFound, path, "/manifest.json: no tensor \"", name,
               "\" (the graph needs it; export the package again)");
  return *t;
}

std::string Package::file_path(const std::string& file) const { return path + "/" + file; }

uint64_t Package::weight_bytes() const {
  uint64_t total = 0;
  for (const TensorInfo& t : tensors) total += t.nbytes;
  return total;
}

namespace {

constexpr uint64_t kTensorAlignment = 4096;

OpKind parse_op_kind(const std::string& name, size_t index) {
  static const std::pair<const char*, OpKind> kKinds[] = {
      {"embedding", OpKind::kOpEmbedding}, {"position_embedding", OpKind::kOpPositionEmbedding},
      {"rmsnorm", OpKind::kOpRmsNorm},     {"layernorm", OpKind::kOpLayerNorm},
      {"linear", OpKind::kOpLinear},       {"rope", OpKind::kOpRope},
      {"attention", OpKind::kOpAttention}, {"add", OpKind::kOpAdd},
      {"silu_mul", OpKind::kOpSiluMul},    {"relu", OpKind::kOpRelu},
      {"gelu", OpKind::kOpGelu},           {"lm_head", OpKind::kOpLmHead},
  };
  for (const auto& [text, kind] : kKinds) {
    if (name == text) return kind;
  }
  TIERLM_FAIL(kErrorUnsupported, 0, "graph.json: op ", index, " is \"", name,
              "\", which this tierlm cannot run (upgrade tierlm or re-export the package)");
}

// The widest activation a graph may declare (2^24 floats per token: far past any model).
constexpr int64_t kMaxGraphWidth = int64_t{1} << 24;
constexpr int64_t kInt32Max = INT32_MAX;

// A layer index: -1 (outside the layer stack) to INT32_MAX, so narrowing it to int is exact
// and no layer collides with the executor's "no layer yet" marker.
int parse_layer(const Json& json, const std::string& what) {
  const Json* v = json.find("layer");
  if (v == nullptr || v->is_null()) return -1;
  const int64_t layer = v->as_int(what + ".layer");
  TIERLM_CHECK(layer >= -1 && layer <= kInt32Max, kErrorCorrupt, what, ".layer is ", layer,
               " (-1 outside the layer stack, else 0 to ", kInt32Max, ")");
  return static_cast<int>(layer);
}

uint64_t non_negative(const Json& value, const std::string& what) {
  const int64_t v = value.as_int(what);
  TIERLM_CHECK(v >= 0, kErrorCorrupt, what, " is ", v, "; it must be 0 or more");
  return static_cast<uint64_t>(v);
}

// A file name without a folder: not empty, no '/', not "." or "..".
bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

// A path inside the package: relative, no ".." component.
bool package_relative(const std::string& path) {
  if (path.empty() || path[0] == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t end = std::min(path.find('/', start), path.size());
    if (path.compare(start, end - start, "..") == 0 && end - start == 2) return false;
    start = end + 1;
  }
  return true;
}

DType parse_dtype(const Json& value, const std::string& what) {
  const std::string& text = value.as_string(what);
  try {
    return dtype_parse(text);
  } catch (const Error&) {
    TIERLM_FAIL(kErrorCorrupt, 0, what, ": unknown dtype \"", text,
                "\" (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k)");
  }
}

int64_t config_int(const Json& config, const char* key, int64_t fallback) {
  const Json* v = config.find(key);
  if (v == nullptr || v->is_null()) return fallback;
  return v->as_int(std::string("manifest.json: config.") + key);
}

double config_number(const Json& config, const char* key, double fallback) {
  const Json* v = config.find(key);
  if (v == nullptr || v->is_null()) return fallback;
  return v->as_number(std::string("manifest.json: config.") + key);
}

ModelConfig parse_config(const Json& json) {
  const std::string what = "manifest.json: config";
  json.as_object(what);
  ModelConfig c;
  auto required = [&](const char* key) {
    const int64_t v = json.at(key, what).as_int(what + "." + key);
    TIERLM_CHECK(v > 0, kErrorCorrupt, what, ".", key, " is ", v, "; it must be positive");
    return v;
  };
  c.vocab_size = required("vocab_size");
  c.hidden_size = required("hidden_size");
  c.num_layers = required("num_layers");
  c.num_heads = required("num_heads");
  c.num_kv_heads = config_int(json, "num_kv_heads", c.num_heads);
  c.head_dim = config_int(json, "head_dim", c.hidden_size / c.num_heads);
  c.intermediate_size = config_int(json, "intermediate_size", 0);
  c.max_positions = required("max_positions");
  TIERLM_CHECK(c.head_dim > 0 && c.head_dim <= kMaxGraphWidth, kErrorCorrupt, what, ".head_dim is ",
               c.head_dim, " (1 to ", kMaxGraphWidth, ")");
  c.norm_eps = config_number(json, "norm_eps", 1e-5);
  c.rope_theta = config_number(json, "rope_theta", 10000.0);
  if (const Json* inv = json.find("rope_inv_freq"); inv != nullptr && !inv->is_null()) {
    for (const Json& f : inv->as_array(what + ".rope_inv_freq")) {
      c.rope_inv_freq.push_back(static_cast<float>(f.as_number(what + ".rope_inv_freq")));
    }
  } else {
    // Unscaled default, as transformers computes it.
    for (int64_t i = 0; i < c.head_dim / 2; ++i) {
      c.rope_inv_freq.push_back(static_cast<float>(
          1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / c.head_dim)));
    }
  }
  if (const Json* tie = json.find("tie_embeddings"); tie != nullptr && !tie->is_null()) {
    c.tie_embeddings = tie->as_bool(what + ".tie_embeddings");
  }
  c.bos_token_id = config_int(json, "bos_token_id", -1);
  // eos_token_ids (all of them) when present, else eos_token_id (a number or a list).
  const Json* eos = json.find("eos_token_ids");
  if (eos == nullptr || eos->is_null()) eos = json.find("eos_token_id");
  if (eos != nullptr && !eos->is_null()) {
    if (eos->is_array()) {
      for (const Json& e : eos->as_array(what + ".eos_token_ids")) {
        c.eos_token_ids.push_back(e.as_int(what + ".eos_token_ids"));
      }
    } else {
      c.eos_token_ids.push_back(eos->as_int(what + ".eos_token_id"));
    }
  }
  c.position_offset = config_int(json, "position_offset", 0);
  // Bounded as the graph's widths are, so that the rope table and every product of sizes stay
  // small; ids and positions are 32-bit in the kernels.
  for (const auto& [key, value, low, high] :
       {std::tuple<const char*, int64_t, int64_t, int64_t>{"hidden_size", c.hidden_size, 1,
                                                           kMaxGraphWidth},
        {"num_heads", c.num_heads, 1, kMaxGraphWidth},
        {"num_kv_heads", c.num_kv_heads, 1, kMaxGraphWidth},
        {"intermediate_size", c.intermediate_size, 0, kMaxGraphWidth},
        {"num_layers", c.num_layers, 1, kMaxGraphWidth},
        {"vocab_size", c.vocab_size, 1, kInt32Max},
        {"max_positions", c.max_positions, 1, kInt32Max},
        {"position_offset", c.position_offset, -kInt32Max, kInt32Max}}) {
    TIERLM_CHECK(value >= low && value <= high, kErrorCorrupt, what, ".", key, " is ", value, " (",
                 low, " to ", high, ")");
  }
  TIERLM_CHECK(c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads == 0, kErrorCorrupt, what,
               ": num_heads ", c.num_heads, " is not a multiple of num_kv_heads ", c.num_kv_heads);
  return c;
}

std::string optional_string(const Json& op, const char* key, const std::string& what) {
  const Json* v = op.find(key);
  if (v == nullptr || v->is_null()) return {};
  return v->as_string(what + "." + key);
}

Graph parse_graph(const Json& json) {
  const std::string what = "graph.json";
  Graph g;
  for (const auto& [name, width] : json.at("values", what).as_object(what + ": values")) {
    const int64_t w = width.as_int(what + ": values." + name);
    // Bounded so that no product of widths, heads and tokens can overflow 64 bits downstream.
    TIERLM_CHECK(w > 0 && w <= kMaxGraphWidth, kErrorCorrupt, what, ": value \"", name,
                 "\" has width ", w, " (1 to ", kMaxGraphWidth, ")");
    g.values.emplace_back(name, w);
  }
  g.output = json.at("output", what).as_string(what + ": output");
  const auto& ops = json.at("ops", what).as_array(what + ": ops");
  TIERLM_CHECK(!ops.empty(), kErrorCorrupt, what, ": the graph has no ops");
  for (size_t i = 0; i < ops.size(); ++i) {
    const Json& j = ops[i];
    const std::string where = what + ": ops[" + std::to_string(i) + "]";
    GraphOp op;
    op.kind = parse_op_kind(j.at("op", where).as_string(where + ".op"), i);
    for (const Json& in : j.at("in", where).as_array(where + ".in")) {
      op.inputs.push_back(in.as_string(where + ".in"));
    }
    op.output = j.at("out", where).as_string(where + ".out");
    op.weight = optional_string(j, "weight", where);
    op.bias = optional_string(j, "bias", where);
    if (const Json* v = j.find("eps"); v != nullptr && !v->is_null()) op.eps = v->as_number(where);
    op.heads = config_int(j, "heads", 0);
    op.kv_heads = config_int(j, "kv_heads", op.heads);
    op.head_dim = config_int(j, "head_dim", 0);
    op.scale = config_number(j, "scale", 0.0);
    op.offset = config_int(j, "offset", 0);
    op.layer = parse_layer(j, where);
    for (const auto& [name, count] : {std::pair<const char*, int64_t>{"heads", op.heads},
                                      {"kv_heads", op.kv_heads},
                                      {"head_dim", op.head_dim}}) {
      TIERLM_CHECK(count >= 0 && count <= kMaxGraphWidth, kErrorCorrupt, where, ": ", name, " ",
                   count, " is outside 0..", kMaxGraphWidth);
    }
    g.ops.push_back(std::move(op));
  }
  return g;
}

uint64_t file_size_or_fail(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      TIERLM_FAIL(kErrorNotFound, err, path,
                  ": weight file not found (the package is incomplete; export it again)");
    }
    TIERLM_FAIL(kErrorIo, err, path, ": cannot stat: ", errno_text(err));
  }
  return static_cast<uint64_t>(st.st_size);
}

void validate_tensors(const Package& p) {
  std::unordered_map<std::string, const PackageFile*> files;
  for (const PackageFile& f : p.files) files[f.name] = &f;
  std::unordered_set<std::string> names;
  for (const TensorInfo& t : p.tensors) {
    const std::string where = p.path + "/manifest.json: tensor \"" + t.name + "\"";
    TIERLM_CHECK(names.insert(t.name).second, kErrorCorrupt, where, " is listed twice");
    auto it = files.find(t.file);
    TIERLM_CHECK(it != files.end(), kErrorCorrupt, where, " is in \"", t.file,
                 "\", which is not in the manifest's files");
    // The element count and byte size are computed without overflow: a crafted shape whose
    // product wraps must not match a small nbytes.
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      TIERLM_CHECK(d > 0, kErrorCorrupt, where, " has a non-positive dimension ", d);
      TIERLM_CHECK(!__builtin_mul_overflow(numel, d, &numel), kErrorCorrupt, where,
                   ": its shape has more elements than 64-bit sizes count");
    }
    // Rows of whole blocks along the last dimension (one element per block unquantized).
    const int64_t cols = t.shape.empty() ? 1 : t.shape.back();
    const size_t block = dtype_block(t.dtype).elems;
    TIERLM_CHECK(static_cast<size_t>(cols) % block == 0, kErrorCorrupt, where,
                 ": its last dimension ", cols, " is not a whole number of ", dtype_name(t.dtype),
                 " blocks (", block, " elements each)");
    uint64_t expected = 0;
    TIERLM_CHECK(
        !__builtin_mul_overflow(static_cast<uint64_t>(numel / cols),
                                dtype_row_bytes(t.dtype, static_cast<size_t>(cols)), &expected),
        kErrorCorrupt, where, ": its shape needs more bytes than 64-bit sizes count");
    TIERLM_CHECK(t.nbytes == expected, kErrorCorrupt, where, ": nbytes is ", t.nbytes,
                 " but its shape and dtype ", dtype_name(t.dtype), " need ", expected);
    TIERLM_CHECK(t.offset % kTensorAlignment == 0, kErrorCorrupt, where, ": offset ", t.offset,
                 " is not a multiple of ", kTensorAlignment);
    // Written so that no sum can wrap: a crafted offset near 2^64 must not pass.
    TIERLM_CHECK(t.nbytes <= it->second->size && t.offset <= it->second->size - t.nbytes,
                 kErrorCorrupt, where, ": ", t.nbytes, " bytes at offset ", t.offset,
                 " run past the end of ", t.file, " (", it->second->size, " bytes)");
  }
}

}  // namespace

Package package_open(const std::string& path) {
  Package p;
  p.path = path;
  while (p.path.size() > 1 && p.path.back() == '/') p.path.pop_back();
  const std::string manifest_path = p.path + "/manifest.json";
  const Json manifest = detail::json_parse_file(manifest_path);
  const std::string what = manifest_path;
  manifest.as_object(what);

  const Json* format = manifest.find("format");
  TIERLM_CHECK(
      format != nullptr && format->is_string() && format->as_string(what) == "tierlm-package",
      kErrorCorrupt, what,
      ": not a tierlm package manifest (\"format\" must be \"tierlm-package\")");
  // Checked as read (64-bit) before it is narrowed, so 2^40 is reported as 2^40, not 0.
  const int64_t version = manifest.at("format_version", what).as_int(what + ": format_version");
  TIERLM_CHECK(version <= kPackageFormatVersion, kErrorUnsupported, what, ": format_version ",
               version, " is newer than this tierlm reads (", kPackageFormatVersion,
               "); upgrade tierlm or export the package with this version");
  TIERLM_CHECK(version >= 1, kErrorCorrupt, what, ": format_version ", version, " is invalid");
  p.format_version = static_cast<int>(version);
  p.architecture = manifest.at("architecture", what).as_string(what + ": architecture");
  // Informative: each tensor carries its own dtype ("mixed" when matrices differ).
  p.dtype = manifest.at("dtype", what).as_string(what + ": dtype");
  p.config = parse_config(manifest.at("config", what));

  for (const Json& f : manifest.at("files", what).as_array(what + ": files")) {
    PackageFile file;
    file.name = f.at("name", what + ": files").as_string(what + ": files.name");
    TIERLM_CHECK(plain_file_name(file.name), kErrorCorrupt, what, ": file name \"", file.name,
                 "\" must be a plain file name");
    file.size = non_negative(f.at("size", what + ": files"), what + ": files.size");
    const uint64_t actual = file_size_or_fail(p.file_path(file.name));
    TIERLM_CHECK(actual == file.size, kErrorCorrupt, p.file_path(file.name), " is ", actual,
                 " bytes but the manifest says ", file.size,
                 actual < file.size ? " (file is truncated?)" : " (file was modified?)");
    p.files.push_back(std::move(file));
  }

  for (const auto& [name, t] : manifest.at("tensors", what).as_object(what + ": tensors")) {
    const std::string where = what + ": tensors." + name;
    TensorInfo info;
    info.name = name;
    info.dtype = parse_dtype(t.at("dtype", where), where + ".dtype");
    for (const Json& d : t.at("shape", where).as_array(where + ".shape")) {
      info.shape.push_back(d.as_int(where + ".shape"));
    }
    info.file = t.at("file", where).as_string(where + ".file");
    info.offset = non_negative(t.at("offset", where), where + ".offset");
    info.nbytes = non_negative(t.at("nbytes", where), where + ".nbytes");
    if (const Json* crc = t.find("crc32"); crc != nullptr && !crc->is_null()) {
      info.has_crc32 = true;
      const int64_t crc32 = crc->as_int(where + ".crc32");
      TIERLM_CHECK(crc32 >= 0 && crc32 <= UINT32_MAX, kErrorCorrupt, where, ".crc32 is ", crc32,
                   "; a CRC-32 is 0 to ", UINT32_MAX);
      info.crc32 = static_cast<uint32_t>(crc32);
    }
    info.layer = parse_layer(t, where);
    p.tensors.push_back(std::move(info));
  }
  validate_tensors(p);

  if (const Json* tok = manifest.find("tokenizer"); tok != nullptr && !tok->is_null()) {
    const std::string dir =
        tok->at("dir", what + ": tokenizer").as_string(what + ": tokenizer.dir");
    TIERLM_CHECK(package_relative(dir), kErrorCorrupt, what, ": tokenizer.dir \"", dir,
                 "\" points outside the package (it must be a relative path without \"..\")");
    p.tokenizer_dir = p.path + "/" + dir;
    if (const Json* files = tok->find("files")) {
      for (const Json& f : files->as_array(what + ": tokenizer.files")) {
        const std::string& name = f.as_string(what + ": tokenizer.files");
        TIERLM_CHECK(plain_file_name(name), kErrorCorrupt, what, ": tokenizer file \"", name,
                     "\" must be a plain file name inside tokenizer.dir");
        p.tokenizer_files.push_back(name);
      }
    }
  }

  p.graph = parse_graph(detail::json_parse_file(p.path + "/graph.json"));
  for (const GraphOp& op : p.graph.ops) {
    for (const std::string* name : {&op.weight, &op.bias}) {
      if (name->empty()) continue;
      if (op.kind == OpKind::kOpLmHead && p.config.tie_embeddings &&
          p.find_tensor(*name) == nullptr) {
        continue;  // tied: the executor uses embed.weight
      }
      p.tensor(*name);
    }
  }
  return p;
}

}  // namespace tierlm
