// The KV cache: keys and values of every attention layer for `slots` sequences of up to
// `capacity` tokens each, in one host-tier buffer, and how many tokens each sequence holds.
// Callers address a (layer, slot) through view(); a later issue makes it paged and tiered
// behind this interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "tierlm/memory/tier.hpp"

namespace tierlm::detail {

// One attention layer's cache shape.
struct KvLayerShape {
  size_t kv_heads = 0;
  size_t head_dim = 0;
};

// One sequence slot of one layer: k and v are [kv_heads, capacity, head_dim] floats, the layout
// kernel_attention reads in place; position p of head h is at (h * capacity + p) * head_dim.
struct KvSlotView {
  float* k = nullptr;
  float* v = nullptr;
  size_t head_stride = 0;  // floats between heads: capacity * head_dim
};

class KvCache {
 public:
  // Bytes a cache of this shape holds, for the budget before loading.
  static uint64_t bytes_needed(std::span<const KvLayerShape> layers, int64_t capacity,
                               int64_t slots);

  // Allocates the cache from the host tier, zeroed, every sequence empty.
  KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots);

  int64_t capacity() const { return capacity_; }
  int64_t slots() const { return static_cast<int64_t>(lengths_.size()); }
  size_t layers() const { return layers_.size(); }
  uint64_t bytes() const { return buffer_.size(); }  // host bytes held

  KvSlotView view(size_t layer, int32_t slot) const;

  // Tokens slot holds; advance appends `tokens` (after their keys and values are written).
  int64_t length(int32_t slot) const { return lengths_[static_cast<size_t>(slot)]; }
  void advance(int32_t slot, int64_t tokens) { lengths_[static_cast<size_t>(slot)] += tokens; }
  void clear(int32_t slot) { lengths_[static_cast<size_t>(slot)] = 0; }
  void clear_all();

 private:
  static uint64_t floats_needed(std::span<const KvLayerShape> layers, int64_t capacity,
                                int64_t slots);

  std::vector<KvLayerShape> layers_;
  std::vector<size_t> layer_offset_;  // floats from the buffer's start to the layer's keys
  int64_t capacity_ = 0;
  std::vector<int64_t> lengths_;
  HostBuffer buffer_;
};

}  // namespace tierlm::detail
