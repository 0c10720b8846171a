// Test helper: counts every operator new and malloc-family call of the process while
// g_counting is set, so a test can check that a code path allocates nothing. It defines the
// process's malloc/calloc/realloc and operator new/delete: include it in one source file of
// a test executable only. Under ASan or TSan, whose runtimes own malloc, it counts through the
// sanitizer's allocation hook instead (which sees malloc, calloc, realloc and new alike).
#pragma once

#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<long> g_allocations{0};
std::atomic<bool> g_counting{false};
void count() {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
}
}  // namespace

#if !defined(TIERLM_SANITIZER_OWNS_MALLOC) && defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TIERLM_SANITIZER_OWNS_MALLOC 1
#endif
#endif
#if !defined(TIERLM_SANITIZER_OWNS_MALLOC) && \
    (defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__))
#define TIERLM_SANITIZER_OWNS_MALLOC 1
#endif

#ifdef TIERLM_SANITIZER_OWNS_MALLOC
// Declared here: GCC's runtimes export it, but only clang ships sanitizer/allocator_interface.h.
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             size_t),
                                                         void (*free_hook)(const volatile void*));

namespace {
void count_hook(const volatile void*, size_t) { count(); }
void free_hook(const volatile void*) {}
// Installed by static initialisation, after the sanitizer runtime started (it refuses a null
// hook, so free gets a no-op one).
const int g_hooks_installed = __sanitizer_install_malloc_and_free_hooks(count_hook, free_hook);
}  // namespace
#else
extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* malloc(size_t size) {
  count();
  return __libc_malloc(size);
}
void* calloc(size_t n, size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, size_t size) {
  count();
  return __libc_realloc(p, size);
}
}

void* operator new(size_t size) {
  count();
  if (void* p = __libc_malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { free(p); }
void operator delete[](void* p) noexcept { free(p); }
void operator delete(void* p, size_t) noexcept { free(p); }
void operator delete[](void* p, size_t) noexcept { free(p); }
#endif
