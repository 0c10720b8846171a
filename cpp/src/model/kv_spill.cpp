// The disk side of the KV cache: one scratch extent of the disk tier laid out by layer (slot d
// of layer l at region[l] + d * slice[l]), so the slices of consecutively spilled blocks of a
// layer lie together and read back as one request; and the read-back of a step's spilled slices
// through a ring of staging buffers, several layers ahead of the one computing.
#include "model/kv_spill.hpp"

#include <algorithm>
#include <cstdlib>

#include "core/clock.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

// Adjacent slices coalesce into reads of up to this many bytes: large enough to cost one
// request each, small enough that a layer's read-back keeps several in flight (fio on this
// machine's disk, the same bytes in flight: 1 MiB reads at queue depth 12 got 1.36-1.71 GB/s
// where 256 KiB reads at depth 42 got 1.16-1.28).
constexpr uint64_t kReadPiece = 1 << 20;

// Requests the ring holds at once: the read-back queues up to staging_layers layers of pieces,
// and anything past the ring waits in the engine's backlog for a reaper thread to move it.
constexpr unsigned kQueueDepth = 128;

// Rethrows a disk tier error with what the KV cache was doing.
[[noreturn]] void rethrow(const Error& error, const std::string& doing) {
  throw Error(error.code(), error.sys_errno(), "KV cache: " + doing + ": " + error.what());
}

DiskTier open_tier(const KvSpillPlan& plan, const KvDiskOptions& disk) {
  const std::string dir = kv_disk_dir(disk.dir);
  TIERLM_CHECK(
      plan.disk_bytes <= disk.budget, kErrorBudget, "disk tier: the KV cache spills up to ",
      plan.disk_blocks, " blocks (", format_bytes(plan.disk_bytes), ", ", plan.disk_bytes,
      " bytes) beyond its kv_host_budget, more than the disk budget of ", format_bytes(disk.budget),
      "; raise the disk budget or kv_host_budget, or lower max_context or max_batch");
  return DiskTier(dir, disk.budget, IoOptions{.queue_depth = kQueueDepth, .direct = true});
}

}  // namespace

std::string kv_disk_dir(const std::string& dir) {
  if (!dir.empty()) return dir;
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

KvSpill::KvSpill(const KvSpillPlan& plan, std::vector<uint64_t> slice_bytes,
                 std::vector<uint64_t> key_offset, std::vector<uint64_t> value_offset,
                 HostTier& host, const KvDiskOptions& disk, int64_t slots, int64_t max_slot_blocks)
    : slice_bytes_(std::move(slice_bytes)),
      key_offset_(std::move(key_offset)),
      value_offset_(std::move(value_offset)),
      buffer_bytes_(plan.staging_bytes),
      staging_(host.allocate(static_cast<size_t>(plan.staging_layers) * plan.staging_bytes)),
      tier_(open_tier(plan, disk)),
      refs_(static_cast<size_t>(plan.disk_blocks), 0),
      staged_layer_(static_cast<size_t>(plan.staging_layers), SIZE_MAX),
      ahead_(static_cast<size_t>(plan.staging_layers), false),
      buffer_of_layer_(slice_bytes_.size(), 0),
      place_(static_cast<size_t>(plan.disk_blocks), -1),
      layer_blocks_(static_cast<size_t>(plan.staging_layers)),
      futures_(static_cast<size_t>(plan.staging_layers)) {
  TIERLM_CHECK(plan.staging_layers >= 2, kErrorInvalidArgument,
               "KV cache: a spill plan needs at least 2 staging buffers, not ",
               plan.staging_layers);
  for (uint64_t slice : slice_bytes_) {
    region_.push_back(block_bytes_ * static_cast<uint64_t>(plan.disk_blocks));
    block_bytes_ += slice;
  }
  extent_ = tier_.allocate(plan.disk_bytes);
  // Fixed buffer: the ring maps the staging pages once, not on every read.
  registered_ = tier_.file().register_buffer(staging_.data(), staging_.size());
  for (int32_t d = static_cast<int32_t>(plan.disk_blocks); d-- > 0;) free_.push_back(d);
  for (auto& per_slot : layer_blocks_) {
    per_slot.resize(static_cast<size_t>(slots));
    for (auto& blocks : per_slot) blocks.reserve(static_cast<size_t>(max_slot_blocks));
  }
  step_slots_.reserve(static_cast<size_t>(slots));
  step_disk_.reserve(static_cast<size_t>(plan.disk_blocks));
  ahead_disk_.reserve(static_cast<size_t>(plan.disk_blocks));
  requests_.reserve(static_cast<size_t>(plan.disk_blocks) + 1);
}

KvSpill::~KvSpill() {
  for (size_t b = 0; b < futures_.size(); ++b) settle(b);
  if (registered_) tier_.file().unregister_buffer(staging_.data());
}

void KvSpill::settle(size_t buffer) {
  for (IoFuture& f : futures_[buffer]) f.wait();
  futures_[buffer].clear();
}

int32_t KvSpill::write(const void* block, int32_t refs) {
  TIERLM_CHECK(!free_.empty(), kErrorBudget, "KV cache: every one of the ", refs_.size(),
               " disk blocks is in use; raise kv_host_budget");
  const int32_t disk = free_.back();
  requests_.clear();
  for (size_t l = 0; l < slice_bytes_.size(); ++l) {
    requests_.push_back({&extent_,
                         const_cast<char*>(static_cast<const char*>(block)) + key_offset_[l],
                         slice_bytes_[l], disk_offset(l, disk)});
  }
  try {
    std::vector<IoFuture> futures = tier_.pwrite_batch(requests_);
    io_wait_all(futures);
  } catch (const Error& error) {
    rethrow(error, "writing a cold block to the disk tier in " + tier_.directory() + " failed");
  }
  free_.pop_back();
  refs_[static_cast<size_t>(disk)] = refs;
  ++spilled_;
  ++counts_.blocks_written;
  counts_.bytes_written += block_bytes_;
  return disk;
}

void KvSpill::read(int32_t disk, void* block) {
  requests_.clear();
  for (size_t l = 0; l < slice_bytes_.size(); ++l) {
    requests_.push_back({&extent_, static_cast<char*>(block) + key_offset_[l], slice_bytes_[l],
                         disk_offset(l, disk)});
  }
  try {
    std::vector<IoFuture> futures = tier_.pread_batch(requests_);
    io_wait_all(futures);
  } catch (const Error& error) {
    rethrow(error,
            "reading a spilled block back from the disk tier in " + tier_.directory() + " failed");
  }
  counts_.slices_read += slice_bytes_.size();
  counts_.bytes_read += block_bytes_;
}

bool KvSpill::unref(int32_t disk) {
  if (--refs_[static_cast<size_t>(disk)] > 0) return false;
  // The slot may be written again: what was read ahead of it must not be taken for its slices.
  if (place_[static_cast<size_t>(disk)] >= 0) drop_ahead();
  // Kept sorted with the lowest slot last, so blocks spilled in a row get consecutive slots.
  free_.insert(std::upper_bound(free_.begin(), free_.end(), disk, std::greater<int32_t>()), disk);
  --spilled_;
  return true;
}

void KvSpill::stage(std::span<const int32_t> slots, const std::vector<std::vector<int32_t>>& tables,
                    std::span<void* const> host_blocks) {
  step_slots_.assign(slots.begin(), slots.end());
  tables_ = &tables;
  host_blocks_ = host_blocks;
  // This step's spilled slices in staging order: each disk slot once, however many of the
  // step's sequences share it.
  ahead_disk_.swap(step_disk_);
  for (int32_t d : ahead_disk_) place_[static_cast<size_t>(d)] = -1;
  step_disk_.clear();
  for (int32_t slot : step_slots_) {
    for (int32_t entry : tables[static_cast<size_t>(slot)]) {
      if (entry >= 0 || place_[static_cast<size_t>(-1 - entry)] >= 0) continue;
      place_[static_cast<size_t>(-1 - entry)] = static_cast<int32_t>(step_disk_.size());
      step_disk_.push_back(-1 - entry);
    }
  }
  // The layers read ahead during the last step hold the right slices where the slots they read
  // begin this step's list (the common case: the same sequence, at most a newly spilled block
  // more at its end); they read the rest now. Otherwise they are dropped.
  if (ahead_disk_.size() > step_disk_.size() ||
      !std::equal(ahead_disk_.begin(), ahead_disk_.end(), step_disk_.begin())) {
    drop_ahead();
  }
  throw_ahead_error();
  next_layer_ = 0;
  for (size_t b = 0; b < staged_layer_.size(); ++b) {
    if (staged_layer_[b] != SIZE_MAX && ahead_[b]) {
      ahead_[b] = false;
      read_slices(b, staged_layer_[b], ahead_disk_.size());
      point(b, staged_layer_[b]);
      next_layer_ = std::max(next_layer_, staged_layer_[b] + 1);
      continue;
    }
    settle(b);  // what a failed step left in flight
    staged_layer_[b] = SIZE_MAX;
    ahead_[b] = false;
  }
  next_ahead_ = 0;
  released_ = 0;
  for (size_t b = 0; b < staged_layer_.size(); ++b) {
    if (staged_layer_[b] == SIZE_MAX) issue(b);
  }
}

void KvSpill::issue(size_t buffer) {
  if (next_layer_ < slice_bytes_.size()) {
    const size_t layer = next_layer_++;
    read_slices(buffer, layer, 0);
    point(buffer, layer);
    return;
  }
  // Every layer of this step is read or reading: the buffer reads the next step's layer ahead,
  // on the guess that it spills what this one does (KvSpill::stage checks the guess).
  // A layer ahead only once this step's same layer is done (a model of fewer layers than
  // buffers leaves some free).
  if (next_ahead_ >= released_) return;
  ahead_[buffer] = true;
  read_slices(buffer, next_ahead_++, 0);
}

void KvSpill::read_slices(size_t buffer, size_t layer, size_t first) {
  if (first == 0) settle(buffer);
  staged_layer_[buffer] = layer;
  buffer_of_layer_[layer] = buffer;
  const uint64_t slice = slice_bytes_[layer];
  char* staging = static_cast<char*>(staging_.data()) + buffer * buffer_bytes_;
  requests_.clear();
  for (size_t i = first; i < step_disk_.size(); ++i) {
    add_piece(staging + i * slice, slice, disk_offset(layer, step_disk_[i]));
    ++counts_.slices_read;
    counts_.bytes_read += slice;
  }
  if (requests_.empty()) return;
  try {
    std::vector<IoFuture> futures = tier_.pread_batch(requests_);
    std::vector<IoFuture>& held = futures_[buffer];
    if (held.empty()) {
      held = std::move(futures);
    } else {
      held.insert(held.end(), std::make_move_iterator(futures.begin()),
                  std::make_move_iterator(futures.end()));
    }
  } catch (const Error& error) {
    settle(buffer);
    staged_layer_[buffer] = SIZE_MAX;
    ahead_[buffer] = false;
    drop_ahead();          // the layers read ahead must be a run from layer 0
    ahead_error_.reset();  // this error says it
    rethrow(error, "reading layer " + std::to_string(layer) +
                       "'s spilled blocks back from the disk tier in " + tier_.directory() +
                       " failed");
  }
}

void KvSpill::add_piece(char* at, uint64_t len, uint64_t offset) {
  DiskRequest* last = requests_.empty() ? nullptr : &requests_.back();
  if (last != nullptr && last->offset + last->len == offset &&
      static_cast<char*>(last->buf) + last->len == at && last->len + len <= kReadPiece) {
    last->len += len;  // the next slot on disk into the next place: one request
  } else {
    requests_.push_back({&extent_, at, len, offset});
  }
}

void KvSpill::stop_reading() {
  drop_ahead();
  for (size_t b = 0; b < staged_layer_.size(); ++b) {
    settle(b);
    staged_layer_[b] = SIZE_MAX;
  }
}

char* KvSpill::load_slices(size_t layer, std::span<const int32_t> disk) {
  move_slices(layer, disk, false);
  return static_cast<char*>(staging_.data());
}

void KvSpill::store_slices(size_t layer, std::span<const int32_t> disk) {
  move_slices(layer, disk, true);
}

void KvSpill::move_slices(size_t layer, std::span<const int32_t> disk, bool write) {
  const uint64_t slice = slice_bytes_[layer];
  TIERLM_CHECK(disk.size() * slice <= buffer_bytes_, kErrorInvalidArgument,
               "KV cache: ", disk.size(), " spilled slices of layer ", layer,
               " do not fit a staging buffer");
  char* staging = static_cast<char*>(staging_.data());
  requests_.clear();
  for (size_t i = 0; i < disk.size(); ++i)
    add_piece(staging + i * slice, slice, disk_offset(layer, disk[i]));
  if (requests_.empty()) return;
  try {
    std::vector<IoFuture> futures =
        write ? tier_.pwrite_batch(requests_) : tier_.pread_batch(requests_);
    io_wait_all(futures);
  } catch (const Error& error) {
    rethrow(error, std::string(write ? "writing" : "reading") + " layer " + std::to_string(layer) +
                       "'s spilled blocks " + (write ? "back to" : "from") + " the disk tier in " +
                       tier_.directory() + " to drop evicted tokens failed");
  }
  const uint64_t bytes = disk.size() * slice;
  if (write) {
    counts_.bytes_written += bytes;
  } else {
    counts_.slices_read += disk.size();
    counts_.bytes_read += bytes;
  }
}

void KvSpill::point(size_t buffer, size_t layer) {
  const char* staging = static_cast<const char*>(staging_.data()) + buffer * buffer_bytes_;
  for (int32_t slot : step_slots_) {
    std::vector<void*>& blocks = layer_blocks_[buffer][static_cast<size_t>(slot)];
    blocks.clear();
    for (int32_t entry : (*tables_)[static_cast<size_t>(slot)]) {
      const char* at =
          entry >= 0 ? static_cast<const char*>(host_blocks_[static_cast<size_t>(entry)]) +
                           key_offset_[layer]
                     : staging + static_cast<uint64_t>(place_[static_cast<size_t>(-1 - entry)]) *
                                     slice_bytes_[layer];
      blocks.push_back(const_cast<char*>(at));
    }
  }
}

std::optional<Error> KvSpill::read_error(size_t buffer) {
  for (IoFuture& f : futures_[buffer]) f.wait();
  for (IoFuture& f : futures_[buffer]) {
    try {
      f.get();  // returns (or throws) the same again when a step uses the buffer
    } catch (const Error& error) {
      return error;
    }
  }
  return std::nullopt;
}

void KvSpill::drop_ahead() {
  for (size_t b = 0; b < staged_layer_.size(); ++b) {
    if (!ahead_[b]) continue;
    std::optional<Error> error = read_error(b);
    if (error && !ahead_error_) ahead_error_ = std::move(error);
    futures_[b].clear();
    staged_layer_[b] = SIZE_MAX;
    ahead_[b] = false;
  }
}

void KvSpill::throw_ahead_error() {
  if (!ahead_error_) return;
  // A read ahead failed, even one whose slices no step used: the disk is failing.
  const Error error = *ahead_error_;
  ahead_error_.reset();
  for (size_t b = 0; b < staged_layer_.size(); ++b) {
    settle(b);
    staged_layer_[b] = SIZE_MAX;
    ahead_[b] = false;
  }
  rethrow(error,
          "reading spilled blocks ahead from the disk tier in " + tier_.directory() + " failed");
}

void KvSpill::settle_ahead() {
  for (size_t b = 0; b < staged_layer_.size(); ++b) {
    if (ahead_[b] && read_error(b)) {
      drop_ahead();  // keeps the error
      break;
    }
  }
  throw_ahead_error();
}

void KvSpill::fetch(size_t layer) {
  const size_t buffer = buffer_of_layer_[layer];
  TIERLM_CHECK(staged_layer_[buffer] == layer && !ahead_[buffer], kErrorInvalidArgument,
               "KV cache: layer ", layer,
               " was not staged for this step (layers run out of order?)");
  const auto t0 = Clock::now();
  try {
    io_wait_all(futures_[buffer]);
  } catch (const Error& error) {
    futures_[buffer].clear();
    staged_layer_[buffer] = SIZE_MAX;
    rethrow(error, "reading layer " + std::to_string(layer) +
                       "'s spilled blocks back from the disk tier in " + tier_.directory() +
                       " failed");
  }
  futures_[buffer].clear();
  counts_.wait_seconds += seconds_since(t0);
}

void KvSpill::release(size_t layer) {
  const size_t buffer = buffer_of_layer_[layer];
  if (staged_layer_[buffer] != layer || ahead_[buffer]) return;
  staged_layer_[buffer] = SIZE_MAX;
  released_ = layer + 1;
  issue(buffer);
}

KvLayout KvSpill::layout(size_t layer, int32_t slot) const {
  const size_t buffer = buffer_of_layer_[layer];
  KvLayout l;
  l.blocks = layer_blocks_[buffer][static_cast<size_t>(slot)].data();
  l.k_offset = 0;
  l.v_offset = value_offset_[layer] - key_offset_[layer];
  return l;
}

uint64_t KvSpill::disk_bytes() const { return static_cast<uint64_t>(spilled_) * block_bytes_; }

}  // namespace tierlm::detail
