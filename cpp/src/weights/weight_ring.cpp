// The streaming store's ring (see weight_ring.hpp): chunk reads built once at load, sections
// filled in ring order, waited for by data(), freed by release() / end_layer(), and a restart
// at the asked chunk when the executor leaves the ring's order.
#include "weights/weight_ring.hpp"

#include <algorithm>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

constexpr uint64_t kMaxRequest = kStreamRequestBytes;
constexpr size_t kSectionFutures = 64;
constexpr size_t kBatchRequests = 256;

}  // namespace

uint64_t weight_read_length(const File& file, const TensorInfo& t) {
  return std::min(round_up(t.nbytes, kAlignment), file.size() - t.offset);
}

WeightRing::WeightRing(std::span<const TensorInfo> tensors, std::span<const WeightHome> homes,
                       std::span<const int> file_of, std::vector<File>& files,
                       const WeightPlacement& placement, HostTier& host, StreamStats& stats,
                       Clock::time_point start)
    : files_(files), host_(host), stats_(stats), start_(start) {
  first_part_.assign(tensors.size(), -1);
  part_count_.assign(tensors.size(), 0);
  for (int layer : placement.streamed_layers) {
    if (layer >= static_cast<int>(streamed_layer_.size())) streamed_layer_.resize(layer + 1);
    streamed_layer_[layer] = true;
  }
  // Each chunk's reads: file-contiguous neighbours merge into one read, then reads longer than
  // kMaxRequest split.
  for (const std::vector<WeightPart>& members : weight_chunks(tensors, homes, placement)) {
    Chunk& c = chunks_.emplace_back();
    for (const WeightPart& part : members) {
      const TensorInfo& t = tensors[part.tensor];
      TIERLM_CHECK(part.slot() <= placement.section_bytes, kErrorCorrupt, "streamed tensor `",
                   t.name, "` rows ", part.row0, "..", part.row0 + part.rows, " need ", part.slot(),
                   " bytes, the ring's sections hold ", placement.section_bytes);
      c.layer = t.layer;
      const int index = static_cast<int>(parts_.size());
      if (part_count_[part.tensor]++ == 0) first_part_[part.tensor] = index;
      parts_.push_back(part);
      chunk_of_.push_back(static_cast<int>(chunks_.size()) - 1);
      chunk_offset_.push_back(c.bytes);
      const int file = file_of[part.tensor];
      const uint64_t offset = t.offset + part.offset;
      const uint64_t len = std::min(weight_read_length(files_[file], t) - part.offset, part.slot());
      Read* last = c.reads.empty() ? nullptr : &c.reads.back();
      if (last && last->file == file && last->offset + last->len == offset &&
          last->rel + last->len == c.bytes) {
        last->len += len;
      } else {
        c.reads.push_back({file, c.bytes, offset, len});
      }
      c.bytes += part.slot();
      ++c.members;
    }
    std::vector<Read> split;
    for (const Read& r : c.reads) {
      for (uint64_t done = 0; done < r.len; done += kMaxRequest) {
        split.push_back(
            {r.file, r.rel + done, r.offset + done, std::min(kMaxRequest, r.len - done)});
      }
    }
    c.reads = std::move(split);
  }

  sections_.resize(placement.sections);
  bool registered = !sections_.empty();
  for (Section& s : sections_) {
    s.buffer = host.allocate(placement.section_bytes, kAlignment);
    bool all = true;
    for (File& f : files_) all = f.register_buffer(s.buffer.data(), s.buffer.size()) && all;
    registered = registered && all && !files_.empty();
    s.futures.reserve(kSectionFutures);
  }
  order_.reserve(sections_.size());
  stats_.io_registered = registered;
  requests_.reserve(kBatchRequests);
  events_.resize(kMaxEvents);
  fill_ring();
}

WeightRing::~WeightRing() {
  for (Section& s : sections_) {
    for (IoFuture& f : s.futures) f.wait();
    for (File& f : files_) f.unregister_buffer(s.buffer.data());
  }
}

const void* WeightRing::data(int index) {
  TIERLM_CHECK(part_count_[index] == 1, kErrorInvalidArgument, "weight ring: a tensor of ",
               part_count_[index], " row parts is read by part(), not data()");
  return part_data(first_part_[index]);
}

WeightRowPart WeightRing::part(int index, int k) {
  const int p = first_part_[index] + k;
  return {part_data(p), parts_[p].row0, parts_[p].rows};
}

const void* WeightRing::part_data(int p) {
  const int c = chunk_of_[p];
  acquire(c);
  return static_cast<const char*>(sections_[chunks_[c].slot].buffer.data()) + chunk_offset_[p];
}

void WeightRing::release(int index) {
  if (part_count_[index] == 1) release_one(first_part_[index]);
}

void WeightRing::release_part(int index, int k) { release_one(first_part_[index] + k); }

void WeightRing::release_one(int p) {
  const int c = chunk_of_[p];
  if (chunks_[c].slot < 0 || !chunks_[c].acquired) return;
  if (++chunks_[c].released < chunks_[c].members) return;
  free_section(chunks_[c].slot);
  fill_ring();
}

void WeightRing::begin_layer(int layer) {
  if (is_streamed_layer(layer)) layer_wait_ = 0;
}

void WeightRing::end_layer(int layer) {
  if (!is_streamed_layer(layer)) return;
  for (size_t k = 0; k < order_.size();) {
    const Chunk& c = chunks_[sections_[order_[k]].chunk];
    if (c.acquired && c.layer == layer) {
      free_section(order_[k]);  // erases order_[k]
    } else {
      ++k;
    }
  }
  fill_ring();
  ++stats_.layer_waits;
  StreamEvent& e = events_[event_count_ % kMaxEvents];
  e.t = seconds_since(start_);
  e.wait = layer_wait_;
  e.layer = layer;
  e.bytes_read = stats_.stream_bytes_read;
  ++event_count_;
  layer_wait_ = 0;
}

std::vector<StreamEvent> WeightRing::events() const {
  std::vector<StreamEvent> out;
  const size_t n = std::min(event_count_, kMaxEvents);
  for (size_t i = event_count_ - n; i < event_count_; ++i) out.push_back(events_[i % kMaxEvents]);
  return out;
}

bool WeightRing::is_streamed_layer(int layer) const {
  return layer >= 0 && layer < static_cast<int>(streamed_layer_.size()) && streamed_layer_[layer];
}

// Makes chunk c's bytes ready in a section: waits for its reads, or (when it is not in the
// ring: out of the ring's order, or the ring was full of chunks still in use) drops the
// prefetched chunks nobody holds and restarts the ring at c.
void WeightRing::acquire(int c) {
  Chunk& chunk = chunks_[c];
  if (chunk.slot < 0) {
    for (size_t k = 0; k < order_.size();) {
      if (!chunks_[sections_[order_[k]].chunk].acquired) {
        free_section(order_[k]);
      } else {
        ++k;
      }
    }
    if (c != next_) ++stats_.ring_restarts;
    next_ = c;
    fill_ring();
    TIERLM_CHECK(chunk.slot >= 0, kErrorInvalidArgument, "weight ring: all ", sections_.size(),
                 " staging sections hold tensors still in use, none is free for layer ",
                 chunk.layer,
                 "'s next tensors; the executor must release() each streamed "
                 "tensor after its op");
  }
  if (chunk.acquired) return;
  Section& s = sections_[chunk.slot];
  const auto t0 = Clock::now();
  try {
    io_wait_all(s.futures);
  } catch (const Error& error) {
    free_section(chunk.slot);  // nothing in flight into it; a later pass reads the chunk again
    throw Error(error.code(), error.sys_errno(),
                "streamed weights of layer " + std::to_string(chunk.layer) + ": " + error.what());
  }
  s.futures.clear();
  const auto t1 = Clock::now();
  const double wait = std::chrono::duration<double>(t1 - t0).count();
  stats_.io_wait_seconds += wait;
  stats_.read_busy_seconds += std::chrono::duration<double>(t1 - s.issued).count();
  ++stats_.chunk_waits;
  layer_wait_ += wait;
  stats_.stream_bytes_read += chunk.bytes;
  host_.record_in(chunk.bytes);
  chunk.acquired = true;
  chunk.released = 0;
}

// Frees a section (waiting for reads still in flight into it) and drops it from the order.
void WeightRing::free_section(int s) {
  Section& section = sections_[s];
  for (IoFuture& f : section.futures) f.wait();
  section.futures.clear();
  Chunk& c = chunks_[section.chunk];
  c.slot = -1;
  c.acquired = false;
  section.chunk = -1;
  order_.erase(std::find(order_.begin(), order_.end(), s));
}

// Issues reads of the next chunks (cyclic order) into every free section.
void WeightRing::fill_ring() {
  const int n = static_cast<int>(chunks_.size());
  if (n == 0) return;
  for (size_t si = 0; si < sections_.size(); ++si) {
    Section& s = sections_[si];
    if (s.chunk >= 0) continue;
    if (chunks_[next_].slot >= 0) return;  // every chunk is in the ring already
    Chunk& c = chunks_[next_];
    s.chunk = next_;
    next_ = (next_ + 1) % n;
    c.slot = static_cast<int>(si);
    c.acquired = false;
    order_.push_back(static_cast<int>(si));
    s.issued = Clock::now();
    char* base = static_cast<char*>(s.buffer.data());
    size_t k = 0;
    while (k < c.reads.size()) {
      const int file = c.reads[k].file;
      requests_.clear();
      for (; k < c.reads.size() && c.reads[k].file == file; ++k) {
        requests_.push_back({base + c.reads[k].rel, c.reads[k].len, c.reads[k].offset});
      }
      for (IoFuture& f : files_[file].pread_batch(requests_)) s.futures.push_back(std::move(f));
      stats_.stream_requests += requests_.size();
    }
  }
}

}  // namespace tierlm::detail
