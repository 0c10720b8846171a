// The paged KV cache: keys and values of every attention layer in blocks of kKvBlockTokens
// tokens, taken from the host tier as a sequence grows and given back when it ends, in the
// cache's dtype (f32, f16, bf16 or q8_0 rows, as the fused attention kernel reads them in
// place). Each of `slots` sequences has a block table; sequences may share blocks (a common
// prompt prefix), and a shared block is copied before it is written (copy on write). Under a
// spill plan (kv_host_budget) the cache holds a fixed number of blocks in host memory and
// moves the coldest to the disk tier (model/kv_spill.hpp), reading them back layer by layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/kv_spill.hpp"
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

  // The blocks kept in host memory when the cache may hold `kv_host_budget` bytes there (its
  // resident chunks and the read-back staging buffers, one layer each, at least two and more
  // while the reads queued ahead are short of a few MiB and the staging within half the
  // budget): as many whole chunks as fit, with at least min_resident blocks (what one step
  // writes). Off (disk_blocks 0) when the budget is
  // 0 or the whole cache fits it; throws kErrorBudget naming the least budget otherwise.
  static KvSpillPlan spill_plan(std::span<const KvLayerShape> layers, int64_t capacity,
                                int64_t slots, DType dtype, uint64_t kv_host_budget,
                                int64_t min_resident);

  // Every sequence empty. Takes `reserved` bytes of chunks (bytes_reserved: what the budget set
  // aside) from the host tier now and keeps them; chunks taken beyond them go back when empty.
  // With a spill plan that is on, `reserved` is ignored: the plan's resident chunks are taken
  // and kept, and the disk tier opened under `disk`.
  KvCache(HostTier& host, std::vector<KvLayerShape> layers, int64_t capacity, int64_t slots,
          DType dtype, uint64_t reserved = 0, const KvSpillPlan& spill = {},
          const KvDiskOptions& disk = {});

  int64_t capacity() const { return capacity_; }
  int64_t slots() const { return static_cast<int64_t>(lengths_.size()); }
  size_t layers() const { return layers_.size(); }
  DType dtype() const { return dtype_; }
  uint64_t bytes() const {  // host bytes held now (staging included)
    return held_bytes_ + (spill_ ? spill_->staging_bytes() : 0);
  }
  int64_t blocks() const { return blocks_used_; }  // blocks in use (a shared block counts once)
  uint64_t block_bytes() const { return block_bytes_; }

  // A step begins: the blocks prepare() hands out until the next begin_step stay in host memory.
  void begin_step() { ++step_; }
  // Makes slot writable up to `tokens` tokens: takes blocks from the pool (the host tier when it
  // is empty; a spilling cache writes its coldest block to disk instead), copies the blocks the
  // next tokens land in if another sequence shares them, and reads them back if spilled.
  void prepare(int32_t slot, int64_t tokens);
  // After the step's prepare calls: a spilling cache starts reading back the spilled blocks of
  // these slots, the first staging_layers layers; fetch(layer), before the layer's attention,
  // waits for its blocks, and release(layer), after it, starts on layer + staging_layers'. None
  // does anything for a cache that does not spill.
  void stage(std::span<const int32_t> slots);
  void fetch(size_t layer) {
    if (spill_) spill_->fetch(layer);
  }
  void release(size_t layer) {
    if (spill_) spill_->release(layer);
  }
  // Between steps: waits for the reads a spilling cache started ahead for the next step,
  // throwing the error of any that failed.
  void settle_reads() {
    if (spill_) spill_->settle_ahead();
  }
  bool spills() const { return spill_ != nullptr; }
  const KvSpill* spill() const { return spill_.get(); }
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
  // so positions stay counted within the cache; blocks past the new end go back. A spilling
  // cache runs the same compaction a layer at a time, its spilled blocks read into a staging
  // buffer and written back in place, so its blocks hold what a cache in memory holds, bit for
  // bit. A disk error there ends the sequence (cleared: its blocks are half moved) and throws.
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
  // Table entries: a host block id >= 0, or -1 - a disk slot (spilled).
  void drop(int32_t entry);
  void* block_data(int32_t id) const;
  void* address(int32_t entry) const { return entry < 0 ? nullptr : block_data(entry); }
  // Makes block b of slot a block of this slot alone, in host memory, for this step.
  void own(int32_t slot, size_t b);
  // Makes block b of slot a block of this slot alone (a shared one is copied; a spilled one
  // stays on disk unless shared).
  void unshare(int32_t slot, size_t b);
  // Puts a host copy of block b of slot (from memory or disk) in its place.
  void copy_block(int32_t slot, size_t b);
  // evict's compaction of layer l of slot: kernel_kv_shift over its blocks, the spilled ones
  // from `first` on staged and written back when they are below the new end (`kept` blocks).
  void shift_layer(size_t l, int32_t slot, std::span<const int32_t> drops, int64_t length,
                   size_t first, size_t kept, const float* rope_inv_freq);
  // Writes the least recently taken block that this step does not use to the disk tier.
  void spill_coldest();

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
  // Spilling.
  std::unique_ptr<KvSpill> spill_;
  std::vector<void*> host_blocks_;   // each host block id's address (spilling: fixed)
  std::vector<uint64_t> age_;        // when each host block id was taken
  std::vector<uint64_t> pin_;        // the step that last prepared it
  std::vector<void*> shift_blocks_;  // evict: a layer's slices, as KvLayout lists them
  std::vector<int32_t> shift_disk_;  // evict: the spilled blocks it rewrites, in table order
  uint64_t clock_ = 0;
  uint64_t step_ = 1;
};

}  // namespace tierlm::detail
