// Buffer lifetimes and their arena offsets. The names ("<value>@<op>", "<kind>.workspace@<op>")
// are what stored plans refer to, so they stay stable across builds.
#include "model/exec_buffers.hpp"

#include <algorithm>
#include <unordered_map>

#include "model/op_resolve.hpp"
#include "model/package_plans.hpp"
#include "moe/moe_graph.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/planner/planner.hpp"

namespace tierlm::detail {

namespace {

// Ops whose kernels may write their output over one of their inputs.
bool in_place_safe(OpKind kind) {
  switch (kind) {
    case OpKind::kOpAdd:
    case OpKind::kOpRelu:
    case OpKind::kOpGelu:
    case OpKind::kOpRope:
    case OpKind::kOpPositionEmbedding:
    case OpKind::kOpSiluMul:
    case OpKind::kOpSigmoidGate:
      return true;
    default:
      return false;
  }
}

// Workspace bytes of graph op g for its largest step: what the backend plans for its kernel,
// or the executor's own staging (position embedding rows before the add).
uint64_t op_workspace(const Package& package, const Backend& backend, const GraphOp& g, int64_t seq,
                      int64_t context, int64_t batch) {
  const Graph& graph = package.graph;
  switch (g.kind) {
    case OpKind::kOpAttention: {
      AttentionShape s = attention_shape(g, package.config, context);
      s.n_q = static_cast<size_t>(seq);
      s.kv_len = static_cast<size_t>(context);
      s.q_pos0 = static_cast<size_t>(context - seq);
      return backend.attention_workspace(s);
    }
    case OpKind::kOpLinear:
    case OpKind::kOpLmHead: {
      const TensorInfo* w = package.find_tensor(graph_weight_name(package, g));
      if (w == nullptr || w->shape.size() != 2) return 0;  // op resolution names the fault
      LinearShape s;
      s.n = static_cast<size_t>(g.kind == OpKind::kOpLmHead ? batch : seq);
      s.rows = static_cast<size_t>(w->shape[0]);
      s.cols = static_cast<size_t>(w->shape[1]);
      s.w_dtype = w->dtype;
      return backend.linear_workspace(s);
    }
    case OpKind::kOpPositionEmbedding:
      return static_cast<uint64_t>(seq * graph.width(g.output)) * sizeof(float);
    case OpKind::kOpMoe: {
      const auto index = static_cast<size_t>(&g - graph.ops.data());
      return moe_workspace(backend, moe_shape(package, g, index), static_cast<size_t>(seq));
    }
    case OpKind::kOpSigmoidGate: {
      const TensorInfo* w = package.find_tensor(g.weight);
      if (w == nullptr || g.inputs.empty()) return 0;  // op resolution names the fault
      return sigmoid_gate_workspace(backend, static_cast<size_t>(graph.width(g.inputs[0])),
                                    w->dtype, static_cast<size_t>(seq));
    }
    default:
      return 0;
  }
}

std::vector<PlanBuffer> plan_spans(const std::vector<MemoryBuffer>& buffers) {
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

bool is_int_input(const std::string& value) { return value == "tokens" || value == "positions"; }

BufferAssignment buffers_assign(const Package& package, const Backend& backend, int64_t seq,
                                int64_t context, int64_t batch) {
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
    const uint64_t workspace = op_workspace(package, backend, op, seq, context, batch);
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

MemoryPlan buffers_plan(const Package& package, const BufferAssignment& assignment, int64_t seq) {
  MemoryPlan plan;
  plan.seq = seq;
  plan.buffers = assignment.buffers;
  plan.source = "internal";
  bool planned = false;
  const std::vector<int64_t> stored = package_plan_seqs(package.path);
  if (std::find(stored.begin(), stored.end(), seq) != stored.end()) {
    const std::string path = package_plan_path(package.path, seq);
    std::string why;
    if (package_plan_apply(path, plan.buffers, kArenaAlignment, why)) {
      try {
        plan_check(plan_spans(plan.buffers), plan_offsets(plan.buffers), kArenaAlignment);
      } catch (const Error& e) {
        TIERLM_FAIL(kErrorCorrupt, 0, path, ": the plan is invalid (", e.what(),
                    "); plan again with `tierlm plan` or delete the file");
      }
      planned = true;
      plan.source = path;
    } else {
      plan.source = "internal (" + path + " ignored: " + why + ")";
    }
  }
  const std::vector<PlanBuffer> spans = plan_spans(plan.buffers);
  if (!planned) {
    const Plan greedy = plan_greedy(spans, kArenaAlignment);
    for (size_t i = 0; i < plan.buffers.size(); ++i) plan.buffers[i].offset = greedy.offsets[i];
  }
  plan.peak = plan_peak(spans, plan_offsets(plan.buffers));
  plan.lower_bound = plan_lower_bound(spans);
  return plan;
}

}  // namespace tierlm::detail
