// The streaming weight store: a resident set read at load, tables read by rows on demand
// (WeightRowTable) and the prefetch ring of staging sections (WeightRing) that the I/O engine
// fills with O_DIRECT reads of the next layers while earlier layers compute.
#include <algorithm>
#include <memory>
#include <unordered_map>

#include "core/clock.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"
#include "weights/weight_placement.hpp"
#include "weights/weight_ring.hpp"
#include "weights/weight_row_table.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

namespace {

class StreamingStore final : public StreamingWeightStore {
 public:
  StreamingStore(const Package& package, HostTier& host, const std::vector<std::string>& names,
                 const WeightPlacement& placement, const WeightStoreOptions& options)
      : placement_(placement) {
    const auto start = Clock::now();
    tensors_ = weight_tensors(package, names);
    for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = static_cast<int>(i);
    const std::vector<WeightHome> homes = weight_homes(tensors_, placement_);
    open_files(package);
    read_resident(package, host, homes, options);
    if (options.verify) verify_unread(package, homes);
    row_of_.assign(tensors_.size(), -1);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (homes[i] != WeightHome::kWeightHomeRows) continue;
      row_of_[i] = static_cast<int>(row_tables_.size());
      row_tables_.emplace_back(tensors_[i], files_[file_of_[i]],
                               static_cast<size_t>(placement_.max_rows), host, stream_);
      stats_.resident_bytes += row_tables_.back().buffer_bytes();
    }
    ring_ = std::make_unique<WeightRing>(tensors_, homes, file_of_, files_, placement_, host,
                                         stream_, start);
    stream_.io_direct = !files_.empty() && files_[0].direct();
    stream_.io_direct_reason = files_.empty() ? "" : files_[0].direct_reason();
    stream_.io_backend = files_.empty() ? "" : io_backend_name(files_[0].backend());
    stream_.streaming = true;
    stream_.ring_sections = placement_.sections;
    stream_.bytes_read_per_token = placement_.streamed_bytes;
    stats_.tensors = tensors_.size();
    stats_.verify.enabled = options.verify;
    stats_.load_seconds = seconds_since(start);
  }

  int index(const std::string& name) const override {
    auto it = by_name_.find(name);
    TIERLM_CHECK(it != by_name_.end(), kErrorNotFound, "weight store: tensor `", name,
                 "` was not loaded");
    return it->second;
  }
  const TensorInfo& info(int index) const override { return tensors_[index]; }

  const void* data(int index) override {
    TIERLM_CHECK(row_of_[index] < 0, kErrorInvalidArgument, "weight store: tensor `",
                 tensors_[index].name, "` is read by rows on demand; ask rows(), not data()");
    return ring_->streams(index) ? ring_->data(index) : data_[index];
  }

  void release(int index) override { ring_->release(index); }
  int parts(int index) const override { return std::max(ring_->parts(index), 1); }
  WeightRowPart part(int index, int k) override {
    return ring_->streams(index) ? ring_->part(index, k) : WeightStore::part(index, k);
  }
  void release_part(int index, int k) override {
    if (ring_->streams(index)) ring_->release_part(index, k);
  }

  const void* const* rows(int index, const int32_t* ids, size_t n) override {
    const int r = row_of_[index];
    return r < 0 ? nullptr : row_tables_[r].read(ids, n);
  }

  void begin_layer(int layer) override { ring_->begin_layer(layer); }
  void end_layer(int layer) override { ring_->end_layer(layer); }

  WeightStoreStats stats() const override {
    WeightStoreStats s = stats_;
    s.disk_bytes_read = resident_read_ + stream_.stream_bytes_read + stream_.row_bytes_read;
    return s;
  }
  const WeightPlacement& placement() const override { return placement_; }
  StreamStats stream_stats() const override { return stream_; }
  std::vector<StreamEvent> events() const override { return ring_->events(); }

 private:
  // One File per weight file, O_DIRECT for the aligned requests; opened before anything
  // holds a reference, so files_ never moves.
  void open_files(const Package& package) {
    std::unordered_map<std::string, int> index;
    for (const TensorInfo& t : tensors_) {
      auto [it, added] = index.emplace(t.file, static_cast<int>(files_.size()));
      if (added)
        files_.emplace_back(package.file_path(t.file), IoMode::kIoModeRead,
                            IoOptions{.direct = true});
      file_of_.push_back(it->second);
    }
  }

  // Streamed tensors and row tables are read again on every pass: their bytes are checked once
  // now, so that a damaged file fails the load instead of giving wrong tokens later.
  void verify_unread(const Package& package, const std::vector<WeightHome>& homes) {
    std::vector<std::string> names;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (homes[i] != WeightHome::kWeightHomeResident) names.push_back(tensors_[i].name);
    }
    if (!names.empty()) stats_.verify.add(package_verify(package, names));
  }

  // The resident set: one buffer, tensors at aligned offsets, read now.
  void read_resident(const Package& package, HostTier& host, const std::vector<WeightHome>& homes,
                     const WeightStoreOptions& options) {
    data_.assign(tensors_.size(), nullptr);
    uint64_t bytes = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (homes[i] == WeightHome::kWeightHomeResident) {
        bytes += round_up(tensors_[i].nbytes, kAlignment);
      }
    }
    resident_ = host.allocate(std::max<uint64_t>(bytes, kAlignment), kAlignment);
    char* base = static_cast<char*>(resident_.data());
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (homes[i] != WeightHome::kWeightHomeResident) continue;
      const TensorInfo& t = tensors_[i];
      File& f = files_[file_of_[i]];
      char* dst = base + offset;
      try {
        f.read(dst, weight_read_length(f, t), t.offset);
      } catch (const Error& error) {
        throw Error(error.code(), error.sys_errno(), "tensor `" + t.name + "`: " + error.what());
      }
      host.record_in(t.nbytes);
      resident_read_ += round_up(t.nbytes, kAlignment);
      if (options.verify) tensor_verify(package, t, dst, &stats_.verify);
      data_[i] = dst;
      offset += round_up(t.nbytes, kAlignment);
    }
    stats_.resident_bytes = resident_.size();
  }

  WeightPlacement placement_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<int> file_of_;       // tensor -> files_
  std::vector<const void*> data_;  // resident tensors
  HostBuffer resident_;
  uint64_t resident_read_ = 0;  // bytes the resident set read
  StreamStats stream_;
  WeightStoreStats stats_;
  // Before the ring and the row tables: they close (waiting for their reads) first.
  std::vector<File> files_;
  std::vector<int> row_of_;  // tensor -> row table, -1 none
  std::vector<WeightRowTable> row_tables_;
  std::unique_ptr<WeightRing> ring_;
};

}  // namespace

std::unique_ptr<StreamingWeightStore> weight_store_streaming(
    const Package& package, HostTier& host, const std::vector<std::string>& tensors,
    const WeightPlacement& placement, const WeightStoreOptions& options) {
  return std::make_unique<StreamingStore>(package, host, tensors, placement, options);
}

}  // namespace tierlm::detail
