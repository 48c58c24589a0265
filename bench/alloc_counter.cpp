// SPDX-License-Identifier: BSL-1.0
// The bench's replacement of the global operator new: it counts calls, so that
// case 7 can show that steady-state messaging allocates nothing. Also counted:
// aligned_alloc(), where Asio's recycling allocator (operations, handlers,
// coroutine frames) goes when its small thread-local cache misses. In a file of
// its own, away from code that could inline the allocator's pairs.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace {
std::atomic<std::uint64_t> allocations{0};
// Off except while case 7 measures: a counter written on every allocation
// would put one more copied page into every forked child's parent (case 6).
std::atomic<bool> counting{false};

void count() noexcept {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
}
} // namespace

namespace bench {
std::uint64_t allocation_count() noexcept { return allocations.load(std::memory_order_relaxed); }
void count_allocations(bool on) noexcept { counting.store(on, std::memory_order_relaxed); }
} // namespace bench

void* operator new(std::size_t size) {
  count();
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  count();
  return std::malloc(size == 0 ? 1 : size);
}
void* operator new[](std::size_t size, const std::nothrow_t& t) noexcept { return ::operator new(size, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

// glibc's own aligned allocation (the C library exports it for interposers).
extern "C" void* __libc_memalign(std::size_t alignment, std::size_t size) noexcept;
extern "C" void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  count();
  return __libc_memalign(alignment, size);
}
