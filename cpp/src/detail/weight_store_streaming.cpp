// The streaming weight store (issue 4): a resident set plus a ring of host staging sections
// that the I/O engine fills with O_DIRECT reads of the next layers while earlier layers
// compute. Everything is allocated at load; begin_layer / end_layer only wait and submit.
#include <algorithm>
#include <chrono>
#include <map>
#include <unordered_map>

#include "tierlm/detail/weight_store.hpp"
#include "tierlm/error.hpp"
#include "tierlm/io.hpp"

namespace tierlm::detail {

namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint64_t kMaxRequest = 8ull << 20;  // split reads so the queue keeps several in flight
constexpr size_t kMaxEvents = 1 << 16;
constexpr int kAutoSections = 2;

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
    int max_layer = -1;
    for (const TensorInfo& t : tensors_) max_layer = std::max(max_layer, t.layer);
    stream_index_.assign(max_layer + 2, -1);
    for (size_t j = 0; j < placement_.streamed_layers.size(); ++j) {
      stream_index_[placement_.streamed_layers[j]] = static_cast<int>(j);
    }
    std::unordered_map<std::string, bool> pinned;
    for (const std::string& name : placement_.pinned_tensors) pinned[name] = true;
    auto is_streamed = [&](const TensorInfo& t) {
      return streamable(t) && stream_index_[t.layer] >= 0 && pinned.count(t.name) == 0;
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
      if (!is_streamed(t)) resident += round_up(t.nbytes, kAlign);
    }
    resident_ = host.allocate(std::max<uint64_t>(resident, kAlign), kAlign);
    char* base = static_cast<char*>(resident_.data());
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorInfo& t = tensors_[i];
      if (is_streamed(t)) continue;
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

    // Streamed layers: section layout in file order, contiguous tensors merged into one read.
    const size_t m = placement_.streamed_layers.size();
    layers_.resize(m);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (is_streamed(tensors_[i])) layers_[stream_index_[tensors_[i].layer]].members.push_back(i);
    }
    for (StreamLayer& layer : layers_) {
      std::sort(layer.members.begin(), layer.members.end(), [&](size_t a, size_t b) {
        const TensorInfo& x = tensors_[a];
        const TensorInfo& y = tensors_[b];
        return x.file != y.file ? x.file < y.file : x.offset < y.offset;
      });
      uint64_t rel = 0;
      for (size_t i : layer.members) {
        const TensorInfo& t = tensors_[i];
        const int file = file_of(t.file);
        const uint64_t len = read_length(files_[file], t);
        layer.offsets.push_back(rel);
        Read* last = layer.reads.empty() ? nullptr : &layer.reads.back();
        if (last && last->file == file && last->offset + last->len == t.offset &&
            last->rel + last->len == rel && last->len + len <= kMaxRequest) {
          last->len += len;
        } else {
          layer.reads.push_back({file, rel, t.offset, len});
        }
        rel += round_up(t.nbytes, kAlign);
      }
      // Split reads longer than kMaxRequest.
      std::vector<Read> split;
      for (const Read& r : layer.reads) {
        for (uint64_t done = 0; done < r.len; done += kMaxRequest) {
          split.push_back(
              {r.file, r.rel + done, r.offset + done, std::min(kMaxRequest, r.len - done)});
        }
      }
      layer.reads = std::move(split);
      layer.bytes = rel;
      TIERLM_CHECK(rel <= placement_.section_bytes, kErrorCorrupt, "streamed layer needs ", rel,
                   " bytes, the ring's sections hold ", placement_.section_bytes);
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
    stream_.registered = registered;
    slot_.assign(m, -1);
    scratch_.reserve(256);
    events_.resize(kMaxEvents);
    stream_.direct = !files_.empty() && files_[0].direct();
    stream_.backend = files_.empty() ? "" : io_backend_name(files_[0].backend());
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
  const void* data(int index) const override { return data_[index]; }

  void begin_layer(int layer) override {
    const int j =
        layer >= 0 && layer < static_cast<int>(stream_index_.size()) ? stream_index_[layer] : -1;
    if (j < 0) return;
    if (slot_[j] < 0) {
      // Out of order (not the next streamed layer): drain the ring and restart it here.
      ++stream_.ring_restarts;
      for (size_t s = 0; s < sections_.size(); ++s) {
        for (IoFuture& f : sections_[s].futures) f.wait();
        sections_[s].futures.clear();
        if (sections_[s].layer >= 0) slot_[sections_[s].layer] = -1;
        sections_[s].layer = -1;
      }
      next_ = j;
      fill_ring();
    }
    Section& s = sections_[slot_[j]];
    const auto t0 = Clock::now();
    for (IoFuture& f : s.futures) f.get();
    s.futures.clear();
    const double wait = seconds_since(t0);
    stream_.io_wait_seconds += wait;
    stream_.read_busy_seconds += std::chrono::duration<double>(Clock::now() - s.issued).count();
    ++stream_.layer_waits;
    const StreamLayer& L = layers_[j];
    stream_.stream_bytes_read += L.bytes;
    stats_.disk_bytes_read += L.bytes;
    host_->record_in(L.bytes);
    char* base = static_cast<char*>(s.buffer.data());
    for (size_t k = 0; k < L.members.size(); ++k) data_[L.members[k]] = base + L.offsets[k];
    StreamEvent& e = events_[event_count_ % kMaxEvents];
    e.t = seconds_since(start_);
    e.wait = wait;
    e.layer = layer;
    e.bytes_read = stream_.stream_bytes_read;
    ++event_count_;
  }

  void end_layer(int layer) override {
    const int j =
        layer >= 0 && layer < static_cast<int>(stream_index_.size()) ? stream_index_[layer] : -1;
    if (j < 0 || slot_[j] < 0) return;
    Section& s = sections_[slot_[j]];
    s.layer = -1;
    slot_[j] = -1;
    const StreamLayer& L = layers_[j];
    for (size_t i : L.members) data_[i] = nullptr;
    fill_ring();
  }

  WeightStoreStats stats() const override { return stats_; }
  const WeightPlacement& placement() const override { return placement_; }
  StreamStats stream_stats() const override {
    StreamStats s = stream_;
    return s;
  }
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
  struct StreamLayer {
    std::vector<size_t> members;    // tensor indices, in section order
    std::vector<uint64_t> offsets;  // their offsets in the section
    std::vector<Read> reads;
    uint64_t bytes = 0;
  };
  struct Section {
    HostBuffer buffer;
    int layer = -1;  // streamed index held (or being read), -1 free
    std::vector<IoFuture> futures;
    Clock::time_point issued;
  };

  // Issues reads of the next streamed layers (cyclic order) into every free section.
  void fill_ring() {
    const int m = static_cast<int>(layers_.size());
    if (m == 0) return;
    for (Section& s : sections_) {
      if (s.layer >= 0) continue;
      if (slot_[next_] >= 0) return;  // every streamed layer is in the ring already
      const int j = next_;
      next_ = (next_ + 1) % m;
      s.layer = j;
      slot_[j] = static_cast<int>(&s - sections_.data());
      s.issued = Clock::now();
      const StreamLayer& L = layers_[j];
      char* base = static_cast<char*>(s.buffer.data());
      size_t k = 0;
      while (k < L.reads.size()) {
        const int file = L.reads[k].file;
        scratch_.clear();
        for (; k < L.reads.size() && L.reads[k].file == file; ++k) {
          scratch_.push_back({base + L.reads[k].rel, L.reads[k].len, L.reads[k].offset});
        }
        for (IoFuture& f : files_[file].pread_batch(scratch_)) s.futures.push_back(std::move(f));
      }
    }
  }

  WeightPlacement placement_;
  Clock::time_point start_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<const void*> data_;
  std::vector<int> stream_index_;  // layer -> streamed index or -1
  HostBuffer resident_;
  std::vector<Section> sections_;  // before files_: files close (and wait) first
  std::vector<File> files_;
  std::unordered_map<std::string, int> file_index_;
  std::vector<StreamLayer> layers_;
  std::vector<int> slot_;  // streamed index -> section or -1
  std::vector<IoRequest> scratch_;
  int next_ = 0;
  std::vector<StreamEvent> events_;
  size_t event_count_ = 0;
  HostTier* host_ = nullptr;
  WeightStoreStats stats_;
  StreamStats stream_;
};

}  // namespace

WeightPlacement weight_placement(const Package& package, const std::vector<std::string>& names,
                                 uint64_t weight_budget, int ring_sections) {
  WeightPlacement p;
  std::map<int, uint64_t> layer_bytes;
  for (const TensorInfo& t : unique_tensors(package, names)) {
    if (streamable(t)) {
      layer_bytes[t.layer] += round_up(t.nbytes, kAlign);
    } else {
      p.base_bytes += round_up(t.nbytes, kAlign);
    }
  }
  uint64_t total = 0;
  for (const auto& [layer, bytes] : layer_bytes) {
    p.section_bytes = std::max(p.section_bytes, bytes);
    total += bytes;
  }
  if (weight_budget < p.minimum()) return p;  // caller refuses with minimum()
  const uint64_t avail = weight_budget - p.base_bytes;
  if (avail >= total || layer_bytes.empty()) {
    for (const auto& [layer, bytes] : layer_bytes) p.resident_layers.push_back(layer);
    p.resident_bytes = p.base_bytes + total;
    return p;
  }
  const uint64_t fit = avail / p.section_bytes;
  int k = static_cast<int>(std::min<uint64_t>(ring_sections > 0 ? ring_sections : kAutoSections,
                                              std::max<uint64_t>(fit, 1)));
  for (;;) {
    p.resident_layers.clear();
    p.streamed_layers.clear();
    uint64_t room = avail - static_cast<uint64_t>(k) * p.section_bytes;
    for (const auto& [layer, bytes] : layer_bytes) {
      if (bytes <= room) {
        room -= bytes;
        p.resident_layers.push_back(layer);
      } else {
        room = 0;  // keep resident layers a prefix: the ring streams a contiguous run
        p.streamed_layers.push_back(layer);
      }
    }
    const int m = static_cast<int>(p.streamed_layers.size());
    if (m >= k) break;
    k = std::max(m, 1);
  }
  p.sections = k;
  p.resident_bytes = p.base_bytes;
  for (int layer : p.resident_layers) p.resident_bytes += layer_bytes[layer];
  // What is left after the ring and the resident layers keeps single matrices of streamed
  // layers resident (from the last streamed layer back), so fewer bytes are read per token.
  uint64_t left =
      avail + p.base_bytes - p.resident_bytes - static_cast<uint64_t>(k) * p.section_bytes;
  std::map<int, uint64_t> streamed;
  for (int layer : p.streamed_layers) streamed[layer] = layer_bytes[layer];
  const std::vector<TensorInfo> all = unique_tensors(package, names);
  for (auto it = p.streamed_layers.rbegin(); it != p.streamed_layers.rend() && left >= kAlign;
       ++it) {
    for (const TensorInfo& t : all) {
      const uint64_t bytes = round_up(t.nbytes, kAlign);
      if (t.layer != *it || !streamable(t) || bytes > left) continue;
      if (streamed[t.layer] == bytes) continue;  // keep at least one matrix streamed
      p.pinned_tensors.push_back(t.name);
      streamed[t.layer] -= bytes;
      p.resident_bytes += bytes;
      left -= bytes;
    }
  }
  p.section_bytes = 0;
  for (const auto& [layer, bytes] : streamed) {
    p.section_bytes = std::max(p.section_bytes, bytes);
    p.streamed_bytes += bytes;
  }
  p.ring_bytes = static_cast<uint64_t>(k) * p.section_bytes;
  return p;
}

std::unique_ptr<StreamingWeightStore> weight_store_streaming(
    const Package& package, HostTier& host, const std::vector<std::string>& tensors,
    const WeightPlacement& placement, const WeightStoreOptions& options) {
  return std::make_unique<RingStore>(package, host, tensors, placement, options);
}

}  // namespace tierlm::detail
