// The KV cache's sizing and slot addressing: each slot one block of `capacity` tokens holding
// every layer's keys and values in the cache's row format (kernel_kv_row_bytes).
#include "model/kv_cache.hpp"

#include <algorithm>
#include <cstring>

namespace tierlm::detail {

namespace {

// Bytes of one layer's keys (or values) for one slot.
uint64_t half_layer_bytes(const KvLayerShape& layer, int64_t capacity, DType dtype) {
  return layer.kv_heads * static_cast<uint64_t>(capacity) *
         kernel_kv_row_bytes(dtype, layer.head_dim);
}

uint64_t slot_bytes(std::span<const KvLayerShape> layers, int64_t capacity, DType dtype) {
  uint64_t bytes = 0;
  for (const KvLayerShape& l : layers) bytes += 2 * half_layer_bytes(l, capacity, dtype);
  return bytes;
}

}  // namespace

uint64_t KvCache::bytes_needed(std::span<const KvLayerShape> layers, int64_t capacity,
                               int64_t slots, DType dtype) {
  return static_cast<uint64_t>(slots) * slot_bytes(layers, capacity, dtype);
}

KvCache::KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots,
                 DType dtype)
    : layers_(std::move(layers)),
      dtype_(dtype),
      capacity_(capacity),
      lengths_(static_cast<size_t>(slots), 0) {
  const uint64_t per_slot = slot_bytes(layers_, capacity, dtype);
  buffer_ = host.allocate(std::max<uint64_t>(per_slot * static_cast<uint64_t>(slots), 1));
  std::memset(buffer_.data(), 0, buffer_.size());
  size_t offset = 0;
  for (const KvLayerShape& l : layers_) {
    layer_offset_.push_back(offset);
    offset += half_layer_bytes(l, capacity, dtype);
    value_offset_.push_back(offset);
    offset += half_layer_bytes(l, capacity, dtype);
  }
  for (int64_t s = 0; s < slots; ++s)
    slot_blocks_.push_back(static_cast<uint8_t*>(buffer_.data()) + s * per_slot);
}

KvLayout KvCache::layout(size_t layer, int32_t slot) const {
  KvLayout l;
  l.blocks = slot_blocks_.data() + slot;
  l.block_tokens = static_cast<size_t>(capacity_);
  l.k_offset = layer_offset_[layer];
  l.v_offset = value_offset_[layer];
  return l;
}

void KvCache::clear_all() { std::fill(lengths_.begin(), lengths_.end(), 0); }

}  // namespace tierlm::detail
