// The paged KV cache's block pool, tables and sharing. A block holds kKvBlockTokens tokens of
// every layer: per layer its keys [kv_heads, block tokens, row], then its values.
#include "model/kv_cache.hpp"

#include <algorithm>
#include <cstring>

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

// A chunk of blocks: big enough that a small model's blocks do not each cost a page, small
// enough that the bytes held follow the length closely.
constexpr uint64_t kChunkTargetBytes = 256 << 10;
constexpr uint64_t kChunkMaxBlocks = 16;

uint64_t half_layer_bytes(const KvLayerShape& layer, DType dtype) {
  return layer.kv_heads * static_cast<uint64_t>(kKvBlockTokens) *
         kernel_kv_row_bytes(dtype, layer.head_dim);
}

uint64_t one_block_bytes(std::span<const KvLayerShape> layers, DType dtype) {
  uint64_t bytes = 0;
  for (const KvLayerShape& l : layers) bytes += 2 * half_layer_bytes(l, dtype);
  return std::max<uint64_t>(bytes, 1);
}

int64_t chunk_blocks(uint64_t block_bytes) {
  return static_cast<int64_t>(
      std::clamp<uint64_t>(kChunkTargetBytes / block_bytes, 1, kChunkMaxBlocks));
}

int64_t blocks_for(int64_t tokens) { return (tokens + kKvBlockTokens - 1) / kKvBlockTokens; }

}  // namespace

uint64_t KvCache::bytes_reserved(std::span<const KvLayerShape> layers, int64_t capacity,
                                 int64_t slots, DType dtype) {
  const uint64_t block = one_block_bytes(layers, dtype);
  const int64_t per_chunk = chunk_blocks(block);
  const int64_t blocks = blocks_for(capacity) + slots - 1;
  const int64_t chunks = (blocks + per_chunk - 1) / per_chunk;
  // Each chunk as the host tier charges it: whole 4 KiB pages.
  const uint64_t chunk = (static_cast<uint64_t>(per_chunk) * block + 4095) / 4096 * 4096;
  return static_cast<uint64_t>(chunks) * chunk;
}

KvCache::KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots,
                 DType dtype, uint64_t reserved)
    : host_(host),
      layers_(std::move(layers)),
      dtype_(dtype),
      capacity_(capacity),
      block_bytes_(one_block_bytes(layers_, dtype)),
      blocks_per_chunk_(chunk_blocks(block_bytes_)),
      lengths_(static_cast<size_t>(slots), 0),
      tables_(static_cast<size_t>(slots)),
      pointers_(static_cast<size_t>(slots)) {
  size_t offset = 0;
  for (const KvLayerShape& l : layers_) {
    key_offset_.push_back(offset);
    offset += half_layer_bytes(l, dtype);
    value_offset_.push_back(offset);
    offset += half_layer_bytes(l, dtype);
  }
  // Reserved once, so that taking and dropping blocks never reallocates a table.
  const size_t per_slot = static_cast<size_t>(blocks_for(capacity));
  for (size_t s = 0; s < tables_.size(); ++s) {
    tables_[s].reserve(per_slot);
    pointers_[s].reserve(per_slot);
  }
  // A chunk is added only when every held one is full, so at most one past the blocks' need.
  const size_t most_chunks =
      (per_slot * tables_.size() + static_cast<size_t>(blocks_per_chunk_) - 1) /
          static_cast<size_t>(blocks_per_chunk_) +
      1;
  chunks_.reserve(most_chunks);
  refs_.reserve(most_chunks * static_cast<size_t>(blocks_per_chunk_));
  free_.reserve(most_chunks * static_cast<size_t>(blocks_per_chunk_));
  const uint64_t chunk_bytes =
      (static_cast<uint64_t>(blocks_per_chunk_) * block_bytes_ + 4095) / 4096 * 4096;
  for (uint64_t held = 0; held < reserved; held += chunk_bytes) {
    add_chunk();
    chunks_.back().reserved = true;
  }
  std::reverse(free_.begin(), free_.end());  // the lowest ids first
}

void KvCache::add_chunk() {
  // A released chunk's index is reused first, so ids stay below the reserved count.
  size_t c = 0;
  while (c < chunks_.size() && chunks_[c].buffer.data() != nullptr) ++c;
  if (c == chunks_.size()) chunks_.emplace_back();
  chunks_[c].buffer = host_.allocate(static_cast<size_t>(blocks_per_chunk_) * block_bytes_);
  held_bytes_ += chunks_[c].buffer.size();
  const size_t ids = chunks_.size() * static_cast<size_t>(blocks_per_chunk_);
  if (refs_.size() < ids) refs_.resize(ids, 0);
  for (int64_t i = blocks_per_chunk_; i-- > 0;)
    free_.push_back(static_cast<int32_t>(static_cast<int64_t>(c) * blocks_per_chunk_ + i));
}

void* KvCache::block_data(int32_t id) const {
  const Chunk& c = chunks_[static_cast<size_t>(id / blocks_per_chunk_)];
  return static_cast<uint8_t*>(c.buffer.data()) +
         static_cast<uint64_t>(id % blocks_per_chunk_) * block_bytes_;
}

int32_t KvCache::take() {
  if (free_.empty()) add_chunk();
  const int32_t id = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(id)] = 1;
  ++chunks_[static_cast<size_t>(id / blocks_per_chunk_)].used;
  ++blocks_used_;
  return id;
}

void KvCache::drop(int32_t id) {
  if (--refs_[static_cast<size_t>(id)] > 0) return;
  --blocks_used_;
  const int64_t c = id / blocks_per_chunk_;
  Chunk& chunk = chunks_[static_cast<size_t>(c)];
  free_.push_back(id);
  if (--chunk.used > 0 || chunk.reserved) return;
  std::erase_if(free_, [&](int32_t f) { return f / blocks_per_chunk_ == c; });
  held_bytes_ -= chunk.buffer.size();
  chunk.buffer = HostBuffer();
}

void KvCache::prepare(int32_t slot, int64_t tokens) {
  auto& table = tables_[static_cast<size_t>(slot)];
  auto& pointers = pointers_[static_cast<size_t>(slot)];
  const int64_t length = lengths_[static_cast<size_t>(slot)];
  const size_t at = static_cast<size_t>(length / kKvBlockTokens);
  if (at < table.size() && refs_[static_cast<size_t>(table[at])] > 1) {
    const int32_t copy = take();
    std::memcpy(block_data(copy), block_data(table[at]), block_bytes_);
    drop(table[at]);
    table[at] = copy;
    pointers[at] = block_data(copy);
  }
  while (static_cast<int64_t>(table.size()) < blocks_for(tokens)) {
    table.push_back(take());
    pointers.push_back(block_data(table.back()));
  }
}

KvLayout KvCache::layout(size_t layer, int32_t slot) const {
  KvLayout l;
  l.blocks = pointers_[static_cast<size_t>(slot)].data();
  l.block_tokens = static_cast<size_t>(kKvBlockTokens);
  l.k_offset = key_offset_[layer];
  l.v_offset = value_offset_[layer];
  return l;
}

void KvCache::clear(int32_t slot) {
  for (int32_t id : tables_[static_cast<size_t>(slot)]) drop(id);
  tables_[static_cast<size_t>(slot)].clear();
  pointers_[static_cast<size_t>(slot)].clear();
  lengths_[static_cast<size_t>(slot)] = 0;
}

void KvCache::clear_all() {
  for (int32_t s = 0; s < slots(); ++s) clear(s);
}

void KvCache::share(int32_t from, int32_t to, int64_t tokens) {
  TIERLM_CHECK(from != to && tokens >= 0 && tokens <= length(from), kErrorInvalidArgument,
               "KV cache: slot ", to, " cannot share ", tokens, " tokens of slot ", from,
               ", which holds ", length(from));
  clear(to);
  const auto& source = tables_[static_cast<size_t>(from)];
  for (int64_t b = 0; b < blocks_for(tokens); ++b) {
    const int32_t id = source[static_cast<size_t>(b)];
    ++refs_[static_cast<size_t>(id)];
    tables_[static_cast<size_t>(to)].push_back(id);
    pointers_[static_cast<size_t>(to)].push_back(block_data(id));
  }
  lengths_[static_cast<size_t>(to)] = tokens;
}

void KvCache::evict(int32_t slot, std::span<const int32_t> drops, const float* rope_inv_freq) {
  const int64_t length = lengths_[static_cast<size_t>(slot)];
  const int64_t count = static_cast<int64_t>(drops.size());
  bool ok = count > 0 && drops.front() >= 0 && drops.back() < length;
  for (size_t i = 1; ok && i < drops.size(); ++i) ok = drops[i - 1] < drops[i];
  TIERLM_CHECK(ok, kErrorInvalidArgument, "KV cache: cannot drop ", count, " tokens (",
               count > 0 ? drops.front() : 0, "..", count > 0 ? drops.back() : 0,
               ", ascending and distinct) of slot ", slot, ", which holds ", length);
  auto& table = tables_[static_cast<size_t>(slot)];
  auto& pointers = pointers_[static_cast<size_t>(slot)];
  // Blocks rewritten below are this slot's own first (copy on write).
  for (size_t b = static_cast<size_t>(drops.front() / kKvBlockTokens); b < table.size(); ++b) {
    if (refs_[static_cast<size_t>(table[b])] == 1) continue;
    const int32_t copy = take();
    std::memcpy(block_data(copy), block_data(table[b]), block_bytes_);
    drop(table[b]);
    table[b] = copy;
    pointers[b] = block_data(copy);
  }
  // Compaction: each run of kept tokens moves down by the drops before it, in order, so a run
  // only overwrites tokens already moved or dropped.
  for (size_t l = 0; l < layers_.size(); ++l) {
    AttentionShape shape;
    shape.n_kv_heads = layers_[l].kv_heads;
    shape.head_dim = layers_[l].head_dim;
    shape.kv_capacity = table.size() * static_cast<size_t>(kKvBlockTokens);
    shape.kv_dtype = dtype_;
    for (size_t i = 0; i < drops.size(); ++i) {
      const int64_t begin = drops[i] + 1;
      const int64_t end = i + 1 < drops.size() ? drops[i + 1] : length;
      if (begin == end) continue;
      kernel_kv_shift(layout(l, slot), shape, static_cast<size_t>(begin),
                      static_cast<size_t>(begin) - (i + 1), static_cast<size_t>(end - begin),
                      rope_inv_freq);
    }
  }
  lengths_[static_cast<size_t>(slot)] = length - count;
  evicted_ += count;
  while (static_cast<int64_t>(table.size()) >
         (length - count + kKvBlockTokens - 1) / kKvBlockTokens) {
    drop(table.back());
    table.pop_back();
    pointers.pop_back();
  }
}

}  // namespace tierlm::detail
