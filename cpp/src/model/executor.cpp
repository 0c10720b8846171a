// The interpreter's loop and what each op kind does with its buffers: kernels through the
// backend, activation copies where an op cannot run in place, the KV append before attention.
#include "model/executor.hpp"

#include <algorithm>
#include <climits>

#include "core/clock.hpp"

namespace tierlm::detail {

Executor::Executor(ResolvedOps ops, Backend& backend, WeightStore& weights, KvCache& kv,
                   SparseFfn* sparse, ChannelSparse* channels, ExpertProvider* experts,
                   const float* rope_inv_freq, int64_t max_rows, int64_t logits_rows,
                   std::unique_ptr<KvEviction> eviction)
    : resolved_(std::move(ops)),
      backend_(backend),
      weights_(weights),
      eviction_(std::move(eviction)),
      kv_(kv),
      sparse_(sparse),
      channels_(channels),
      experts_(experts),
      rope_inv_freq_(rope_inv_freq),
      positions_(static_cast<size_t>(max_rows)),
      shifted_(static_cast<size_t>(max_rows)),
      logits_rows_(logits_rows) {
  if (eviction_ == nullptr) return;
  drops_.reserve(static_cast<size_t>(kv_.capacity()));
  if (eviction_->attention_mass(0) == nullptr) return;
  size_t heads = 0;
  for (const ExecOp& op : resolved_.ops)
    if (op.kind == OpKind::kOpAttention) heads = std::max(heads, op.shape.n_heads);
  lse_.resize(static_cast<size_t>(max_rows) * heads);
}

void Executor::clear(int32_t slot) {
  kv_.clear(slot);
  if (eviction_) eviction_->cleared(slot);
}

void Executor::clear_all() {
  for (int32_t s = 0; s < kv_.slots(); ++s) clear(s);
}

void Executor::share(int32_t from, int32_t to, int64_t tokens) {
  kv_.share(from, to, tokens);
  if (eviction_) eviction_->shared(from, to, tokens);
}

// A full cache: drop a block's worth (or what the step needs) of the tokens the policy picks,
// so eviction (and the compaction it takes) runs once per block of tokens, not every step.
void Executor::make_room(int32_t slot, int64_t n) {
  const int64_t length = kv_.length(slot);
  if (eviction_ == nullptr || length + n <= kv_.capacity()) return;
  const KvPolicy& p = eviction_->policy();
  const int64_t candidates = length - p.sinks - (p.heavy > 0 ? p.window : 0);
  const int64_t drop = std::min(candidates, std::max(length + n - kv_.capacity(), kKvBlockTokens));
  eviction_->select(slot, length, drop, drops_);
  try {
    kv_.evict(slot, drops_, rope_inv_freq_);
  } catch (...) {
    eviction_->cleared(slot);  // a spilled block failed to move: the cache ended the sequence
    throw;
  }
  eviction_->evicted(slot, drops_, length);
}

const float* Executor::run(const ExecBatch& batch) {
  const int64_t n = batch.n;
  kv_.begin_step();
  const bool one = batch.slots == nullptr;
  const int64_t groups = one ? 1 : n;
  auto slot_of = [&](int64_t g) { return one ? batch.slot : batch.slots[g]; };
  const int64_t per_group = one ? n : 1;
  for (int64_t g = 0; g < groups; ++g) make_room(slot_of(g), per_group);
  for (int64_t i = 0; i < n; ++i) {
    positions_[i] =
        static_cast<int32_t>(one ? kv_.length(batch.slot) + i : kv_.length(batch.slots[i]));
  }
  // The cache blocks this step writes, before any op runs.
  for (int64_t g = 0; g < groups; ++g) {
    kv_.prepare(slot_of(g), kv_.length(slot_of(g)) + per_group);
    if (eviction_)
      eviction_->begin_step(slot_of(g), kv_.length(slot_of(g)), batch.tokens + g, per_group);
  }
  // A cache that spills starts reading layer 0's blocks back.
  kv_.stage(one ? std::span<const int32_t>(&batch.slot, 1)
                : std::span<const int32_t>(batch.slots, static_cast<size_t>(n)));
  int layer = INT_MIN;
  for (const ExecOp& op : resolved_.ops) {
    if (op.layer != layer) {
      if (layer != INT_MIN) weights_.end_layer(layer);
      layer = op.layer;
      weights_.begin_layer(layer);
    }
    run_op(op, batch);
    if (op.sparse_ahead >= 0 && n == 1) sparse_->read_ahead_from(op.sparse_ahead, op.out);
    if (op.weight >= 0) weights_.release(op.weight);  // a streaming store reuses its section
  }
  if (layer != INT_MIN) weights_.end_layer(layer);
  if (sparse_) sparse_->end_batch(static_cast<size_t>(n));
  if (channels_) channels_->end_batch(static_cast<size_t>(n));
  attention_tokens_ += static_cast<uint64_t>(n);
  const int64_t vocab = resolved_.ops.back().width;
  for (int64_t g = 0; g < groups; ++g) {
    kv_.advance(slot_of(g), per_group);
    if (eviction_ && eviction_->wants_logits())
      eviction_->last_logits(slot_of(g), kv_.length(slot_of(g)), resolved_.logits + g * vocab);
  }
  return resolved_.logits;
}

void Executor::score_rows(const ExecOp& op, const ExecBatch& batch) {
  const bool sirllm = eviction_ && eviction_->wants_logits();
  if (batch.slots != nullptr || batch.n < 2 || (batch.nll == nullptr && !sirllm)) return;
  LinearShape shape;
  shape.rows = static_cast<size_t>(op.width);
  shape.cols = static_cast<size_t>(op.in_width);
  shape.w_dtype = op.dtype;
  const void* bias = op.bias_apart ? nullptr : weight(op.bias);
  const int64_t pos0 = positions_[0];
  for (int64_t r0 = 0; r0 + 1 < batch.n; r0 += logits_rows_) {
    shape.n = static_cast<size_t>(std::min(logits_rows_, batch.n - 1 - r0));
    backend_.linear(op.in[0] + r0 * op.in_width, weight(op.weight), bias, op.out, shape,
                    op.workspace);
    for (size_t i = 0; i < shape.n; ++i) {
      float* row = op.out + i * shape.rows;
      if (op.bias_apart) {
        backend_.add(row, op.bias_f32 ? op.bias_f32 : static_cast<const float*>(weight(op.bias)),
                     shape.rows);
      }
      const int64_t r = r0 + static_cast<int64_t>(i);
      const float nll = token_nll(row, op.width, batch.tokens[r + 1]);
      if (batch.nll != nullptr) batch.nll[r] = nll;
      if (sirllm) eviction_->token_entropy(batch.slot, pos0 + r + 1, pos0 + batch.n, nll);
    }
  }
}

void Executor::run_op(const ExecOp& op, const ExecBatch& batch) {
  const size_t rows = static_cast<size_t>(batch.n);
  const size_t width = static_cast<size_t>(op.width);
  const size_t elems = rows * width;
  // Ops that run in place on a copy of their input when the planner gave them another buffer.
  auto copy_input = [&] {
    if (op.out != op.in[0]) backend_.copy_rows(op.out, elems, op.in[0], elems, 1, elems);
  };
  if (op.sparse >= 0) {
    if (op.sparse_copy) {
      copy_input();
    } else {
      sparse_->run(op.sparse, op.in[0], rows, static_cast<const float*>(weight(op.bias)),
                   static_cast<const float*>(weight(op.sparse_gate_bias)),
                   static_cast<const float*>(weight(op.sparse_down_bias)), op.out);
    }
    return;
  }
  if (op.channel >= 0) {
    if (op.channel_index == 0) channels_->run(op.channel, op.in[0], rows);
    channels_->copy(op.channel, op.channel_index, rows, static_cast<const float*>(weight(op.bias)),
                    op.out);
    return;
  }
  switch (op.kind) {
    case OpKind::kOpEmbedding:
      if (const void* const* table_rows = weights_.rows(op.weight, batch.tokens, rows)) {
        const int32_t zero = 0;  // each pointer is a one-row table
        for (size_t i = 0; i < rows; ++i) {
          backend_.embedding(table_rows[i], op.dtype, &zero, 1, width, op.out + i * width);
        }
      } else {
        backend_.embedding(weight(op.weight), op.dtype, batch.tokens, rows, width, op.out);
      }
      break;
    case OpKind::kOpPositionEmbedding: {
      for (size_t i = 0; i < rows; ++i) {
        shifted_[i] = positions_[i] + static_cast<int32_t>(op.offset);
      }
      float* rows_f32 = static_cast<float*>(op.workspace);
      backend_.embedding(weight(op.weight), op.dtype, shifted_.data(), rows, width, rows_f32);
      copy_input();
      backend_.add(op.out, rows_f32, elems);
      break;
    }
    case OpKind::kOpRmsNorm: {
      const size_t dim = op.shape.head_dim > 0 ? op.shape.head_dim : width;  // per head
      backend_.rmsnorm(op.in[0], weight(op.weight), op.dtype, op.out, elems / dim, dim, op.eps);
      break;
    }
    case OpKind::kOpLayerNorm:
      if (op.norm_f32 != nullptr) {
        backend_.layernorm(op.in[0], op.norm_f32, op.normb_f32, DType::kDTypeF32, op.out, rows,
                           width, op.eps);
      } else {
        backend_.layernorm(op.in[0], weight(op.weight), weight(op.bias), op.dtype, op.out, rows,
                           width, op.eps);
      }
      break;
    case OpKind::kOpLinear:
    case OpKind::kOpLmHead: {
      if (op.kind == OpKind::kOpLmHead) score_rows(op, batch);
      const float* x = op.in[0];
      LinearShape shape;
      shape.n = rows;
      shape.rows = width;
      shape.cols = static_cast<size_t>(op.in_width);
      shape.w_dtype = op.dtype;
      if (op.kind == OpKind::kOpLmHead && batch.slots == nullptr) {  // last token only
        x += (rows - 1) * shape.cols;
        shape.n = 1;
      }
      const void* bias = op.bias_apart ? nullptr : weight(op.bias);
      const int parts = op.weight >= 0 ? weights_.parts(op.weight) : 1;
      if (parts == 1) {
        backend_.linear(x, weight(op.weight), bias, op.out, shape, op.workspace);
      } else {
        for (int k = 0; k < parts; ++k) {  // streamed in row parts: each as soon as it is read
          const WeightRowPart part = weights_.part(op.weight, k);
          backend_.linear_part(x, part.data, bias, op.out, shape, static_cast<size_t>(part.row0),
                               static_cast<size_t>(part.rows), op.workspace);
          weights_.release_part(op.weight, k);
        }
      }
      if (op.bias_apart) {
        const float* b = op.bias_f32 ? op.bias_f32 : static_cast<const float*>(weight(op.bias));
        for (size_t r = 0; r < shape.n; ++r) backend_.add(op.out + r * width, b, width);
      }
      break;
    }
    case OpKind::kOpRope:
      copy_input();
      backend_.rope(op.out, positions_.data(), rope_inv_freq_, rows, op.shape.n_heads,
                    op.shape.head_dim);
      break;
    case OpKind::kOpAttention:
      attend(op, batch);
      break;
    case OpKind::kOpAdd:
      if (op.out == op.in[0]) {
        backend_.add(op.out, op.in[1], elems);
      } else if (op.out == op.in[1]) {
        backend_.add(op.out, op.in[0], elems);
      } else {
        copy_input();
        backend_.add(op.out, op.in[1], elems);
      }
      break;
    case OpKind::kOpSiluMul:
      backend_.silu_mul(op.in[0], op.in[1], op.out, elems);
      break;
    case OpKind::kOpMoe:
      moe_run(backend_, *experts_, op.moe, resolved_.moe[op.moe],
              op.moe + 1 < static_cast<int>(resolved_.moe.size()) ? &resolved_.moe[op.moe + 1]
                                                                  : nullptr,
              weight(op.weight), op.in[0], rows, op.out, op.workspace);
      break;
    case OpKind::kOpSigmoidGate:
      sigmoid_gate_run(backend_, op.in[0], static_cast<size_t>(op.in_width), weight(op.weight),
                       op.dtype, op.in[1], op.out, rows, width, op.workspace);
      break;
    case OpKind::kOpRelu:
      copy_input();
      backend_.relu(op.out, elems);
      break;
    case OpKind::kOpGelu:
      copy_input();
      backend_.gelu(op.out, elems);
      break;
  }
}

// Rows of one sequence are consecutive positions; a batched decode step has one row per
// sequence, each attending over its own slot's cache. The step's keys and values go into the
// cache first: attention reads them in place.
void Executor::attend(const ExecOp& op, const ExecBatch& batch) {
  const auto t0 = Clock::now();
  const size_t rows = static_cast<size_t>(batch.n);
  const size_t head_dim = op.shape.head_dim;
  const size_t kv_width = op.shape.n_kv_heads * head_dim;
  const size_t q_width = op.shape.n_heads * head_dim;
  const size_t groups = batch.slots == nullptr ? 1 : rows;
  const size_t per_group = batch.slots == nullptr ? rows : 1;
  AttentionShape shape = op.shape;
  shape.kv_dtype = kv_.dtype();
  kv_.fetch(static_cast<size_t>(op.kv));  // this layer's spilled blocks (a spilling cache)
  for (size_t g = 0; g < groups; ++g) {
    const int32_t slot = batch.slots == nullptr ? batch.slot : batch.slots[g];
    const KvLayout cache = kv_.layout(static_cast<size_t>(op.kv), slot);
    const size_t pos0 = static_cast<size_t>(kv_.length(slot));
    const size_t row0 = g * per_group;
    backend_.kv_store(op.in[1] + row0 * kv_width, op.in[2] + row0 * kv_width, kv_width, per_group,
                      pos0, cache, shape);
    shape.n_q = per_group;
    shape.q_pos0 = pos0;
    shape.kv_len = pos0 + per_group;
    float* mass = eviction_ ? eviction_->attention_mass(slot) : nullptr;
    const float* q = op.in[0] + row0 * q_width;
    backend_.attention(q, cache, op.out + row0 * q_width, shape, op.scale, op.workspace,
                       mass ? lse_.data() : nullptr);
    if (mass) backend_.attention_mass(q, cache, shape, op.scale, lse_.data(), mass);
  }
  kv_.release(static_cast<size_t>(op.kv));
  attention_seconds_ += seconds_since(t0);
}

}  // namespace tierlm::detail
