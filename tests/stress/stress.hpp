// SPDX-License-Identifier: BSL-1.0
/// Shared by the stress scenarios: the size switch and small helpers.
#pragma once

#include <cstddef>
#include <cstdint>
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

/// Byte @p i of the endless test stream number @p seed: the same on both
/// sides of a transfer, so a reader verifies as it goes, storing nothing.
inline unsigned char pattern_byte(std::uint64_t i, std::uint32_t seed = 0) noexcept {
  return static_cast<unsigned char>((i * 131 + (i >> 11) + seed * 7) & 0xff);
}

/// Fills @p out with bytes [offset, offset + n) of stream @p seed.
inline void fill_pattern(void* out, std::size_t n, std::uint64_t offset, std::uint32_t seed = 0) noexcept {
  auto* p = static_cast<unsigned char*>(out);
  for (std::size_t k = 0; k < n; ++k) p[k] = pattern_byte(offset + k, seed);
}

/// True when @p in holds bytes [offset, offset + n) of stream @p seed.
inline bool matches_pattern(const void* in, std::size_t n, std::uint64_t offset, std::uint32_t seed = 0) noexcept {
  const auto* p = static_cast<const unsigned char*>(in);
  for (std::size_t k = 0; k < n; ++k)
    if (p[k] != pattern_byte(offset + k, seed)) return false;
  return true;
}

/// FNV-1a, 64 bits, continued from @p h.
inline std::uint64_t fnv1a(const void* data, std::size_t n, std::uint64_t h = 14695981039346656037ull) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t k = 0; k < n; ++k) h = (h ^ p[k]) * 1099511628211ull;
  return h;
}

} // namespace coropipe_stress
