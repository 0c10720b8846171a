// The compute thread pool: one per process, created lazily, sized to the machine
// (TIERLM_THREADS overrides). parallel_for never allocates, so the per-token path can use it.
#pragma once

#include <cstddef>

#include "tierlm/core/export.hpp"

namespace tierlm {

TIERLM_API size_t parallel_threads();
// Resizes the pool (0 = hardware concurrency). Not to be called while work is running.
TIERLM_API void parallel_set_threads(size_t threads);
// Joins the pool's workers; the next parallel_for starts them again.
TIERLM_API void parallel_shutdown();

namespace detail {
using RangeFn = void (*)(void* context, size_t begin, size_t end);
TIERLM_API void parallel_run(size_t n, size_t min_chunk, void* context, RangeFn fn);
}  // namespace detail

// Calls fn(begin, end) over disjoint ranges covering [0, n), at least min_chunk items each,
// on the pool's threads and the caller's; returns when all ranges are done.
template <typename Fn>
TIERLM_API void parallel_for(size_t n, Fn&& fn, size_t min_chunk = 1) {
  auto trampoline = [](void* context, size_t begin, size_t end) {
    (*static_cast<Fn*>(context))(begin, end);
  };
  detail::parallel_run(n, min_chunk, const_cast<void*>(static_cast<const void*>(&fn)), trampoline);
}

}  // namespace tierlm
