// Resolving graph.json's ops against the package, the weight store and the arena: the checks
// that a tensor's shape and the widths fit the op, and f32 copies where a kernel needs one
// dtype and the package stores two.
#include "model/op_resolve.hpp"

#include <cmath>

#include "moe/moe_graph.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

int64_t op_head_dim(const GraphOp& op, const ModelConfig& config) {
  return op.head_dim > 0 ? op.head_dim : config.head_dim;
}

// An f32 copy of a small tensor (a norm's weight, a bias), made at load through the backend.
std::vector<float> to_f32(Backend& backend, const void* data, DType dtype, size_t n) {
  std::vector<float> out(n);
  const int32_t zero = 0;
  backend.embedding(data, dtype, &zero, 1, n, out.data());  // row 0 of a one-row table
  return out;
}

// Marks each sparse FFN's attention input: the layer's first norm over the FFN's width that an
// attention op follows before the FFN (ExecOp::sparse_ahead).
void mark_sparse_ahead(std::vector<ExecOp>& ops) {
  for (size_t i = 0; i < ops.size(); ++i) {
    const ExecOp& ffn = ops[i];
    if (ffn.sparse < 0 || ffn.sparse_copy) continue;
    size_t first = i;
    while (first > 0 && ops[first - 1].layer == ffn.layer) --first;
    ExecOp* norm = nullptr;
    for (size_t j = first; j < i; ++j) {
      const ExecOp& op = ops[j];
      // (an rmsnorm with a head_dim normalises each head apart: q/k norms, not the stream's)
      const bool row_norm = (op.kind == OpKind::kOpLayerNorm ||
                             (op.kind == OpKind::kOpRmsNorm && op.shape.head_dim == 0)) &&
                            op.width == ffn.width;
      if (norm == nullptr && row_norm) norm = &ops[j];
      if (norm != nullptr && op.kind == OpKind::kOpAttention) {
        norm->sparse_ahead = ffn.sparse;
        break;
      }
    }
  }
}

}  // namespace

std::string graph_weight_name(const Package& package, const GraphOp& op) {
  if (op.kind == OpKind::kOpLmHead && package.find_tensor(op.weight) == nullptr &&
      package.config.tie_embeddings) {
    return "embed.weight";
  }
  return op.weight;
}

AttentionShape attention_shape(const GraphOp& op, const ModelConfig& config, int64_t context) {
  AttentionShape s;
  s.n_heads = static_cast<size_t>(op.heads);
  s.n_kv_heads = static_cast<size_t>(op.kv_heads);
  s.head_dim = static_cast<size_t>(op_head_dim(op, config));
  s.kv_capacity = static_cast<size_t>(context);
  return s;
}

std::vector<KvLayerShape> kv_layer_shapes(const Package& package) {
  std::vector<KvLayerShape> layers;
  for (const GraphOp& op : package.graph.ops) {
    if (op.kind != OpKind::kOpAttention) continue;
    layers.push_back(
        {static_cast<size_t>(op.kv_heads), static_cast<size_t>(op_head_dim(op, package.config))});
  }
  return layers;
}

ResolvedOps ops_resolve(const Package& package, const BufferAssignment& assignment,
                        const MemoryPlan& plan, char* arena, WeightStore& weights, Backend& backend,
                        const SparseFfnPlan* sparse_plan, const ChannelPlan* channel_plan,
                        int64_t context) {
  const Package& p = package;
  const ModelConfig& c = p.config;
  ResolvedOps r;
  auto buffer_ptr = [&](int index) -> float* {
    return index < 0 ? nullptr : reinterpret_cast<float*>(arena + plan.buffers[index].offset);
  };
  int kv_layers = 0;
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
    SparseOpRole sparse_role = SparseOpRole::kSparseOpNone;
    const int sparse_layer = sparse_plan ? sparse_plan->layer_of_op(i, &sparse_role) : -1;
    if (sparse_layer >= 0) {
      if (sparse_role == SparseOpRole::kSparseOpDrop) continue;
      const SparseLayerPlan& sl = sparse_plan->layers[sparse_layer];
      op.sparse = sparse_layer;
      op.width = static_cast<int64_t>(sl.dim);  // the FFN's result, [rows, dim]
      if (sparse_role == SparseOpRole::kSparseOpCompute) {
        auto index = [&](const std::string& name) {
          return name.empty() ? -1 : weights.index(name);
        };
        op.bias = index(sl.up_bias);
        op.sparse_gate_bias = index(sl.gate_bias);
        op.sparse_down_bias = index(sl.down_bias);
      } else {
        op.sparse_copy = true;
      }
      r.ops.push_back(op);
      continue;
    }
    size_t channel_index = 0;
    const int site = channel_plan ? channel_plan->site_of_op(i, &channel_index) : -1;
    if (site >= 0) {
      const ChannelSiteOp& so = channel_plan->sites[static_cast<size_t>(site)].ops[channel_index];
      TIERLM_CHECK(op.width == static_cast<int64_t>(so.out), kErrorCorrupt, where, ": width ",
                   op.width, " but its channel file holds ", so.out, " outputs");
      op.channel = site;
      op.channel_index = channel_index;
      op.bias = so.bias.empty() ? -1 : weights.index(so.bias);
      r.ops.push_back(op);
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
      op.weight = weights.index(graph_weight_name(p, g));
      op.dtype = weights.info(op.weight).dtype;
    }
    if (!g.bias.empty()) op.bias = weights.index(g.bias);
    const TensorInfo* wi = op.weight >= 0 ? &weights.info(op.weight) : nullptr;
    const TensorInfo* bi = op.bias >= 0 ? &weights.info(op.bias) : nullptr;
    auto need_shape = [&](const TensorInfo* t, std::vector<int64_t> shape) {
      TIERLM_CHECK(t != nullptr && t->shape == shape, kErrorCorrupt, where, ": tensor `",
                   t ? t->name : std::string("?"), "` has the wrong shape for its values");
    };
    auto need_unquantized = [&](const TensorInfo* t) {
      TIERLM_CHECK(!dtype_is_quantized(t->dtype), kErrorUnsupported, where, ": tensor `", t->name,
                   "` is ", dtype_name(t->dtype),
                   "; norm weights must be f32, f16 or bf16 (keep them unquantized at export)");
    };
    auto f32_copy = [&](int index, DType dtype) {
      r.converted.push_back(to_f32(backend, weights.data(index), dtype, op.width));
      return r.converted.back().data();
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
        // The kernel adds the offset to 32-bit positions: it must fit beside the context.
        TIERLM_CHECK(g.offset >= 0 && g.offset <= INT32_MAX - context, kErrorCorrupt, where,
                     ": position offset ", g.offset, " is outside 0..", INT32_MAX - context);
        TIERLM_CHECK(wi->shape[0] >= context + g.offset, kErrorCorrupt, where,
                     ": position table has ", wi->shape[0], " rows, the context needs ",
                     context + g.offset);
        need_inputs(1);
        op.offset = g.offset;
        break;
      case OpKind::kOpRmsNorm:
        need_inputs(1);
        TIERLM_CHECK(g.head_dim >= 0 && g.head_dim <= op.width &&
                         (g.head_dim == 0 || op.width % g.head_dim == 0),
                     kErrorCorrupt, where, ": head_dim ", g.head_dim, " does not divide width ",
                     op.width);
        op.shape.head_dim = static_cast<size_t>(g.head_dim);
        need_shape(wi, {g.head_dim > 0 ? g.head_dim : op.width});
        need_unquantized(wi);
        break;
      case OpKind::kOpLayerNorm:
        need_inputs(1);
        need_shape(wi, {op.width});
        need_shape(bi, {op.width});
        need_unquantized(wi);
        need_unquantized(bi);
        if (bi->dtype != wi->dtype) {
          op.norm_f32 = f32_copy(op.weight, wi->dtype);
          op.normb_f32 = f32_copy(op.bias, bi->dtype);
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
            if (bi->dtype != DType::kDTypeF32) op.bias_f32 = f32_copy(op.bias, bi->dtype);
          }
        }
        break;
      case OpKind::kOpRope: {
        need_inputs(1);
        const int64_t heads = g.heads;
        TIERLM_CHECK(heads > 0 && heads <= op.width && op.width % heads == 0, kErrorCorrupt, where,
                     ": width ", op.width, " is not a multiple of heads ", heads);
        op.shape.n_heads = static_cast<size_t>(heads);
        op.shape.head_dim = static_cast<size_t>(op.width / heads);
        TIERLM_CHECK(c.rope_inv_freq.size() * 2 == op.shape.head_dim, kErrorCorrupt, where,
                     ": config.rope_inv_freq has ", c.rope_inv_freq.size(), " entries, head_dim ",
                     op.shape.head_dim, " needs half as many");
        break;
      }
      case OpKind::kOpAttention: {
        need_inputs(3);
        const int64_t head_dim = op_head_dim(g, c);
        // Each factor is at most a width (2^24), so the products below cannot overflow.
        TIERLM_CHECK(g.heads > 0 && g.kv_heads > 0 && g.heads % g.kv_heads == 0 &&
                         g.heads <= op.width && head_dim > 0 && head_dim <= op.width,
                     kErrorCorrupt, where, ": heads ", g.heads, ", kv_heads ", g.kv_heads,
                     " and head_dim ", head_dim, " do not fit width ", op.width);
        const int64_t qw = p.graph.width(g.inputs[0]);
        const int64_t kw = p.graph.width(g.inputs[1]);
        const int64_t vw = p.graph.width(g.inputs[2]);
        TIERLM_CHECK(
            qw == g.heads * head_dim && kw == g.kv_heads * head_dim && vw == kw && op.width == qw,
            kErrorCorrupt, where, ": q/k/v/out widths ", qw, "/", kw, "/", vw, "/", op.width,
            " do not match heads ", g.heads, ", kv_heads ", g.kv_heads, ", head_dim ", head_dim);
        op.shape = attention_shape(g, c, context);
        op.scale = g.scale > 0 ? static_cast<float>(g.scale)
                               : 1.0f / std::sqrt(static_cast<float>(head_dim));
        op.kv = kv_layers++;
        break;
      }
      case OpKind::kOpAdd:
      case OpKind::kOpSiluMul:
        need_inputs(2);
        TIERLM_CHECK(p.graph.width(g.inputs[1]) == op.width && op.in_width == op.width,
                     kErrorCorrupt, where, ": inputs differ in width");
        break;
      case OpKind::kOpMoe:
        need_inputs(1);
        op.moe = static_cast<int>(r.moe.size());
        r.moe.push_back(moe_shape(p, g, i));
        break;
      case OpKind::kOpSigmoidGate:
        need_inputs(2);
        need_shape(wi, {1, op.in_width});
        TIERLM_CHECK(p.graph.width(g.inputs[1]) == op.width, kErrorCorrupt, where,
                     ": the gated input and the output differ in width");
        break;
      case OpKind::kOpRelu:
      case OpKind::kOpGelu:
        need_inputs(1);
        TIERLM_CHECK(op.in_width == op.width, kErrorCorrupt, where, ": input and output differ");
        break;
    }
    r.ops.push_back(op);
  }
  mark_sparse_ahead(r.ops);
  r.logits = buffer_ptr(assignment.output);
  TIERLM_CHECK(p.graph.width(p.graph.output) == c.vocab_size, kErrorCorrupt,
               "graph.json: the output \"", p.graph.output, "\" has width ",
               p.graph.width(p.graph.output), ", vocab_size is ", c.vocab_size);
  TIERLM_CHECK(
      !r.ops.empty() && r.ops.back().kind == OpKind::kOpLmHead && r.ops.back().out == r.logits,
      kErrorCorrupt, "graph.json: the last op must be lm_head writing the output");
  return r;
}

}  // namespace tierlm::detail
