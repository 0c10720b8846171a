// The model package on disk (docs/package-format.md): manifest, tensors, graph and files.
// package_open parses and validates everything but the tensor bytes; checksums are checked
// when the weights are read with verification on (ModelOptions::verify, package_verify).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tierlm/core/dtype.hpp"
#include "tierlm/core/export.hpp"

namespace tierlm {

// The newest manifest format_version this build reads.
constexpr int kPackageFormatVersion = 1;

struct TIERLM_API TensorInfo {
  std::string name;
  DType dtype = DType::kDTypeF32;
  std::vector<int64_t> shape;
  std::string file;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
  bool has_crc32 = false;
  uint32_t crc32 = 0;
  int layer = -1;  // -1 outside the layer stack

  int64_t numel() const;
};

struct TIERLM_API PackageFile {
  std::string name;
  uint64_t size = 0;
};

// The normalised config of manifest.json; keys an architecture does not use keep defaults.
struct TIERLM_API ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_positions = 0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::vector<float> rope_inv_freq;  // head_dim / 2 entries, scaling applied
  bool tie_embeddings = false;
  int64_t bos_token_id = -1;           // -1 when none
  std::vector<int64_t> eos_token_ids;  // empty when none
  int64_t position_offset = 0;
};

enum class OpKind {
  kOpEmbedding,
  kOpPositionEmbedding,
  kOpRmsNorm,
  kOpLayerNorm,
  kOpLinear,
  kOpRope,
  kOpAttention,
  kOpAdd,
  kOpSiluMul,
  kOpRelu,
  kOpGelu,
  kOpLmHead,
  kOpMoe,          // routed experts (tierlm/model/package.hpp: moe_expert_tensor)
  kOpSigmoidGate,  // out = sigmoid(in[0] . weight[0]) * in[1], row by row
};

TIERLM_API const char* op_kind_name(OpKind kind);

struct TIERLM_API GraphOp {
  OpKind kind = OpKind::kOpAdd;
  std::vector<std::string> inputs;
  std::string output;
  std::string weight;  // empty when the op has none
  std::string bias;    // empty when none (null in JSON)
  double eps = 1e-5;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  double scale = 0.0;
  int64_t offset = 0;  // position_embedding: index of position 0 in the table
  int layer = -1;
  // moe: `weight` is the router [experts, width]; expert e's matrices are named by
  // moe_expert_tensor(expert_prefix, e, part).
  int64_t experts = 0;
  int64_t top_k = 0;
  bool norm_topk = false;  // renormalise the top_k probabilities to sum 1
  std::string expert_prefix;
};

// The parts of an expert, in the order the package stores them (back to back: one read).
enum class ExpertPart { kExpertPartGate, kExpertPartUp, kExpertPartDown };
constexpr int kExpertParts = 3;
// "<prefix>.<e>.gate.weight" (up, down): gate and up [inner, width], down [width, inner].
TIERLM_API std::string moe_expert_tensor(const std::string& prefix, int64_t expert,
                                         ExpertPart part);

struct TIERLM_API Graph {
  std::vector<std::pair<std::string, int64_t>> values;  // name -> width, in file order
  std::string output;
  std::vector<GraphOp> ops;

  // Width of a value; throws kErrorCorrupt when the graph does not declare it.
  int64_t width(const std::string& value) const;
};

struct TIERLM_API Package {
  std::string path;  // the package directory
  int format_version = 0;
  std::string architecture;
  std::string dtype;  // of the matrices: "f32", "f16", "bf16" or "mixed"
  ModelConfig config;
  std::vector<PackageFile> files;
  std::vector<TensorInfo> tensors;  // in manifest order
  std::string tokenizer_dir;        // absolute; empty when the package has no tokenizer
  std::vector<std::string> tokenizer_files;
  Graph graph;

  // nullptr when absent.
  const TensorInfo* find_tensor(const std::string& name) const;
  // Throws kErrorNotFound naming the tensor and the package.
  const TensorInfo& tensor(const std::string& name) const;
  std::string file_path(const std::string& file) const;
  uint64_t weight_bytes() const;
};

// Reads manifest.json and graph.json of the package directory and checks that they agree
// with each other and with the weight files (existence, sizes, offsets, alignment).
// Errors: kErrorNotFound (missing file), kErrorCorrupt (damaged or inconsistent),
// kErrorUnsupported (newer format_version, unknown op).
TIERLM_API Package package_open(const std::string& path);

// What checksum verification covered (ModelOptions::verify: every byte the run uses, checked
// once at load; package_verify: the tensors asked for).
struct TIERLM_API VerifyStats {
  bool enabled = false;     // verification was asked for
  std::string when;         // "load" when enabled ("" otherwise)
  uint64_t tensors = 0;     // weight tensors whose CRC-32 matched the manifest
  uint64_t bundles = 0;     // sparse row-column bundle, channel and rotation files checked
  uint64_t predictors = 0;  // sparse predictor files checked
  uint64_t bytes = 0;       // bytes checked, all kinds together
  double seconds = 0.0;     // time spent reading and checking them

  void add(const VerifyStats& other) {
    tensors += other.tensors;
    bundles += other.bundles;
    predictors += other.predictors;
    bytes += other.bytes;
    seconds += other.seconds;
  }
};

// Compares the CRC-32 of `data` (t.nbytes bytes, as read) with the manifest and counts it in
// *stats; throws kErrorCorrupt naming the tensor, its file and offset on a mismatch or when
// the manifest has no checksum for it (verification cannot cover it).
TIERLM_API void tensor_verify(const Package& package, const TensorInfo& t, const void* data,
                              VerifyStats* stats);

// Reads tensors `names` (every tensor when empty) and checks each as tensor_verify does, except
// that a whole-package check (names empty) skips tensors without a checksum. Throws
// kErrorCorrupt naming the first damaged tensor, its file and offset.
TIERLM_API VerifyStats package_verify(const Package& package,
                                      const std::vector<std::string>& names = {});

// The CRC-32 of bytes [0, len) of a file, read through the I/O engine in pieces; names the file
// on a read error. For the package's whole-file sections (bundles, predictors).
TIERLM_API uint32_t file_crc32(const std::string& path, uint64_t len);

// zlib-compatible CRC-32; pass the previous value to continue a running checksum.
TIERLM_API uint32_t crc32_update(uint32_t crc, const void* data, size_t size);

}  // namespace tierlm
