// The resident weight store: each layer's tensors in one host-tier buffer, 4 KiB-aligned so
// the same layout can later be filled by O_DIRECT reads into staging sections.
#include "weights/weight_store.hpp"

#include <chrono>
#include <map>
#include <unordered_map>

#include "io/file_reader.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

constexpr uint64_t kSlotAlignment = 4096;

uint64_t round_up(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

class ResidentWeightStore final : public WeightStore {
 public:
  ResidentWeightStore(const Package& package, HostTier& host, const std::vector<std::string>& names,
                      const WeightStoreOptions& options) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const std::string& name : names) {
      if (by_name_.count(name) != 0) continue;
      by_name_[name] = static_cast<int>(tensors_.size());
      tensors_.push_back(package.tensor(name));
    }
    // Group by layer; each layer gets one buffer with its tensors at aligned offsets.
    std::map<int, std::vector<int>> layers;
    for (size_t i = 0; i < tensors_.size(); ++i)
      layers[tensors_[i].layer].push_back(static_cast<int>(i));
    data_.resize(tensors_.size(), nullptr);
    std::unordered_map<std::string, FileReader> readers;
    for (const auto& [layer, members] : layers) {
      uint64_t bytes = 0;
      for (int i : members) bytes += round_up(tensors_[i].nbytes, kSlotAlignment);
      HostBuffer buffer = host.allocate(bytes, kSlotAlignment);
      char* base = static_cast<char*>(buffer.data());
      uint64_t offset = 0;
      for (int i : members) {
        const TensorInfo& t = tensors_[i];
        auto it = readers.find(t.file);
        if (it == readers.end()) {
          it = readers.emplace(t.file, FileReader(package.file_path(t.file))).first;
        }
        char* dst = base + offset;
        it->second.read(dst, t.nbytes, t.offset, "tensor `" + t.name + "`");
        stats_.disk_bytes_read += t.nbytes;
        host.record_in(t.nbytes);
        if (options.verify && t.has_crc32) {
          const uint32_t crc = crc32_update(0, dst, t.nbytes);
          TIERLM_CHECK(crc == t.crc32, kErrorCorrupt, "tensor `", t.name, "` (",
                       format_bytes(t.nbytes), " at offset ", t.offset, ") in ",
                       package.file_path(t.file), ": checksum mismatch (CRC-32 ", crc,
                       ", manifest says ", t.crc32,
                       "); the file is damaged, export the package again");
        }
        data_[i] = dst;
        offset += round_up(t.nbytes, kSlotAlignment);
      }
      stats_.resident_bytes += buffer.size();
      buffers_.push_back(std::move(buffer));
    }
    stats_.tensors = tensors_.size();
    stats_.load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  int index(const std::string& name) const override {
    auto it = by_name_.find(name);
    TIERLM_CHECK(it != by_name_.end(), kErrorNotFound, "weight store: tensor `", name,
                 "` was not loaded");
    return it->second;
  }
  const TensorInfo& info(int index) const override { return tensors_[index]; }
  const void* data(int index) override { return data_[index]; }
  void begin_layer(int) override {}
  void end_layer(int) override {}
  WeightStoreStats stats() const override { return stats_; }

 private:
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<const void*> data_;
  std::vector<HostBuffer> buffers_;
  WeightStoreStats stats_;
};

}  // namespace

uint64_t resident_weight_bytes(const Package& package, const std::vector<std::string>& tensors) {
  std::map<int, uint64_t> layers;
  std::unordered_map<std::string, bool> seen;
  for (const std::string& name : tensors) {
    if (seen[name]) continue;
    seen[name] = true;
    const TensorInfo& t = package.tensor(name);
    layers[t.layer] += round_up(t.nbytes, kSlotAlignment);
  }
  uint64_t total = 0;
  for (const auto& [layer, bytes] : layers) total += round_up(bytes, 4096);
  return total;
}

std::unique_ptr<WeightStore> weight_store_resident(const Package& package, HostTier& host,
                                                   const std::vector<std::string>& tensors,
                                                   const WeightStoreOptions& options) {
  return std::make_unique<ResidentWeightStore>(package, host, tensors, options);
}

}  // namespace tierlm::detail
