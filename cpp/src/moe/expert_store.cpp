// The tiered expert store (expert_store.hpp): extents and homes at load, the cache's slot
// bookkeeping and the batched O_DIRECT reads per step.
#include "moe/expert_store.hpp"

#include <algorithm>

#include "core/clock.hpp"
#include "moe/moe_graph.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "weights/weight_ring.hpp"

namespace tierlm::detail {

namespace {

// Expert e's three tensors of moe op `op`.
std::vector<const TensorInfo*> expert_tensors(const Package& package, const GraphOp& op,
                                              int64_t e) {
  std::vector<const TensorInfo*> parts;
  for (int part = 0; part < kExpertParts; ++part) {
    parts.push_back(
        &package.tensor(moe_expert_tensor(op.expert_prefix, e, static_cast<ExpertPart>(part))));
  }
  return parts;
}

// One expert's bytes in a slot: each part 4 KiB-rounded (O_DIRECT reads whole pages).
uint64_t expert_bytes(const std::vector<const TensorInfo*>& parts) {
  uint64_t bytes = 0;
  for (const TensorInfo* t : parts) bytes += round_up(t->nbytes, kAlignment);
  return bytes;
}

// Moe layers from the outside in: first, last, second, ... (a model's outer layers route
// most unevenly, so they cache worst).
std::vector<int> outer_layers_first(size_t layers) {
  std::vector<int> order;
  for (size_t lo = 0, hi = layers; lo < hi; ++lo) {
    order.push_back(static_cast<int>(lo));
    if (lo + 1 < hi) order.push_back(static_cast<int>(--hi));
  }
  return order;
}

}  // namespace

uint64_t expert_slot_bytes(const Package& package) {
  uint64_t most = 0;
  for (size_t i : moe_ops(package)) {
    const GraphOp& op = package.graph.ops[i];
    for (int64_t e = 0; e < op.experts; ++e) {
      most = std::max(most, expert_bytes(expert_tensors(package, op, e)));
    }
  }
  return most;
}

// The routers, each 4 KiB-rounded (read with O_DIRECT).
uint64_t router_bytes(const Package& package) {
  uint64_t total = 0;
  for (size_t i : moe_ops(package)) {
    total += round_up(package.tensor(package.graph.ops[i].weight).nbytes, kAlignment);
  }
  return total;
}

uint64_t expert_store_minimum(const Package& package, bool prefetch) {
  return expert_slot_bytes(package) + (prefetch ? router_bytes(package) : 0);
}

uint64_t expert_resident_bytes(const Package& package) {
  uint64_t total = 0;
  for (size_t i : moe_ops(package)) total += package.graph.ops[i].experts;
  return total * expert_slot_bytes(package);
}

ExpertStore::ExpertStore(const Package& package, HostTier& host, const ExpertStoreOptions& options)
    : package_(package),
      host_(host),
      slot_bytes_(expert_slot_bytes(package)),
      ahead_chunk_(options.ahead_chunk),
      verify_reads_(options.verify) {
  TIERLM_CHECK(ahead_chunk_ > 0 && ahead_chunk_ % kAlignment == 0, kErrorInvalidArgument,
               "expert store: the read-ahead's chunk (", ahead_chunk_,
               " bytes) must be a positive multiple of ", kAlignment, " bytes");
  const std::vector<size_t> ops = moe_ops(package);
  size_t max_top_k = 1;
  for (size_t i : ops) {
    const GraphOp& op = package.graph.ops[i];
    first_key_.push_back(static_cast<int>(experts_.size()));
    placement_.layers.push_back(op.layer);
    max_top_k = std::max(max_top_k, static_cast<size_t>(op.top_k));
    placement_.experts = op.experts;
    for (int64_t e = 0; e < op.experts; ++e) add_expert(package, expert_tensors(package, op, e));
  }

  // Homes: all on the host tier when they fit; else a cache of a quarter of the budget (at
  // least 2 x top_k slots, so that one token's experts of a layer and the next fit), and the
  // rest of the budget homes experts, outer layers first.
  const uint64_t total = experts_.size();
  const uint64_t routers = options.prefetch ? router_bytes(package) : 0;
  const uint64_t fit = options.budget > routers ? (options.budget - routers) / slot_bytes_ : 0;
  TIERLM_CHECK(fit >= 1, kErrorBudget, "host tier: the expert cache needs at least one expert (",
               format_bytes(slot_bytes_), ") but the experts' share of the host budget is ",
               format_bytes(options.budget), options.prefetch ? " with the routers" : "",
               "; raise the host budget");
  if (options.prefetch) read_routers(package, host, ops, routers, options.verify);
  // "stream" (dense offload): slots for one layer's experts, and the next layer's with
  // prefetch; the rest of the budget homes experts as a cache would.
  stream_all_ = options.policy == ExpertPolicyKind::kExpertPolicyStream;
  uint64_t most = 1;
  for (size_t m = 0; m < ops.size(); ++m)
    most = std::max<uint64_t>(most, layer_experts(static_cast<int>(m)));
  uint64_t slots = 0;
  if (fit < total && stream_all_) slots = std::min(fit, (options.prefetch ? 2 : 1) * most);
  if (fit < total && !stream_all_) {
    slots = std::min(fit, std::max<uint64_t>(2 * max_top_k, fit / 4));
  }
  const uint64_t homed = std::min(total, fit - slots);
  if (homed > 0) homed_ = host.allocate(homed * slot_bytes_);
  if (slots > 0) cache_ = host.allocate(slots * slot_bytes_);
  slots_.resize(slots);
  candidates_.reserve(slots);
  requests_.reserve(slots * kExpertParts);
  queued_.reserve(slots);
  // a read-ahead's chunks, then its rest in up to one request per read
  for (Slot& slot : slots_) slot.futures.reserve(slot_bytes_ / ahead_chunk_ + 1 + 2 * kExpertParts);
  // A token routes to top_k experts of each layer, and the policy steps once per layer's
  // route: a share of the layer's routed tokens x top_k / layers is the expert's expected uses
  // per policy step.
  std::vector<double> rates = usage_shares(options.usage);
  for (size_t m = 0; m < ops.size() && !rates.empty(); ++m) {
    const int end = first_key_[m] + layer_experts(static_cast<int>(m));
    for (int k = first_key_[m]; k < end; ++k) {
      rates[k] *=
          static_cast<double>(package.graph.ops[ops[m]].top_k) / static_cast<double>(ops.size());
    }
  }
  policy_ = expert_policy_create(options.policy, experts_.size(), rates);
  predicted_.assign(experts_.size(), 0);
  layer_predicted_.assign(ops.size(), 0);
  prefetched_slots_.reserve(slots);
  miss_slots_.reserve(slots);
  ahead_.reserve(most);
  streamed_.reserve(slots);
  usage_.assign(experts_.size(), 0);
  const std::vector<int> order = home_order(options.usage);
  for (uint64_t i = 0; i < homed; ++i) {
    experts_[order[i]].host = static_cast<char*>(homed_.data()) + i * slot_bytes_;
  }
  read_homed(package, options.verify);
  placement_.moe = !ops.empty();
  placement_.expert_bytes = slot_bytes_;
  placement_.host_bytes = homed * slot_bytes_;
  placement_.cache_bytes = slots * slot_bytes_;
  placement_.cache_slots = static_cast<int64_t>(slots);
  placement_.router_bytes = routers;
  placement_.policy = expert_policy_name(options.policy);
  placement_.homing = options.usage.empty() ? "outer layers first" : "usage profile";
  placement_.host_experts.resize(ops.size());
  placement_.disk_experts.resize(ops.size());
  for (size_t m = 0; m < ops.size(); ++m) {
    for (int64_t e = 0; e < package.graph.ops[ops[m]].experts; ++e) {
      const bool on_host = experts_[key(static_cast<int>(m), static_cast<int32_t>(e))].host;
      (on_host ? placement_.host_experts : placement_.disk_experts)[m].push_back(
          static_cast<int>(e));
    }
  }
  if (slots > 0) {
    for (File& f : files_) f.register_buffer(cache_.data(), cache_.size());
  }
}

std::vector<double> ExpertStore::usage_shares(
    const std::vector<std::vector<uint64_t>>& usage) const {
  std::vector<double> share;
  if (usage.empty()) return share;
  share.assign(experts_.size(), 0.0);
  for (size_t m = 0; m < usage.size(); ++m) {
    uint64_t total = 0;
    for (uint64_t n : usage[m]) total += n;
    for (size_t e = 0; e < usage[m].size() && total > 0; ++e) {
      share[key(static_cast<int>(m), static_cast<int32_t>(e))] =
          static_cast<double>(usage[m][e]) / static_cast<double>(total);
    }
  }
  return share;
}

// With a usage profile, the experts by their share of their layer's routed tokens, most used
// first (the expected host hits per homed byte; every expert takes one slot), ties in layer
// order; without one, outer layers first, each layer whole.
std::vector<int> ExpertStore::home_order(const std::vector<std::vector<uint64_t>>& usage) const {
  const std::vector<int> layers = outer_layers_first(first_key_.size());
  std::vector<int> order;
  for (int m : layers) {
    const int end = m + 1 < static_cast<int>(first_key_.size()) ? first_key_[m + 1]
                                                                : static_cast<int>(experts_.size());
    for (int k = first_key_[m]; k < end; ++k) order.push_back(k);
  }
  if (usage.empty()) return order;
  const std::vector<double> share = usage_shares(usage);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return share[a] > share[b]; });
  return order;
}

std::vector<std::vector<uint64_t>> ExpertStore::usage() const {
  std::vector<std::vector<uint64_t>> out;
  for (size_t m = 0; m < first_key_.size(); ++m) {
    const size_t end = m + 1 < first_key_.size() ? first_key_[m + 1] : usage_.size();
    out.emplace_back(usage_.begin() + first_key_[m], usage_.begin() + end);
  }
  return out;
}

// An expert's reads: its parts at 4 KiB-rounded offsets of its slot, neighbours in one file
// merged into one read (the export stores them back to back).
void ExpertStore::add_expert(const Package& package, const std::vector<const TensorInfo*>& parts) {
  Expert& x = experts_.emplace_back();
  uint64_t rel = 0;
  for (int p = 0; p < kExpertParts; ++p) {
    const TensorInfo& t = *parts[p];
    auto [it, added] = file_index_.emplace(t.file, static_cast<int>(files_.size()));
    if (added) {
      files_.emplace_back(package.file_path(t.file), IoMode::kIoModeRead,
                          IoOptions{.direct = true});
    }
    // weight_read_length: whole pages, clamped to a file whose tail is not padded
    const uint64_t len = weight_read_length(files_[it->second], t);
    x.part_rel[p] = rel;
    x.part[p] = &t;
    Read* last = x.n_reads > 0 ? &x.reads[x.n_reads - 1] : nullptr;
    if (last != nullptr && last->file == it->second && last->rel + last->len == rel &&
        last->offset + last->len == t.offset) {
      last->len += len;
    } else {
      x.reads[x.n_reads++] = {it->second, rel, t.offset, len};
    }
    rel += round_up(t.nbytes, kAlignment);
  }
}

// Reads the homed experts, all in one batch per file, and checks their CRC-32 with `verify`.
void ExpertStore::read_homed(const Package& package, bool verify) {
  std::vector<IoFuture> futures;
  for (size_t f = 0; f < files_.size(); ++f) {
    std::vector<IoRequest> requests;
    for (const Expert& x : experts_) {
      for (int r = 0; r < x.n_reads && x.host != nullptr; ++r) {
        if (x.reads[r].file != static_cast<int>(f)) continue;
        requests.push_back({x.host + x.reads[r].rel, x.reads[r].len, x.reads[r].offset});
      }
    }
    for (IoFuture& fu : files_[f].pread_batch(requests)) futures.push_back(std::move(fu));
  }
  for (IoFuture& fu : futures) fu.get();
  for (const Expert& x : experts_) {
    for (int p = 0; p < kExpertParts && x.host != nullptr; ++p) {
      host_.record_in(x.part[p]->nbytes);
      if (verify) tensor_verify(package, *x.part[p], x.host + x.part_rel[p], &verify_);
    }
  }
  // Disk-homed experts are read again whenever routed to: checked once now, so that a damaged
  // file fails the load instead of giving wrong tokens later.
  std::vector<std::string> unread;
  for (const Expert& x : experts_) {
    for (int p = 0; p < kExpertParts && verify && x.host == nullptr; ++p) {
      unread.push_back(x.part[p]->name);
    }
  }
  if (!unread.empty()) verify_.add(package_verify(package, unread));
}

ExpertStore::~ExpertStore() {
  for (Slot& s : slots_) {
    for (IoFuture& f : s.futures) f.wait();
  }
  if (!slots_.empty()) {
    for (File& f : files_) f.unregister_buffer(cache_.data());
  }
}

void ExpertStore::read_routers(const Package& package, HostTier& host,
                               const std::vector<size_t>& ops, uint64_t bytes, bool verify) {
  routers_ = host.allocate(bytes);
  uint64_t at = 0;
  for (size_t i : ops) {
    const TensorInfo& t = package.tensor(package.graph.ops[i].weight);
    File f(package.file_path(t.file), IoMode::kIoModeRead, IoOptions{.direct = true});
    char* dst = static_cast<char*>(routers_.data()) + at;
    f.read(dst, weight_read_length(f, t), t.offset);
    if (verify) tensor_verify(package, t, dst, &verify_);
    router_at_.push_back(at);
    at += round_up(t.nbytes, kAlignment);
  }
}

const void* ExpertStore::next_router(int moe) const {
  if (router_at_.empty() || moe >= static_cast<int>(router_at_.size())) return nullptr;
  return static_cast<const char*>(routers_.data()) + router_at_[moe];
}

int ExpertStore::layer_experts(int moe) const {
  const int end = moe + 1 < static_cast<int>(first_key_.size()) ? first_key_[moe + 1]
                                                                : static_cast<int>(experts_.size());
  return end - first_key_[moe];
}

void ExpertStore::stream_layer(int moe, bool ahead) {
  streamed_.clear();
  for (int k = key(moe, 0); k < key(moe, 0) + layer_experts(moe); ++k) {
    if (experts_[k].host != nullptr || experts_[k].slot >= 0) continue;
    const int s = take_slot(false);  // queued slots stay pinned until flushed
    if (s < 0) break;                // every slot holds an expert in use
    queue(k, s);
    policy_->touch(k);
    streamed_.push_back(s);
  }
  flush();
  for (int s : streamed_) {
    if (ahead) {
      prefetched_slots_.push_back(s);  // kept until the layer's route, as prefetches are
    } else {
      slots_[s].pinned = false;  // read whether used or not; the step's own are pinned
    }
  }
}

void ExpertStore::prefetch(int moe, std::span<const int32_t> experts,
                           std::span<const float> likelihood) {
  layer_predicted_[moe] = 1;
  for (int32_t e : experts) predicted_[key(moe, e)] = 1;
  if (stream_all_) {
    stream_layer(moe, true);  // the whole next layer, as a dense offload's ring reads it
    return;
  }
  // Slots are taken as the chunks go out (pump_ahead): a guess never read evicts nothing.
  ahead_.clear();
  ahead_next_ = 0;
  for (size_t i = 0; i < experts.size() && likelihood[i] >= kPrefetchFloor; ++i) {
    const int k = key(moe, experts[i]);
    if (experts_[k].host == nullptr && experts_[k].slot < 0) ahead_.push_back(k);
  }
  pump_ahead();
}

uint64_t ExpertStore::read_bytes(int k) const {
  uint64_t bytes = 0;
  for (int r = 0; r < experts_[k].n_reads; ++r) bytes += experts_[k].reads[r].len;
  return bytes;
}

uint64_t ExpertStore::submit_ahead(int slot, uint64_t most) {
  Slot& sl = slots_[slot];
  const Expert& x = experts_[sl.key];
  uint64_t start = 0;  // of reads[r] in the expert's bytes
  for (int r = 0; r < x.n_reads; start += x.reads[r++].len) {
    const Read& read = x.reads[r];
    if (sl.ahead >= start + read.len) continue;
    const uint64_t in = sl.ahead - start;
    const uint64_t len = std::min(most, read.len - in);
    sl.futures.push_back(
        files_[read.file].pread(slot_data(slot) + read.rel + in, len, read.offset + in));
    sl.ahead += len;
    stats_.moe_bytes_read += len;
    ++stats_.moe_reads;
    host_.record_in(len);
    return len;
  }
  return 0;
}

void ExpertStore::pump_ahead() {
  // A slot released now goes first to the routed layer's experts still without one: a
  // read-ahead taking it would be evicted again before the next route.
  if (stream_all_ || slotless_ > 0) return;
  for (int s : miss_slots_) {
    for (const IoFuture& f : slots_[s].futures) {
      if (!f.ready()) return;  // the step waits for these: nothing goes in front of them
    }
  }
  int in_flight = 0;
  for (int s : prefetched_slots_) {
    for (const IoFuture& f : slots_[s].futures) in_flight += f.ready() ? 0 : 1;
  }
  while (in_flight < kAheadDepth) {
    int s = -1;
    for (int p : prefetched_slots_) {
      if (slots_[p].ahead < read_bytes(slots_[p].key)) {
        s = p;
        break;
      }
    }
    if (s < 0) {  // the next predicted expert, if still missing and a slot can be had
      if (ahead_next_ >= ahead_.size()) return;
      const int k = ahead_[ahead_next_++];
      if (experts_[k].host != nullptr || experts_[k].slot >= 0) continue;
      s = take_slot(false);
      if (s < 0) {  // every slot is in use by this layer or earlier predictions
        ahead_next_ = ahead_.size();
        return;
      }
      experts_[k].slot = s;
      Slot& sl = slots_[s];
      sl.key = k;
      sl.pinned = true;  // until the layer's route
      sl.prefetched = true;
      sl.batch = ++batches_;
      sl.ahead = 0;
      prefetched_slots_.push_back(s);
      ++stats_.moe_prefetch_reads;
    }
    submit_ahead(s, ahead_chunk_);
    ++in_flight;
  }
}

void ExpertStore::settle_ahead(int moe, std::span<const int32_t> experts) {
  for (int s : prefetched_slots_) {
    Slot& sl = slots_[s];
    sl.pinned = false;                                           // this layer's, now routed
    if (sl.key < 0 || sl.ahead >= read_bytes(sl.key)) continue;  // read whole
    if (std::binary_search(experts.begin(), experts.end(), sl.key - key(moe, 0))) {
      while (submit_ahead(s, UINT64_MAX) > 0) {
      }
      miss_slots_.push_back(s);
    } else {  // a wrong guess: the slot is free once its chunks in flight land (take_slot)
      experts_[sl.key].slot = -1;
      sl.key = -1;
      sl.prefetched = false;
    }
  }
  prefetched_slots_.clear();
  ahead_.clear();
  ahead_next_ = 0;
}

int ExpertStore::take_slot(bool any) {
  candidates_.clear();
  int dropped = -1;  // a free slot still reading a dropped read-ahead's chunks
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (slots_[s].key < 0 && slots_[s].futures.empty()) return static_cast<int>(s);
    if (slots_[s].key < 0) dropped = static_cast<int>(s);
    if (slots_[s].key >= 0 && (any || !slots_[s].pinned)) candidates_.push_back(slots_[s].key);
  }
  if (dropped >= 0) {
    wait(dropped, false);
    return dropped;
  }
  if (candidates_.empty()) return -1;
  const int victim = candidates_[policy_->victim(candidates_)];
  const int s = experts_[victim].slot;
  wait(s, false);  // a prefetch may still be in flight into it (evicted unused: unchecked)
  experts_[victim].slot = -1;
  slots_[s].key = -1;
  slots_[s].prefetched = false;
  return s;
}

void ExpertStore::queue(int k, int slot) {
  Expert& x = experts_[k];
  x.slot = slot;
  slots_[slot].key = k;
  slots_[slot].pinned = true;
  slots_[slot].batch = kExpertUnread;  // until flush() submits it
  const uint64_t bytes = read_bytes(k);
  slots_[slot].ahead = bytes;  // all of it goes out in flush()
  queued_.push_back(k);
  stats_.moe_bytes_read += bytes;
  for (const TensorInfo* t : x.part) host_.record_in(t->nbytes);
  stats_.moe_reads += static_cast<uint64_t>(x.n_reads);
}

void ExpertStore::flush() {
  if (!queued_.empty()) ++batches_;
  for (int k : queued_) slots_[experts_[k].slot].batch = batches_;
  for (size_t f = 0; f < files_.size() && !queued_.empty(); ++f) {
    requests_.clear();
    for (int k : queued_) {
      const Expert& x = experts_[k];
      for (int r = 0; r < x.n_reads; ++r) {
        if (x.reads[r].file != static_cast<int>(f)) continue;
        requests_.push_back(
            {slot_data(x.slot) + x.reads[r].rel, x.reads[r].len, x.reads[r].offset});
      }
    }
    if (requests_.empty()) continue;
    std::vector<IoFuture> futures = files_[f].pread_batch(requests_);
    size_t next = 0;
    for (int k : queued_) {
      const Expert& x = experts_[k];
      for (int r = 0; r < x.n_reads; ++r) {
        if (x.reads[r].file != static_cast<int>(f)) continue;
        slots_[x.slot].futures.push_back(std::move(futures[next++]));
      }
    }
  }
  queued_.clear();
}

void ExpertStore::wait(int slot, bool check) {
  std::vector<IoFuture>& futures = slots_[slot].futures;
  if (futures.empty()) return;
  const auto t0 = Clock::now();
  for (IoFuture& f : futures) f.get();
  futures.clear();
  stats_.moe_io_wait_seconds += seconds_since(t0);
  if (check && verify_reads_) check_read(slot);
}

// A damaged file (or a read gone wrong) after load would otherwise give wrong tokens: with
// verify, every expert read from disk is checked against its CRC-32 before it is used; on a
// mismatch the slot is emptied (nothing uses its bytes) and the error names the tensor.
void ExpertStore::check_read(int slot) {
  const int k = slots_[slot].key;
  const Expert& x = experts_[k];
  try {
    for (int p = 0; p < kExpertParts; ++p) {
      tensor_verify(package_, *x.part[p], slot_data(slot) + x.part_rel[p], &verify_);
    }
  } catch (...) {
    experts_[k].slot = -1;
    slots_[slot].key = -1;
    slots_[slot].pinned = false;
    slots_[slot].prefetched = false;
    throw;
  }
}

void ExpertStore::route(int moe, std::span<const int32_t> experts, std::span<const int32_t> rows,
                        size_t tokens) {
  if (moe == 0) stats_.moe_tokens += tokens;
  for (size_t i = 0; i < experts.size(); ++i) usage_[key(moe, experts[i])] += rows[i];
  policy_->step();
  miss_slots_.clear();
  slotless_ = 0;
  settle_ahead(moe, experts);
  if (layer_predicted_[moe]) {
    stats_.moe_predicted_lookups += experts.size();
    for (int32_t e : experts) stats_.moe_predicted_right += predicted_[key(moe, e)];
    const size_t end =
        moe + 1 < static_cast<int>(first_key_.size()) ? first_key_[moe + 1] : experts_.size();
    std::fill(predicted_.begin() + key(moe, 0), predicted_.begin() + end, 0);
    layer_predicted_[moe] = 0;
  }
  // Hits first, pinned so that this step's misses do not evict them.
  for (int32_t e : experts) {
    const int k = key(moe, e);
    Expert& x = experts_[k];
    ++stats_.moe_lookups;
    if (x.host != nullptr) {
      ++stats_.moe_host_hits;
      continue;
    }
    policy_->touch(k);
    if (x.slot >= 0) {
      ++stats_.moe_cache_hits;
      slots_[x.slot].pinned = true;
      if (slots_[x.slot].prefetched) ++stats_.moe_prefetch_used;
      slots_[x.slot].prefetched = false;
    }
  }
  for (int32_t e : experts) {
    const int k = key(moe, e);
    if (experts_[k].host != nullptr || experts_[k].slot >= 0) continue;
    ++stats_.moe_misses;
    const int s = take_slot(false);
    if (s < 0) {  // every slot holds an expert of this step: read when it is used
      ++slotless_;
      continue;
    }
    queue(k, s);
    miss_slots_.push_back(s);
  }
  flush();  // the step's misses in one batch
  if (stream_all_) stream_layer(moe, false);
}

uint64_t ExpertStore::landing(int moe, int32_t e) {
  pump_ahead();
  const Expert& x = experts_[key(moe, e)];
  if (x.host != nullptr) return kExpertReady;
  // no slot at route time (read when it is used)
  if (x.slot < 0 || slots_[x.slot].batch == kExpertUnread) return kExpertUnread;
  for (const IoFuture& f : slots_[x.slot].futures) {
    if (!f.ready()) return slots_[x.slot].batch;  // batches_ counts from 1
  }
  return kExpertReady;
}

ExpertWeights ExpertStore::expert(int moe, int32_t e) {
  Expert& x = experts_[key(moe, e)];
  char* base = x.host;
  if (base == nullptr) {
    if (x.slot < 0) {
      // No slot at route time: every slot holds an expert of this step. Those used before this
      // one are released; when the rest hold hits of experts used after it, one of those is
      // evicted (its hit becomes a miss, read again when its turn comes).
      int s = take_slot(false);
      if (s < 0) {
        s = take_slot(true);
        --stats_.moe_cache_hits;
        ++stats_.moe_misses;
        ++slotless_;  // the evicted hit, read again when its turn comes
      }
      queue(key(moe, e), s);
      flush();
      --slotless_;
    }
    wait(x.slot, true);
    base = slot_data(x.slot);
  }
  pump_ahead();
  ExpertWeights w;
  for (int p = 0; p < kExpertParts; ++p) w.part[p] = base + x.part_rel[p];
  return w;
}

void ExpertStore::release(int moe, int32_t e) {
  const Expert& x = experts_[key(moe, e)];
  if (x.slot >= 0) slots_[x.slot].pinned = false;
  pump_ahead();
}

}  // namespace tierlm::detail
