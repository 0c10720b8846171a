// The fused attention driver: it cuts the work into (KV head, query block, key split) items,
// runs them on the pool and merges split partial softmax states; and the KV cache's row format
// (f32, f16, bf16, q8_0 along head_dim) with the store that appends to it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernels_impl.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace tierlm {

namespace {

// Query rows per item (queries x heads of a group) the tile bodies are tuned for.
constexpr size_t kAttentionRows = 64;
// Below this many (KV head, query block) items, the key range is split so that every thread
// has work even for one head (decode); each split keeps at least kMinSplitKeys keys.
constexpr size_t kAttentionTargetItems = 32;
constexpr size_t kMinSplitKeys = 256;
// Scratch slots: each thread works through a slot at a time. A fixed count (not the pool size)
// keeps the workspace valid when the thread count changes after it was sized; at most this
// many threads share one attention call.
constexpr size_t kAttentionSlots = 32;

size_t align16(size_t floats) { return (floats + 15) / 16 * 16; }

struct AttentionPlan {
  size_t group = 1;
  size_t q_block = 1;
  size_t n_qblocks = 1;
  size_t n_splits = 1;
  size_t rows = 1;  // query rows per item
  size_t slots = 1;
  size_t slot_floats = 0;     // acc + m + l + tile scratch
  size_t partial_floats = 0;  // per split item: acc + m + l
  size_t bytes = 0;
};

AttentionPlan attention_plan(const AttentionShape& s) {
  AttentionPlan p;
  p.group = s.n_heads / s.n_kv_heads;
  p.q_block = std::max<size_t>(1, std::min(s.n_q, kAttentionRows / p.group));
  p.n_qblocks = (s.n_q + p.q_block - 1) / p.q_block;
  p.rows = p.q_block * p.group;
  const size_t base_items = s.n_kv_heads * p.n_qblocks;
  if (base_items < kAttentionTargetItems) {
    const size_t by_keys = std::max<size_t>(1, (s.q_pos0 + s.n_q) / kMinSplitKeys);
    const size_t by_items = (kAttentionTargetItems + base_items - 1) / base_items;
    p.n_splits = std::min(by_keys, by_items);
  }
  p.slots = kAttentionSlots;
  const size_t d = s.head_dim;
  p.slot_floats =
      align16(p.rows * d) + 2 * align16(p.rows) + detail::attention_scratch_floats(p.rows, d);
  p.partial_floats = align16(p.rows * d) + 2 * align16(p.rows);
  // Split partial states: fewer than 2 * kAttentionTargetItems items ever split, and reserving
  // them whether or not this shape splits keeps the size independent of kv_len and growing
  // with n_q, so the size for the largest step covers every smaller one.
  p.bytes =
      64 + sizeof(float) * (p.slots * p.slot_floats + 2 * kAttentionTargetItems * p.partial_floats);
  return p;
}

void check_attention_shape(const AttentionShape& s) {
  TIERLM_CHECK(s.n_heads > 0 && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0,
               kErrorInvalidArgument, "attention: n_heads ", s.n_heads,
               " must be a positive multiple of n_kv_heads ", s.n_kv_heads);
  TIERLM_CHECK(s.head_dim > 0, kErrorInvalidArgument, "attention: head_dim is 0");
  kernel_kv_row_bytes(s.kv_dtype, s.head_dim);
  TIERLM_CHECK(s.kv_len <= s.kv_capacity, kErrorInvalidArgument, "attention: kv_len ", s.kv_len,
               " exceeds kv_capacity ", s.kv_capacity);
  TIERLM_CHECK(s.q_pos0 + s.n_q <= s.kv_len, kErrorInvalidArgument, "attention: queries at ",
               s.q_pos0, "..", s.q_pos0 + s.n_q, " need their keys in the cache, but kv_len is ",
               s.kv_len, " (append this step's keys before attending)");
}

void check_kv_layout(const KvLayout& kv) {
  TIERLM_CHECK(kv.blocks != nullptr && kv.block_tokens > 0, kErrorInvalidArgument,
               "attention: the KV layout has no blocks (blocks is null or block_tokens is 0)");
}

detail::KvHeadRows head_rows(const KvLayout& kv, size_t offset, size_t head,
                             const AttentionShape& s) {
  detail::KvHeadRows r;
  r.blocks = kv.blocks;
  r.block_tokens = kv.block_tokens;
  r.row_bytes = kernel_kv_row_bytes(s.kv_dtype, s.head_dim);
  r.offset = offset + head * kv.block_tokens * r.row_bytes;
  r.dtype = s.kv_dtype;
  return r;
}

// ggml's quantize_row_q8_0_ref for one row of n elements into whole blocks (the last padded
// with zeros).
void quantize_row_q8_0(const float* x, size_t n, detail::BlockQ8_0* out) {
  for (size_t b = 0; b * detail::kBlock32 < n; ++b) {
    const size_t len = std::min(detail::kBlock32, n - b * detail::kBlock32);
    const float* xb = x + b * detail::kBlock32;
    float amax = 0.0f;
    for (size_t j = 0; j < len; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = detail::f32_to_f16(d);
    for (size_t j = 0; j < detail::kBlock32; ++j)
      out[b].qs[j] = j < len ? static_cast<int8_t>(std::round(xb[j] * id)) : 0;
  }
}

void store_row(const float* x, size_t n, DType dtype, uint8_t* row) {
  switch (dtype) {
    case DType::kDTypeF32:
      std::memcpy(row, x, n * sizeof(float));
      return;
    case DType::kDTypeF16:
      for (size_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(row)[i] = detail::f32_to_f16(x[i]);
      return;
    case DType::kDTypeBF16:
      for (size_t i = 0; i < n; ++i)
        reinterpret_cast<uint16_t*>(row)[i] = detail::f32_to_bf16(x[i]);
      return;
    default:  // q8_0: kernel_kv_row_bytes refused every other type
      return quantize_row_q8_0(x, n, reinterpret_cast<detail::BlockQ8_0*>(row));
  }
}

}  // namespace

size_t kernel_kv_row_bytes(DType kv_dtype, size_t head_dim) {
  switch (kv_dtype) {
    case DType::kDTypeF32:
    case DType::kDTypeF16:
    case DType::kDTypeBF16:
      return head_dim * dtype_size(kv_dtype);
    case DType::kDTypeQ8_0:
      return (head_dim + detail::kBlock32 - 1) / detail::kBlock32 * sizeof(detail::BlockQ8_0);
    default:
      break;
  }
  TIERLM_FAIL(kErrorInvalidArgument, 0, "kv_dtype ", dtype_name(kv_dtype),
              " is not a KV cache type (use f16, bf16, f32 or q8_0)");
}

void kernel_kv_store(const float* k, const float* v, size_t src_stride, size_t n, size_t pos,
                     const KvLayout& kv, const AttentionShape& shape) {
  const size_t row_bytes = kernel_kv_row_bytes(shape.kv_dtype, shape.head_dim);
  check_kv_layout(kv);
  TIERLM_CHECK(pos + n <= shape.kv_capacity, kErrorInvalidArgument, "KV store: positions ", pos,
               "..", pos + n, " exceed kv_capacity ", shape.kv_capacity);
  const size_t d = shape.head_dim;
  for (size_t i = 0; i < n; ++i) {
    const size_t t = pos + i;
    auto* block = static_cast<uint8_t*>(kv.blocks[t / kv.block_tokens]);
    const size_t at = (t % kv.block_tokens) * row_bytes;
    for (size_t h = 0; h < shape.n_kv_heads; ++h) {
      const size_t head = h * kv.block_tokens * row_bytes;
      store_row(k + i * src_stride + h * d, d, shape.kv_dtype, block + kv.k_offset + head + at);
      store_row(v + i * src_stride + h * d, d, shape.kv_dtype, block + kv.v_offset + head + at);
    }
  }
}

void kernel_kv_shift(const KvLayout& kv, const AttentionShape& shape, size_t from, size_t to,
                     size_t n, const float* inv_freq) {
  constexpr size_t kMaxHalf = 1024;
  const size_t d = shape.head_dim;
  const size_t row_bytes = kernel_kv_row_bytes(shape.kv_dtype, d);
  check_kv_layout(kv);
  TIERLM_CHECK(to < from && from + n <= shape.kv_capacity && d % 2 == 0 && d / 2 <= kMaxHalf,
               kErrorInvalidArgument, "KV shift: tokens ", from, "..", from + n, " to ", to,
               " (capacity ", shape.kv_capacity, ", head_dim ", d, ")");
  alignas(64) float cos[kMaxHalf], sin[kMaxHalf];
  const float delta = -static_cast<float>(from - to);
  for (size_t i = 0; i < d / 2; ++i) {
    cos[i] = std::cos(delta * inv_freq[i]);
    sin[i] = std::sin(delta * inv_freq[i]);
  }
  const detail::KernelTable& k = detail::kernels_current();
  auto row = [&](size_t t, size_t offset, size_t h) {
    return static_cast<uint8_t*>(kv.blocks[t / kv.block_tokens]) + offset +
           (h * kv.block_tokens + t % kv.block_tokens) * row_bytes;
  };
  // Heads on the pool: their rows are apart, and each head's tokens move in order (the ranges
  // may overlap: a row is read before the token moving onto it is written).
  auto heads = [&](size_t h0, size_t h1) {
    alignas(64) float key[2 * kMaxHalf];
    for (size_t h = h0; h < h1; ++h)
      for (size_t i = 0; i < n; ++i) {
        const uint8_t* src = row(from + i, kv.k_offset, h);
        if (shape.kv_dtype == DType::kDTypeQ8_0) {
          for (size_t c = 0; c < d; ++c) key[c] = detail::kv_element(src, shape.kv_dtype, c);
        } else {
          k.convert(src, shape.kv_dtype, key, d);
        }
        k.rope(key, cos, sin, 1, d);
        store_row(key, d, shape.kv_dtype, row(to + i, kv.k_offset, h));
        std::memmove(row(to + i, kv.v_offset, h), row(from + i, kv.v_offset, h), row_bytes);
      }
  };
  // A few rows (a scored policy's scattered runs) are not worth waking the pool for.
  constexpr size_t kMinPoolRows = 256;
  if (n * shape.n_kv_heads < kMinPoolRows) {
    heads(0, shape.n_kv_heads);
  } else {
    parallel_for(shape.n_kv_heads, [&](size_t h0, size_t h1) { heads(h0, h1); });
  }
}

size_t kernel_attention_workspace(const AttentionShape& shape) {
  check_attention_shape(shape);
  return attention_plan(shape).bytes;
}

void kernel_attention(const float* q, const KvLayout& kv, float* out, const AttentionShape& shape,
                      float scale, void* workspace, float* lse) {
  check_attention_shape(shape);
  if (shape.n_q == 0) return;
  TIERLM_CHECK(workspace != nullptr, kErrorInvalidArgument,
               "attention: workspace is null (size it with kernel_attention_workspace)");
  check_kv_layout(kv);
  const AttentionPlan p = attention_plan(shape);
  const detail::KernelTable& k = detail::kernels_current();
  const size_t d = shape.head_dim;
  const size_t q_stride = shape.n_heads * d;
  const size_t n_items = shape.n_kv_heads * p.n_qblocks * p.n_splits;

  auto* base =
      reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(workspace) + 63) & ~uintptr_t{63});
  float* slots = base;
  float* partials = base + p.slots * p.slot_floats;

  // Row r of a (head, query block) item: its softmax normalizer log(sum exp) = m + log l.
  auto put_lse = [&](size_t head, size_t i0, size_t r, float m, float l) {
    if (lse != nullptr)
      lse[(i0 + r / p.group) * shape.n_heads + head * p.group + r % p.group] = m + std::log(l);
  };
  // Writes out rows = acc / l for the item's queries.
  auto finish = [&](size_t head, size_t i0, size_t nq, const float* acc, const float* m,
                    const float* l) {
    for (size_t r = 0; r < nq * p.group; ++r) {
      const size_t qi = i0 + r / p.group;
      float* o = out + qi * q_stride + (head * p.group + r % p.group) * d;
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      for (size_t c = 0; c < d; ++c) o[c] = acc[r * d + c] * inv;
      put_lse(head, i0, r, m[r], l[r]);
    }
  };

  // Merges the split states of one (head, query block): rescale to the common max. The
  // thread finishing a group's last split runs it, in split order, so results do not depend
  // on the thread count.
  auto merge = [&](size_t g) {
    const size_t head = g / p.n_qblocks;
    const size_t block = p.n_qblocks - 1 - g % p.n_qblocks;
    const size_t i0 = block * p.q_block;
    const size_t nq = std::min(p.q_block, shape.n_q - i0);
    const float* first = partials + g * p.n_splits * p.partial_floats;
    for (size_t r = 0; r < nq * p.group; ++r) {
      float m = -std::numeric_limits<float>::infinity();
      for (size_t s = 0; s < p.n_splits; ++s)
        m = std::max(m, first[s * p.partial_floats + align16(p.rows * d) + r]);
      const size_t qi = i0 + r / p.group;
      float* o = out + qi * q_stride + (head * p.group + r % p.group) * d;
      std::fill(o, o + d, 0.0f);
      float l = 0.0f;
      for (size_t s = 0; s < p.n_splits; ++s) {
        const float* st = first + s * p.partial_floats;
        const float ms = st[align16(p.rows * d) + r];
        if (ms == -std::numeric_limits<float>::infinity()) continue;
        const float w = std::exp(ms - m);
        l += w * st[align16(p.rows * d) + align16(p.rows) + r];
        k.add_scaled(o, st + r * d, w, d);
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      for (size_t c = 0; c < d; ++c) o[c] *= inv;
      put_lse(head, i0, r, m, l);
    }
  };
  // Fewer than kAttentionTargetItems groups whenever the key range is split.
  std::atomic<size_t> splits_done[kAttentionTargetItems];
  for (auto& c : splits_done) c.store(0, std::memory_order_relaxed);

  std::atomic<size_t> next{0};
  parallel_for(std::min(p.slots, n_items), [&](size_t s0, size_t s1) {
    for (size_t slot = s0; slot < s1; ++slot) {
      float* scratch = slots + slot * p.slot_floats;
      for (size_t item = next.fetch_add(1); item < n_items; item = next.fetch_add(1)) {
        // Head by head, so consecutive items (on both threads) reuse one head's K/V from cache;
        // within a head the last query blocks first: under the causal mask they see the most
        // keys, and the small blocks fill in at the end.
        const size_t split = item % p.n_splits;
        const size_t rest = item / p.n_splits;
        const size_t head = rest / p.n_qblocks;
        const size_t block = p.n_qblocks - 1 - rest % p.n_qblocks;
        const size_t i0 = block * p.q_block;
        const size_t nq = std::min(p.q_block, shape.n_q - i0);
        const size_t keys = shape.q_pos0 + i0 + nq;
        detail::AttentionTile t;
        t.q = q + i0 * q_stride + head * p.group * d;
        t.q_stride = q_stride;
        t.group = p.group;
        t.n_queries = nq;
        t.q_pos = shape.q_pos0 + i0;
        t.k = head_rows(kv, kv.k_offset, head, shape);
        t.v = head_rows(kv, kv.v_offset, head, shape);
        t.head_dim = d;
        t.key_begin = keys * split / p.n_splits;
        t.key_end = keys * (split + 1) / p.n_splits;
        t.scale = scale;
        float* state = p.n_splits > 1 ? partials + item * p.partial_floats : scratch;
        t.acc = state;
        t.m = state + align16(p.rows * d);
        t.l = t.m + align16(p.rows);
        t.scratch = p.n_splits > 1 ? scratch : t.l + align16(p.rows);
        k.attention(t);
        if (p.n_splits == 1)
          finish(head, i0, nq, t.acc, t.m, t.l);
        else if (splits_done[rest].fetch_add(1, std::memory_order_acq_rel) + 1 == p.n_splits)
          merge(rest);
      }
    }
  });
}

void kernel_attention_mass(const float* q, const KvLayout& kv, const AttentionShape& shape,
                           float scale, const float* lse, float* mass) {
  constexpr size_t kMaxHeadDim = 2048;
  check_attention_shape(shape);
  check_kv_layout(kv);
  const size_t d = shape.head_dim;
  TIERLM_CHECK(d <= kMaxHeadDim && lse != nullptr && mass != nullptr, kErrorInvalidArgument,
               "attention mass: head_dim ", d, " (at most ", kMaxHeadDim,
               ") and non-null lse and mass are needed");
  const size_t group = shape.n_heads / shape.n_kv_heads;
  const size_t q_stride = shape.n_heads * d;
  const size_t keys = shape.q_pos0 + shape.n_q;
  // Threads own key ranges, so each mass[j] has one writer; per key, its row is widened once
  // and dotted with every query that sees it.
  parallel_for(keys, [&](size_t j0, size_t j1) {
    alignas(64) float key[kMaxHeadDim];
    for (size_t j = j0; j < j1; ++j) {
      const size_t first = j > shape.q_pos0 ? j - shape.q_pos0 : 0;  // causal: queries >= j
      float sum = 0.0f;
      for (size_t h = 0; h < shape.n_kv_heads; ++h) {
        const detail::KvHeadRows rows = head_rows(kv, kv.k_offset, h, shape);
        const uint8_t* row = rows.row(j);
        for (size_t c = 0; c < d; ++c) key[c] = detail::kv_element(row, shape.kv_dtype, c);
        for (size_t i = first; i < shape.n_q; ++i)
          for (size_t g = 0; g < group; ++g) {
            const size_t head = h * group + g;
            const float* qv = q + i * q_stride + head * d;
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            size_t c = 0;
            for (; c + 4 <= d; c += 4)
              for (size_t u = 0; u < 4; ++u) s[u] += qv[c + u] * key[c + u];
            for (; c < d; ++c) s[0] += qv[c] * key[c];
            const float score = (s[0] + s[1] + s[2] + s[3]) * scale;
            sum += std::exp(score - lse[i * shape.n_heads + head]);
          }
      }
      mass[j] += sum;
    }
  });
}

}  // namespace tierlm
