// Sparse-neuron flash loading (LLM in a flash): the host-tier neuron cache of one FFN layer
// and the sliding window that decides what to load and evict per token. The kernel that
// computes on the cached rows is in sparse_ffn.hpp.
//
// A bundled row holds one neuron's weights contiguously: [up_i | gate_i (gated only) | down_i],
// each `dim` elements, so one read fetches one neuron (see docs/sparse.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tierlm/core/export.hpp"
#include "tierlm/kernels/kernels.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm {

// One layer's cache: a matrix of `capacity` bundled rows preallocated from a host tier (its
// bytes count against the tier's budget), plus neuron -> slot and slot -> neuron maps.
// Insertion appends at the end; erasing moves the last rows into the holes, so rows stay
// dense in slots [0, size) and nothing is ever reallocated.
class TIERLM_API NeuronCache {
 public:
  // n_neurons: neurons of the layer (ids 0 .. n_neurons-1); row_elems: elements per row.
  NeuronCache(HostTier& tier, size_t n_neurons, size_t capacity, size_t row_elems,
              DType dtype = DType::kDTypeF32);
  NeuronCache(NeuronCache&&) noexcept = default;
  NeuronCache& operator=(NeuronCache&&) noexcept = default;

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  size_t n_neurons() const { return n_neurons_; }
  size_t row_elems() const { return row_elems_; }
  size_t row_bytes() const { return row_bytes_; }
  DType dtype() const { return dtype_; }
  // Bytes this cache holds in its tier (rows and maps, rounded to pages).
  size_t reserved_bytes() const { return rows_.size() + maps_.size(); }

  bool contains(int32_t neuron) const;
  // Slot of a neuron, -1 when it is not cached.
  int32_t slot_of(int32_t neuron) const;
  int32_t neuron_at(size_t slot) const;
  // slot -> neuron for slots [0, size).
  const int32_t* neurons() const { return neuron_at_; }
  const void* rows() const { return rows_.data(); }
  void* row(size_t slot);
  const void* row(size_t slot) const;

  // Appends n neurons whose bundled rows are rows[n, row_elems] (row_bytes() each; may be
  // null to leave the rows for the caller to fill through row()). Fails (nothing inserted)
  // when a neuron is out of range, repeated or already cached, or when capacity is exceeded.
  void insert(const int32_t* neurons, size_t n, const void* rows);
  // Removes n cached neurons; the last rows move into the freed slots. Fails (nothing
  // removed) when a neuron is not cached or repeated.
  void erase(const int32_t* neurons, size_t n);
  void clear();

 private:
  void check_neuron(int32_t neuron, const char* what) const;

  HostBuffer rows_;
  HostBuffer maps_;
  int32_t* slot_of_ = nullptr;    // [n_neurons], -1 when absent
  int32_t* neuron_at_ = nullptr;  // [capacity]
  size_t n_neurons_ = 0;
  size_t capacity_ = 0;
  size_t row_elems_ = 0;
  size_t row_bytes_ = 0;
  size_t size_ = 0;
  DType dtype_ = DType::kDTypeF32;
};

// The window of the last k tokens: the cache keeps the union of the neurons active over
// them. step() takes the next token's active neurons and says which to load (active now,
// not in the union) and which to evict (in no token of the window any more). Evict before
// loading: the cache then needs capacity for the largest union only.
class TIERLM_API NeuronWindow {
 public:
  NeuronWindow(size_t n_neurons, size_t k = 4);
  // The same with its state (about (k * 4 + 8) * n_neurons bytes) allocated from a host tier,
  // so that it counts against the tier's budget.
  NeuronWindow(HostTier& tier, size_t n_neurons, size_t k);
  // Bytes of state a window of these sizes holds.
  static size_t state_bytes(size_t n_neurons, size_t k);
  NeuronWindow(NeuronWindow&&) noexcept = default;
  NeuronWindow& operator=(NeuronWindow&&) noexcept = default;
  NeuronWindow(const NeuronWindow&) = delete;
  NeuronWindow& operator=(const NeuronWindow&) = delete;

  struct Step {
    size_t n_load = 0;
    size_t n_evict = 0;
  };
  // to_load and to_evict must each have room for n_neurons() ids. Duplicates in `active`
  // count once. Allocates nothing.
  Step step(const int32_t* active, size_t n_active, int32_t* to_load, int32_t* to_evict);
  size_t size() const { return union_size_; }
  size_t k() const { return k_; }
  size_t n_neurons() const { return n_neurons_; }
  uint64_t tokens() const { return token_; }
  bool contains(int32_t neuron) const;
  void reset();

 private:
  size_t n_neurons_ = 0;
  size_t k_ = 0;
  uint64_t token_ = 0;  // tokens stepped so far
  size_t union_size_ = 0;
  void init(void* state);
  // Sized once at construction (in heap_ or tier_); step() only writes into them.
  std::vector<char> heap_;
  HostBuffer tier_;
  int64_t* last_seen_ = nullptr;  // [n_neurons] last token a neuron was active in, -1 never
  size_t* ring_len_ = nullptr;    // [k]
  int32_t* ring_ = nullptr;       // [k, n_neurons] active lists of the last k tokens
};

}  // namespace tierlm
