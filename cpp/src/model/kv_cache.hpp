// The KV cache: keys and values of every attention layer for `slots` sequences of up to
// `capacity` tokens each, in the cache's dtype (f32, f16, bf16 or q8_0 rows, as the fused
// attention kernel reads them in place), and how many tokens each sequence holds. Callers
// address a (layer, slot) through layout(); a later issue makes it paged and tiered behind
// this interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "tierlm/core/dtype.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm::detail {

// One attention layer's cache shape.
struct KvLayerShape {
  size_t kv_heads = 0;
  size_t head_dim = 0;
};

class KvCache {
 public:
  // Bytes a cache of this shape holds, for the budget before loading.
  static uint64_t bytes_needed(std::span<const KvLayerShape> layers, int64_t capacity,
                               int64_t slots, DType dtype);

  // Allocates the cache from the host tier, zeroed, every sequence empty.
  KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots,
          DType dtype);

  int64_t capacity() const { return capacity_; }
  int64_t slots() const { return static_cast<int64_t>(lengths_.size()); }
  size_t layers() const { return layers_.size(); }
  DType dtype() const { return dtype_; }
  uint64_t bytes() const { return buffer_.size(); }  // host bytes held

  // Where layer's keys and values of slot are, for kernel_attention and kernel_kv_store.
  KvLayout layout(size_t layer, int32_t slot) const;

  // Tokens slot holds; advance appends `tokens` (after their keys and values are written).
  int64_t length(int32_t slot) const { return lengths_[static_cast<size_t>(slot)]; }
  void advance(int32_t slot, int64_t tokens) { lengths_[static_cast<size_t>(slot)] += tokens; }
  void clear(int32_t slot) { lengths_[static_cast<size_t>(slot)] = 0; }
  void clear_all();

 private:
  std::vector<KvLayerShape> layers_;
  DType dtype_;
  // Each slot's cache is one block of `capacity` tokens: per layer its keys
  // [kv_heads, capacity, row], then its values, layers one after another.
  std::vector<size_t> layer_offset_;  // bytes from a slot's block to the layer's keys
  std::vector<size_t> value_offset_;  // ... to the layer's values
  int64_t capacity_ = 0;
  std::vector<int64_t> lengths_;
  HostBuffer buffer_;
  std::vector<void*> slot_blocks_;  // the block of each slot, as KvLayout lists blocks
};

}  // namespace tierlm::detail
