// The resident weight store: each layer's tensors in one host-tier buffer at 4 KiB-aligned
// offsets, filled by one batch of O_DIRECT reads per layer through the I/O engine.
#include "weights/weight_store.hpp"

#include <map>
#include <unordered_map>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"
#include "weights/weight_ring.hpp"

namespace tierlm::detail {

namespace {

class ResidentWeightStore final : public WeightStore {
 public:
  ResidentWeightStore(const Package& package, HostTier& host, const std::vector<std::string>& names,
                      const WeightStoreOptions& options) {
    const auto t0 = Clock::now();
    tensors_ = weight_tensors(package, names);
    for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = static_cast<int>(i);
    // Group by layer; each layer gets one buffer with its tensors at aligned offsets.
    std::map<int, std::vector<int>> layers;
    for (size_t i = 0; i < tensors_.size(); ++i)
      layers[tensors_[i].layer].push_back(static_cast<int>(i));
    data_.resize(tensors_.size(), nullptr);
    // One File per weight file: O_DIRECT where the file system allows, so the weights end up in
    // the host tier only, not a second time in the page cache.
    std::unordered_map<std::string, size_t> file_index;
    std::vector<File> files;
    std::vector<IoFuture> reads;
    for (const auto& [layer, members] : layers) {
      uint64_t bytes = 0;
      for (int i : members) bytes += round_up(tensors_[i].nbytes, kAlignment);
      HostBuffer buffer = host.allocate(bytes, kAlignment);
      char* base = static_cast<char*>(buffer.data());
      uint64_t offset = 0;
      reads.clear();
      for (int i : members) {
        const TensorInfo& t = tensors_[i];
        auto [it, added] = file_index.emplace(t.file, files.size());
        if (added) {
          files.emplace_back(package.file_path(t.file), IoMode::kIoModeRead,
                             IoOptions{.direct = true});
        }
        File& f = files[it->second];
        data_[i] = base + offset;
        reads.push_back(f.pread(base + offset, weight_read_length(f, t), t.offset));
        offset += round_up(t.nbytes, kAlignment);
      }
      for (const IoFuture& read : reads) read.wait();  // none in flight if one failed
      for (size_t k = 0; k < members.size(); ++k) {
        const TensorInfo& t = tensors_[members[k]];
        try {
          reads[k].get();
        } catch (const Error& error) {
          throw Error(error.code(), error.sys_errno(), "tensor `" + t.name + "`: " + error.what());
        }
        stats_.disk_bytes_read += t.nbytes;
        host.record_in(t.nbytes);
        if (options.verify) tensor_verify(package, t, data_[members[k]], &stats_.verify);
      }
      stats_.resident_bytes += buffer.size();
      buffers_.push_back(std::move(buffer));
    }
    if (!files.empty()) {
      stats_.io_backend = io_backend_name(files[0].backend());
      stats_.io_direct = files[0].direct();
      stats_.io_direct_reason = files[0].direct_reason();
    }
    stats_.tensors = tensors_.size();
    stats_.verify.enabled = options.verify;
    stats_.load_seconds = seconds_since(t0);
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
  for (const TensorInfo& t : weight_tensors(package, tensors)) {
    layers[t.layer] += round_up(t.nbytes, kAlignment);
  }
  uint64_t total = 0;
  for (const auto& [layer, bytes] : layers) total += round_up(bytes, kAlignment);
  return total;
}

std::unique_ptr<WeightStore> weight_store_resident(const Package& package, HostTier& host,
                                                   const std::vector<std::string>& tensors,
                                                   const WeightStoreOptions& options) {
  return std::make_unique<ResidentWeightStore>(package, host, tensors, options);
}

}  // namespace tierlm::detail
