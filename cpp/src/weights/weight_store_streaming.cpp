// The streaming weight store (issue 4): a resident set plus a ring of host staging sections
// that the I/O engine fills with O_DIRECT reads of the next layers while earlier layers
// compute. Everything is allocated at load; begin_layer / end_layer only wait and submit.
#include <algorithm>
#include <chrono>
#include <map>
#include <unordered_map>

#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint64_t kMaxRequest = 8ull << 20;  // split reads so the queue keeps several in flight
constexpr size_t kMaxEvents = 1 << 16;
// Auto ring depth: sections of one matrix each, about this many bytes in all so several
// 8 MiB requests stay queued while a matrix computes.
constexpr uint64_t kAutoRingBytes = 64ull << 20;
constexpr uint64_t kMinAutoSections = 2;
constexpr uint64_t kMaxAutoSections = 16;

uint64_t round_up(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

bool streamable(const TensorInfo& t) { return t.layer >= 0 && t.shape.size() >= 2; }

std::vector<TensorInfo> unique_tensors(const Package& package,
                                       const std::vector<std::string>& names) {
  std::vector<TensorInfo> out;
  std::unordered_map<std::string, bool> seen;
  for (const std::string& name : names) {
    if (seen[name]) continue;
    seen[name] = true;
    out.push_back(package.tensor(name));
  }
  return out;
}

using Clock = std::chrono::steady_clock;

// The tensor's bytes rounded up to 4 KiB (whole pages: O_DIRECT), clamped to the file's end
// (package files are padded to 4 KiB, but a tail read stays exact if one is not).
uint64_t read_length(const File& file, const TensorInfo& t) {
  return std::min(round_up(t.nbytes, kAlign), file.size() - t.offset);
}

// Host bytes for one row of a 2-D table read with O_DIRECT: the aligned span around the row.
uint64_t row_slot_bytes(const TensorInfo& t) {
  if (t.shape.size() != 2 || t.shape[0] <= 0) return 0;
  const uint64_t row = t.nbytes / static_cast<uint64_t>(t.shape[0]);
  return round_up(row, kAlign) + (row % kAlign == 0 && t.offset % kAlign == 0 ? 0 : kAlign);
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

class RingStore final : public StreamingWeightStore {
 public:
  RingStore(const Package& package, HostTier& host, const std::vector<std::string>& names,
            const WeightPlacement& placement, const WeightStoreOptions& options)
      : placement_(placement), start_(Clock::now()) {
    tensors_ = unique_tensors(package, names);
    for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = static_cast<int>(i);
    data_.assign(tensors_.size(), nullptr);
    chunk_of_.assign(tensors_.size(), -1);
    chunk_offset_.assign(tensors_.size(), 0);
    int max_layer = -1;
    for (const TensorInfo& t : tensors_) max_layer = std::max(max_layer, t.layer);
    stream_index_.assign(max_layer + 2, -1);
    for (size_t j = 0; j < placement_.streamed_layers.size(); ++j) {
      stream_index_[placement_.streamed_layers[j]] = static_cast<int>(j);
    }
    std::unordered_map<std::string, bool> pinned;
    for (const std::string& name : placement_.pinned_tensors) pinned[name] = true;
    std::unordered_map<std::string, bool> by_rows;
    for (const std::string& name : placement_.row_tensors) by_rows[name] = true;
    auto is_row = [&](const TensorInfo& t) { return by_rows.count(t.name) != 0; };
    auto is_streamed = [&](const TensorInfo& t) {
      return !is_row(t) && streamable(t) && stream_index_[t.layer] >= 0 &&
             pinned.count(t.name) == 0;
    };

    // Files: one per weight file, O_DIRECT for the aligned requests.
    auto file_of = [&](const std::string& file) {
      auto it = file_index_.find(file);
      if (it != file_index_.end()) return it->second;
      IoOptions io;
      io.direct = true;
      files_.emplace_back(package.file_path(file), IoMode::kIoModeRead, io);
      const int index = static_cast<int>(files_.size()) - 1;
      file_index_[file] = index;
      return index;
    };

    // Resident set: one buffer, tensors at aligned offsets, read now.
    uint64_t resident = 0;
    for (const TensorInfo& t : tensors_) {
      if (!is_streamed(t) && !is_row(t)) resident += round_up(t.nbytes, kAlign);
    }
    resident_ = host.allocate(std::max<uint64_t>(resident, kAlign), kAlign);
    char* base = static_cast<char*>(resident_.data());
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorInfo& t = tensors_[i];
      if (is_streamed(t) || is_row(t)) continue;
      File& f = files_[file_of(t.file)];
      char* dst = base + offset;
      f.read(dst, read_length(f, t), t.offset);
      host.record_in(t.nbytes);
      stats_.disk_bytes_read += round_up(t.nbytes, kAlign);
      if (options.verify && t.has_crc32) {
        const uint32_t crc = crc32_update(0, dst, t.nbytes);
        TIERLM_CHECK(crc == t.crc32, kErrorCorrupt, "tensor `", t.name, "` in ",
                     package.file_path(t.file), ": checksum mismatch (CRC-32 ", crc,
                     ", manifest says ", t.crc32, "); export the package again");
      }
      data_[i] = dst;
      offset += round_up(t.nbytes, kAlign);
    }
    stats_.resident_bytes = resident_.size();

    // Tables read by rows: one aligned slot per row a forward pass may need.
    row_of_.assign(tensors_.size(), -1);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (!is_row(tensors_[i])) continue;
      RowTable table;
      table.tensor = static_cast<int>(i);
      table.file = file_of(tensors_[i].file);
      table.row_bytes = tensors_[i].nbytes / static_cast<uint64_t>(tensors_[i].shape[0]);
      table.slot = row_slot_bytes(tensors_[i]);
      const size_t max_rows = static_cast<size_t>(placement_.max_rows);
      table.buffer = host.allocate(table.slot * max_rows, kAlign);
      table.ptrs.assign(max_rows, nullptr);
      table.requests.reserve(max_rows);
      table.futures.reserve(max_rows);
      row_of_[i] = static_cast<int>(row_tables_.size());
      row_tables_.push_back(std::move(table));
      stats_.resident_bytes += row_tables_.back().buffer.size();
    }

    // Chunks: each streamed layer's streamed tensors in use order (names' first-use order),
    // packed into runs of at most one section; file-contiguous neighbours merge into one read.
    std::vector<std::vector<size_t>> by_layer(placement_.streamed_layers.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (is_streamed(tensors_[i])) by_layer[stream_index_[tensors_[i].layer]].push_back(i);
    }
    for (const std::vector<size_t>& members : by_layer) {
      for (size_t i : members) {
        const uint64_t bytes = round_up(tensors_[i].nbytes, kAlign);
        TIERLM_CHECK(bytes <= placement_.section_bytes, kErrorCorrupt, "streamed tensor `",
                     tensors_[i].name, "` needs ", bytes, " bytes, the ring's sections hold ",
                     placement_.section_bytes);
        if (chunks_.empty() || chunks_.back().layer != tensors_[i].layer ||
            chunks_.back().bytes + bytes > placement_.section_bytes) {
          chunks_.emplace_back();
          chunks_.back().layer = tensors_[i].layer;
        }
        Chunk& c = chunks_.back();
        chunk_of_[i] = static_cast<int>(chunks_.size()) - 1;
        chunk_offset_[i] = c.bytes;
        const TensorInfo& t = tensors_[i];
        const int file = file_of(t.file);
        const uint64_t len = read_length(files_[file], t);
        Read* last = c.reads.empty() ? nullptr : &c.reads.back();
        if (last && last->file == file && last->offset + last->len == t.offset &&
            last->rel + last->len == c.bytes) {
          last->len += len;
        } else {
          c.reads.push_back({file, c.bytes, t.offset, len});
        }
        c.bytes += bytes;
        ++c.members;
      }
    }
    for (Chunk& c : chunks_) {  // split reads longer than kMaxRequest
      std::vector<Read> split;
      for (const Read& r : c.reads) {
        for (uint64_t done = 0; done < r.len; done += kMaxRequest) {
          split.push_back(
              {r.file, r.rel + done, r.offset + done, std::min(kMaxRequest, r.len - done)});
        }
      }
      c.reads = std::move(split);
    }

    // The ring.
    sections_.resize(placement_.sections);
    bool registered = !sections_.empty();
    for (Section& s : sections_) {
      s.buffer = host.allocate(placement_.section_bytes, kAlign);
      bool all = true;
      for (File& f : files_) all = f.register_buffer(s.buffer.data(), s.buffer.size()) && all;
      registered = registered && all && !files_.empty();
      s.futures.reserve(64);
    }
    order_.reserve(sections_.size());
    stream_.io_registered = registered;
    scratch_.reserve(256);
    events_.resize(kMaxEvents);
    stream_.io_direct = !files_.empty() && files_[0].direct();
    stream_.io_backend = files_.empty() ? "" : io_backend_name(files_[0].backend());
    stream_.streaming = true;
    stream_.ring_sections = placement_.sections;
    stream_.bytes_read_per_token = placement_.streamed_bytes;
    host_ = &host;
    fill_ring();
    stats_.tensors = tensors_.size();
    stats_.load_seconds = seconds_since(start_);
  }

  ~RingStore() override {
    for (Section& s : sections_) {
      for (IoFuture& f : s.futures) f.wait();
      for (File& f : files_) f.unregister_buffer(s.buffer.data());
    }
  }

  int index(const std::string& name) const override {
    auto it = by_name_.find(name);
    TIERLM_CHECK(it != by_name_.end(), kErrorNotFound, "weight store: tensor `", name,
                 "` was not loaded");
    return it->second;
  }
  const TensorInfo& info(int index) const override { return tensors_[index]; }

  const void* data(int index) override {
    const int c = chunk_of_[index];
    TIERLM_CHECK(row_of_[index] < 0, kErrorInvalidArgument, "weight store: tensor `",
                 tensors_[index].name, "` is read by rows on demand; ask rows(), not data()");
    if (c < 0) return data_[index];
    acquire(c);
    return static_cast<const char*>(sections_[chunks_[c].slot].buffer.data()) +
           chunk_offset_[index];
  }

  void release(int index) override {
    const int c = chunk_of_[index];
    if (c < 0 || chunks_[c].slot < 0 || !chunks_[c].acquired) return;
    if (++chunks_[c].released < chunks_[c].members) return;
    free_section(chunks_[c].slot);
    fill_ring();
  }

  const void* const* rows(int index, const int32_t* ids, size_t n) override {
    const int r = row_of_[index];
    if (r < 0) return nullptr;
    RowTable& table = row_tables_[r];
    const TensorInfo& t = tensors_[table.tensor];
    TIERLM_CHECK(n <= table.ptrs.size(), kErrorInvalidArgument, "weight store: ", n, " rows of `",
                 t.name, "` asked at once, the row buffers hold ", table.ptrs.size());
    File& file = files_[table.file];
    table.requests.clear();
    char* base = static_cast<char*>(table.buffer.data());
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; ++i) {
      TIERLM_CHECK(ids[i] >= 0 && ids[i] < t.shape[0], kErrorInvalidArgument, "token id ", ids[i],
                   " outside the ", t.shape[0], " rows of `", t.name, "`");
      const uint64_t offset = t.offset + static_cast<uint64_t>(ids[i]) * table.row_bytes;
      const uint64_t start = offset / kAlign * kAlign;
      const uint64_t end = std::min(round_up(offset + table.row_bytes, kAlign), file.size());
      char* dst = base + i * table.slot;
      table.requests.push_back({dst, end - start, start});
      table.ptrs[i] = dst + (offset - start);
      bytes += end - start;
    }
    const auto t0 = Clock::now();
    table.futures = file.pread_batch(table.requests);
    for (IoFuture& f : table.futures) f.get();
    table.futures.clear();
    const double wait = seconds_since(t0);
    stream_.io_wait_seconds += wait;
    stream_.read_busy_seconds += wait;
    stream_.row_bytes_read += bytes;
    stats_.disk_bytes_read += bytes;
    host_->record_in(bytes);
    return table.ptrs.data();
  }

  void begin_layer(int layer) override {
    if (streamed_index(layer) >= 0) layer_wait_ = 0;
  }

  void end_layer(int layer) override {
    if (streamed_index(layer) < 0) return;
    for (size_t k = 0; k < order_.size();) {
      const Chunk& c = chunks_[sections_[order_[k]].chunk];
      if (c.acquired && c.layer == layer) {
        free_section(order_[k]);  // erases order_[k]
      } else {
        ++k;
      }
    }
    fill_ring();
    ++stream_.layer_waits;
    StreamEvent& e = events_[event_count_ % kMaxEvents];
    e.t = seconds_since(start_);
    e.wait = layer_wait_;
    e.layer = layer;
    e.bytes_read = stream_.stream_bytes_read;
    ++event_count_;
    layer_wait_ = 0;
  }

  WeightStoreStats stats() const override { return stats_; }
  const WeightPlacement& placement() const override { return placement_; }
  StreamStats stream_stats() const override { return stream_; }
  std::vector<StreamEvent> events() const override {
    std::vector<StreamEvent> out;
    const size_t n = std::min(event_count_, kMaxEvents);
    for (size_t i = event_count_ - n; i < event_count_; ++i) out.push_back(events_[i % kMaxEvents]);
    return out;
  }

 private:
  struct Read {
    int file;
    uint64_t rel;     // offset in the section
    uint64_t offset;  // offset in the file
    uint64_t len;
  };
  struct Chunk {
    int layer = -1;
    size_t members = 0;  // tensors in it
    uint64_t bytes = 0;
    std::vector<Read> reads;
    int slot = -1;          // section holding (or reading) it, -1 none
    bool acquired = false;  // its reads were waited for by data()
    size_t released = 0;    // release() calls since acquired
  };
  struct RowTable {
    int tensor = -1;
    int file = -1;
    uint64_t row_bytes = 0;
    uint64_t slot = 0;  // buffer bytes per row (the aligned span)
    HostBuffer buffer;
    std::vector<const void*> ptrs;
    std::vector<IoRequest> requests;
    std::vector<IoFuture> futures;
  };
  struct Section {
    HostBuffer buffer;
    int chunk = -1;
    std::vector<IoFuture> futures;
    Clock::time_point issued;
  };

  int streamed_index(int layer) const {
    return layer >= 0 && layer < static_cast<int>(stream_index_.size()) ? stream_index_[layer] : -1;
  }

  // Makes chunk c's bytes ready in a section: waits for its reads, or (when it is not in the
  // ring: out of the ring's order, or the ring was full of chunks still in use) drops the
  // prefetched chunks nobody holds and restarts the ring at c.
  void acquire(int c) {
    Chunk& chunk = chunks_[c];
    if (chunk.slot < 0) {
      for (size_t k = 0; k < order_.size();) {
        if (!chunks_[sections_[order_[k]].chunk].acquired) {
          free_section(order_[k]);
        } else {
          ++k;
        }
      }
      if (c != next_) ++stream_.ring_restarts;
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
    for (IoFuture& f : s.futures) f.get();
    s.futures.clear();
    const auto t1 = Clock::now();
    const double wait = std::chrono::duration<double>(t1 - t0).count();
    stream_.io_wait_seconds += wait;
    stream_.read_busy_seconds += std::chrono::duration<double>(t1 - s.issued).count();
    ++stream_.chunk_waits;
    layer_wait_ += wait;
    stream_.stream_bytes_read += chunk.bytes;
    stats_.disk_bytes_read += chunk.bytes;
    host_->record_in(chunk.bytes);
    chunk.acquired = true;
    chunk.released = 0;
  }

  // Frees a section (waiting for reads still in flight into it) and drops it from the order.
  void free_section(int s) {
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
  void fill_ring() {
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
        scratch_.clear();
        for (; k < c.reads.size() && c.reads[k].file == file; ++k) {
          scratch_.push_back({base + c.reads[k].rel, c.reads[k].len, c.reads[k].offset});
        }
        for (IoFuture& f : files_[file].pread_batch(scratch_)) s.futures.push_back(std::move(f));
      }
    }
  }

  WeightPlacement placement_;
  Clock::time_point start_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<const void*> data_;       // resident tensors
  std::vector<int> chunk_of_;           // tensor -> chunk, -1 resident
  std::vector<uint64_t> chunk_offset_;  // tensor -> offset in its chunk's section
  std::vector<int> stream_index_;       // layer -> streamed index or -1
  HostBuffer resident_;
  std::vector<int> row_of_;  // tensor -> row table, -1 none
  std::vector<RowTable> row_tables_;
  std::vector<Section> sections_;  // before files_: files close (and wait) first
  std::vector<File> files_;
  std::unordered_map<std::string, int> file_index_;
  std::vector<Chunk> chunks_;  // ring order
  std::vector<int> order_;     // sections in use, oldest submission first
  std::vector<IoRequest> scratch_;
  int next_ = 0;  // next chunk to submit
  double layer_wait_ = 0;
  std::vector<StreamEvent> events_;
  size_t event_count_ = 0;
  HostTier* host_ = nullptr;
  WeightStoreStats stats_;
  StreamStats stream_;
};

}  // namespace

WeightPlacement weight_placement(const Package& package, const std::vector<std::string>& names,
                                 uint64_t weight_budget, int ring_sections,
                                 const std::vector<std::string>& row_tensors, int64_t max_rows) {
  WeightPlacement p;
  const std::vector<TensorInfo> all = unique_tensors(package, names);
  std::map<int, uint64_t> layer_bytes;
  std::map<int, int> layer_matrices;
  p.max_rows = max_rows;
  for (const TensorInfo& t : all) {
    const uint64_t bytes = round_up(t.nbytes, kAlign);
    const uint64_t row_buffer =
        row_slot_bytes(t) * static_cast<uint64_t>(std::max<int64_t>(max_rows, 0));
    if (t.shape.size() == 2 && max_rows > 0 && row_buffer < bytes &&
        std::find(row_tensors.begin(), row_tensors.end(), t.name) != row_tensors.end()) {
      p.row_tensors.push_back(t.name);
      p.row_buffer_bytes += row_buffer;
      p.base_bytes += row_buffer;
    } else if (streamable(t)) {
      layer_bytes[t.layer] += bytes;
      ++layer_matrices[t.layer];
      p.section_bytes = std::max(p.section_bytes, bytes);
    } else {
      p.base_bytes += bytes;
    }
  }
  uint64_t total = 0;
  for (const auto& [layer, bytes] : layer_bytes) total += bytes;
  if (weight_budget < p.minimum()) return p;  // caller refuses with minimum()
  const uint64_t avail = weight_budget - p.base_bytes;
  if (avail >= total || layer_bytes.empty()) {
    for (const auto& [layer, bytes] : layer_bytes) p.resident_layers.push_back(layer);
    p.resident_bytes = p.base_bytes + total;
    return p;
  }
  // Sections hold one matrix (the largest); auto: about kAutoRingBytes of them, at least
  // kMinAutoSections, never more than a quarter of the budget beyond that.
  const uint64_t section = p.section_bytes;
  const uint64_t fit = avail / section;
  uint64_t want = static_cast<uint64_t>(ring_sections);
  if (ring_sections <= 0) {
    want = std::max<uint64_t>(
        kMinAutoSections,
        std::min<uint64_t>((kAutoRingBytes + section - 1) / section, avail / 4 / section));
    want = std::min<uint64_t>(want, kMaxAutoSections);
  }
  int k = static_cast<int>(std::min<uint64_t>(want, std::max<uint64_t>(fit, 1)));
  for (;;) {
    p.resident_layers.clear();
    p.streamed_layers.clear();
    uint64_t room = avail - static_cast<uint64_t>(k) * section;
    int matrices = 0;
    for (const auto& [layer, bytes] : layer_bytes) {
      if (bytes <= room) {
        room -= bytes;
        p.resident_layers.push_back(layer);
      } else {
        room = 0;  // keep resident layers a prefix: the ring streams a contiguous run
        p.streamed_layers.push_back(layer);
        matrices += layer_matrices[layer];
      }
    }
    if (matrices >= k) break;
    k = std::max(matrices, 1);  // more sections than streamed matrices would sit idle
  }
  p.sections = k;
  p.resident_bytes = p.base_bytes;
  for (int layer : p.resident_layers) p.resident_bytes += layer_bytes[layer];
  // What is left after the ring and the resident layers keeps single matrices of streamed
  // layers resident (from the last streamed layer back), so fewer bytes are read per token.
  uint64_t left = avail + p.base_bytes - p.resident_bytes - static_cast<uint64_t>(k) * section;
  std::map<int, uint64_t> streamed;
  for (int layer : p.streamed_layers) streamed[layer] = layer_bytes[layer];
  std::unordered_map<std::string, bool> pinned;
  for (auto it = p.streamed_layers.rbegin(); it != p.streamed_layers.rend() && left >= kAlign;
       ++it) {
    for (const TensorInfo& t : all) {
      const uint64_t bytes = round_up(t.nbytes, kAlign);
      if (t.layer != *it || !streamable(t) || bytes > left) continue;
      if (streamed[t.layer] == bytes) continue;  // keep at least one matrix streamed
      p.pinned_tensors.push_back(t.name);
      pinned[t.name] = true;
      streamed[t.layer] -= bytes;
      p.resident_bytes += bytes;
      left -= bytes;
    }
  }
  // Sections shrink to the largest matrix still streamed; count the chunks the store will
  // pack (same rule: a layer's streamed matrices in use order, at most one section each).
  p.section_bytes = 0;
  for (const TensorInfo& t : all) {
    if (streamable(t) && streamed.count(t.layer) != 0 && pinned.count(t.name) == 0) {
      p.section_bytes = std::max(p.section_bytes, round_up(t.nbytes, kAlign));
    }
  }
  for (int layer : p.streamed_layers) {
    uint64_t used = p.section_bytes;  // forces a new chunk at the layer's first matrix
    for (const TensorInfo& t : all) {
      if (t.layer != layer || !streamable(t) || pinned.count(t.name) != 0) continue;
      const uint64_t bytes = round_up(t.nbytes, kAlign);
      if (used + bytes > p.section_bytes) {
        ++p.chunks;
        used = 0;
      }
      used += bytes;
    }
  }
  for (const auto& [layer, bytes] : streamed) p.streamed_bytes += bytes;
  p.ring_bytes = static_cast<uint64_t>(k) * p.section_bytes;
  return p;
}

std::unique_ptr<StreamingWeightStore> weight_store_streaming(
    const Package& package, HostTier& host, const std::vector<std::string>& tensors,
    const WeightPlacement& placement, const WeightStoreOptions& options) {
  return std::make_unique<RingStore>(package, host, tensors, placement, options);
}

}  // namespace tierlm::detail
