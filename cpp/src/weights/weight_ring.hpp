// The prefetch ring of the streaming weight store: the chunks of streamed tensors
// (weight_chunks) are read with O_DIRECT into `sections` host staging sections in ring order
// while earlier chunks compute; a section is refilled once every tensor of its chunk is
// released or its layer ends. Also keeps the per-layer timeline (StreamEvent).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/clock.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "weights/weight_placement.hpp"
#include "weights/weight_store.hpp"

namespace tierlm::detail {

// The tensor's bytes rounded up to 4 KiB (whole pages: O_DIRECT), clamped to the file's end
// (package files are padded to 4 KiB, but a tail read stays exact if one is not).
uint64_t weight_read_length(const File& file, const TensorInfo& tensor);

class WeightRing {
 public:
  // tensors: the store's; file_of[i]: index in `files` of tensor i's file. The ring reads from
  // `files` and adds its counters to `stats`; both must outlive it. Event times count from
  // `start` (when the store was made). Issues the first reads.
  WeightRing(std::span<const TensorInfo> tensors, std::span<const WeightHome> homes,
             std::span<const int> file_of, std::vector<File>& files,
             const WeightPlacement& placement, HostTier& host, StreamStats& stats,
             Clock::time_point start);
  // Waits for the reads in flight and unregisters the sections.
  ~WeightRing();
  WeightRing(const WeightRing&) = delete;
  WeightRing& operator=(const WeightRing&) = delete;

  // Whether tensor `index` streams through the ring, and in how many row parts.
  bool streams(int index) const { return part_count_[index] > 0; }
  int parts(int index) const { return part_count_[index]; }
  // The streamed tensor's bytes (a tensor of one part), waiting for its chunk's reads
  // (restarting the ring at its chunk when it is not in the ring).
  const void* data(int index);
  // Part k of the tensor, likewise.
  WeightRowPart part(int index, int k);
  // A tensor of one part is released by release(index), one of several part by part.
  void release(int index);
  void release_part(int index, int k);
  void begin_layer(int layer);
  // Frees the sections of the layer's chunks, refills them and records the layer's event.
  void end_layer(int layer);
  // The recorded events, oldest first (the last kMaxEvents kept).
  std::vector<StreamEvent> events() const;

  static constexpr size_t kMaxEvents = 1 << 16;

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
  struct Section {
    HostBuffer buffer;
    int chunk = -1;
    std::vector<IoFuture> futures;
    Clock::time_point issued;
  };

  bool is_streamed_layer(int layer) const;
  const void* part_data(int p);
  void release_one(int p);
  void acquire(int c);
  void free_section(int s);
  void fill_ring();

  std::vector<File>& files_;
  HostTier& host_;
  StreamStats& stats_;
  Clock::time_point start_;
  std::vector<int> first_part_;         // tensor -> its first part in parts_
  std::vector<int> part_count_;         // tensor -> its parts (0: not streamed)
  std::vector<WeightPart> parts_;       // of every streamed tensor, in ring order
  std::vector<int> chunk_of_;           // part -> chunk
  std::vector<uint64_t> chunk_offset_;  // part -> offset in its chunk's section
  std::vector<bool> streamed_layer_;    // by layer id
  std::vector<Chunk> chunks_;           // ring order
  std::vector<Section> sections_;
  std::vector<int> order_;  // sections in use, oldest submission first
  std::vector<IoRequest> requests_;
  int next_ = 0;  // next chunk to submit
  double layer_wait_ = 0;
  std::vector<StreamEvent> events_;
  size_t event_count_ = 0;
};

}  // namespace tierlm::detail
