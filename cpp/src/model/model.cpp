// The executor: resolves graph.json into ops over raw pointers once at load (weights from the
// weight store, activations at planned arena offsets, KV cache slots), then runs them per
// token batch without allocating.
#include "tierlm/model/model.hpp"

#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "core/json.hpp"
#include "sparse/sparse_ffn_layer.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/planner/planner.hpp"
#include "weights/weight_store.hpp"

namespace tierlm {

namespace {

constexpr uint64_t kArenaAlignment = 64;
constexpr int64_t kDefaultPrefillChunk = 256;

bool is_int_input(const std::string& name) { return name == "tokens" || name == "positions"; }

// Ops whose kernels may write their output over one of their inputs.
bool in_place_safe(OpKind kind) {
  switch (kind) {
    case OpKind::kOpAdd:
    case OpKind::kOpRelu:
    case OpKind::kOpGelu:
    case OpKind::kOpRope:
    case OpKind::kOpPositionEmbedding:
    case OpKind::kOpSiluMul:
      return true;
    default:
      return false;
  }
}

uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Buffers of the graph for `seq` tokens and, per op, which buffer each float input, the
// output and the workspace use (-1: none).
struct OpBuffers {
  int in[3] = {-1, -1, -1};
  int out = -1;
  int workspace = -1;
};

struct BufferAssignment {
  std::vector<MemoryBuffer> buffers;
  std::vector<OpBuffers> ops;
  int output = -1;
};

AttentionShape attention_shape(const GraphOp& op, int64_t n_q, int64_t context) {
  AttentionShape s;
  s.n_q = static_cast<size_t>(n_q);
  s.n_heads = static_cast<size_t>(op.heads);
  s.n_kv_heads = static_cast<size_t>(op.kv_heads);
  s.head_dim = static_cast<size_t>(op.head_dim);
  s.kv_len = static_cast<size_t>(context);
  s.kv_capacity = static_cast<size_t>(context);
  s.q_pos0 = static_cast<size_t>(context - n_q);
  return s;
}

BufferAssignment assign_buffers(const Package& package, int64_t seq, int64_t context,
                                int64_t batch) {
  const Graph& graph = package.graph;
  BufferAssignment a;
  std::unordered_map<std::string, int> current;
  const int64_t n_ops = static_cast<int64_t>(graph.ops.size());
  for (int64_t i = 0; i < n_ops; ++i) {
    const GraphOp& op = graph.ops[i];
    OpBuffers ob{};
    int n_in = 0;
    for (const std::string& name : op.inputs) {
      if (is_int_input(name)) continue;
      auto it = current.find(name);
      TIERLM_CHECK(it != current.end(), kErrorCorrupt, "graph.json: op ", i, " (",
                   op_kind_name(op.kind), ") reads \"", name, "\" before any op writes it");
      TIERLM_CHECK(n_in < 3, kErrorCorrupt, "graph.json: op ", i, " has too many inputs");
      ob.in[n_in++] = it->second;
      a.buffers[it->second].end = i;
    }
    auto out_it = current.find(op.output);
    bool reuse = false;
    if (out_it != current.end() && in_place_safe(op.kind)) {
      for (const std::string& name : op.inputs) reuse = reuse || name == op.output;
    }
    if (reuse) {
      ob.out = out_it->second;
    } else {
      const int64_t rows = op.kind == OpKind::kOpLmHead ? batch : seq;  // last rows only
      MemoryBuffer b;
      b.name = op.output + "@" + std::to_string(i);
      b.size = static_cast<uint64_t>(rows * graph.width(op.output)) * sizeof(float);
      b.start = b.end = i;
      ob.out = static_cast<int>(a.buffers.size());
      a.buffers.push_back(std::move(b));
      current[op.output] = ob.out;
    }
    uint64_t workspace = 0;
    if (op.kind == OpKind::kOpAttention) {
      workspace = kernel_attention_workspace(attention_shape(op, seq, context));
    } else if (op.kind == OpKind::kOpPositionEmbedding) {
      workspace = static_cast<uint64_t>(seq * graph.width(op.output)) * sizeof(float);
    }
    if (workspace > 0) {
      MemoryBuffer b;
      b.name = std::string(op_kind_name(op.kind)) + ".workspace@" + std::to_string(i);
      b.size = workspace;
      b.start = b.end = i;
      ob.workspace = static_cast<int>(a.buffers.size());
      a.buffers.push_back(std::move(b));
    }
    a.ops.push_back(ob);
  }
  auto out_it = current.find(graph.output);
  TIERLM_CHECK(out_it != current.end(), kErrorCorrupt, "graph.json: the output \"", graph.output,
               "\" is never written");
  a.output = out_it->second;
  a.buffers[a.output].end = n_ops;  // read by the caller after the graph
  return a;
}

}  // namespace

namespace {

std::vector<PlanBuffer> plan_buffers(const std::vector<MemoryBuffer>& buffers) {
  std::vector<PlanBuffer> out(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    out[i].size = buffers[i].size;
    out[i].first_op = buffers[i].start;
    out[i].last_op = buffers[i].end;
  }
  return out;
}

std::vector<uint64_t> plan_offsets(const std::vector<MemoryBuffer>& buffers) {
  std::vector<uint64_t> out(buffers.size());
  for (size_t i = 0; i < buffers.size(); ++i) out[i] = buffers[i].offset;
  return out;
}

}  // namespace

// One graph op resolved to pointers and sizes.
struct ExecOp {
  OpKind kind = OpKind::kOpAdd;
  int layer = -1;
  float* in[3] = {nullptr, nullptr, nullptr};
  float* out = nullptr;
  int64_t width = 0;  // output width
  int64_t in_width = 0;
  int weight = -1;
  int bias = -1;
  DType dtype = DType::kDTypeF32;
  bool bias_apart = false;          // linear: bias dtype differs, added after the product
  const float* bias_f32 = nullptr;  // ... from this f32 copy (nullptr: the bias is f32)
  const float* norm_f32 = nullptr;  // layernorm: weight and bias as f32 (dtypes differ)
  const float* normb_f32 = nullptr;
  float eps = 1e-5f;
  AttentionShape shape;
  float scale = 1.0f;
  int kv = -1;
  size_t kv_stride = 0;  // floats between sequence slots in this op's k (and v) cache
  void* workspace = nullptr;
  int64_t offset = 0;
  size_t index = 0;
  // Sparse FFN (ModelOptions::sparse): the layer's index in the sparse plan; the up op runs
  // the whole FFN into its own buffer, the down op copies that out (relu is dropped).
  int sparse = -1;
  bool sparse_copy = false;
  int sparse_gate_bias = -1;
  int sparse_down_bias = -1;
};

struct Model::Impl {
  Package package;
  ModelOptions options;
  std::unique_ptr<HostTier> host;
  std::unique_ptr<detail::WeightStore> weights;
  detail::StreamingWeightStore* stream = nullptr;  // weights, when streaming
  std::unique_ptr<detail::SparseFfn> sparse;       // ModelOptions::sparse
  WeightPlacement placement;
  int64_t context = 0;
  int64_t chunk = 0;
  HostBuffer kv;
  std::vector<float*> k_cache;  // per attention op
  std::vector<float*> v_cache;
  HostBuffer arena;
  MemoryPlan plan;
  std::vector<ExecOp> ops;
  std::vector<std::vector<float>> converted;  // f32 copies of small tensors, made at load
  std::vector<int32_t> positions;
  std::vector<int32_t> shifted;
  float* logits = nullptr;
  int64_t max_batch = 1;
  std::vector<int64_t> slot_pos;  // tokens in each sequence slot's KV cache
  size_t kv_slot_stride = 0;      // floats between slots, per attention op and per k / v
  // The rows of the batch being run: one sequence slot (prefill) or one slot per row (batched
  // decode, slots != nullptr).
  int32_t slot = 0;
  const int32_t* slots = nullptr;
  uint64_t sequence = 0;
  ModelStats totals;
  double load_seconds = 0.0;
  std::mutex busy;  // one forward at a time: the KV cache and arena are shared state

  const void* w(int index) const { return index < 0 ? nullptr : weights->data(index); }

  void run_rows(const int32_t* tokens, int64_t n);
  void run_op(const ExecOp& op, const int32_t* tokens, int64_t n);
};

namespace {

std::vector<float> to_f32(const void* data, DType dtype, size_t n) {
  std::vector<float> out(n);
  const int32_t zero = 0;
  kernel_embedding(data, dtype, &zero, 1, n, out.data());  // row 0 of a one-row table
  return out;
}

// Stored plans: plans/seq-<N>.json; returns the N found, sorted.
std::vector<int64_t> stored_plan_seqs(const std::string& package_path) {
  std::vector<int64_t> seqs;
  DIR* dir = ::opendir((package_path + "/plans").c_str());
  if (dir == nullptr) return seqs;
  while (dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.rfind("seq-", 0) != 0 || name.size() <= 9 || name.substr(name.size() - 5) != ".json") {
      continue;
    }
    const std::string digits = name.substr(4, name.size() - 9);
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    seqs.push_back(std::stoll(digits));
  }
  ::closedir(dir);
  std::sort(seqs.begin(), seqs.end());
  return seqs;
}

// Applies plans/seq-N.json's offsets to buffers. Accepts {"buffers": [{"name", "size",
// "offset"}, ...]} or {"names": [...], "offsets": [...]}; returns false (with why) when the
// plan does not describe these buffers.
bool apply_stored_plan(const std::string& path, std::vector<MemoryBuffer>& buffers,
                       std::string& why) {
  const detail::Json plan = detail::json_parse_file(path);
  struct Entry {
    uint64_t offset = 0;
    uint64_t size = 0;  // 0: not given
    int64_t first = -1;
    int64_t last = -1;
  };
  std::unordered_map<std::string, Entry> by_name;
  auto number = [&](const detail::Json& b, const char* key, int64_t fallback) {
    const detail::Json* v = b.find(key);
    return v == nullptr || v->is_null() ? fallback : v->as_int(path + ": " + key);
  };
  if (const detail::Json* list = plan.find("buffers"); list != nullptr && list->is_array()) {
    for (const detail::Json& b : list->as_array(path)) {
      const detail::Json* name = b.find("name");
      if (name == nullptr || b.find("offset") == nullptr) {
        why = "a buffer lacks name or offset";
        return false;
      }
      Entry e;
      e.offset = static_cast<uint64_t>(number(b, "offset", 0));
      e.size = static_cast<uint64_t>(number(b, "size", 0));
      e.first = number(b, "first", -1);
      e.last = number(b, "last", -1);
      by_name[name->as_string(path)] = e;
    }
  } else if (plan.find("names") && plan.find("offsets")) {
    const auto& names = plan.at("names", path).as_array(path);
    const auto& offsets = plan.at("offsets", path).as_array(path);
    if (names.size() != offsets.size()) {
      why = "names and offsets differ in length";
      return false;
    }
    for (size_t i = 0; i < names.size(); ++i) {
      by_name[names[i].as_string(path)].offset = static_cast<uint64_t>(offsets[i].as_int(path));
    }
  } else {
    why = "no \"buffers\" or \"names\"/\"offsets\"";
    return false;
  }
  if (by_name.size() != buffers.size()) {
    why = "it has " + std::to_string(by_name.size()) + " buffers, the graph " +
          std::to_string(buffers.size()) + "; plan again with `tierlm plan`";
    return false;
  }
  for (MemoryBuffer& b : buffers) {
    auto it = by_name.find(b.name);
    if (it == by_name.end()) {
      why = "it lacks buffer " + b.name + "; plan again with `tierlm plan`";
      return false;
    }
    const Entry& e = it->second;
    if ((e.size != 0 && e.size != b.size) || (e.first >= 0 && e.first != b.start) ||
        (e.last >= 0 && e.last != b.end)) {
      why = "buffer " + b.name + " has another size or lifetime; plan again with `tierlm plan`";
      return false;
    }
    if (e.offset % kArenaAlignment != 0) {
      why = "buffer " + b.name + " is not 64-byte aligned";
      return false;
    }
    b.offset = e.offset;
  }
  try {
    plan_check(plan_buffers(buffers), plan_offsets(buffers), kArenaAlignment);
  } catch (const Error& e) {
    TIERLM_FAIL(kErrorCorrupt, 0, path, ": the plan is invalid (", e.what(),
                "); plan again with `tierlm plan` or delete the file");
  }
  return true;
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path, const ModelOptions& options) {
  check_model_options(options);
  const auto t0 = std::chrono::steady_clock::now();
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.options = options;
  m.package = package_open(path);
  const Package& p = m.package;
  const ModelConfig& c = p.config;
  if (options.threads > 0 && options.threads != parallel_threads()) {
    parallel_set_threads(options.threads);
  }

  m.context =
      options.max_context > 0 ? std::min(options.max_context, c.max_positions) : c.max_positions;
  m.max_batch = options.max_batch;
  const std::vector<int64_t> plans = stored_plan_seqs(p.path);
  if (options.prefill_chunk > 0) {
    m.chunk = std::min(options.prefill_chunk, m.context);
  } else {
    m.chunk = std::min(kDefaultPrefillChunk, m.context);
    for (int64_t seq : plans) {
      if (seq <= m.context && seq >= m.max_batch) m.chunk = seq;
    }
  }
  // A batched decode step runs one row per sequence through the same arena.
  m.chunk = std::max(m.chunk, m.max_batch);

  // Tensors the graph uses (lm_head falls back to embed.weight when tied).
  std::vector<std::string> names;
  auto weight_name = [&](const GraphOp& op) {
    if (op.kind == OpKind::kOpLmHead && p.find_tensor(op.weight) == nullptr && c.tie_embeddings) {
      return std::string("embed.weight");
    }
    return op.weight;
  };
  for (const GraphOp& op : p.graph.ops) {
    if (!op.weight.empty()) names.push_back(weight_name(op));
    if (!op.bias.empty()) names.push_back(op.bias);
  }
  // Sparse FFN: the FFN matrices are read per neuron from the bundles, not by the store.
  detail::SparseFfnPlan sparse_plan;
  if (options.sparse) {
    sparse_plan = detail::sparse_ffn_plan(p, options, static_cast<size_t>(m.chunk));
    std::erase_if(names, [&](const std::string& name) {
      return std::find(sparse_plan.dense_tensors.begin(), sparse_plan.dense_tensors.end(), name) !=
             sparse_plan.dense_tensors.end();
    });
  }
  // Tables only token embeddings read can be read by rows on demand when streaming.
  std::vector<std::string> row_tensors;
  for (const GraphOp& op : p.graph.ops) {
    if (op.kind != OpKind::kOpEmbedding) continue;
    const std::string name = weight_name(op);
    bool only_rows = true;
    for (const GraphOp& other : p.graph.ops) {
      if (other.kind != OpKind::kOpEmbedding && (weight_name(other) == name || other.bias == name))
        only_rows = false;
    }
    if (only_rows) row_tensors.push_back(name);
  }

  // Memory: buffers and plan for a chunk, KV cache for the context.
  BufferAssignment assignment = assign_buffers(p, m.chunk, m.context, m.max_batch);
  m.plan.seq = m.chunk;
  m.plan.buffers = assignment.buffers;
  m.plan.source = "internal";
  bool planned = false;
  if (std::find(plans.begin(), plans.end(), m.chunk) != plans.end()) {
    const std::string plan_path = p.path + "/plans/seq-" + std::to_string(m.chunk) + ".json";
    std::string why;
    if (apply_stored_plan(plan_path, m.plan.buffers, why)) {
      planned = true;
      m.plan.source = plan_path;
    } else {
      m.plan.source = "internal (" + plan_path + " ignored: " + why + ")";
    }
  }
  const std::vector<PlanBuffer> spans = plan_buffers(m.plan.buffers);
  if (!planned) {
    const Plan greedy = plan_greedy(spans, kArenaAlignment);
    for (size_t i = 0; i < m.plan.buffers.size(); ++i) m.plan.buffers[i].offset = greedy.offsets[i];
  }
  m.plan.peak = plan_peak(spans, plan_offsets(m.plan.buffers));
  m.plan.lower_bound = plan_lower_bound(spans);

  uint64_t kv_floats = 0;
  for (const GraphOp& op : p.graph.ops) {
    if (op.kind == OpKind::kOpAttention) {
      kv_floats += 2 * static_cast<uint64_t>(m.max_batch * op.kv_heads * m.context * op.head_dim);
    }
  }
  const uint64_t weight_bytes = detail::resident_weight_bytes(p, names);
  const uint64_t kv_bytes = align_up(kv_floats * sizeof(float), 4096);
  const uint64_t arena_bytes = align_up(std::max<uint64_t>(m.plan.peak, 1), 4096);
  if (options.sparse && options.sparse_capacity == 0 &&
      weight_bytes + kv_bytes + arena_bytes + sparse_plan.host_bytes > options.host_budget) {
    // Weights first: a resident weight byte saves a read on every token, a cached window row
    // only on some. Auto capacities then hold one token's prediction; the window still evicts
    // the least recently used neurons when its union is larger.
    detail::size_sparse_caches(sparse_plan, 0, 1);
  }
  const uint64_t sparse_bytes = sparse_plan.host_bytes;
  const uint64_t needed = weight_bytes + kv_bytes + arena_bytes + sparse_bytes;
  const uint64_t fixed = kv_bytes + arena_bytes + sparse_bytes;
  const std::string sparse_part =
      options.sparse ? " + sparse FFN neuron caches, staging and predictors " +
                           format_bytes(sparse_bytes) + " (lower sparse_capacity or sparse_window)"
                     : std::string();
  detail::WeightStoreOptions store_options;
  store_options.verify = options.verify;
  if (needed <= options.host_budget) {
    m.host = std::make_unique<HostTier>(options.host_budget, options.lock);
    m.weights = detail::weight_store_resident(p, *m.host, names, store_options);
    m.placement.resident_bytes = weight_bytes;
    m.placement.base_bytes = weight_bytes;
  } else {
    const WeightPlacement probe = detail::weight_placement(p, names, 0, 0, row_tensors, m.chunk);
    const uint64_t minimum = probe.minimum() + fixed;
    TIERLM_CHECK(fixed <= options.host_budget, kErrorBudget, "host tier: the KV cache (",
                 format_bytes(kv_bytes), " for ", m.max_batch, " x ", m.context,
                 " tokens) and activations (", format_bytes(arena_bytes), ")", sparse_part,
                 " stay in the host tier and do not fit the host budget of ",
                 format_bytes(options.host_budget),
                 "; lower max_context or max_batch, or raise "
                 "the host budget (streaming the weights needs at least ",
                 format_bytes(minimum), ")");
    TIERLM_CHECK(minimum <= options.host_budget, kErrorBudget,
                 "host tier: streaming the weights "
                 "needs a host budget of at least ",
                 format_bytes(minimum), " (", minimum, " bytes: resident norms/embeddings/lm_head ",
                 format_bytes(probe.base_bytes), " + one staging section (the largest matrix) ",
                 format_bytes(probe.section_bytes), " + KV cache ", format_bytes(kv_bytes),
                 " + activations ", format_bytes(arena_bytes), sparse_part,
                 ") but the host budget is ", format_bytes(options.host_budget),
                 "; raise the host budget or lower max_context");
    const WeightPlacement placement =
        detail::weight_placement(p, names, options.host_budget - fixed,
                                 static_cast<int>(options.ring_sections), row_tensors, m.chunk);
    m.host = std::make_unique<HostTier>(options.host_budget, options.lock);
    auto store = detail::weight_store_streaming(p, *m.host, names, placement, store_options);
    m.stream = store.get();
    m.weights = std::move(store);
    WeightPlacement& info = m.placement;
    info = placement;
    info.streaming = true;
    info.minimum_budget = minimum;
    for (const std::string& name : names) {
      const TensorInfo& t = p.tensor(name);
      if (t.layer >= 0 && t.shape.size() >= 2 &&
          std::find(placement.streamed_layers.begin(), placement.streamed_layers.end(), t.layer) !=
              placement.streamed_layers.end() &&
          std::find(info.streamed_tensors.begin(), info.streamed_tensors.end(), name) ==
              info.streamed_tensors.end() &&
          std::find(placement.pinned_tensors.begin(), placement.pinned_tensors.end(), name) ==
              placement.pinned_tensors.end()) {
        info.streamed_tensors.push_back(name);
      }
    }
  }
  if (!m.placement.streaming) {
    m.placement.minimum_budget =
        detail::weight_placement(p, names, 0, 0, row_tensors, m.chunk).minimum() + fixed;
  }
  m.kv = m.host->allocate(std::max<uint64_t>(kv_floats * sizeof(float), 1));
  std::memset(m.kv.data(), 0, m.kv.size());
  m.arena = m.host->allocate(arena_bytes);
  std::memset(m.arena.data(), 0, m.arena.size());
  if (options.sparse) m.sparse = std::make_unique<detail::SparseFfn>(sparse_plan, *m.host);
  char* arena = static_cast<char*>(m.arena.data());
  auto buffer_ptr = [&](int index) -> float* {
    return index < 0 ? nullptr : reinterpret_cast<float*>(arena + m.plan.buffers[index].offset);
  };

  // Resolve ops.
  float* kv_next = static_cast<float*>(m.kv.data());
  for (size_t i = 0; i < p.graph.ops.size(); ++i) {
    const GraphOp& g = p.graph.ops[i];
    const OpBuffers& ob = assignment.ops[i];
    const std::string where =
        "graph.json: op " + std::to_string(i) + " (" + op_kind_name(g.kind) + ")";
    ExecOp op;
    op.kind = g.kind;
    op.layer = g.layer;
    op.index = i;
    for (int k = 0; k < 3; ++k) op.in[k] = buffer_ptr(ob.in[k]);
    op.out = buffer_ptr(ob.out);
    op.workspace = buffer_ptr(ob.workspace);
    op.width = p.graph.width(g.output);
    op.eps = static_cast<float>(g.eps);
    detail::SparseOpRole sparse_role = detail::SparseOpRole::kSparseOpNone;
    const int sparse_layer = m.sparse ? sparse_plan.layer_of_op(i, &sparse_role) : -1;
    if (sparse_layer >= 0) {
      if (sparse_role == detail::SparseOpRole::kSparseOpDrop) continue;
      const detail::SparseLayerPlan& sl = sparse_plan.layers[sparse_layer];
      op.sparse = sparse_layer;
      op.width = static_cast<int64_t>(sl.dim);  // the FFN's result, [rows, dim]
      if (sparse_role == detail::SparseOpRole::kSparseOpCompute) {
        auto index = [&](const std::string& name) {
          return name.empty() ? -1 : m.weights->index(name);
        };
        op.bias = index(sl.up_bias);
        op.sparse_gate_bias = index(sl.gate_bias);
        op.sparse_down_bias = index(sl.down_bias);
      } else {
        op.sparse_copy = true;
      }
      m.ops.push_back(op);
      continue;
    }
    int n_float_in = 0;
    for (const std::string& name : g.inputs) {
      if (is_int_input(name)) continue;
      if (n_float_in++ == 0) op.in_width = p.graph.width(name);
    }
    auto need_inputs = [&](int count) {
      TIERLM_CHECK(n_float_in == count, kErrorCorrupt, where, " needs ", count,
                   " activation inputs, has ", n_float_in);
    };
    if (!g.weight.empty()) {
      op.weight = m.weights->index(weight_name(g));
      op.dtype = m.weights->info(op.weight).dtype;
    }
    if (!g.bias.empty()) op.bias = m.weights->index(g.bias);
    const TensorInfo* wi = op.weight >= 0 ? &m.weights->info(op.weight) : nullptr;
    const TensorInfo* bi = op.bias >= 0 ? &m.weights->info(op.bias) : nullptr;
    auto need_shape = [&](const TensorInfo* t, std::vector<int64_t> shape) {
      TIERLM_CHECK(t != nullptr && t->shape == shape, kErrorCorrupt, where, ": tensor `",
                   t ? t->name : std::string("?"), "` has the wrong shape for its values");
    };
    switch (g.kind) {
      case OpKind::kOpEmbedding:
        TIERLM_CHECK(wi && wi->shape.size() == 2 && wi->shape[1] == op.width, kErrorCorrupt, where,
                     ": embedding table does not match width ", op.width);
        TIERLM_CHECK(wi->shape[0] >= c.vocab_size, kErrorCorrupt, where,
                     ": embedding table has fewer rows than vocab_size");
        break;
      case OpKind::kOpPositionEmbedding:
        TIERLM_CHECK(wi && wi->shape.size() == 2 && wi->shape[1] == op.width, kErrorCorrupt, where,
                     ": position table does not match width ", op.width);
        TIERLM_CHECK(wi->shape[0] >= m.context + g.offset, kErrorCorrupt, where,
                     ": position table has ", wi->shape[0], " rows, the context needs ",
                     m.context + g.offset);
        need_inputs(1);
        op.offset = g.offset;
        break;
      case OpKind::kOpRmsNorm:
        need_inputs(1);
        need_shape(wi, {op.width});
        break;
      case OpKind::kOpLayerNorm:
        need_inputs(1);
        need_shape(wi, {op.width});
        need_shape(bi, {op.width});
        if (bi->dtype != wi->dtype) {
          m.converted.push_back(to_f32(m.weights->data(op.weight), wi->dtype, op.width));
          op.norm_f32 = m.converted.back().data();
          m.converted.push_back(to_f32(m.weights->data(op.bias), bi->dtype, op.width));
          op.normb_f32 = m.converted.back().data();
        }
        break;
      case OpKind::kOpLinear:
      case OpKind::kOpLmHead:
        need_inputs(1);
        need_shape(wi, {op.width, op.in_width});
        if (bi) {
          need_shape(bi, {op.width});
          if (bi->dtype != wi->dtype) {
            op.bias_apart = true;
            if (bi->dtype != DType::kDTypeF32) {
              m.converted.push_back(to_f32(m.weights->data(op.bias), bi->dtype, op.width));
              op.bias_f32 = m.converted.back().data();
            }
          }
        }
        break;
      case OpKind::kOpRope: {
        need_inputs(1);
        const int64_t heads = g.heads;
        TIERLM_CHECK(heads > 0 && op.width % heads == 0, kErrorCorrupt, where, ": width ", op.width,
                     " is not a multiple of heads ", heads);
        op.shape.n_heads = static_cast<size_t>(heads);
        op.shape.head_dim = static_cast<size_t>(op.width / heads);
        TIERLM_CHECK(c.rope_inv_freq.size() * 2 == op.shape.head_dim, kErrorCorrupt, where,
                     ": config.rope_inv_freq has ", c.rope_inv_freq.size(), " entries, head_dim ",
                     op.shape.head_dim, " needs half as many");
        break;
      }
      case OpKind::kOpAttention: {
        need_inputs(3);
        const int64_t head_dim = g.head_dim > 0 ? g.head_dim : c.head_dim;
        TIERLM_CHECK(g.heads > 0 && g.kv_heads > 0 && g.heads % g.kv_heads == 0, kErrorCorrupt,
                     where, ": heads ", g.heads, " and kv_heads ", g.kv_heads, " do not fit");
        const int64_t qw = p.graph.width(g.inputs[0]);
        const int64_t kw = p.graph.width(g.inputs[1]);
        const int64_t vw = p.graph.width(g.inputs[2]);
        TIERLM_CHECK(
            qw == g.heads * head_dim && kw == g.kv_heads * head_dim && vw == kw && op.width == qw,
            kErrorCorrupt, where, ": q/k/v/out widths ", qw, "/", kw, "/", vw, "/", op.width,
            " do not match heads ", g.heads, ", kv_heads ", g.kv_heads, ", head_dim ", head_dim);
        op.shape.n_heads = static_cast<size_t>(g.heads);
        op.shape.n_kv_heads = static_cast<size_t>(g.kv_heads);
        op.shape.head_dim = static_cast<size_t>(head_dim);
        op.shape.kv_capacity = static_cast<size_t>(m.context);
        op.scale = g.scale > 0 ? static_cast<float>(g.scale)
                               : 1.0f / std::sqrt(static_cast<float>(head_dim));
        op.kv = static_cast<int>(m.k_cache.size());
        const size_t per = static_cast<size_t>(g.kv_heads * m.context * head_dim);
        op.kv_stride = per;
        m.k_cache.push_back(kv_next);
        m.v_cache.push_back(kv_next + per * m.max_batch);
        kv_next += 2 * per * m.max_batch;
        break;
      }
      case OpKind::kOpAdd:
        need_inputs(2);
        TIERLM_CHECK(p.graph.width(g.inputs[1]) == op.width && op.in_width == op.width,
                     kErrorCorrupt, where, ": inputs differ in width");
        break;
      case OpKind::kOpSiluMul:
        need_inputs(2);
        TIERLM_CHECK(p.graph.width(g.inputs[1]) == op.width && op.in_width == op.width,
                     kErrorCorrupt, where, ": inputs differ in width");
        break;
      case OpKind::kOpRelu:
      case OpKind::kOpGelu:
        need_inputs(1);
        TIERLM_CHECK(op.in_width == op.width, kErrorCorrupt, where, ": input and output differ");
        break;
    }
    m.ops.push_back(op);
  }
  m.logits = buffer_ptr(assignment.output);
  TIERLM_CHECK(p.graph.width(p.graph.output) == c.vocab_size, kErrorCorrupt,
               "graph.json: the output \"", p.graph.output, "\" has width ",
               p.graph.width(p.graph.output), ", vocab_size is ", c.vocab_size);
  TIERLM_CHECK(
      !m.ops.empty() && m.ops.back().kind == OpKind::kOpLmHead && m.ops.back().out == m.logits,
      kErrorCorrupt, "graph.json: the last op must be lm_head writing the output");
  m.slot_pos.assign(static_cast<size_t>(m.max_batch), 0);
  m.positions.resize(static_cast<size_t>(m.chunk));
  m.shifted.resize(static_cast<size_t>(m.chunk));
  m.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Model(std::move(impl));
}

void Model::Impl::run_op(const ExecOp& op, const int32_t* tokens, int64_t n) {
  const size_t rows = static_cast<size_t>(n);
  const size_t width = static_cast<size_t>(op.width);
  const size_t elems = rows * width;
  if (op.sparse >= 0) {
    if (op.sparse_copy) {
      if (op.out != op.in[0]) std::memcpy(op.out, op.in[0], elems * sizeof(float));
    } else {
      sparse->run(op.sparse, op.in[0], rows, static_cast<const float*>(w(op.bias)),
                  static_cast<const float*>(w(op.sparse_gate_bias)),
                  static_cast<const float*>(w(op.sparse_down_bias)), op.out);
    }
    return;
  }
  switch (op.kind) {
    case OpKind::kOpEmbedding:
      if (const void* const* table_rows = weights->rows(op.weight, tokens, rows)) {
        const int32_t zero = 0;  // each pointer is a one-row table
        for (size_t i = 0; i < rows; ++i) {
          kernel_embedding(table_rows[i], op.dtype, &zero, 1, width, op.out + i * width);
        }
      } else {
        kernel_embedding(w(op.weight), op.dtype, tokens, rows, width, op.out);
      }
      break;
    case OpKind::kOpPositionEmbedding: {
      for (size_t i = 0; i < rows; ++i) shifted[i] = positions[i] + static_cast<int32_t>(op.offset);
      float* rows_f32 = static_cast<float*>(op.workspace);
      kernel_embedding(w(op.weight), op.dtype, shifted.data(), rows, width, rows_f32);
      if (op.out != op.in[0]) std::memcpy(op.out, op.in[0], elems * sizeof(float));
      kernel_add(op.out, rows_f32, elems);
      break;
    }
    case OpKind::kOpRmsNorm:
      kernel_rmsnorm(op.in[0], w(op.weight), op.dtype, op.out, rows, width, op.eps);
      break;
    case OpKind::kOpLayerNorm:
      if (op.norm_f32 != nullptr) {
        kernel_layernorm(op.in[0], op.norm_f32, op.normb_f32, DType::kDTypeF32, op.out, rows, width,
                         op.eps);
      } else {
        kernel_layernorm(op.in[0], w(op.weight), w(op.bias), op.dtype, op.out, rows, width, op.eps);
      }
      break;
    case OpKind::kOpLinear:
    case OpKind::kOpLmHead: {
      const float* x = op.in[0];
      size_t m_rows = rows;
      if (op.kind == OpKind::kOpLmHead && slots == nullptr) {  // last token only
        x += (rows - 1) * static_cast<size_t>(op.in_width);
        m_rows = 1;
      }
      const void* bias = op.bias_apart ? nullptr : w(op.bias);
      kernel_linear(x, w(op.weight), bias, op.dtype, op.out, m_rows, width,
                    static_cast<size_t>(op.in_width));
      if (op.bias_apart) {
        const float* b = op.bias_f32 ? op.bias_f32 : static_cast<const float*>(w(op.bias));
        for (size_t r = 0; r < m_rows; ++r) kernel_add(op.out + r * width, b, width);
      }
      break;
    }
    case OpKind::kOpRope:
      if (op.out != op.in[0]) std::memcpy(op.out, op.in[0], elems * sizeof(float));
      kernel_rope(op.out, positions.data(), package.config.rope_inv_freq.data(), rows,
                  op.shape.n_heads, op.shape.head_dim);
      break;
    case OpKind::kOpAttention: {
      const size_t kv_heads = op.shape.n_kv_heads;
      const size_t head_dim = op.shape.head_dim;
      const size_t kv_width = kv_heads * head_dim;
      const size_t q_width = op.shape.n_heads * head_dim;
      // Rows of one sequence are consecutive positions; a batched decode step has one row per
      // sequence, each attending over its own slot's cache.
      const size_t groups = slots == nullptr ? 1 : rows;
      const size_t per_group = slots == nullptr ? rows : 1;
      for (size_t g = 0; g < groups; ++g) {
        const size_t s = static_cast<size_t>(slots == nullptr ? slot : slots[g]);
        float* kc = k_cache[op.kv] + s * op.kv_stride;
        float* vc = v_cache[op.kv] + s * op.kv_stride;
        const size_t pos0 = static_cast<size_t>(slot_pos[s]);
        const size_t row0 = g * per_group;
        for (size_t i = 0; i < per_group; ++i) {
          const float* k = op.in[1] + (row0 + i) * kv_width;
          const float* v = op.in[2] + (row0 + i) * kv_width;
          for (size_t h = 0; h < kv_heads; ++h) {
            const size_t at = (h * static_cast<size_t>(context) + pos0 + i) * head_dim;
            std::memcpy(kc + at, k + h * head_dim, head_dim * sizeof(float));
            std::memcpy(vc + at, v + h * head_dim, head_dim * sizeof(float));
          }
        }
        AttentionShape shape = op.shape;
        shape.n_q = per_group;
        shape.q_pos0 = pos0;
        shape.kv_len = pos0 + per_group;
        kernel_attention(op.in[0] + row0 * q_width, kc, vc, op.out + row0 * q_width, shape,
                         op.scale, op.workspace);
      }
      break;
    }
    case OpKind::kOpAdd:
      if (op.out == op.in[0]) {
        kernel_add(op.out, op.in[1], elems);
      } else if (op.out == op.in[1]) {
        kernel_add(op.out, op.in[0], elems);
      } else {
        std::memcpy(op.out, op.in[0], elems * sizeof(float));
        kernel_add(op.out, op.in[1], elems);
      }
      break;
    case OpKind::kOpSiluMul:
      kernel_silu_mul(op.in[0], op.in[1], op.out, elems);
      break;
    case OpKind::kOpRelu:
    case OpKind::kOpGelu:
      if (op.out != op.in[0]) std::memcpy(op.out, op.in[0], elems * sizeof(float));
      if (op.kind == OpKind::kOpRelu) {
        kernel_relu(op.out, elems);
      } else {
        kernel_gelu(op.out, elems);
      }
      break;
  }
}

void Model::Impl::run_rows(const int32_t* tokens, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    positions[i] = static_cast<int32_t>(slots == nullptr ? slot_pos[slot] + i : slot_pos[slots[i]]);
  }
  int layer = INT_MIN;
  for (const ExecOp& op : ops) {
    if (op.layer != layer) {
      if (layer != INT_MIN) weights->end_layer(layer);
      layer = op.layer;
      weights->begin_layer(layer);
    }
    run_op(op, tokens, n);
    if (op.weight >= 0) weights->release(op.weight);  // a streaming store reuses its section
  }
  if (layer != INT_MIN) weights->end_layer(layer);
  if (sparse) sparse->end_batch(static_cast<size_t>(n));
  if (slots == nullptr) {
    slot_pos[slot] += n;
  } else {
    for (int64_t i = 0; i < n; ++i) ++slot_pos[slots[i]];
  }
}

const Package& Model::package() const { return impl_->package; }
const ModelConfig& Model::config() const { return impl_->package.config; }
int64_t Model::vocab_size() const { return impl_->package.config.vocab_size; }
int64_t Model::context_length() const { return impl_->context; }
int64_t Model::prefill_chunk() const { return impl_->chunk; }
int64_t Model::position() const { return impl_->slot_pos[0]; }
int64_t Model::position(int32_t slot) const {
  TIERLM_CHECK(slot >= 0 && slot < impl_->max_batch, kErrorInvalidArgument, "slot ", slot,
               " is outside 0..", impl_->max_batch - 1, " (max_batch)");
  return impl_->slot_pos[slot];
}
int64_t Model::max_batch() const { return impl_->max_batch; }
uint64_t Model::sequence_id() const { return impl_->sequence; }
const MemoryPlan& Model::memory_plan() const { return impl_->plan; }

namespace {

std::unique_lock<std::mutex> claim(std::mutex& busy) {
  std::unique_lock lock(busy, std::try_to_lock);
  TIERLM_CHECK(lock.owns_lock(), kErrorInvalidArgument,
               "the model is already running on another thread; use one Model per thread");
  return lock;
}

}  // namespace

void Model::reset() {
  auto lock = claim(impl_->busy);
  std::fill(impl_->slot_pos.begin(), impl_->slot_pos.end(), 0);
  ++impl_->sequence;
  if (impl_->sparse) impl_->sparse->reset();
}

const float* Model::forward(std::span<const int32_t> tokens) { return forward(tokens, false); }

const float* Model::forward(std::span<const int32_t> tokens, bool restart) {
  return forward_slot(0, tokens, restart);
}

namespace {

void check_tokens(std::span<const int32_t> tokens, int64_t vocab) {
  TIERLM_CHECK(!tokens.empty(), kErrorInvalidArgument,
               "empty prompt: give at least one token (a text prompt that tokenizes to nothing?)");
  for (size_t i = 0; i < tokens.size(); ++i) {
    TIERLM_CHECK(tokens[i] >= 0 && tokens[i] < vocab, kErrorInvalidArgument, "token id ", tokens[i],
                 " at index ", i, " is outside the vocabulary (0..", vocab - 1, ")");
  }
}

}  // namespace

const float* Model::forward_slot(int32_t slot, std::span<const int32_t> tokens, bool restart) {
  Impl& m = *impl_;
  auto lock = claim(m.busy);
  TIERLM_CHECK(slot >= 0 && slot < m.max_batch, kErrorInvalidArgument, "slot ", slot,
               " is outside 0..", m.max_batch - 1, " (load the model with a larger max_batch)");
  if (restart) {
    m.slot_pos[slot] = 0;
    ++m.sequence;
    if (m.sparse) m.sparse->reset();  // cached rows of another sequence would join the sum
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  check_tokens(tokens, m.package.config.vocab_size);
  const int64_t pos = m.slot_pos[slot];
  TIERLM_CHECK(pos + n <= m.context, kErrorInvalidArgument, "the sequence needs ", pos + n,
               " positions (", pos, " in the cache + ", n, " new tokens) but the context holds ",
               m.context, " (max_positions ", m.package.config.max_positions,
               "); shorten the prompt");
  m.slot = slot;
  m.slots = nullptr;
  for (int64_t start = 0; start < n; start += m.chunk) {
    m.run_rows(tokens.data() + start, std::min(m.chunk, n - start));
  }
  return m.logits;
}

const float* Model::forward_batch(std::span<const int32_t> tokens, std::span<const int32_t> slots) {
  Impl& m = *impl_;
  auto lock = claim(m.busy);
  const int64_t n = static_cast<int64_t>(tokens.size());
  TIERLM_CHECK(slots.size() == tokens.size(), kErrorInvalidArgument,
               "forward_batch: ", tokens.size(), " tokens for ", slots.size(),
               " slots; give one token per slot");
  TIERLM_CHECK(n <= m.max_batch, kErrorInvalidArgument, "forward_batch: ", n,
               " sequences but the model was loaded with max_batch ", m.max_batch);
  check_tokens(tokens, m.package.config.vocab_size);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t s = slots[i];
    TIERLM_CHECK(s >= 0 && s < m.max_batch, kErrorInvalidArgument, "forward_batch: slot ", s,
                 " is outside 0..", m.max_batch - 1);
    for (int64_t j = 0; j < i; ++j) {
      TIERLM_CHECK(slots[j] != s, kErrorInvalidArgument, "forward_batch: slot ", s,
                   " appears twice");
    }
    TIERLM_CHECK(m.slot_pos[s] + 1 <= m.context, kErrorInvalidArgument, "forward_batch: slot ", s,
                 " holds ", m.slot_pos[s], " tokens, the context is full (", m.context, ")");
  }
  m.slots = slots.data();
  m.run_rows(tokens.data(), n);
  m.slots = nullptr;
  return m.logits;
}

std::vector<float> Model::logits(std::span<const int32_t> ids) {
  const auto t0 = std::chrono::steady_clock::now();
  const float* out = forward(ids, true);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  record_timing(ids.size(), seconds, 0, 0.0);
  return std::vector<float>(out, out + vocab_size());
}

void Model::record_timing(uint64_t prefill_tokens, double prefill_seconds, uint64_t decode_tokens,
                          double decode_seconds) {
  ModelStats& t = impl_->totals;
  t.prefill_tokens += prefill_tokens;
  t.prefill_seconds += prefill_seconds;
  t.decode_tokens += decode_tokens;
  t.decode_seconds += decode_seconds;
}

ModelStats Model::stats() const {
  const Impl& m = *impl_;
  ModelStats s = m.totals;
  const detail::WeightStoreStats ws = m.weights->stats();
  s.load_seconds = m.load_seconds;
  s.disk_bytes_read = ws.disk_bytes_read;
  s.weight_bytes = ws.resident_bytes;
  s.kv_bytes = m.kv.size();
  s.arena_bytes = m.arena.size();
  s.host = m.host->stats();
  if (m.stream != nullptr) static_cast<StreamStats&>(s) = m.stream->stream_stats();
  if (m.sparse) m.sparse->add_stats(s);
  return s;
}

const WeightPlacement& Model::placement() const { return impl_->placement; }

std::vector<StreamEvent> Model::stream_events() const {
  if (impl_->stream == nullptr) return {};
  return impl_->stream->events();
}

std::vector<SparseTokenInfo> Model::sparse_tokens() const {
  if (impl_->sparse == nullptr) return {};
  return impl_->sparse->tokens();
}

std::vector<MemoryBuffer> Model::memory_buffers(int64_t seq) const {
  TIERLM_CHECK(seq > 0 && seq <= impl_->context, kErrorInvalidArgument, "memory_buffers: seq ", seq,
               " must be in 1..", impl_->context, " (the context length)");
  return assign_buffers(impl_->package, seq, impl_->context, impl_->max_batch).buffers;
}

}  // namespace tierlm
