// Device tier: GPU memory as one cudaMalloc arena under a byte budget, with synchronous
// copies that are counted in the tier's stats. Present in CUDA builds; elsewhere
// device_count() is 0 and constructing a DeviceTier throws kErrorUnsupported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tierlm/core/export.hpp"
#include "tierlm/memory/tier.hpp"

namespace tierlm {

// GPUs usable by this build (0 without CUDA, without a driver or without a device).
TIERLM_API int device_count();
// Why device_count() is 0, or "" when it is not.
TIERLM_API std::string device_unavailable_reason();

namespace detail {
class DeviceArena;
// Pins / unpins host memory for fast DMA (cudaHostRegister); false when no GPU is usable.
TIERLM_API bool host_pin(void* data, size_t bytes);
TIERLM_API void host_unpin(void* data);
}  // namespace detail

class TIERLM_API DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  friend class DeviceTier;
  void release();

  std::shared_ptr<detail::DeviceArena> arena_;
  void* data_ = nullptr;
  size_t size_ = 0;
  uint64_t offset_ = 0;
};

class TIERLM_API DeviceTier {
 public:
  // Reserves the whole budget as one arena on `device` up front, so later allocations
  // cannot fail because other processes took the GPU's memory.
  DeviceTier(uint64_t budget, int device = 0);

  DeviceBuffer allocate(size_t bytes);
  void copy_in(const DeviceBuffer& dst, size_t offset, const void* host, size_t bytes);
  void copy_out(const DeviceBuffer& src, size_t offset, void* host, size_t bytes);
  TierStats stats() const;
  int device() const;

 private:
  std::shared_ptr<detail::DeviceArena> arena_;
};

}  // namespace tierlm
