// Neuron cache and window of sparse-neuron flash loading; see tierlm/neuron_cache.hpp.
#include "tierlm/sparse/neuron_cache.hpp"

#include <algorithm>
#include <cstring>

#include "tierlm/core/error.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace tierlm {

NeuronCache::NeuronCache(HostTier& tier, size_t n_neurons, size_t capacity, size_t row_elems,
                         DType dtype)
    : n_neurons_(n_neurons),
      capacity_(capacity),
      row_elems_(row_elems),
      row_bytes_(dtype_row_bytes(dtype, row_elems)),
      dtype_(dtype) {
  TIERLM_CHECK(n_neurons > 0 && n_neurons <= INT32_MAX, kErrorInvalidArgument,
               "neuron cache: n_neurons ", n_neurons, " must be in 1 .. 2^31-1");
  TIERLM_CHECK(capacity > 0 && capacity <= n_neurons, kErrorInvalidArgument,
               "neuron cache: capacity ", capacity, " must be in 1 .. n_neurons (", n_neurons, ")");
  TIERLM_CHECK(row_elems > 0, kErrorInvalidArgument, "neuron cache: row_elems must be > 0");
  const size_t row_total = capacity * row_bytes_;
  const size_t map_total = (n_neurons + capacity) * sizeof(int32_t);
  TIERLM_CHECK(tier.available() >= row_total + map_total, kErrorBudget, "neuron cache: ", capacity,
               " rows of ", row_elems, " ", dtype_name(dtype), " (", format_bytes(row_total),
               ") plus maps (", format_bytes(map_total),
               ") do not fit in the host tier: ", format_bytes(tier.available()), " of ",
               format_bytes(tier.budget()),
               " budget left; lower the capacity or the window, or raise the host budget");
  rows_ = tier.allocate(row_total);
  maps_ = tier.allocate(map_total);
  slot_of_ = static_cast<int32_t*>(maps_.data());
  neuron_at_ = slot_of_ + n_neurons;
  std::fill(slot_of_, slot_of_ + n_neurons, -1);
  std::fill(neuron_at_, neuron_at_ + capacity, -1);
}

void NeuronCache::check_neuron(int32_t neuron, const char* what) const {
  TIERLM_CHECK(neuron >= 0 && static_cast<size_t>(neuron) < n_neurons_, kErrorInvalidArgument,
               "neuron cache: cannot ", what, " neuron ", neuron, ": ids are 0 .. ",
               n_neurons_ - 1);
}

bool NeuronCache::contains(int32_t neuron) const {
  return neuron >= 0 && static_cast<size_t>(neuron) < n_neurons_ && slot_of_[neuron] >= 0;
}

int32_t NeuronCache::slot_of(int32_t neuron) const {
  check_neuron(neuron, "look up");
  return slot_of_[neuron];
}

int32_t NeuronCache::neuron_at(size_t slot) const {
  TIERLM_CHECK(slot < size_, kErrorInvalidArgument, "neuron cache: slot ", slot, " is not filled (",
               size_, " rows cached)");
  return neuron_at_[slot];
}

void* NeuronCache::row(size_t slot) {
  TIERLM_CHECK(slot < size_, kErrorInvalidArgument, "neuron cache: slot ", slot, " is not filled (",
               size_, " rows cached)");
  return static_cast<char*>(rows_.data()) + slot * row_bytes_;
}

const void* NeuronCache::row(size_t slot) const {
  return const_cast<NeuronCache*>(this)->row(slot);
}

void NeuronCache::insert(const int32_t* neurons, size_t n, const void* rows) {
  TIERLM_CHECK(size_ + n <= capacity_, kErrorBudget, "neuron cache: inserting ", n,
               " neurons into ", size_, " cached would pass the capacity of ", capacity_,
               " rows; evict first or construct the cache with a larger capacity");
  // Validate everything first so a failed call leaves the cache unchanged. Marking the new
  // slots as we go catches repeats within the call; undo on failure.
  size_t done = 0;
  try {
    for (; done < n; ++done) {
      const int32_t id = neurons[done];
      check_neuron(id, "insert");
      TIERLM_CHECK(slot_of_[id] < 0, kErrorInvalidArgument, "neuron cache: neuron ", id,
                   " is already cached (slot ", slot_of_[id], ")");
      slot_of_[id] = static_cast<int32_t>(size_ + done);
    }
  } catch (...) {
    for (size_t j = 0; j < done; ++j) slot_of_[neurons[j]] = -1;
    throw;
  }
  for (size_t j = 0; j < n; ++j) neuron_at_[size_ + j] = neurons[j];
  if (rows != nullptr && n > 0) {
    std::memcpy(static_cast<char*>(rows_.data()) + size_ * row_bytes_, rows, n * row_bytes_);
  }
  size_ += n;
}

void NeuronCache::erase(const int32_t* neurons, size_t n) {
  // Validate first (cached, no repeats) using the sign bit of slot_of_ as a mark.
  size_t done = 0;
  try {
    for (; done < n; ++done) {
      const int32_t id = neurons[done];
      check_neuron(id, "erase");
      TIERLM_CHECK(slot_of_[id] >= 0, kErrorInvalidArgument, "neuron cache: neuron ", id,
                   slot_of_[id] == -1 ? " is not cached" : " is repeated in the erase list");
      slot_of_[id] = -2 - slot_of_[id];
    }
  } catch (...) {
    for (size_t j = 0; j < done; ++j) slot_of_[neurons[j]] = -2 - slot_of_[neurons[j]];
    throw;
  }
  for (size_t j = 0; j < n; ++j) slot_of_[neurons[j]] = -2 - slot_of_[neurons[j]];
  char* base = static_cast<char*>(rows_.data());
  for (size_t j = 0; j < n; ++j) {
    const int32_t id = neurons[j];
    const size_t hole = static_cast<size_t>(slot_of_[id]);
    const size_t last = size_ - 1;
    if (hole != last) {
      const int32_t moved = neuron_at_[last];
      std::memcpy(base + hole * row_bytes_, base + last * row_bytes_, row_bytes_);
      neuron_at_[hole] = moved;
      slot_of_[moved] = static_cast<int32_t>(hole);
    }
    neuron_at_[last] = -1;
    slot_of_[id] = -1;
    --size_;
  }
}

void NeuronCache::clear() {
  for (size_t s = 0; s < size_; ++s) {
    slot_of_[neuron_at_[s]] = -1;
    neuron_at_[s] = -1;
  }
  size_ = 0;
}

namespace {

void check_window(size_t n_neurons, size_t k) {
  TIERLM_CHECK(n_neurons > 0 && n_neurons <= INT32_MAX, kErrorInvalidArgument,
               "neuron window: n_neurons ", n_neurons, " must be in 1 .. 2^31-1");
  TIERLM_CHECK(k >= 1, kErrorInvalidArgument, "neuron window: k must be >= 1 token");
}

}  // namespace

size_t NeuronWindow::state_bytes(size_t n_neurons, size_t k) {
  return n_neurons * sizeof(int64_t) + k * sizeof(size_t) + k * n_neurons * sizeof(int32_t);
}

NeuronWindow::NeuronWindow(size_t n_neurons, size_t k) : n_neurons_(n_neurons), k_(k) {
  check_window(n_neurons, k);
  heap_.resize(state_bytes(n_neurons, k) + sizeof(int64_t));
  // vector<char> storage is suitably aligned for int64 (operator new alignment).
  init(heap_.data());
}

NeuronWindow::NeuronWindow(HostTier& tier, size_t n_neurons, size_t k)
    : n_neurons_(n_neurons), k_(k) {
  check_window(n_neurons, k);
  tier_ = tier.allocate(state_bytes(n_neurons, k));
  init(tier_.data());
}

void NeuronWindow::init(void* state) {
  last_seen_ = static_cast<int64_t*>(state);
  ring_len_ = reinterpret_cast<size_t*>(last_seen_ + n_neurons_);
  ring_ = reinterpret_cast<int32_t*>(ring_len_ + k_);
  std::fill(last_seen_, last_seen_ + n_neurons_, -1);
  std::fill(ring_len_, ring_len_ + k_, 0);
}

bool NeuronWindow::contains(int32_t neuron) const {
  if (neuron < 0 || static_cast<size_t>(neuron) >= n_neurons_) return false;
  const int64_t seen = last_seen_[neuron];
  return seen >= 0 && static_cast<int64_t>(token_) - seen <= static_cast<int64_t>(k_);
}

NeuronWindow::Step NeuronWindow::step(const int32_t* active, size_t n_active, int32_t* to_load,
                                      int32_t* to_evict) {
  const int64_t t = static_cast<int64_t>(token_);
  const int64_t k = static_cast<int64_t>(k_);
  for (size_t j = 0; j < n_active; ++j) {
    TIERLM_CHECK(active[j] >= 0 && static_cast<size_t>(active[j]) < n_neurons_,
                 kErrorInvalidArgument, "neuron window: active neuron ", active[j],
                 " is out of range 0 .. ", n_neurons_ - 1);
  }
  Step out;
  // The token leaving the window is t - k: its neurons not seen since leave the union.
  const size_t slot = token_ % k_;
  if (t >= k) {
    const int32_t* leaving = &ring_[slot * n_neurons_];
    for (size_t j = 0; j < ring_len_[slot]; ++j) {
      const int32_t id = leaving[j];
      if (last_seen_[id] == t - k) to_evict[out.n_evict++] = id;
    }
  }
  // Record this token's list and find what to load.
  int32_t* now = &ring_[slot * n_neurons_];
  size_t n_now = 0;
  for (size_t j = 0; j < n_active; ++j) {
    const int32_t id = active[j];
    const int64_t seen = last_seen_[id];
    if (seen == t) continue;                           // repeated in this token's list
    const bool in_union = seen >= 0 && seen >= t - k;  // window before this step: t-k .. t-1
    if (!in_union) to_load[out.n_load++] = id;
    last_seen_[id] = t;
    now[n_now++] = id;
  }
  ring_len_[slot] = n_now;
  // Neurons leaving with the old token but active again now stay: drop them from evict.
  size_t kept = 0;
  for (size_t j = 0; j < out.n_evict; ++j) {
    if (last_seen_[to_evict[j]] != t) to_evict[kept++] = to_evict[j];
  }
  out.n_evict = kept;
  union_size_ += out.n_load;
  union_size_ -= out.n_evict;
  ++token_;
  return out;
}

void NeuronWindow::reset() {
  std::fill(last_seen_, last_seen_ + n_neurons_, -1);
  std::fill(ring_len_, ring_len_ + k_, 0);
  token_ = 0;
  union_size_ = 0;
}

}  // namespace tierlm
