// Memory tiers: a byte budget and stats per tier, and move-only handles for what they hold.
// A budget is a promise: an allocation that would pass it throws kErrorBudget, naming the
// tier, the request and the budget. Host buffers are page-aligned and mlocked when allowed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tierlm/core/align.hpp"
#include "tierlm/core/export.hpp"

namespace tierlm {

enum class TierKind { kTierDevice, kTierHost, kTierDisk };

TIERLM_API const char* tier_name(TierKind kind);

struct TIERLM_API TierStats {
  uint64_t budget = 0;
  uint64_t current = 0;      // bytes held now
  uint64_t peak = 0;         // most bytes ever held at once
  uint64_t bytes_in = 0;     // bytes written into the tier
  uint64_t bytes_out = 0;    // bytes read out of the tier
  uint64_t transfers = 0;    // number of reads + writes
  uint64_t allocations = 0;  // allocations made so far
  uint64_t locked = 0;       // host: bytes pinned by mlock / cudaHostAlloc
};

namespace detail {
class TierLedger;
}

// One byte budget and its counters; shared by a tier and every handle it gave out.
using TierLedgerPtr = std::shared_ptr<detail::TierLedger>;

class TIERLM_API HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  bool locked() const { return locked_; }
  bool pinned() const { return pinned_; }  // registered with CUDA for DMA
  explicit operator bool() const { return data_ != nullptr; }

 private:
  friend class HostTier;
  void release();

  TierLedgerPtr ledger_;
  void* data_ = nullptr;
  size_t size_ = 0;
  size_t reserved_ = 0;  // bytes charged to the budget (size rounded up to the page)
  bool locked_ = false;
  bool pinned_ = false;
};

class TIERLM_API HostTier {
 public:
  // lock: pin buffers with mlock while RLIMIT_MEMLOCK allows; beyond it they stay pageable.
  // pin: also register each buffer with CUDA for DMA (where a GPU is usable), which only pays
  // when a device tier copies from this tier: whoever creates a device tier sets it.
  explicit HostTier(uint64_t budget, bool lock = true, bool pin = false);

  HostBuffer allocate(size_t bytes, size_t alignment = kAlignment);
  TierStats stats() const;
  uint64_t budget() const;
  uint64_t available() const;
  // Transfers into / out of host memory that the tier's owner wants counted.
  void record_in(uint64_t bytes);
  void record_out(uint64_t bytes);

 private:
  TierLedgerPtr ledger_;
  bool lock_;
  bool pin_;
};

// Bytes of RLIMIT_MEMLOCK (UINT64_MAX when unlimited or the process may lock anything).
TIERLM_API uint64_t memlock_limit();

}  // namespace tierlm
