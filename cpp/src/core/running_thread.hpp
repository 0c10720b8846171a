// Starts a thread and returns once it runs. A thread's start allocates on the new thread (the
// C++ and sanitizer runtimes' per-thread state; three heap allocations under ASan): started
// with std::thread alone, a thread the scheduler runs late makes those allocations in the
// middle of whatever its creator does next, such as a decode step that promises to allocate
// nothing. Every long-lived thread of the runtime starts through here.
#pragma once

#include <atomic>
#include <thread>
#include <utility>

namespace tierlm::detail {

template <typename Body>
std::thread start_running_thread(Body body) {
  std::atomic<bool> running{false};
  std::thread thread([&running, body = std::move(body)]() mutable {
    running.store(true, std::memory_order_release);  // the last touch of the creator's frame
    body();
  });
  while (!running.load(std::memory_order_acquire)) std::this_thread::yield();
  return thread;
}

}  // namespace tierlm::detail
