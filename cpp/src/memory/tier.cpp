// Host tier: page-aligned buffers charged to a budget, pinned with mlock where allowed.
#include "tierlm/memory/tier.hpp"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <utility>

#include "memory/tier_ledger.hpp"
#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/memory/device.hpp"

namespace tierlm {

namespace {

size_t page_size() {
  static const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return kPage;
}

// Buffers of at least this size are aligned to it and asked for transparent huge pages: decode
// streams every weight once per token, and with 4 KiB pages each 4 KiB row of a matrix costs a
// TLB miss on top of its DRAM read.
constexpr size_t kHugePage = size_t{2} << 20;

}  // namespace

const char* tier_name(TierKind kind) {
  switch (kind) {
    case TierKind::kTierDevice:
      return "device";
    case TierKind::kTierHost:
      return "host";
    case TierKind::kTierDisk:
      return "disk";
  }
  return "unknown";
}

uint64_t memlock_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return UINT64_MAX;
  }
  return limit.rlim_cur;
}

HostBuffer::HostBuffer(HostBuffer&& other) noexcept { *this = std::move(other); }

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    release();
    ledger_ = std::move(other.ledger_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    reserved_ = std::exchange(other.reserved_, 0);
    locked_ = std::exchange(other.locked_, false);
    pinned_ = std::exchange(other.pinned_, false);
  }
  return *this;
}

HostBuffer::~HostBuffer() { release(); }

void HostBuffer::release() {
  if (data_ == nullptr) return;
  if (pinned_) detail::host_unpin(data_);
  if (locked_) {
    munlock(data_, reserved_);
    ledger_->record_locked(-static_cast<int64_t>(reserved_));
  }
  std::free(data_);
  ledger_->release(reserved_);
  data_ = nullptr;
  ledger_.reset();
}

HostTier::HostTier(uint64_t budget, bool lock, bool pin)
    : ledger_(std::make_shared<detail::TierLedger>(TierKind::kTierHost, budget)),
      lock_(lock),
      pin_(pin) {}

HostBuffer HostTier::allocate(size_t bytes, size_t alignment) {
  TIERLM_CHECK(alignment != 0 && (alignment & (alignment - 1)) == 0, kErrorInvalidArgument,
               "host tier: alignment ", alignment, " is not a power of two");
  alignment = std::max(alignment, page_size());
  const size_t reserved = round_up(std::max<size_t>(bytes, 1), page_size());
  if (reserved >= kHugePage) alignment = std::max(alignment, kHugePage);
  ledger_->reserve(reserved);
  void* data = nullptr;
  if (posix_memalign(&data, alignment, reserved) != 0) {
    ledger_->release(reserved);
    TIERLM_FAIL(kErrorBudget, ENOMEM, "host tier: the system refused ", format_bytes(reserved),
                " although the budget allows it (out of memory?)");
  }
#ifdef MADV_HUGEPAGE
  // Before the first touch (mlock below), and only whole huge pages inside the reservation, so
  // the pages held never exceed what the budget was charged. Advice only: failure is harmless.
  if (reserved >= kHugePage) madvise(data, reserved / kHugePage * kHugePage, MADV_HUGEPAGE);
#endif
  HostBuffer buffer;
  buffer.ledger_ = ledger_;
  buffer.data_ = data;
  buffer.size_ = bytes;
  buffer.reserved_ = reserved;
  if (lock_ && mlock(data, reserved) == 0) {
    buffer.locked_ = true;
    ledger_->record_locked(static_cast<int64_t>(reserved));
  }
  buffer.pinned_ = pin_ && detail::host_pin(data, reserved);
  return buffer;
}

TierStats HostTier::stats() const { return ledger_->stats(); }
uint64_t HostTier::budget() const { return ledger_->budget(); }
uint64_t HostTier::available() const { return ledger_->budget() - ledger_->current(); }
void HostTier::record_in(uint64_t bytes) { ledger_->record_in(bytes); }
void HostTier::record_out(uint64_t bytes) { ledger_->record_out(bytes); }

}  // namespace tierlm
