// The paged KV cache: keys and values of every attention layer in blocks of kKvBlockTokens
// tokens, taken from the host tier as a sequence grows and given back when it ends, in the
// cache's dtype (f32, f16, bf16 or q8_0 rows, as the fused attention kernel reads them in
// place). Each of `slots` sequences has a block table; sequences may share blocks (a common
// prompt prefix), and a shared block is copied before it is written (copy on write).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "tierlm/core/dtype.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm::detail {

// Tokens per block: small enough that a short sequence or a shared prefix wastes little, large
// enough that a 64-key attention tile spans at most three blocks.
constexpr int64_t kKvBlockTokens = 32;

// One attention layer's cache shape.
struct KvLayerShape {
  size_t kv_heads = 0;
  size_t head_dim = 0;
};

class KvCache {
 public:
  // Host bytes the budget sets aside at load: one full-context sequence plus a partial block for
  // every other slot (sequences share these bytes; together they may not exceed them unless the
  // host budget has room to spare).
  static uint64_t bytes_reserved(std::span<const KvLayerShape> layers, int64_t capacity,
                                 int64_t slots, DType dtype);

  // Every sequence empty. Takes `reserved` bytes of chunks (bytes_reserved: what the budget set
  // aside) from the host tier now and keeps them; chunks taken beyond them go back when empty.
  KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots,
          DType dtype, uint64_t reserved = 0);

  int64_t capacity() const { return capacity_; }
  int64_t slots() const { return static_cast<int64_t>(lengths_.size()); }
  size_t layers() const { return layers_.size(); }
  DType dtype() const { return dtype_; }
  uint64_t bytes() const { return held_bytes_; }   // host bytes held now
  int64_t blocks() const { return blocks_used_; }  // blocks in use (a shared block counts once)
  uint64_t block_bytes() const { return block_bytes_; }

  // Makes slot writable up to `tokens` tokens: takes blocks from the pool (the host tier when it
  // is empty) and copies the block the next token lands in if another sequence shares it.
  void prepare(int32_t slot, int64_t tokens);
  // Where layer's keys and values of slot are, for kernel_attention and kernel_kv_store.
  KvLayout layout(size_t layer, int32_t slot) const;

  // Tokens slot holds; advance appends `tokens` (after their keys and values are written).
  int64_t length(int32_t slot) const { return lengths_[static_cast<size_t>(slot)]; }
  void advance(int32_t slot, int64_t tokens) { lengths_[static_cast<size_t>(slot)] += tokens; }
  // Ends slot's sequence: its blocks go back to the pool, and chunks left empty to the host tier.
  void clear(int32_t slot);
  void clear_all();
  // `to` continues from the first `tokens` tokens of `from`, sharing their blocks.
  void share(int32_t from, int32_t to, int64_t tokens);
  // Drops the tokens `drops` (ascending, distinct) of slot: the cache compacts, every later
  // token moving down by the drops before it, its key rotated back as far (kernel_kv_shift),
  // so positions stay counted within the cache; blocks past the new end go back.
  void evict(int32_t slot, std::span<const int32_t> drops, const float* rope_inv_freq);
  int64_t evicted() const { return evicted_; }  // tokens dropped since load

 private:
  // Blocks come from the host tier in chunks (up to 16 blocks, about 256 KiB) so small blocks
  // do not each cost a page; a chunk goes back when none of its blocks is in use.
  struct Chunk {
    HostBuffer buffer;
    int64_t used = 0;
    bool reserved = false;  // kept while the cache lives
  };
  void add_chunk();
  int32_t take();
  void drop(int32_t id);
  void* block_data(int32_t id) const;

  HostTier& host_;
  std::vector<KvLayerShape> layers_;
  DType dtype_;
  int64_t capacity_ = 0;
  uint64_t block_bytes_ = 0;
  int64_t blocks_per_chunk_ = 1;
  std::vector<size_t> key_offset_;    // bytes from a block's start to the layer's keys
  std::vector<size_t> value_offset_;  // ... to the layer's values
  std::vector<int64_t> lengths_;
  std::vector<std::vector<int32_t>> tables_;  // block ids of each slot, in sequence order
  std::vector<std::vector<void*>> pointers_;  // their addresses, as KvLayout lists blocks
  std::vector<Chunk> chunks_;
  std::vector<int32_t> refs_;  // sequences using each block id
  std::vector<int32_t> free_;  // ids of unused blocks in held chunks
  uint64_t held_bytes_ = 0;
  int64_t blocks_used_ = 0;
  int64_t evicted_ = 0;
};

}  // namespace tierlm::detail
