// The device tier on CUDA: one cudaMalloc arena per DeviceTier, carved into extents by the
// shared ExtentAllocator; host pinning through cudaHostRegister.
#include <cuda_runtime.h>

#include <mutex>
#include <utility>

#include "memory/extent_allocator.hpp"
#include "memory/tier_ledger.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/memory/device.hpp"

namespace tierlm {

namespace {

constexpr uint64_t kDeviceAlignment = 256;

#define TIERLM_CUDA_CHECK(call, ...)                                                             \
  do {                                                                                           \
    cudaError_t status_ = (call);                                                                \
    if (status_ != cudaSuccess)                                                                  \
      TIERLM_FAIL(kErrorIo, 0, "device tier: ", __VA_ARGS__, ": ", cudaGetErrorString(status_)); \
  } while (0)

}  // namespace

namespace detail {

class DeviceArena {
 public:
  DeviceArena(uint64_t budget, int device)
      : ledger(TierKind::kTierDevice, budget), allocator(budget, kDeviceAlignment), device(device) {
    TIERLM_CUDA_CHECK(cudaSetDevice(device), "selecting GPU ", device);
    TIERLM_CUDA_CHECK(cudaMalloc(&base, budget), "reserving the ", format_bytes(budget),
                      " arena on GPU ", device, " (lower the device budget?)");
  }
  ~DeviceArena() { cudaFree(base); }

  TierLedger ledger;
  ExtentAllocator allocator;
  std::mutex mutex;
  void* base = nullptr;
  int device;
};

bool host_pin(void* data, size_t bytes) {
  if (device_count() == 0) return false;
  return cudaHostRegister(data, bytes, cudaHostRegisterDefault) == cudaSuccess;
}

void host_unpin(void* data) { cudaHostUnregister(data); }

}  // namespace detail

int device_count() {
  // Probed once: the driver's answer does not change while the process runs.
  static const int kCount = [] {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
  }();
  return kCount;
}

std::string device_unavailable_reason() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) return std::string("CUDA reports: ") + cudaGetErrorString(status);
  return count == 0 ? "no CUDA device is present" : "";
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    release();
    arena_ = std::move(other.arena_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    offset_ = std::exchange(other.offset_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { release(); }

void DeviceBuffer::release() {
  if (data_ == nullptr) return;
  {
    std::lock_guard lock(arena_->mutex);
    arena_->allocator.free(offset_, size_);
  }
  arena_->ledger.release(arena_->allocator.rounded(size_));
  data_ = nullptr;
  arena_.reset();
}

DeviceTier::DeviceTier(uint64_t budget, int device) {
  const int count = device_count();
  TIERLM_CHECK(device >= 0 && device < count, kErrorUnsupported, "device tier: GPU ", device,
               " is not available (", count, " present; ", device_unavailable_reason(), ")");
  arena_ = std::make_shared<detail::DeviceArena>(budget, device);
}

DeviceBuffer DeviceTier::allocate(size_t bytes) {
  const uint64_t charged = arena_->allocator.rounded(bytes);
  arena_->ledger.reserve(charged);
  std::optional<uint64_t> offset;
  {
    std::lock_guard lock(arena_->mutex);
    offset = arena_->allocator.allocate(bytes);
  }
  if (!offset) {
    arena_->ledger.release(charged);
    TIERLM_FAIL(kErrorBudget, 0, "device tier: ", format_bytes(bytes),
                " fits the budget but not the arena's largest free extent (",
                format_bytes(arena_->allocator.largest_free()), "); free buffers or plan offsets");
  }
  DeviceBuffer buffer;
  buffer.arena_ = arena_;
  buffer.data_ = static_cast<char*>(arena_->base) + *offset;
  buffer.size_ = bytes;
  buffer.offset_ = *offset;
  return buffer;
}

void DeviceTier::copy_in(const DeviceBuffer& dst, size_t offset, const void* host, size_t bytes) {
  TIERLM_CHECK(offset + bytes <= dst.size(), kErrorInvalidArgument, "device tier: copy of ", bytes,
               " bytes at offset ", offset, " overruns a ", dst.size(), "-byte buffer");
  TIERLM_CUDA_CHECK(
      cudaMemcpy(static_cast<char*>(dst.data()) + offset, host, bytes, cudaMemcpyHostToDevice),
      "copy of ", format_bytes(bytes), " to GPU ", arena_->device);
  arena_->ledger.record_in(bytes);
}

void DeviceTier::copy_out(const DeviceBuffer& src, size_t offset, void* host, size_t bytes) {
  TIERLM_CHECK(offset + bytes <= src.size(), kErrorInvalidArgument, "device tier: copy of ", bytes,
               " bytes at offset ", offset, " overruns a ", src.size(), "-byte buffer");
  TIERLM_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(src.data()) + offset, bytes,
                               cudaMemcpyDeviceToHost),
                    "copy of ", format_bytes(bytes), " from GPU ", arena_->device);
  arena_->ledger.record_out(bytes);
}

TierStats DeviceTier::stats() const { return arena_->ledger.stats(); }
int DeviceTier::device() const { return arena_->device; }

}  // namespace tierlm
