// The KV cache's sizing and slot addressing: per layer the keys of every slot, then the values
// of every slot, layers one after another in one buffer.
#include "model/kv_cache.hpp"

#include <algorithm>
#include <cstring>

namespace tierlm::detail {

namespace {

size_t slot_floats(const KvLayerShape& layer, int64_t capacity) {
  return layer.kv_heads * static_cast<size_t>(capacity) * layer.head_dim;
}

}  // namespace

uint64_t KvCache::floats_needed(std::span<const KvLayerShape> layers, int64_t capacity,
                                int64_t slots) {
  uint64_t floats = 0;
  for (const KvLayerShape& l : layers) {
    floats += 2 * static_cast<uint64_t>(slots) * slot_floats(l, capacity);
  }
  return floats;
}

uint64_t KvCache::bytes_needed(std::span<const KvLayerShape> layers, int64_t capacity,
                               int64_t slots) {
  return floats_needed(layers, capacity, slots) * sizeof(float);
}

KvCache::KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots)
    : layers_(std::move(layers)), capacity_(capacity), lengths_(static_cast<size_t>(slots), 0) {
  const uint64_t floats = floats_needed(layers_, capacity, slots);
  buffer_ = host.allocate(std::max<uint64_t>(floats * sizeof(float), 1));
  std::memset(buffer_.data(), 0, buffer_.size());
  size_t offset = 0;
  for (const KvLayerShape& l : layers_) {
    layer_offset_.push_back(offset);
    offset += 2 * static_cast<size_t>(slots) * slot_floats(l, capacity);
  }
}

KvSlotView KvCache::view(size_t layer, int32_t slot) const {
  const KvLayerShape& l = layers_[layer];
  const size_t per_slot = slot_floats(l, capacity_);
  float* keys = static_cast<float*>(buffer_.data()) + layer_offset_[layer];
  KvSlotView v;
  v.k = keys + static_cast<size_t>(slot) * per_slot;
  v.v = keys + lengths_.size() * per_slot + static_cast<size_t>(slot) * per_slot;
  v.head_stride = static_cast<size_t>(capacity_) * l.head_dim;
  return v;
}

void KvCache::clear_all() { std::fill(lengths_.begin(), lengths_.end(), 0); }

}  // namespace tierlm::detail
