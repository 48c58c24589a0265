// SPDX-License-Identifier: BSL-1.0
// Private text parsing shared by coropipe's sources.
#pragma once

#include <charconv>
#include <cstddef>
#include <string_view>
#include <system_error>

namespace coropipe::detail {

// @p s as a decimal number: 1 to @p max_digits digits, nothing else (no
// sign, no space), from @p lo to @p hi. False, and @p out untouched, if not.
inline bool parse_decimal(std::string_view s, std::size_t max_digits, unsigned long lo, unsigned long hi,
                          unsigned long& out) noexcept {
  if (s.empty() || s.size() > max_digits) return false;
  unsigned long v = 0;
  const auto [ptr, err] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (err != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi) return false;
  out = v;
  return true;
}

} // namespace coropipe::detail
