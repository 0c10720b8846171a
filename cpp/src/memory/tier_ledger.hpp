// The budget bookkeeping behind every tier: lock-free reserve/release and counters.
#pragma once

#include <atomic>
#include <cstdint>

#include "tierlm/memory/tier.hpp"

namespace tierlm::detail {

class TierLedger {
 public:
  TierLedger(TierKind kind, uint64_t budget) : kind_(kind), budget_(budget) {}

  // Charges bytes to the budget or throws kErrorBudget naming the tier, request and budget.
  void reserve(uint64_t bytes, const char* what = "allocation");
  // Like reserve, but returns false instead of throwing.
  bool try_reserve(uint64_t bytes);
  void release(uint64_t bytes);
  void record_in(uint64_t bytes);
  void record_out(uint64_t bytes);
  void record_locked(int64_t delta);

  TierKind kind() const { return kind_; }
  uint64_t budget() const { return budget_; }
  uint64_t current() const { return current_.load(std::memory_order_relaxed); }
  TierStats stats() const;

 private:
  TierKind kind_;
  uint64_t budget_;
  std::atomic<uint64_t> current_{0};
  std::atomic<uint64_t> peak_{0};
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  std::atomic<uint64_t> transfers_{0};
  std::atomic<uint64_t> allocations_{0};
  std::atomic<int64_t> locked_{0};
};

}  // namespace tierlm::detail
