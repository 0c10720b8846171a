// KV blocks on the disk tier: when the paged cache may hold only kv_host_budget bytes of host
// memory, its coldest blocks are written whole to a scratch file of the disk tier (O_DIRECT
// through the I/O engine) and, each step, every layer's slices of them are read back into one
// of a ring of host staging buffers, one layer each, ahead of the layer computing: a buffer is
// refilled with the next layer not read yet as soon as attention is done with it, so the disk
// always has the next layers' reads queued (several MiB, a deep queue of large requests) however
// the compute threads are scheduled. Past a step's last layer the ring reads the next step's
// first layers: a step's spilled blocks are the last step's (its new token lands in a resident
// block), so the disk keeps reading while the step ends, the logits go out and the next token's
// first layers compute; the next step checks the guess and reads what it lacks. Spilling moves
// bytes, it drops nothing: attention reads the same keys and values as from memory. An eviction
// policy's compaction (KvCache::evict) rewrites the spilled blocks it moves tokens in, a layer
// at a time through a staging buffer, in place on disk, so they hold what the same blocks in
// memory would.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/memory/disk_tier.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm::detail {

// How many blocks stay in host memory and how many may wait on disk (KvCache::spill_plan).
struct KvSpillPlan {
  int64_t resident_blocks = 0;  // host block slots (whole chunks of them)
  int64_t disk_blocks = 0;      // disk block slots: 0 means the cache never spills
  int64_t staging_layers = 0;   // staging buffers: layers read back at once (>= 2)
  uint64_t staging_bytes = 0;   // each staging buffer: one layer of every spilled block
  uint64_t resident_bytes = 0;  // the chunks of the resident blocks, as the host tier charges
  uint64_t host_bytes = 0;      // resident + the staging buffers
  uint64_t disk_bytes = 0;      // the scratch extent: disk_blocks whole blocks
  bool on() const { return disk_blocks > 0; }
};

// Where the spill goes: the disk tier's directory and byte budget.
struct KvDiskOptions {
  std::string dir;  // "" = $TMPDIR, else /tmp
  uint64_t budget = UINT64_MAX;
};
// The directory a KvDiskOptions::dir of "" stands for.
std::string kv_disk_dir(const std::string& dir);

// The spill's counters since load.
struct KvSpillCounts {
  uint64_t blocks_written = 0;  // whole blocks spilled
  uint64_t slices_read = 0;     // one layer of one block read back
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  double wait_seconds = 0.0;  // waited for read-backs at a layer's attention
};

class KvSpill {
 public:
  // slice_bytes[l], key_offset[l], value_offset[l]: layer l's keys + values in a block (4 KiB
  // multiples), where its keys and its values start; max_slot_blocks: the most blocks one sequence
  // holds. Allocates the staging buffers from host (registered with the ring where it can) and
  // the scratch extent from a new disk tier; throws kErrorBudget naming the disk budget when the
  // extent does not fit it.
  KvSpill(const KvSpillPlan& plan, std::vector<uint64_t> slice_bytes,
          std::vector<uint64_t> key_offset, std::vector<uint64_t> value_offset, HostTier& host,
          const KvDiskOptions& disk, int64_t slots, int64_t max_slot_blocks);
  ~KvSpill();
  KvSpill(const KvSpill&) = delete;
  KvSpill& operator=(const KvSpill&) = delete;

  // Writes a block (every layer) to a free disk slot, waiting for it; the slot starts with
  // `refs` references. Returns the slot.
  int32_t write(const void* block, int32_t refs);
  // Reads a disk slot's block back whole into `block`, waiting for it.
  void read(int32_t disk, void* block);
  void ref(int32_t disk) { ++refs_[static_cast<size_t>(disk)]; }
  // Drops a reference; true when the slot is free again.
  bool unref(int32_t disk);

  // A step over `slots` begins: tables[s] lists each slot's blocks (a host block id >= 0, or
  // -1 - disk slot), host_blocks[id] their addresses; both stay as they are until the step
  // ends. Keeps the layers the last step read ahead where they hold this step's slices (adding
  // the slices they lack), drops them otherwise, and issues the read-backs of the first
  // staging_layers layers not read yet.
  void stage(std::span<const int32_t> slots, const std::vector<std::vector<int32_t>>& tables,
             std::span<void* const> host_blocks);
  // Waits for what was read ahead for a next step, keeping it, and throws the error of any
  // read ahead that failed since the last stage (Model::settle_reads: a generation's end).
  void settle_ahead();
  // Waits for layer's read-backs (throwing a read's error, naming the layer and the tier's
  // directory).
  void fetch(size_t layer);
  // Attention is done with layer's staged blocks: their buffer reads the next layer not read yet,
  // of this step or, past its last, of the next step (read ahead, assuming it reads the slices
  // this one does).
  void release(size_t layer);
  // Eviction rewrites spilled blocks (KvCache::evict): stop_reading() drops what was read ahead
  // (keeping its error for the next stage) and waits for every staging buffer; then, a layer at
  // a time, load_slices reads layer's slices of the disk slots `disk` (at most one buffer's)
  // into a staging buffer, slice i at the address returned + i * slice_bytes(layer), and
  // store_slices writes them back to their slots. Both wait, and count what they move.
  void stop_reading();
  char* load_slices(size_t layer, std::span<const int32_t> disk);
  void store_slices(size_t layer, std::span<const int32_t> disk);
  uint64_t slice_bytes(size_t layer) const { return slice_bytes_[layer]; }
  int32_t refs(int32_t disk) const { return refs_[static_cast<size_t>(disk)]; }

  // Layer's blocks of slot for this step: resident ones in place, spilled ones staged
  // (block_tokens left for the cache to set).
  KvLayout layout(size_t layer, int32_t slot) const;

  uint64_t disk_bytes() const;  // bytes of spilled blocks on disk now
  TierStats disk_stats() const { return tier_.stats(); }
  const File& file() const { return tier_.file(); }
  const KvSpillCounts& counts() const { return counts_; }
  uint64_t staging_bytes() const { return staging_.size(); }
  size_t staging_layers() const { return staged_layer_.size(); }
  bool staging_registered() const { return registered_; }

 private:
  // Gives a free buffer the next layer not read yet (this step's, else the next step's).
  void issue(size_t buffer);
  // Reads layer's slices of step_disk_[first...] into buffer (waiting first for what it held
  // when first is 0).
  void read_slices(size_t buffer, size_t layer, size_t first);
  // Appends a request for len bytes at offset into `at`, merged with the last one where both
  // continue it (up to kReadPiece).
  void add_piece(char* at, uint64_t len, uint64_t offset);
  void move_slices(size_t layer, std::span<const int32_t> disk, bool write);
  // KvLayout::blocks of layer, staged in buffer, for each slot of the step.
  void point(size_t buffer, size_t layer);
  // Drops the layers read ahead for the next step, waiting for their reads and keeping the
  // first one's error for the next stage to throw.
  void drop_ahead();
  // Waits for a staging buffer's reads; the first one's error, if one failed.
  std::optional<Error> read_error(size_t buffer);
  void throw_ahead_error();    // throws the error drop_ahead kept, dropping what is staged
  void settle(size_t buffer);  // waits for a staging buffer's reads without throwing
  uint64_t disk_offset(size_t layer, int32_t disk) const {
    return region_[layer] + static_cast<uint64_t>(disk) * slice_bytes_[layer];
  }

  std::vector<uint64_t> slice_bytes_;
  std::vector<uint64_t> key_offset_;
  std::vector<uint64_t> value_offset_;
  std::vector<uint64_t> region_;  // layer -> offset of its slices in the extent
  uint64_t block_bytes_ = 0;
  uint64_t buffer_bytes_ = 0;  // one staging buffer
  // The staging buffers, one allocation, before the tier: the tier's file waits for reads in
  // flight into them.
  HostBuffer staging_;
  DiskTier tier_;
  bool registered_ = false;  // staging_ is a fixed buffer of the ring
  DiskExtent extent_;
  std::vector<int32_t> refs_;  // references to each disk slot
  std::vector<int32_t> free_;  // free disk slots, the lowest last
  int64_t spilled_ = 0;        // disk slots in use
  // This step.
  std::vector<int32_t> step_slots_;
  const std::vector<std::vector<int32_t>>* tables_ = nullptr;
  std::span<void* const> host_blocks_;
  std::vector<size_t> staged_layer_;  // [buffer]: its layer, or SIZE_MAX
  std::vector<bool> ahead_;           // [buffer]: its layer is the next step's (read ahead)
  std::vector<size_t> buffer_of_layer_;
  std::vector<int32_t> step_disk_;    // the disk slots staged, in staging order, each once
  std::vector<int32_t> ahead_disk_;   // the last step's step_disk_, while stage compares
  std::vector<int32_t> place_;        // [disk slot]: its index in step_disk_, or -1
  size_t next_layer_ = 0;             // this step's next layer to read
  size_t next_ahead_ = 0;             // the next step's next layer to read ahead
  size_t released_ = 0;               // this step's layers done (released)
  std::optional<Error> ahead_error_;  // a dropped read ahead's, thrown by the next stage
  std::vector<std::vector<std::vector<void*>>> layer_blocks_;  // [buffer][slot]: KvLayout::blocks
  std::vector<DiskRequest> requests_;
  std::vector<std::vector<IoFuture>> futures_;  // [buffer]
  KvSpillCounts counts_;
};

}  // namespace tierlm::detail
