// The device tier in a build without CUDA: there is no device, and saying so is the job.
#include "tierlm/core/error.hpp"
#include "tierlm/memory/device.hpp"

namespace tierlm {

namespace detail {
class DeviceArena {};
bool host_pin(void*, size_t) { return false; }
void host_unpin(void*) {}
}  // namespace detail

int device_count() { return 0; }

std::string device_unavailable_reason() {
  return "tierlm was built without CUDA (rebuild with nvcc on PATH or -DTIERLM_WITH_CUDA=ON)";
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&&) noexcept {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept { return *this; }
DeviceBuffer::~DeviceBuffer() = default;
void DeviceBuffer::release() {}

DeviceTier::DeviceTier(uint64_t, int) {
  TIERLM_FAIL(kErrorUnsupported, 0, "device tier: ", device_unavailable_reason());
}
DeviceBuffer DeviceTier::allocate(size_t) { return {}; }
void DeviceTier::copy_in(const DeviceBuffer&, size_t, const void*, size_t) {}
void DeviceTier::copy_out(const DeviceBuffer&, size_t, void*, size_t) {}
TierStats DeviceTier::stats() const { return {}; }
int DeviceTier::device() const { return -1; }

}  // namespace tierlm
