// Builds the sparse FFN plan from a package: the graph's FFN ops per layer, the manifest's
// "bundles" section (the row-column bundled files) and "predictors" section (thresholds and the
// low-rank predictors' safetensors file). The sizes are set by sparse_sizing.cpp.
#include "sparse/sparse_plan.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/clock.hpp"
#include "core/json.hpp"
#include "io/safetensors.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/limits.hpp"

namespace tierlm::detail {

namespace {

constexpr const char* kRetrain = "train the predictors again";

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    TIERLM_FAIL(kErrorNotFound, errno, path, ": cannot open (", errno_text(errno),
                "); export the package again with `tierlm export HF_DIR OUT --sparse`");
  }
  return static_cast<uint64_t>(st.st_size);
}

const TensorInfo* tensor_or_null(const Package& p, const std::string& name) {
  return name.empty() ? nullptr : p.find_tensor(name);
}

// The graph's FFNs per layer: linear(ffn.up) -> relu -> linear(ffn.down), or gated
// linear(ffn.gate), linear(ffn.up) -> silu_mul -> linear(ffn.down).
void match_ffn_layers(const Package& p, SparseFfnPlan& plan) {
  const Graph& g = p.graph;
  for (int64_t layer = 0; layer < p.config.num_layers; ++layer) {
    const std::string prefix = "layers." + std::to_string(layer) + ".ffn.";
    SparseLayerPlan l;
    l.layer = static_cast<int>(layer);
    bool found = false;
    auto linear = [&](size_t i, const std::string& weight) {
      return i < g.ops.size() && g.ops[i].kind == OpKind::kOpLinear &&
             g.ops[i].weight == prefix + weight;
    };
    for (size_t i = 0; i < g.ops.size() && !found; ++i) {
      const GraphOp& op = g.ops[i];
      if (linear(i, "gate.weight")) {
        const bool shape_ok =
            linear(i + 1, "up.weight") && linear(i + 3, "down.weight") &&
            g.ops[i + 1].inputs == op.inputs && g.ops[i + 2].kind == OpKind::kOpSiluMul &&
            g.ops[i + 2].inputs.size() == 2 && g.ops[i + 2].inputs[0] == op.output &&
            g.ops[i + 2].inputs[1] == g.ops[i + 1].output && g.ops[i + 3].inputs.size() == 1 &&
            g.ops[i + 3].inputs[0] == g.ops[i + 2].output;
        TIERLM_CHECK(shape_ok, kErrorUnsupported, p.path, ": layer ", layer,
                     "'s gated FFN is not linear(gate), linear(up) -> silu_mul -> linear(down) "
                     "in graph.json; sparse loading cannot run it");
        l.gated = true;
        l.compute_op = i;  // the whole FFN, into the gate output's buffer
        l.drop_ops = {i + 1};
        l.copy_ops = {i + 2, i + 3};
        l.gate_bias = op.bias;
        l.up_bias = g.ops[i + 1].bias;
        l.down_bias = g.ops[i + 3].bias;
        found = true;
      } else if (linear(i, "up.weight")) {
        const bool shape_ok = linear(i + 2, "down.weight") && g.ops[i + 1].inputs.size() == 1 &&
                              g.ops[i + 1].inputs[0] == op.output &&
                              g.ops[i + 1].output == op.output && g.ops[i + 2].inputs.size() == 1 &&
                              g.ops[i + 2].inputs[0] == op.output;
        TIERLM_CHECK(shape_ok, kErrorUnsupported, p.path, ": layer ", layer,
                     "'s FFN is not linear(up) -> activation -> linear(down) in graph.json; "
                     "sparse loading cannot run it");
        TIERLM_CHECK(g.ops[i + 1].kind == OpKind::kOpRelu, kErrorUnsupported, p.path, ": layer ",
                     layer, "'s FFN activation is ", op_kind_name(g.ops[i + 1].kind),
                     "; sparse loading needs ReLU (its activations are exactly zero) or gated "
                     "SiLU; load it without sparse");
        l.compute_op = i;  // into the up output's buffer (relu runs in place on it)
        l.copy_ops = {i + 1, i + 2};
        l.up_bias = op.bias;
        l.down_bias = g.ops[i + 2].bias;
        found = true;
      }
    }
    TIERLM_CHECK(found, kErrorUnsupported, p.path, ": graph.json has no FFN of layer ", layer,
                 " (linear ", prefix, "up.weight); sparse loading cannot run this architecture");
    const TensorInfo& up = p.tensor(prefix + "up.weight");
    const TensorInfo& down = p.tensor(prefix + "down.weight");
    plan.dense_tensors.push_back(up.name);
    plan.dense_tensors.push_back(down.name);
    plan.dense_ffn_bytes += up.nbytes + down.nbytes;
    if (l.gated) {
      const TensorInfo& gate = p.tensor(prefix + "gate.weight");
      plan.dense_tensors.push_back(gate.name);
      plan.dense_ffn_bytes += gate.nbytes;
    }
    for (const std::string& bias : {l.up_bias, l.gate_bias, l.down_bias}) {
      const TensorInfo* b = tensor_or_null(p, bias);
      TIERLM_CHECK(bias.empty() || (b && b->dtype == DType::kDTypeF32), kErrorUnsupported, p.path,
                   ": bias `", bias, "` is not f32; sparse loading needs f32 biases");
    }
    l.n_neurons = static_cast<size_t>(up.shape[0]);
    l.dim = static_cast<size_t>(up.shape[1]);
    TIERLM_CHECK(l.n_neurons >= l.dim, kErrorUnsupported, p.path, ": layer ", layer, " has ",
                 l.n_neurons, " FFN neurons for hidden ", l.dim,
                 "; sparse loading needs intermediate_size >= hidden_size");
    plan.layers.push_back(std::move(l));
  }
  TIERLM_CHECK(!plan.layers.empty(), kErrorUnsupported, p.path, ": the model has no FFN layers");
}

// manifest "bundles": one row-column bundled file per layer.
void read_bundles(const Package& p, const Json& manifest, const std::string& manifest_path,
                  bool verify, SparseFfnPlan& plan) {
  const Json* bundles = manifest.find("bundles");
  TIERLM_CHECK(bundles != nullptr && !bundles->is_null(), kErrorNotFound, p.path,
               ": the package has no row-column bundled FFN files (manifest \"bundles\"); export "
               "it again with `tierlm export HF_DIR ",
               p.path, " --sparse`, or load it without sparse");
  const std::string where = manifest_path + ": bundles";
  const auto& blayers = bundles->at("layers", where).as_array(where + ".layers");
  TIERLM_CHECK(blayers.size() == plan.layers.size(), kErrorCorrupt, where, " lists ",
               blayers.size(), " layers, the model has ", plan.layers.size());
  for (size_t i = 0; i < blayers.size(); ++i) {
    const Json& b = blayers[i];
    const std::string w = where + ".layers[" + std::to_string(i) + "]";
    SparseLayerPlan& l = plan.layers[i];
    const std::string file = b.at("file", w).as_string(w + ".file");
    l.file = p.file_path(file);
    const int64_t n = b.at("n_neurons", w).as_int(w);
    const int64_t dim = b.at("dim", w).as_int(w);
    TIERLM_CHECK(static_cast<size_t>(n) == l.n_neurons && static_cast<size_t>(dim) == l.dim,
                 kErrorCorrupt, w, ": ", n, " neurons of ", dim,
                 " do not match the layer's FFN weights (", l.n_neurons, " x ", l.dim,
                 "); export the package again with --sparse");
    TIERLM_CHECK(b.at("gated", w).as_bool(w) == l.gated, kErrorCorrupt, w,
                 l.gated ? ": plain bundle for a gated FFN" : ": gated bundle for a ReLU FFN",
                 "; export the package again with --sparse");
    l.dtype = dtype_parse(b.at("dtype", w).as_string(w));
    const size_t block = dtype_block(l.dtype).elems;
    TIERLM_CHECK(l.dim % block == 0, kErrorCorrupt, w, ": bundles of ", dtype_name(l.dtype),
                 " hold each part as whole ", block, "-element blocks, but the width ", l.dim,
                 " is not; export the package again with --sparse");
    l.row_elems = (l.gated ? 3 : 2) * l.dim;
    l.row_bytes = dtype_row_bytes(l.dtype, l.row_elems);
    const uint64_t data = static_cast<uint64_t>(l.n_neurons) * l.row_bytes;
    const uint64_t padded = round_up(data, kAlignment);
    l.file_bytes = file_size(l.file);
    TIERLM_CHECK(l.file_bytes >= padded, kErrorCorrupt, l.file, " is ", l.file_bytes,
                 " bytes but layer ", l.layer, "'s ", l.n_neurons, " bundled rows need ", padded,
                 " (file is truncated?); export the package again with --sparse");
    l.file_bytes = padded;  // reads never go past the padded rows
    if (verify) {
      const Json* crc = b.find("crc32");
      TIERLM_CHECK(crc != nullptr && crc->is_number(), kErrorCorrupt, w,
                   ": no crc32 for the bundle file ", l.file,
                   ", so verification cannot cover it; export the package again with --sparse or "
                   "load without verify");
      const uint32_t sum = file_crc32(l.file, data);
      TIERLM_CHECK(sum == static_cast<uint32_t>(crc->as_int(w)), kErrorCorrupt, l.file,
                   ": checksum mismatch (CRC-32 ", sum, ", manifest says ", crc->as_int(w),
                   "); the bundle file is damaged: export the package again with --sparse");
      plan.verify.bundles += 1;
      plan.verify.bytes += data;
    }
  }
}

// manifest "predictors": predictors.json (thresholds, metrics) and its safetensors file.
void read_predictors(const Package& p, const Json& manifest, const std::string& manifest_path,
                     bool verify, SparseFfnPlan& plan) {
  const Json* preds = manifest.find("predictors");
  TIERLM_CHECK(preds != nullptr && !preds->is_null(), kErrorNotFound, p.path,
               ": the package has no activation predictors (manifest \"predictors\"); train "
               "them with `tierlm sparse train ",
               p.path, " --calibration TEXTFILE`, or load it without sparse");
  const std::string pwhere = manifest_path + ": predictors";
  const std::string meta_path = p.file_path(preds->at("json", pwhere).as_string(pwhere));
  const Json meta = json_parse_file(meta_path);
  plan.predictors_file = p.file_path(meta.at("file", meta_path).as_string(meta_path));
  const auto& thresholds = meta.at("thresholds", meta_path).as_array(meta_path);
  TIERLM_CHECK(thresholds.size() == plan.layers.size(), kErrorCorrupt, meta_path, ": ",
               thresholds.size(), " thresholds for ", plan.layers.size(),
               " layers; train the predictors again");
  const Json* activation = meta.find("activation");
  const std::string act =
      activation && activation->is_string() ? activation->as_string("") : "relu";
  const bool gated = plan.layers.front().gated;
  TIERLM_CHECK(act == (gated ? "silu_threshold" : "relu"), kErrorUnsupported, meta_path,
               ": predictors for activation \"", act, "\" but the model's FFN is ",
               gated ? "gated SiLU: train thresholded-SiLU predictors with `tierlm sparse train "
                       "HF_DIR --target-sparsity S` and export again with --sparse"
                     : "ReLU: train them again with `tierlm sparse train`");
  if (gated) {
    const auto& act_t = meta.at("act_thresholds", meta_path).as_array(meta_path);
    TIERLM_CHECK(act_t.size() == plan.layers.size(), kErrorCorrupt, meta_path, ": ", act_t.size(),
                 " act_thresholds for ", plan.layers.size(), " layers");
    for (size_t i = 0; i < act_t.size(); ++i) {
      plan.layers[i].act_threshold = static_cast<float>(act_t[i].as_number(meta_path));
    }
    const Json* target = meta.find("target_sparsity");
    if (target && target->is_number()) plan.target_sparsity = target->as_number(meta_path);
  }
  const Json* metrics = meta.find("metrics");
  const Json* mlayers = metrics ? metrics->find("layers") : nullptr;
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    const double t = thresholds[i].as_number(meta_path);
    TIERLM_CHECK(t > 0.0 && t < 1.0, kErrorCorrupt, meta_path, ": threshold ", t, " of layer ", i,
                 " is not in (0, 1)");
    plan.layers[i].cut = static_cast<float>(std::log(t / (1.0 - t)));
    if (mlayers && mlayers->is_array() && i < mlayers->as_array(meta_path).size()) {
      const Json* d = mlayers->as_array(meta_path)[i].find("predicted_density");
      if (d && d->is_number()) plan.layers[i].predicted_density = d->as_number(meta_path);
    }
  }
  const uint64_t predictor_bytes = file_size(plan.predictors_file);  // names a missing file
  if (verify) {
    const Json* crc = preds->find("crc32");
    TIERLM_CHECK(crc != nullptr && crc->is_number(), kErrorCorrupt, pwhere, ": no crc32 for ",
                 plan.predictors_file,
                 ", so verification cannot cover it; register the predictors again (`tierlm "
                 "sparse train` or export) or load without verify");
    const uint32_t sum = file_crc32(plan.predictors_file, predictor_bytes);
    TIERLM_CHECK(sum == static_cast<uint32_t>(crc->as_int(pwhere)), kErrorCorrupt,
                 plan.predictors_file, ": checksum mismatch (CRC-32 ", sum, ", manifest says ",
                 crc->as_int(pwhere),
                 "); the predictor file is damaged: train the predictors "
                 "again or copy them from the checkpoint");
    plan.verify.predictors += 1;
    plan.verify.bytes += predictor_bytes;
  }
  const SafetensorsHeader st(plan.predictors_file);
  for (SparseLayerPlan& l : plan.layers) {
    const std::string pre = "layers." + std::to_string(l.layer) + ".predictor.";
    const std::optional<SafetensorsTensor> down = st.find(pre + "down");
    TIERLM_CHECK(down.has_value(), kErrorCorrupt, plan.predictors_file, ": no tensor `", pre,
                 "down`; train the predictors again");
    TIERLM_CHECK(down->shape.size() == 2, kErrorCorrupt, plan.predictors_file, ": `", pre,
                 "down` is not a matrix");
    l.rank = static_cast<size_t>(down->shape[0]);
    const int64_t r = static_cast<int64_t>(l.rank);
    const int64_t n = static_cast<int64_t>(l.n_neurons);
    l.pred_down = st.f32_offset(pre + "down", {r, static_cast<int64_t>(l.dim)}, kRetrain);
    l.pred_up = st.f32_offset(pre + "up", {n, r}, kRetrain);
    l.pred_bias = st.f32_offset(pre + "up_bias", {n}, kRetrain);
  }
}

}  // namespace

int SparseFfnPlan::layer_of_op(size_t op, SparseOpRole* role) const {
  for (size_t i = 0; i < layers.size(); ++i) {
    const SparseLayerPlan& l = layers[i];
    const bool copy = std::find(l.copy_ops.begin(), l.copy_ops.end(), op) != l.copy_ops.end();
    const bool drop = std::find(l.drop_ops.begin(), l.drop_ops.end(), op) != l.drop_ops.end();
    if (op == l.compute_op || copy || drop) {
      *role = op == l.compute_op ? SparseOpRole::kSparseOpCompute
              : copy             ? SparseOpRole::kSparseOpCopy
                                 : SparseOpRole::kSparseOpDrop;
      return static_cast<int>(i);
    }
  }
  *role = SparseOpRole::kSparseOpNone;
  return -1;
}

size_t sparse_window_checked(int64_t window, int64_t capacity) {
  check_option("sparse_window", window);
  check_option("sparse_capacity", capacity);
  return static_cast<size_t>(window);
}

SparseFfnPlan sparse_ffn_plan(const Package& p, const SparseFfnOptions& options) {
  SparseFfnPlan plan;
  plan.package = p.path;
  plan.window = sparse_window_checked(options.window, options.capacity);
  plan.bundled = options.bundled;
  plan.readahead = options.readahead;
  plan.max_rows = std::max<size_t>(options.max_rows, 1);
  // The package reader keeps no "bundles" / "predictors": a dense load never reads them, so a
  // damaged sparse section refuses only a sparse load.
  const std::string manifest_path = p.path + "/manifest.json";
  const Json manifest = json_parse_file(manifest_path);
  match_ffn_layers(p, plan);
  const auto start = Clock::now();
  read_bundles(p, manifest, manifest_path, options.verify, plan);
  read_predictors(p, manifest, manifest_path, options.verify, plan);
  plan.verify.seconds = options.verify ? seconds_since(start) : 0.0;
  size_sparse_caches(plan, options.capacity, plan.window);
  return plan;
}

}  // namespace tierlm::detail
