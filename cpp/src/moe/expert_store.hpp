// The tiered expert store: each expert (its gate, up and down matrices, stored back to back in
// the package so that one read fetches it) is homed on the host tier, read at load, or on the
// disk tier, read with O_DIRECT through the I/O engine into a host-tier expert cache whose
// replacement policy (expert_policy.hpp) picks what to evict. A step's misses are issued as one
// batch of reads when the router has chosen (route); moe_run multiplies each as its read lands
// (landing), the hits while the misses are still reading.
// With prefetch, the store keeps every router in the host tier, and moe_run names the experts
// it predicts for layer i+1 (prefetch) while layer i computes: those likely enough
// (kPrefetchFloor), most likely first, are read ahead in chunks (kAheadChunk, at most
// kAheadDepth in flight) while none of layer i's own reads is in flight, so that the read-ahead
// fills the disk's idle time and never queues in front of what the step waits for. At layer
// i+1's route, a routed expert's unread rest goes out at once with the misses; a wrong guess's
// unread rest is dropped, so it costs at most the chunks already in flight.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/clock.hpp"
#include "moe/expert_policy.hpp"
#include "moe/moe_ffn.hpp"
#include "tierlm/io/io.hpp"
#include "tierlm/memory/tier.hpp"
#include "tierlm/model/package.hpp"
#include "tierlm/moe/moe_stats.hpp"

namespace tierlm::detail {

// An expert predicted a layer ahead is read ahead only when its likelihood (ExpertProvider::
// prefetch: in even shares, top_k / experts) is at least this. On bench_moe's model at 25% (8
// experts, top-2, decode), of the experts predicted at 0.75 to 1 shares 56% were routed to, at
// 1 to 1.25 89%, above that nearly all. A wrong guess costs the chunks it has in flight when
// its layer routes (and the cached expert its slot evicted); a right one fills the disk's idle
// time while the layer computes: read ahead in chunks, with the floor at 1 the disk idled 120
// ms of each step under the helpers' load, at 0.75 30 to 65, for 3 to 6% more bytes read.
constexpr float kPrefetchFloor = 0.75f;
// The read-ahead's request size and how many of them may be in flight: a wrong guess wastes at
// most this much disk time once the route shows it wrong, and the misses then submitted share
// the disk with no more than this.
constexpr uint64_t kAheadChunk = uint64_t{8} << 20;
constexpr int kAheadDepth = 2;

struct ExpertStoreOptions {
  uint64_t budget = 0;  // host bytes for the experts: homed ones + the cache
  ExpertPolicyKind policy = ExpertPolicyKind::kExpertPolicyLru;
  bool prefetch = true;
  // the read-ahead's request size: a positive multiple of 4 KiB (tests make it a page, so that
  // a small expert is read ahead in several)
  uint64_t ahead_chunk = kAheadChunk;
  // check every expert's (and router's) CRC-32 at load, and each disk-homed expert's again
  // whenever it is read into the cache, before it is used
  bool verify = false;
  // Per moe op, tokens routed to each expert on a calibration text (expert_usage.hpp): the
  // most used are homed on the host tier. Empty: outer layers first.
  std::vector<std::vector<uint64_t>> usage;
};

// Host bytes of one expert cache slot (the largest expert's read).
uint64_t expert_slot_bytes(const Package& package);
// The least budget the store loads in: one slot, plus the routers when it prefetches.
uint64_t expert_store_minimum(const Package& package, bool prefetch);
// Host bytes of every expert homed on the host tier (no cache).
uint64_t expert_resident_bytes(const Package& package);

class ExpertStore final : public ExpertProvider {
 public:
  // Throws kErrorBudget when options.budget holds less than one slot. The package must outlive
  // the store.
  ExpertStore(const Package& package, HostTier& host, const ExpertStoreOptions& options);
  ~ExpertStore() override;
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  void route(int moe, std::span<const int32_t> experts, std::span<const int32_t> rows,
             size_t tokens) override;
  const void* next_router(int moe) const override;
  void prefetch(int moe, std::span<const int32_t> experts,
                std::span<const float> likelihood) override;
  uint64_t landing(int moe, int32_t e) override;
  ExpertWeights expert(int moe, int32_t e) override;
  void release(int moe, int32_t e) override;

  const ExpertPlacement& placement() const { return placement_; }
  const MoeStats& stats() const { return stats_; }
  const VerifyStats& verify() const { return verify_; }
  // Per moe op, the tokens routed to each expert since load.
  std::vector<std::vector<uint64_t>> usage() const;

 private:
  struct Read {
    int file;      // in files_
    uint64_t rel;  // in the expert's slot
    uint64_t offset;
    uint64_t len;
  };
  struct Expert {
    int n_reads = 0;
    Read reads[kExpertParts];
    uint64_t part_rel[kExpertParts] = {0, 0, 0};
    const TensorInfo* part[kExpertParts] = {nullptr, nullptr, nullptr};
    char* host = nullptr;  // homed on the host tier: its bytes; else nullptr
    int slot = -1;         // in the cache (or being read into it), else -1
  };
  struct Slot {
    int key = -1;
    bool pinned = false;      // routed this step and not yet released, or prefetched
    bool prefetched = false;  // read ahead and not used yet
    std::vector<IoFuture> futures;
    uint64_t batch = 0;  // the flush that submitted its reads (kExpertUnread: queued)
    uint64_t ahead = 0;  // read ahead: bytes of its expert submitted (in read order) so far
  };

  int key(int moe, int32_t e) const { return first_key_[moe] + e; }
  char* slot_data(int slot) { return static_cast<char*>(cache_.data()) + slot * slot_bytes_; }
  // A slot to read into: a free one, else the policy's victim among the unpinned ones (all ones
  // with `any`); -1: none.
  int take_slot(bool any);
  void add_expert(const Package& package, const std::vector<const TensorInfo*>& parts);
  // By key, its share of its layer's routed tokens in the profile; empty without one.
  std::vector<double> usage_shares(const std::vector<std::vector<uint64_t>>& usage) const;
  // Keys in the order they are homed on the host tier while the budget lasts.
  std::vector<int> home_order(const std::vector<std::vector<uint64_t>>& usage) const;
  void read_homed(const Package& package, bool verify);
  void read_routers(const Package& package, HostTier& host, const std::vector<size_t>& ops,
                    uint64_t bytes, bool verify);
  // Assigns expert k to the slot and queues its reads; flush() submits the queue, one batch
  // per file.
  void queue(int k, int slot);
  // expert_cache "stream": reads every expert of moe op `moe` that is neither homed nor in a
  // slot (used or not, as a dense offload reads them); `ahead`: a prefetch, pinned until the
  // layer's route.
  void stream_layer(int moe, bool ahead);
  int layer_experts(int moe) const;
  void flush();
  // Waits for the slot's reads; `check`: the expert is about to be used, so with verify its
  // CRC-32 is checked (check_read).
  void wait(int slot, bool check);
  void check_read(int slot);
  // Bytes of expert k's reads.
  uint64_t read_bytes(int k) const;
  // Submits the slot's read-ahead from byte `slots_[slot].ahead` of its expert, at most `most`
  // bytes (within one of its reads); returns the bytes submitted.
  uint64_t submit_ahead(int slot, uint64_t most);
  // Keeps the read-ahead going: while no read the routed layer waits for is in flight, submits
  // chunks of the predicted experts, most likely first, up to kAheadDepth in flight.
  void pump_ahead();
  // At moe op `moe`'s route: its read-ahead experts' unread rest, submitted when routed (as
  // demand, into miss_slots_) and dropped (the slot emptied) when not.
  void settle_ahead(int moe, std::span<const int32_t> experts);

  const Package& package_;
  HostTier& host_;
  std::vector<File> files_;
  std::unordered_map<std::string, int> file_index_;  // package file name -> files_ index
  std::vector<Expert> experts_;                      // by key
  std::vector<int> first_key_;                       // per moe op
  std::vector<uint64_t> usage_;                      // by key: tokens routed to it
  uint64_t slot_bytes_ = 0;
  uint64_t ahead_chunk_ = kAheadChunk;
  HostBuffer homed_;
  HostBuffer cache_;
  std::vector<Slot> slots_;
  std::vector<int> candidates_;      // scratch of take_slot
  std::vector<IoRequest> requests_;  // scratch of flush
  std::vector<int> queued_;
  HostBuffer routers_;                    // with prefetch: every moe op's router
  std::vector<uint64_t> router_at_;       // its offset in routers_, per moe op
  std::vector<uint8_t> predicted_;        // by key: named by the last prediction of its layer
  std::vector<uint8_t> layer_predicted_;  // per moe op: a prediction awaits its route
  std::vector<int> prefetched_slots_;     // pinned by prefetch until the layer's route
  std::vector<int> miss_slots_;           // the routed layer's reads it waits for
  std::vector<int> ahead_;                // keys predicted for the next layer, to read ahead
  size_t ahead_next_ = 0;                 // ahead_[ahead_next_..] have no slot yet
  uint64_t batches_ = 0;                  // flushes that submitted reads
  std::vector<int> streamed_;             // scratch of stream_layer
  std::unique_ptr<ExpertPolicy> policy_;
  bool stream_all_ = false;    // expert_cache "stream": no cache, every expert read per step
  bool verify_reads_ = false;  // verify: every expert read from disk checked before use
  ExpertPlacement placement_;
  MoeStats stats_;
  VerifyStats verify_;
};

}  // namespace tierlm::detail
