// Op resolution: each graph op becomes an ExecOp with its weights (store indices), arena
// pointers, shapes and KV layer, checked against the package once at load, so the
// interpreter runs without lookups or checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.hpp"
#include "model/exec_buffers.hpp"
#include "model/kv_cache.hpp"
#include "moe/moe_ffn.hpp"
#include "sparse/channel_plan.hpp"
#include "sparse/sparse_ffn_layer.hpp"
#include "tierlm/model/package.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

// One graph op resolved to pointers and sizes.
struct ExecOp {
  OpKind kind = OpKind::kOpAdd;
  int layer = -1;
  size_t index = 0;  // in graph.json
  float* in[3] = {nullptr, nullptr, nullptr};
  float* out = nullptr;
  void* workspace = nullptr;
  int64_t width = 0;  // output width
  int64_t in_width = 0;
  int weight = -1;  // weight store indices (-1: none)
  int bias = -1;
  DType dtype = DType::kDTypeF32;
  bool bias_apart = false;          // linear: bias dtype differs, added after the product
  const float* bias_f32 = nullptr;  // ... from this f32 copy (nullptr: the bias is f32)
  const float* norm_f32 = nullptr;  // layernorm: weight and bias as f32 (dtypes differ)
  const float* normb_f32 = nullptr;
  float eps = 1e-5f;
  AttentionShape shape;  // rope: n_heads, head_dim; attention: heads and kv_capacity;
                         // rmsnorm: head_dim when it normalises each head apart (else 0)
  float scale = 1.0f;
  int kv = -1;         // attention: layer in the KV cache
  int moe = -1;        // moe: index in ResolvedOps::moe (and the ExpertProvider's moe number)
  int64_t offset = 0;  // position embedding: index of position 0 in the table
  // Sparse FFN (ModelOptions::sparse): the layer's index in the sparse plan; the up op runs
  // the whole FFN into its own buffer, the down op copies that out (relu is dropped).
  int sparse = -1;
  bool sparse_copy = false;
  int sparse_gate_bias = -1;
  int sparse_down_bias = -1;
  // On a layer's attention input norm: the sparse plan index of the layer's FFN, whose rows
  // are read ahead from this norm's output (decode) while attention computes; -1 for none.
  int sparse_ahead = -1;
  // Input-channel sparsity: the op's site in the channel plan and its index among the site's
  // linears; index 0 runs the whole site, every one copies out its part.
  int channel = -1;
  size_t channel_index = 0;
};

struct ResolvedOps {
  std::vector<ExecOp> ops;
  std::vector<std::vector<float>> converted;  // f32 copies of small tensors the ops point at
  std::vector<MoeShape> moe;                  // of each moe op, in graph order
  float* logits = nullptr;                    // the graph output in the arena
};

// The tensor an op reads (lm_head falls back to embed.weight when the embeddings are tied).
std::string graph_weight_name(const Package& package, const GraphOp& op);
// An attention op's heads, KV heads and head dim (config.head_dim when the op has none), for
// a cache of `context` tokens.
AttentionShape attention_shape(const GraphOp& op, const ModelConfig& config, int64_t context);
// The KV cache's layers: one per attention op, in graph order (ExecOp::kv indexes them).
std::vector<KvLayerShape> kv_layer_shapes(const Package& package);

// Resolves package.graph for an arena at `arena` placed by `plan`. sparse_plan is null unless
// the FFNs run sparse, channel_plan unless the linears run input-channel sparse. Throws
// kErrorCorrupt naming the op (graph.json index and kind) and the tensor or width that does not
// fit.
ResolvedOps ops_resolve(const Package& package, const BufferAssignment& assignment,
                        const MemoryPlan& plan, char* arena, WeightStore& weights, Backend& backend,
                        const SparseFfnPlan* sparse_plan, const ChannelPlan* channel_plan,
                        int64_t context);

}  // namespace tierlm::detail
