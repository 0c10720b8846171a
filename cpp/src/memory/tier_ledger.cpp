// Budget accounting: a compare-and-swap loop so concurrent allocations never overshoot.
#include "memory/tier_ledger.hpp"

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

bool TierLedger::try_reserve(uint64_t bytes) {
  uint64_t now = current_.load(std::memory_order_relaxed);
  do {
    if (bytes > budget_ || now > budget_ - bytes) return false;
  } while (!current_.compare_exchange_weak(now, now + bytes, std::memory_order_relaxed));
  uint64_t peak = peak_.load(std::memory_order_relaxed);
  while (now + bytes > peak &&
         !peak_.compare_exchange_weak(peak, now + bytes, std::memory_order_relaxed)) {
  }
  allocations_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void TierLedger::reserve(uint64_t bytes, const char* what) {
  if (try_reserve(bytes)) return;
  TIERLM_FAIL(kErrorBudget, 0, tier_name(kind_), " tier: ", what, " of ", format_bytes(bytes), " (",
              bytes, " bytes) does not fit: ", format_bytes(current()), " of the ",
              format_bytes(budget_), " budget is in use; raise the ", tier_name(kind_),
              " budget or lower the request");
}

void TierLedger::release(uint64_t bytes) { current_.fetch_sub(bytes, std::memory_order_relaxed); }

void TierLedger::record_in(uint64_t bytes) {
  bytes_in_.fetch_add(bytes, std::memory_order_relaxed);
  transfers_.fetch_add(1, std::memory_order_relaxed);
}

void TierLedger::record_out(uint64_t bytes) {
  bytes_out_.fetch_add(bytes, std::memory_order_relaxed);
  transfers_.fetch_add(1, std::memory_order_relaxed);
}

void TierLedger::record_locked(int64_t delta) {
  locked_.fetch_add(delta, std::memory_order_relaxed);
}

TierStats TierLedger::stats() const {
  TierStats s;
  s.budget = budget_;
  s.current = current_.load(std::memory_order_relaxed);
  s.peak = peak_.load(std::memory_order_relaxed);
  s.bytes_in = bytes_in_.load(std::memory_order_relaxed);
  s.bytes_out = bytes_out_.load(std::memory_order_relaxed);
  s.transfers = transfers_.load(std::memory_order_relaxed);
  s.allocations = allocations_.load(std::memory_order_relaxed);
  s.locked = static_cast<uint64_t>(locked_.load(std::memory_order_relaxed));
  return s;
}

}  // namespace tierlm::detail
