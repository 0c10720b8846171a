// The executor's sparse FFN: plan (manifest sections, graph matching, sizes) and the per-token
// path predictor -> window -> evict -> one batch of reads -> insert -> kernel. See
// sparse_ffn_layer.hpp and docs/sparse.md.
#include "sparse/sparse_ffn_layer.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <span>

#include "core/json.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"
#include "tierlm/sparse/neuron_cache.hpp"

namespace tierlm::detail {

namespace {

constexpr uint64_t kPage = 4096;
constexpr double kCapacityMargin = 1.5;
constexpr size_t kMaxStaging = 64ull << 20;
constexpr size_t kTokenLog = 16384;
constexpr size_t kMaxPartials = 16;
constexpr size_t kKernelWork = 1 << 15;  // row elements per thread below which one thread runs

uint64_t round_up(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }
uint64_t page(uint64_t bytes) { return round_up(std::max<uint64_t>(bytes, 1), kPage); }

// Worst widened size of a range of len bytes at offsets that are multiples of stride.
uint64_t worst_widened(uint64_t len, uint64_t stride) {
  if (stride % kPage == 0) return round_up(len, kPage);
  return round_up(len + kPage - 1, kPage);
}

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

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct SafetensorsEntry {
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

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

SparseFfnPlan sparse_ffn_plan(const Package& p, const ModelOptions& options, size_t max_rows) {
  SparseFfnPlan plan;
  plan.package = p.path;
  TIERLM_CHECK(options.sparse_window >= 1, kErrorInvalidArgument, "sparse_window ",
               options.sparse_window, " must be >= 1 token (1 = no window)");
  TIERLM_CHECK(options.sparse_capacity >= 0, kErrorInvalidArgument, "sparse_capacity ",
               options.sparse_capacity, " is negative (0 = auto)");
  plan.window = static_cast<size_t>(options.sparse_window);
  plan.bundled = options.sparse_bundled;
  plan.max_rows = std::max<size_t>(max_rows, 1);
  const std::string manifest_path = p.path + "/manifest.json";
  const Json manifest = json_parse_file(manifest_path);

  // The graph's FFNs per layer: linear(ffn.up) -> relu -> linear(ffn.down), or gated
  // linear(ffn.gate), linear(ffn.up) -> silu_mul -> linear(ffn.down).
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

  // Bundles.
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
    l.row_elems = (l.gated ? 3 : 2) * l.dim;
    l.row_bytes = l.row_elems * dtype_size(l.dtype);
    const uint64_t data = static_cast<uint64_t>(l.n_neurons) * l.row_bytes;
    l.file_bytes = file_size(l.file);
    TIERLM_CHECK(l.file_bytes >= round_up(data, kPage), kErrorCorrupt, l.file, " is ", l.file_bytes,
                 " bytes but layer ", l.layer, "'s ", l.n_neurons, " bundled rows need ",
                 round_up(data, kPage),
                 " (file is truncated?); export the package again with --sparse");
    l.file_bytes = round_up(data, kPage);  // reads never go past the padded rows
    const Json* crc = b.find("crc32");
    if (options.verify && crc != nullptr && crc->is_number()) {
      // The rows' CRC-32, read in 8 MiB pieces (load-time only, with verify).
      File f(l.file, IoMode::kIoModeRead, IoOptions{.direct = false});
      std::vector<char> buf(8u << 20);
      uint32_t sum = 0;
      for (uint64_t at = 0; at < data; at += buf.size()) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(buf.size(), data - at));
        f.read(buf.data(), len, at);
        sum = crc32_update(sum, buf.data(), len);
      }
      TIERLM_CHECK(sum == static_cast<uint32_t>(crc->as_int(w)), kErrorCorrupt, l.file,
                   ": checksum mismatch (CRC-32 ", sum, ", manifest says ", crc->as_int(w),
                   "); the bundle file is damaged: export the package again with --sparse");
    }
  }

  // Predictors: predictors.json (thresholds, metrics) and its safetensors file.
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
  // The safetensors header: u64 length, then JSON {name: {dtype, shape, data_offsets}}.
  const uint64_t pred_size = file_size(plan.predictors_file);
  File pf(plan.predictors_file, IoMode::kIoModeRead, IoOptions{.direct = false});
  uint64_t header_len = 0;
  TIERLM_CHECK(pred_size >= 8, kErrorCorrupt, plan.predictors_file, " is truncated");
  pf.read(&header_len, 8, 0);
  TIERLM_CHECK(header_len > 0 && 8 + header_len <= pred_size, kErrorCorrupt, plan.predictors_file,
               ": safetensors header of ", header_len, " bytes does not fit the file (", pred_size,
               " bytes; truncated?)");
  std::string header(header_len, '\0');
  pf.read(header.data(), header_len, 8);
  const Json st = json_parse(header, plan.predictors_file);
  const uint64_t data_start = 8 + header_len;
  auto entry = [&](const std::string& name, std::vector<int64_t> shape) -> uint64_t {
    const Json* e = st.find(name);
    TIERLM_CHECK(e != nullptr, kErrorCorrupt, plan.predictors_file, ": no tensor `", name,
                 "`; train the predictors again");
    TIERLM_CHECK(e->at("dtype", name).as_string(name) == "F32", kErrorCorrupt, plan.predictors_file,
                 ": tensor `", name, "` is not F32");
    std::vector<int64_t> got;
    for (const Json& d : e->at("shape", name).as_array(name)) got.push_back(d.as_int(name));
    const auto& off = e->at("data_offsets", name).as_array(name);
    TIERLM_CHECK(got == shape && off.size() == 2, kErrorCorrupt, plan.predictors_file, ": tensor `",
                 name, "` has the wrong shape for the model");
    const uint64_t begin = static_cast<uint64_t>(off[0].as_int(name));
    const uint64_t end = static_cast<uint64_t>(off[1].as_int(name));
    uint64_t numel = 1;
    for (int64_t d : shape) numel *= static_cast<uint64_t>(d);
    TIERLM_CHECK(end - begin == numel * 4 && data_start + end <= pred_size, kErrorCorrupt,
                 plan.predictors_file, ": tensor `", name, "` lies outside the file (truncated?)");
    return data_start + begin;
  };
  for (SparseLayerPlan& l : plan.layers) {
    const std::string pre = "layers." + std::to_string(l.layer) + ".predictor.";
    const Json* down = st.find(pre + "down");
    TIERLM_CHECK(down != nullptr, kErrorCorrupt, plan.predictors_file, ": no tensor `", pre,
                 "down`; train the predictors again");
    const auto& shape = down->at("shape", pre).as_array(pre);
    TIERLM_CHECK(shape.size() == 2, kErrorCorrupt, plan.predictors_file, ": `", pre,
                 "down` is not a matrix");
    l.rank = static_cast<size_t>(shape[0].as_int(pre));
    const int64_t r = static_cast<int64_t>(l.rank);
    const int64_t n = static_cast<int64_t>(l.n_neurons);
    l.pred_down = entry(pre + "down", {r, static_cast<int64_t>(l.dim)});
    l.pred_up = entry(pre + "up", {n, r});
    l.pred_bias = entry(pre + "up_bias", {n});
  }

  size_sparse_caches(plan, options.sparse_capacity, plan.window);
  return plan;
}

void size_sparse_caches(SparseFfnPlan& plan, int64_t capacity, size_t capacity_tokens) {
  size_t max_n = 0, max_rank = 0, max_dim = 0, max_cap = 0;
  uint64_t worst_row = 0, bound = 0;
  for (SparseLayerPlan& l : plan.layers) {
    if (capacity > 0) {
      l.capacity = std::min<size_t>(static_cast<size_t>(capacity), l.n_neurons);
    } else if (l.predicted_density > 0) {
      const double want = std::ceil(l.predicted_density * static_cast<double>(l.n_neurons) *
                                    static_cast<double>(capacity_tokens) * kCapacityMargin);
      l.capacity = std::clamp<size_t>(static_cast<size_t>(want), 1, l.n_neurons);
    } else {
      l.capacity = l.n_neurons;
    }
    max_n = std::max(max_n, l.n_neurons);
    max_rank = std::max(max_rank, l.rank);
    max_dim = std::max(max_dim, l.dim);
    max_cap = std::max(max_cap, l.capacity);
    const uint64_t part = (l.gated ? 2 : 1) * l.dim * dtype_size(l.dtype);
    const uint64_t row = plan.bundled ? worst_widened(l.row_bytes, l.row_bytes)
                                      : 2 * worst_widened(part, l.row_bytes);
    worst_row = std::max(worst_row, row);
    bound = std::max(bound, plan.bundled ? l.file_bytes : l.capacity * row);
  }
  const uint64_t staging = std::min<uint64_t>(bound, max_cap * worst_row);
  plan.staging_bytes = static_cast<size_t>(
      std::max<uint64_t>(std::min<uint64_t>(staging, kMaxStaging), 2 * worst_row));
  plan.partials = std::clamp<size_t>(parallel_threads(), 1, kMaxPartials);
  uint64_t bytes = page(plan.staging_bytes);
  uint64_t pred_floats = 0;
  for (const SparseLayerPlan& l : plan.layers) {
    bytes += page(l.capacity * l.row_bytes) + page((l.n_neurons + l.capacity) * 4);  // cache
    bytes += page(NeuronWindow::state_bytes(l.n_neurons, plan.window));
    bytes += page(l.n_neurons * sizeof(int64_t));  // last use per neuron
    pred_floats += l.rank * l.dim + l.n_neurons * l.rank + l.n_neurons;
  }
  bytes += page(pred_floats * sizeof(float));
  // Scratch (see SparseFfn::Impl::Impl for the layout).
  const uint64_t max_requests = 2 * max_cap + 2;
  const uint64_t scratch = max_rank * 4 + max_n * 4 + 5 * max_n * 4 + 2 * max_cap * 8 +
                           max_requests * sizeof(IoRequest) + plan.partials * max_dim * 4 +
                           max_dim * 4 + plan.max_rows * sizeof(SparseTokenInfo) +
                           kTokenLog * sizeof(SparseTokenInfo) + 16 * 64;
  bytes += page(scratch);
  plan.host_bytes = bytes;
}

struct SparseFfn::Impl {
  struct Layer {
    const SparseLayerPlan* plan = nullptr;
    NeuronCache cache;
    NeuronWindow window;
    File file;
    HostBuffer last_use_buffer;
    int64_t* last_use = nullptr;
    const float* pred_down = nullptr;
    const float* pred_up = nullptr;
    const float* pred_bias = nullptr;
    int64_t token = 0;
  };

  SparseFfnPlan plan;
  // Declared before layers: the files (closed first) may hold staging registered.
  HostBuffer predictors;
  HostBuffer staging;
  HostBuffer scratch;
  std::vector<Layer> layers;
  bool registered = false;
  bool direct = false;
  std::string backend;

  // Scratch views.
  float* mid = nullptr;
  float* logits = nullptr;
  int32_t* active = nullptr;
  int32_t* to_load = nullptr;
  int32_t* to_evict = nullptr;
  int32_t* need = nullptr;
  int32_t* evict = nullptr;
  uint64_t* pending_a = nullptr;  // staging offset of a pending row (its up part)
  uint64_t* pending_b = nullptr;  // unbundled: staging offset of its down part
  IoRequest* requests = nullptr;
  float* partial = nullptr;
  float* y_tmp = nullptr;
  SparseTokenInfo* rows = nullptr;  // per row of the batch
  SparseTokenInfo* log = nullptr;   // ring of kTokenLog tokens
  size_t max_requests = 0;
  uint64_t logged = 0;

  // Per batch of reads.
  size_t n_pending = 0;
  size_t n_requests = 0;
  uint64_t used = 0;

  SparseStats totals;

  Impl(const SparseFfnPlan& p, HostTier& host) : plan(p) {
    size_t pred_floats = 0, max_n = 0, max_rank = 0, max_dim = 0, max_cap = 0;
    for (const SparseLayerPlan& l : plan.layers) {
      pred_floats += l.rank * l.dim + l.n_neurons * l.rank + l.n_neurons;
      max_n = std::max(max_n, l.n_neurons);
      max_rank = std::max(max_rank, l.rank);
      max_dim = std::max(max_dim, l.dim);
      max_cap = std::max(max_cap, l.capacity);
    }
    predictors = host.allocate(pred_floats * sizeof(float));
    staging = host.allocate(plan.staging_bytes, kPage);
    max_requests = 2 * max_cap + 2;
    const size_t scratch_bytes = max_rank * 4 + max_n * 4 + 5 * max_n * 4 + 2 * max_cap * 8 +
                                 max_requests * sizeof(IoRequest) + plan.partials * max_dim * 4 +
                                 max_dim * 4 + plan.max_rows * sizeof(SparseTokenInfo) +
                                 kTokenLog * sizeof(SparseTokenInfo) + 16 * 64;
    scratch = host.allocate(scratch_bytes);
    char* s = static_cast<char*>(scratch.data());
    auto take = [&](size_t bytes) {
      char* at = s;
      s += round_up(bytes, 64);
      return at;
    };
    mid = reinterpret_cast<float*>(take(max_rank * 4));
    logits = reinterpret_cast<float*>(take(max_n * 4));
    active = reinterpret_cast<int32_t*>(take(max_n * 4));
    to_load = reinterpret_cast<int32_t*>(take(max_n * 4));
    to_evict = reinterpret_cast<int32_t*>(take(max_n * 4));
    need = reinterpret_cast<int32_t*>(take(max_n * 4));
    evict = reinterpret_cast<int32_t*>(take(max_n * 4));
    pending_a = reinterpret_cast<uint64_t*>(take(max_cap * 8));
    pending_b = reinterpret_cast<uint64_t*>(take(max_cap * 8));
    requests = reinterpret_cast<IoRequest*>(take(max_requests * sizeof(IoRequest)));
    partial = reinterpret_cast<float*>(take(plan.partials * max_dim * 4));
    y_tmp = reinterpret_cast<float*>(take(max_dim * 4));
    rows = reinterpret_cast<SparseTokenInfo*>(take(plan.max_rows * sizeof(SparseTokenInfo)));
    log = reinterpret_cast<SparseTokenInfo*>(take(kTokenLog * sizeof(SparseTokenInfo)));
    TIERLM_CHECK(s <= static_cast<char*>(scratch.data()) + scratch.size(), kErrorInvalidArgument,
                 "sparse ffn: scratch layout overflows its buffer (a bug)");
    std::fill(rows, rows + plan.max_rows, SparseTokenInfo{});

    // Predictor tensors, read once.
    File pf(plan.predictors_file, IoMode::kIoModeRead, IoOptions{.direct = false});
    float* pred = static_cast<float*>(predictors.data());
    layers.reserve(plan.layers.size());
    for (const SparseLayerPlan& l : plan.layers) {
      IoOptions io;
      io.direct = true;
      Layer layer{&l,
                  NeuronCache(host, l.n_neurons, l.capacity, l.row_elems, l.dtype),
                  NeuronWindow(host, l.n_neurons, plan.window),
                  File(l.file, IoMode::kIoModeRead, io),
                  host.allocate(l.n_neurons * sizeof(int64_t)),
                  nullptr,
                  nullptr,
                  nullptr,
                  nullptr,
                  0};
      layer.last_use = static_cast<int64_t*>(layer.last_use_buffer.data());
      std::fill(layer.last_use, layer.last_use + l.n_neurons, -1);
      const size_t n_down = l.rank * l.dim, n_up = l.n_neurons * l.rank;
      pf.read(pred, n_down * 4, l.pred_down);
      layer.pred_down = pred;
      pred += n_down;
      pf.read(pred, n_up * 4, l.pred_up);
      layer.pred_up = pred;
      pred += n_up;
      pf.read(pred, l.n_neurons * 4, l.pred_bias);
      layer.pred_bias = pred;
      pred += l.n_neurons;
      const bool reg = layer.file.register_buffer(staging.data(), staging.size());
      registered = layers.empty() ? reg : registered && reg;
      direct = layer.file.direct();
      backend = io_backend_name(layer.file.backend());
      layers.push_back(std::move(layer));
    }
    totals.sparse = true;
    totals.sparse_window = static_cast<int64_t>(plan.window);
    totals.sparse_bundled = plan.bundled;
    totals.sparse_dense_ffn_bytes = plan.dense_ffn_bytes;
    totals.sparse_host_bytes = plan.host_bytes;
    totals.sparse_target_sparsity = plan.target_sparsity;
    for (const SparseLayerPlan& l : plan.layers) {
      totals.sparse_capacity.push_back(static_cast<int64_t>(l.capacity));
    }
  }

  // Submits the pending requests as one batch, waits, and moves the rows into the cache.
  void flush(Layer& l, SparseTokenInfo& info) {
    if (n_pending == 0) return;
    const auto t0 = Clock::now();
    std::vector<IoFuture> futures =
        l.file.pread_batch(std::span<const IoRequest>(requests, n_requests));
    for (IoFuture& f : futures) f.get();
    info.io_seconds += since(t0);
    info.requests += n_requests;
    for (size_t i = 0; i < n_requests; ++i) info.bytes_read += requests[i].len;
    const auto t1 = Clock::now();
    NeuronCache& cache = l.cache;
    const size_t first = cache.size();
    cache.insert(need_pending_, n_pending, nullptr);
    const SparseLayerPlan& p = *l.plan;
    const char* stage = static_cast<const char*>(staging.data());
    const size_t part = (p.gated ? 2 : 1) * p.dim * dtype_size(p.dtype);
    for (size_t j = 0; j < n_pending; ++j) {
      char* row = static_cast<char*>(cache.row(first + j));
      if (plan.bundled) {
        std::memcpy(row, stage + pending_a[j], p.row_bytes);
      } else {
        std::memcpy(row, stage + pending_a[j], part);
        std::memcpy(row + part, stage + pending_b[j], p.row_bytes - part);
      }
    }
    info.memory_seconds += since(t1);
    n_pending = 0;
    n_requests = 0;
    used = 0;
  }

  // Reads the rows of ids[0, n) (sorted) into the cache, in as few batches as staging allows.
  void load(Layer& l, const int32_t* ids, size_t n, SparseTokenInfo& info) {
    const SparseLayerPlan& p = *l.plan;
    const uint64_t rb = p.row_bytes;
    const uint64_t cap = staging.size();
    char* stage = static_cast<char*>(staging.data());
    need_pending_ = ids;
    uint64_t cur_lo = 0, cur_hi = 0, cur_stage = 0;
    bool open = false;
    auto close = [&] {
      if (!open) return;
      requests[n_requests++] = {stage + cur_stage, static_cast<size_t>(cur_hi - cur_lo), cur_lo};
      open = false;
    };
    for (size_t j = 0; j < n; ++j) {
      const uint64_t a = static_cast<uint64_t>(ids[j]) * rb;
      if (plan.bundled) {
        const uint64_t lo = a / kPage * kPage;
        const uint64_t hi = std::min(round_up(a + rb, kPage), p.file_bytes);
        if (open && lo <= cur_hi && used + (std::max(hi, cur_hi) - cur_hi) <= cap) {
          used += std::max(hi, cur_hi) - cur_hi;
          cur_hi = std::max(hi, cur_hi);
        } else {
          close();
          if (used + (hi - lo) > cap || n_requests + 1 > max_requests) {
            flush(l, info);
            need_pending_ = ids + j;
          }
          cur_lo = lo;
          cur_hi = hi;
          cur_stage = used;
          used += hi - lo;
          open = true;
        }
        pending_a[n_pending++] = cur_stage + (a - cur_lo);
      } else {
        const uint64_t part = (p.gated ? 2 : 1) * p.dim * dtype_size(p.dtype);
        const uint64_t ulo = a / kPage * kPage, uhi = round_up(a + part, kPage);
        const uint64_t dlo = (a + part) / kPage * kPage;
        const uint64_t dhi = std::min(round_up(a + rb, kPage), p.file_bytes);
        if (used + (uhi - ulo) + (dhi - dlo) > cap || n_requests + 2 > max_requests) {
          flush(l, info);
          need_pending_ = ids + j;
        }
        requests[n_requests++] = {stage + used, static_cast<size_t>(uhi - ulo), ulo};
        pending_a[n_pending] = used + (a - ulo);
        used += uhi - ulo;
        requests[n_requests++] = {stage + used, static_cast<size_t>(dhi - dlo), dlo};
        pending_b[n_pending++] = used + (a + part - dlo);
        used += dhi - dlo;
      }
    }
    close();
    flush(l, info);
    info.neurons_read += n;
  }

  // y (+)= the FFN over cache rows [first, first + n), split over the pool's threads.
  void kernel(Layer& l, const float* x, size_t first, size_t n, const float* up_bias,
              const float* down_bias, float* y, bool accumulate) {
    const SparseLayerPlan& p = *l.plan;
    const size_t dim = p.dim;
    SparseFfnRows rows;
    rows.rows = n > 0 ? l.cache.row(first) : l.cache.rows();
    rows.dtype = p.dtype;
    rows.n_rows = n;
    rows.dim = dim;
    rows.row_stride = p.row_elems;
    rows.neurons = l.cache.neurons() + first;
    rows.up_bias = up_bias;
    rows.gated = p.gated;
    rows.gate_bias = gate_bias_;
    rows.act_threshold = p.act_threshold;
    const size_t work_rows = std::max<size_t>(1, kKernelWork / (2 * dim));
    const size_t chunks = std::clamp<size_t>(n / work_rows, 1, plan.partials);
    if (chunks == 1) {
      if (!accumulate) {
        kernel_sparse_ffn(x, rows, nullptr, n, down_bias, y);
      } else {
        kernel_sparse_ffn(x, rows, nullptr, n, nullptr, y_tmp);
        kernel_add(y, y_tmp, dim);
      }
      return;
    }
    const size_t esize = dtype_size(p.dtype);
    parallel_for(
        chunks,
        [&](size_t c0, size_t c1) {
          for (size_t c = c0; c < c1; ++c) {
            const size_t b = n * c / chunks, e = n * (c + 1) / chunks;
            SparseFfnRows part = rows;
            part.rows = static_cast<const char*>(rows.rows) + b * p.row_elems * esize;
            part.n_rows = e - b;
            part.neurons = rows.neurons + b;
            kernel_sparse_ffn(x, part, nullptr, e - b, nullptr, partial + c * dim);
          }
        },
        1);
    if (!accumulate) {
      if (down_bias != nullptr) {
        std::memcpy(y, down_bias, dim * sizeof(float));
      } else {
        std::fill(y, y + dim, 0.0f);
      }
    }
    for (size_t c = 0; c < chunks; ++c) kernel_add(y, partial + c * dim, dim);
  }

  void token(Layer& l, const float* x, const float* up_bias, const float* down_bias, float* y,
             SparseTokenInfo& info) {
    const SparseLayerPlan& p = *l.plan;
    NeuronCache& cache = l.cache;
    const size_t cap = p.capacity;
    // Predictor: logits = (x · downᵀ) · upᵀ + bias.
    auto t0 = Clock::now();
    kernel_linear(x, l.pred_down, nullptr, DType::kDTypeF32, mid, 1, p.rank, p.dim);
    kernel_linear(mid, l.pred_up, l.pred_bias, DType::kDTypeF32, logits, 1, p.n_neurons, p.rank);
    size_t n_active = 0;
    for (size_t i = 0; i < p.n_neurons; ++i) {
      if (logits[i] > p.cut) active[n_active++] = static_cast<int32_t>(i);
    }
    info.predictor_seconds += since(t0);
    info.neurons_predicted += n_active;

    // Window: evict what left it, then make room, oldest first.
    t0 = Clock::now();
    const int64_t t = l.token++;
    const NeuronWindow::Step step = l.window.step(active, n_active, to_load, to_evict);
    size_t n_evict = 0;
    for (size_t j = 0; j < step.n_evict; ++j) {
      if (cache.contains(to_evict[j])) to_evict[n_evict++] = to_evict[j];
    }
    cache.erase(to_evict, n_evict);
    size_t n_need = 0;
    for (size_t j = 0; j < n_active; ++j) {
      l.last_use[active[j]] = t;
      if (!cache.contains(active[j])) need[n_need++] = active[j];
    }
    if (cache.size() + n_need > cap) {
      // The union passed the capacity: drop cached neurons this token does not use, least
      // recently used first.
      size_t n_old = 0;
      const int32_t* cached = cache.neurons();
      for (size_t s = 0; s < cache.size(); ++s) {
        if (l.last_use[cached[s]] != t) evict[n_old++] = cached[s];
      }
      const size_t drop = std::min(n_old, cache.size() + n_need - cap);
      if (drop < n_old) {
        const int64_t* last_use = l.last_use;
        std::nth_element(evict, evict + drop, evict + n_old,
                         [last_use](int32_t a, int32_t b) { return last_use[a] < last_use[b]; });
      }
      cache.erase(evict, drop);
    }
    info.memory_seconds += since(t0);
    const size_t fill = std::min(n_need, cap - cache.size());
    load(l, need, fill, info);

    t0 = Clock::now();
    kernel(l, x, 0, cache.size(), up_bias, down_bias, y, false);
    info.compute_seconds += since(t0);
    if (fill == n_need) return;

    // This token's prediction alone passes the capacity: the rest in rounds of at most
    // `cap` rows, each replacing the rows computed last (the sum is additive).
    ++totals.sparse_overflows;
    for (size_t done = fill; done < n_need;) {
      const size_t m = std::min(cap, n_need - done);
      t0 = Clock::now();
      const size_t size = cache.size();
      for (size_t j = 0; j < m; ++j) evict[j] = cache.neurons()[size - 1 - j];
      cache.erase(evict, m);
      info.memory_seconds += since(t0);
      load(l, need + done, m, info);
      t0 = Clock::now();
      kernel(l, x, cache.size() - m, m, up_bias, nullptr, y, true);
      info.compute_seconds += since(t0);
      done += m;
    }
  }

  const int32_t* need_pending_ = nullptr;  // ids of the pending rows, in order
  const float* gate_bias_ = nullptr;       // of the layer running
};

SparseFfn::SparseFfn(const SparseFfnPlan& plan, HostTier& host)
    : impl_(std::make_unique<Impl>(plan, host)) {}
SparseFfn::~SparseFfn() = default;

void SparseFfn::run(int index, const float* x, size_t rows, const float* up_bias,
                    const float* gate_bias, const float* down_bias, float* y) {
  Impl& m = *impl_;
  m.gate_bias_ = gate_bias;
  Impl::Layer& l = m.layers[static_cast<size_t>(index)];
  const size_t dim = l.plan->dim;
  for (size_t r = 0; r < rows; ++r) {
    m.token(l, x + r * dim, up_bias, down_bias, y + r * dim, m.rows[r]);
  }
}

size_t SparseFfn::dim(int index) const {
  return impl_->layers[static_cast<size_t>(index)].plan->dim;
}

void SparseFfn::end_batch(size_t rows) {
  Impl& m = *impl_;
  SparseStats& t = m.totals;
  for (size_t r = 0; r < rows && r < m.plan.max_rows; ++r) {
    const SparseTokenInfo& i = m.rows[r];
    ++t.sparse_tokens;
    t.sparse_neurons_predicted += i.neurons_predicted;
    t.sparse_neurons_read += i.neurons_read;
    t.sparse_bytes_read += i.bytes_read;
    t.sparse_requests += i.requests;
    t.sparse_predictor_seconds += i.predictor_seconds;
    t.sparse_io_seconds += i.io_seconds;
    t.sparse_memory_seconds += i.memory_seconds;
    t.sparse_compute_seconds += i.compute_seconds;
    m.log[m.logged++ % kTokenLog] = i;
    m.rows[r] = SparseTokenInfo{};
  }
}

void SparseFfn::reset() {
  for (Impl::Layer& l : impl_->layers) {
    l.cache.clear();
    l.window.reset();
    std::fill(l.last_use, l.last_use + l.plan->n_neurons, -1);
    l.token = 0;
  }
}

void SparseFfn::add_stats(ModelStats& s) const {
  static_cast<SparseStats&>(s) = impl_->totals;
  s.disk_bytes_read += s.sparse_bytes_read;
  if (s.io_backend.empty()) {
    s.io_backend = impl_->backend;
    s.io_direct = impl_->direct;
    s.io_registered = impl_->registered;
  }
}

std::vector<SparseTokenInfo> SparseFfn::tokens() const {
  const Impl& m = *impl_;
  std::vector<SparseTokenInfo> out;
  const uint64_t n = std::min<uint64_t>(m.logged, kTokenLog);
  out.reserve(n);
  for (uint64_t i = m.logged - n; i < m.logged; ++i) out.push_back(m.log[i % kTokenLog]);
  return out;
}

}  // namespace tierlm::detail
