/// Shared by the stress scenarios: the size switch and small helpers.
#pragma once

#include <cstdlib>
#include <cstring>

namespace coropipe_stress {

/// True when COROPIPE_STRESS=large: the scenario runs at its large size.
inline bool large() noexcept {
  const char* v = std::getenv("COROPIPE_STRESS");
  return v != nullptr && std::strcmp(v, "large") == 0;
}

/// @p small normally, @p big with COROPIPE_STRESS=large.
template <typename T>
T size(T small, T big) noexcept {
  return large() ? big : small;
}

} // namespace coropipe_stress

#include <asio/awaitable.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace coropipe_stress {

/// The seed of a randomised scenario: COROPIPE_STRESS_SEED if set (to replay
/// a run), otherwise a fresh one. Scenarios print it.
inline std::uint64_t seed() {
  if (const char* v = std::getenv("COROPIPE_STRESS_SEED")) return std::strtoull(v, nullptr, 0);
  std::random_device rd;
  return (std::uint64_t{rd()} << 32) ^ rd();
}

/// splitmix64: one 64-bit step.
inline std::uint64_t splitmix64(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// A reproducible stream of pseudo-random bytes: the writer and the checker
/// each run one with the same seed, so no stream is ever held in memory.
class byte_stream {
public:
  explicit byte_stream(std::uint64_t seed) noexcept : state_(seed) {}

  /// The next @p n bytes of the stream.
  void fill(unsigned char* p, std::size_t n) noexcept {
    while (n > 0 && left_ > 0) take_one(p, n);
    while (n >= 8) {
      const std::uint64_t w = splitmix64(state_);
      std::memcpy(p, &w, 8);
      p += 8;
      n -= 8;
    }
    while (n > 0) {
      if (left_ == 0) {
        word_ = splitmix64(state_);
        left_ = 8;
      }
      take_one(p, n);
    }
  }

private:
  void take_one(unsigned char*& p, std::size_t& n) noexcept {
    *p++ = static_cast<unsigned char>(word_ & 0xff);
    word_ >>= 8;
    --left_;
    --n;
  }

  std::uint64_t state_;
  std::uint64_t word_ = 0;
  int left_ = 0;
};

/// FNV-1a, 64 bits: the per-message checksum.
inline std::uint64_t fnv1a(const unsigned char* p, std::size_t n, std::uint64_t h = 0xcbf29ce484222325ULL) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// Thrown when an operation misses its deadline: a hang becomes a failure.
struct deadline_missed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Runs @p op, cancelling it and throwing deadline_missed if it has not
/// completed after @p limit.
template <typename T>
asio::awaitable<T> within(std::chrono::steady_clock::duration limit, asio::awaitable<T> op, std::string what) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor, limit);
  auto r = co_await (std::move(op) || timer.async_wait(asio::use_awaitable));
  if (r.index() != 0) throw deadline_missed("deadline missed: " + what);
  if constexpr (std::is_void_v<T>) {
    co_return;
  } else {
    co_return std::get<0>(std::move(r));
  }
}

inline constexpr auto as_tuple = asio::experimental::as_tuple(asio::use_awaitable);

} // namespace coropipe_stress
