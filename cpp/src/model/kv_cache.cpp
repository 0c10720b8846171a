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

// A spilling cache stages at least two layers (one computing, the next reading) and reads
// further ahead while the layers queued behind the computing one hold less than this: about
// what keeps this machine's disk at full speed (fio: 256 KiB reads at queue depth 32).
constexpr int64_t kMinStagingLayers = 2;
constexpr uint64_t kReadAheadBytes = 8 << 20;

uint64_t half_layer_bytes(const KvLayerShape& layer, DType dtype) {
  return layer.kv_heads * static_cast<uint64_t>(kKvBlockTokens) *
         kernel_kv_row_bytes(dtype, layer.head_dim);
}

// A layer's keys and values in a block; a spilling cache pads them to whole 4 KiB pages so that
// each layer's slice moves to and from disk with O_DIRECT.
uint64_t slice_bytes(const KvLayerShape& layer, DType dtype, uint64_t align) {
  return (2 * half_layer_bytes(layer, dtype) + align - 1) / align * align;
}

uint64_t one_block_bytes(std::span<const KvLayerShape> layers, DType dtype, uint64_t align = 1) {
  uint64_t bytes = 0;
  for (const KvLayerShape& l : layers) bytes += slice_bytes(l, dtype, align);
  return std::max<uint64_t>(bytes, 1);
}

int64_t chunk_blocks(uint64_t block_bytes) {
  return static_cast<int64_t>(
      std::clamp<uint64_t>(kChunkTargetBytes / block_bytes, 1, kChunkMaxBlocks));
}

int64_t blocks_for(int64_t tokens) { return (tokens + kKvBlockTokens - 1) / kKvBlockTokens; }

uint64_t chunk_bytes_of(int64_t per_chunk, uint64_t block) {
  return (static_cast<uint64_t>(per_chunk) * block + 4095) / 4096 * 4096;
}

}  // namespace

uint64_t KvCache::bytes_reserved(std::span<const KvLayerShape> layers, int64_t capacity,
                                 int64_t slots, DType dtype) {
  const uint64_t block = one_block_bytes(layers, dtype);
  const int64_t per_chunk = chunk_blocks(block);
  const int64_t blocks = blocks_for(capacity) + slots - 1;
  const int64_t chunks = (blocks + per_chunk - 1) / per_chunk;
  // Each chunk as the host tier charges it: whole 4 KiB pages.
  return static_cast<uint64_t>(chunks) * chunk_bytes_of(per_chunk, block);
}

KvSpillPlan KvCache::spill_plan(std::span<const KvLayerShape> layers, int64_t capacity,
                                int64_t slots, DType dtype, uint64_t kv_host_budget,
                                int64_t min_resident) {
  KvSpillPlan plan;
  if (kv_host_budget == 0 || bytes_reserved(layers, capacity, slots, dtype) <= kv_host_budget) {
    return plan;
  }
  const uint64_t block = one_block_bytes(layers, dtype, kAlignment);
  uint64_t max_slice = 0;
  for (const KvLayerShape& l : layers)
    max_slice = std::max(max_slice, slice_bytes(l, dtype, kAlignment));
  const int64_t per_chunk = chunk_blocks(block);
  const uint64_t chunk = chunk_bytes_of(per_chunk, block);
  const int64_t blocks = blocks_for(capacity) + slots - 1;
  // Staging for n layers with k chunks resident: a layer's slices of every other block may need
  // staging at once, in each of the n buffers.
  auto staging = [&](int64_t k) {
    return static_cast<uint64_t>(std::max<int64_t>(blocks - k * per_chunk, 1)) * max_slice;
  };
  auto host_bytes = [&](int64_t k, int64_t n) {
    return static_cast<uint64_t>(k) * chunk + static_cast<uint64_t>(n) * staging(k);
  };
  const int64_t least = (min_resident + per_chunk - 1) / per_chunk;
  TIERLM_CHECK(host_bytes(least, kMinStagingLayers) <= kv_host_budget, kErrorBudget,
               "host tier: kv_host_budget ", format_bytes(kv_host_budget), " cannot hold the ",
               min_resident, " KV blocks one step writes (", format_bytes(block),
               " each, every layer) and the staging to read a layer's spilled blocks back "
               "twice over; the least that works is ",
               format_bytes(host_bytes(least, kMinStagingLayers)), " (",
               host_bytes(least, kMinStagingLayers),
               " bytes): raise kv_host_budget, or lower prefill_chunk or max_batch");
  auto most_resident = [&](int64_t n) {
    int64_t k = least;
    while ((k + 1) * per_chunk < blocks && host_bytes(k + 1, n) <= kv_host_budget) ++k;
    return k;
  };
  // More layers read ahead while those queued behind the computing one hold less than
  // kReadAheadBytes, the staging stays within half the budget and the step's blocks still fit.
  const int64_t most_layers = std::max<int64_t>(static_cast<int64_t>(layers.size()), 2);
  int64_t n = kMinStagingLayers;
  int64_t k = most_resident(n);
  while (n < most_layers && static_cast<uint64_t>(n - 1) * staging(k) < kReadAheadBytes &&
         host_bytes(least, n + 1) <= kv_host_budget) {
    const int64_t deeper = most_resident(n + 1);
    if (static_cast<uint64_t>(n + 1) * staging(deeper) > kv_host_budget / 2) break;
    ++n;
    k = deeper;
  }
  plan.resident_blocks = k * per_chunk;
  plan.disk_blocks = std::max<int64_t>(blocks - plan.resident_blocks, 1);
  plan.staging_layers = n;
  plan.staging_bytes = staging(k);
  plan.resident_bytes = static_cast<uint64_t>(k) * chunk;
  plan.host_bytes = plan.resident_bytes + static_cast<uint64_t>(n) * plan.staging_bytes;
  plan.disk_bytes = static_cast<uint64_t>(plan.disk_blocks) * block;
  return plan;
}

KvCache::KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots,
                 DType dtype, uint64_t reserved, const KvSpillPlan& spill,
                 const KvDiskOptions& disk)
    : host_(host),
      layers_(std::move(layers)),
      dtype_(dtype),
      capacity_(capacity),
      block_bytes_(one_block_bytes(layers_, dtype, spill.on() ? kAlignment : 1)),
      blocks_per_chunk_(chunk_blocks(block_bytes_)),
      lengths_(static_cast<size_t>(slots), 0),
      tables_(static_cast<size_t>(slots)),
      pointers_(static_cast<size_t>(slots)) {
  const uint64_t align = spill.on() ? kAlignment : 1;
  std::vector<uint64_t> slices;
  size_t offset = 0;
  for (const KvLayerShape& l : layers_) {
    key_offset_.push_back(offset);
    value_offset_.push_back(offset + half_layer_bytes(l, dtype));
    slices.push_back(slice_bytes(l, dtype, align));
    offset += slices.back();
  }
  // Reserved once, so that taking and dropping blocks never reallocates a table.
  const size_t per_slot = static_cast<size_t>(blocks_for(capacity));
  for (size_t s = 0; s < tables_.size(); ++s) {
    tables_[s].reserve(per_slot);
    pointers_[s].reserve(per_slot);
  }
  if (spill.on()) {
    shift_blocks_.reserve(per_slot);
    shift_disk_.reserve(per_slot);
  }
  // A chunk is added only when every held one is full, so at most one past the blocks' need.
  const size_t most_chunks =
      (per_slot * tables_.size() + static_cast<size_t>(blocks_per_chunk_) - 1) /
          static_cast<size_t>(blocks_per_chunk_) +
      1;
  chunks_.reserve(most_chunks);
  refs_.reserve(most_chunks * static_cast<size_t>(blocks_per_chunk_));
  free_.reserve(most_chunks * static_cast<size_t>(blocks_per_chunk_));
  const uint64_t chunk_bytes = chunk_bytes_of(blocks_per_chunk_, block_bytes_);
  if (spill.on()) reserved = spill.resident_bytes;
  for (uint64_t held = 0; held < reserved; held += chunk_bytes) {
    add_chunk();
    chunks_.back().reserved = true;
  }
  std::reverse(free_.begin(), free_.end());  // the lowest ids first
  if (spill.on()) {
    for (size_t id = 0; id < refs_.size(); ++id)
      host_blocks_.push_back(block_data(static_cast<int32_t>(id)));
    spill_ = std::make_unique<KvSpill>(
        spill, std::move(slices), std::vector<uint64_t>(key_offset_.begin(), key_offset_.end()),
        std::vector<uint64_t>(value_offset_.begin(), value_offset_.end()), host_, disk, slots,
        static_cast<int64_t>(per_slot));
  }
}

void KvCache::add_chunk() {
  // A released chunk's index is reused first, so ids stay below the reserved count.
  size_t c = 0;
  while (c < chunks_.size() && chunks_[c].buffer.data() != nullptr) ++c;
  if (c == chunks_.size()) chunks_.emplace_back();
  chunks_[c].buffer = host_.allocate(static_cast<size_t>(blocks_per_chunk_) * block_bytes_);
  held_bytes_ += chunks_[c].buffer.size();
  const size_t ids = chunks_.size() * static_cast<size_t>(blocks_per_chunk_);
  if (refs_.size() < ids) {
    refs_.resize(ids, 0);
    age_.resize(ids, 0);
    pin_.resize(ids, 0);
  }
  for (int64_t i = blocks_per_chunk_; i-- > 0;)
    free_.push_back(static_cast<int32_t>(static_cast<int64_t>(c) * blocks_per_chunk_ + i));
}

void* KvCache::block_data(int32_t id) const {
  const Chunk& c = chunks_[static_cast<size_t>(id / blocks_per_chunk_)];
  return static_cast<uint8_t*>(c.buffer.data()) +
         static_cast<uint64_t>(id % blocks_per_chunk_) * block_bytes_;
}

int32_t KvCache::take() {
  if (free_.empty()) {
    if (spill_) {
      spill_coldest();
    } else {
      add_chunk();
    }
  }
  const int32_t id = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(id)] = 1;
  age_[static_cast<size_t>(id)] = ++clock_;
  ++chunks_[static_cast<size_t>(id / blocks_per_chunk_)].used;
  ++blocks_used_;
  return id;
}

void KvCache::spill_coldest() {
  int32_t victim = -1;
  for (size_t id = 0; id < refs_.size(); ++id) {
    if (refs_[id] > 0 && pin_[id] != step_ && (victim < 0 || age_[id] < age_[victim])) {
      victim = static_cast<int32_t>(id);
    }
  }
  TIERLM_CHECK(victim >= 0, kErrorBudget, "KV cache: all ", refs_.size(),
               " blocks kept in host memory are written by this step, so none can move to "
               "disk; raise kv_host_budget, or lower prefill_chunk or max_batch");
  const int32_t entry = -1 - spill_->write(block_data(victim), refs_[static_cast<size_t>(victim)]);
  for (size_t s = 0; s < tables_.size(); ++s) {
    for (size_t b = 0; b < tables_[s].size(); ++b) {
      if (tables_[s][b] != victim) continue;
      tables_[s][b] = entry;
      pointers_[s][b] = nullptr;
    }
  }
  refs_[static_cast<size_t>(victim)] = 0;
  --chunks_[static_cast<size_t>(victim / blocks_per_chunk_)].used;
  free_.push_back(victim);  // the same logical block, now on disk: blocks_used_ stays
}

void KvCache::drop(int32_t entry) {
  if (entry < 0) {
    if (spill_->unref(-1 - entry)) --blocks_used_;
    return;
  }
  const int32_t id = entry;
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
  for (size_t b = static_cast<size_t>(length / kKvBlockTokens); b < table.size(); ++b) own(slot, b);
  while (static_cast<int64_t>(table.size()) < blocks_for(tokens)) {
    table.push_back(take());
    pin_[static_cast<size_t>(table.back())] = step_;
    pointers.push_back(block_data(table.back()));
  }
}

void KvCache::own(int32_t slot, size_t b) {
  const int32_t entry = tables_[static_cast<size_t>(slot)][b];
  if (entry < 0 || refs_[static_cast<size_t>(entry)] > 1) copy_block(slot, b);
  pin_[static_cast<size_t>(tables_[static_cast<size_t>(slot)][b])] = step_;
}

void KvCache::unshare(int32_t slot, size_t b) {
  const int32_t entry = tables_[static_cast<size_t>(slot)][b];
  if ((entry < 0 ? spill_->refs(-1 - entry) : refs_[static_cast<size_t>(entry)]) > 1) {
    copy_block(slot, b);
  }
}

void KvCache::copy_block(int32_t slot, size_t b) {
  auto& table = tables_[static_cast<size_t>(slot)];
  const int32_t copy = take();  // may move table[b] itself to disk
  const int32_t source = table[b];
  if (source >= 0) {
    std::memcpy(block_data(copy), block_data(source), block_bytes_);
  } else {
    try {
      spill_->read(-1 - source, block_data(copy));
    } catch (...) {
      drop(copy);  // the slot keeps its spilled block; nothing leaks
      throw;
    }
  }
  drop(source);
  table[b] = copy;
  pointers_[static_cast<size_t>(slot)][b] = block_data(copy);
}

void KvCache::stage(std::span<const int32_t> slots) {
  if (spill_) spill_->stage(slots, tables_, host_blocks_);
}

KvLayout KvCache::layout(size_t layer, int32_t slot) const {
  if (spill_) {
    KvLayout l = spill_->layout(layer, slot);
    l.block_tokens = static_cast<size_t>(kKvBlockTokens);
    return l;
  }
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
    if (id < 0) {
      spill_->ref(-1 - id);
    } else {
      ++refs_[static_cast<size_t>(id)];
    }
    tables_[static_cast<size_t>(to)].push_back(id);
    pointers_[static_cast<size_t>(to)].push_back(address(id));
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
  const size_t first = static_cast<size_t>(drops.front() / kKvBlockTokens);
  for (size_t b = first; b < table.size(); ++b) unshare(slot, b);
  const size_t kept = static_cast<size_t>(blocks_for(length - count));
  if (spill_) spill_->stop_reading();  // the blocks read ahead are about to change
  for (size_t l = 0; l < layers_.size(); ++l) {
    try {
      shift_layer(l, slot, drops, length, first, kept, rope_inv_freq);
    } catch (...) {
      clear(slot);  // layers before l moved, l and later did not
      throw;
    }
  }
  lengths_[static_cast<size_t>(slot)] = length - count;
  evicted_ += count;
  while (table.size() > kept) {
    drop(table.back());
    table.pop_back();
    pointers.pop_back();
  }
}

// Each run of kept tokens moves down by the drops before it, in order, so a run only
// overwrites tokens already moved or dropped.
void KvCache::shift_layer(size_t l, int32_t slot, std::span<const int32_t> drops, int64_t length,
                          size_t first, size_t kept, const float* rope_inv_freq) {
  const auto& table = tables_[static_cast<size_t>(slot)];
  AttentionShape shape;
  shape.n_kv_heads = layers_[l].kv_heads;
  shape.head_dim = layers_[l].head_dim;
  shape.kv_capacity = table.size() * static_cast<size_t>(kKvBlockTokens);
  shape.kv_dtype = dtype_;
  KvLayout layout;
  size_t rewritten = 0;  // spilled blocks below the new end: written back
  if (!spill_) {
    layout = this->layout(l, slot);
  } else {
    // The layer's slices: resident blocks in place, spilled ones from `first` on staged.
    shift_disk_.clear();
    for (size_t b = first; b < table.size(); ++b) {
      if (table[b] >= 0) continue;
      shift_disk_.push_back(-1 - table[b]);
      if (b < kept) rewritten = shift_disk_.size();
    }
    const char* staged = shift_disk_.empty() ? nullptr : spill_->load_slices(l, shift_disk_);
    const uint64_t slice = spill_->slice_bytes(l);
    shift_blocks_.clear();
    size_t i = 0;
    for (size_t b = 0; b < table.size(); ++b) {
      const int32_t entry = table[b];
      const char* at = entry >= 0  ? static_cast<const char*>(host_blocks_[entry]) + key_offset_[l]
                       : b < first ? nullptr  // before the drops: untouched
                                   : staged + i++ * slice;
      shift_blocks_.push_back(const_cast<char*>(at));
    }
    layout.blocks = shift_blocks_.data();
    layout.block_tokens = static_cast<size_t>(kKvBlockTokens);
    layout.k_offset = 0;
    layout.v_offset = value_offset_[l] - key_offset_[l];
  }
  for (size_t i = 0; i < drops.size(); ++i) {
    const int64_t begin = drops[i] + 1;
    const int64_t end = i + 1 < drops.size() ? drops[i + 1] : length;
    if (begin == end) continue;
    kernel_kv_shift(layout, shape, static_cast<size_t>(begin), static_cast<size_t>(begin) - (i + 1),
                    static_cast<size_t>(end - begin), rope_inv_freq);
  }
  if (rewritten > 0)
    spill_->store_slices(l, std::span<const int32_t>(shift_disk_).first(rewritten));
}

}  // namespace tierlm::detail
