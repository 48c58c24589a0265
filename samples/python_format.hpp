// SPDX-License-Identifier: BSL-1.0
// Printing values the way Python prints them, so that the C++ samples'
// output matches the seed's line for line:
//   print('Parent {} got [{}] as {}'.format(os.getpid(), line, time.time()))
// formats `line` (bytes) with repr() and time.time() (float) with repr().
#pragma once

#include <charconv>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <system_error>

namespace samples {

/// repr() of a Python bytes object: b'Spam 0', b"it's", b'\x00\n'.
inline std::string bytes_repr(std::string_view bytes) {
  // Python quotes with ' unless the bytes hold a ' and no ".
  const bool has_single = bytes.find('\'') != std::string_view::npos;
  const bool has_double = bytes.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out = "b";
  out += quote;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += ch;
    }
  }
  out += quote;
  return out;
}

/// repr() of a Python float: the shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in [-4, 16), else 1.5e+16 style.
inline std::string float_repr(double value) {
  if (value != value) return "nan";
  if (value == 1.0 / 0.0) return "inf";
  if (value == -1.0 / 0.0) return "-inf";
  // Shortest round-trip digits, in scientific form: "-d.ddde±XX".
  char sci[64];
  const auto res = std::to_chars(sci, sci + sizeof sci, value, std::chars_format::scientific);
  std::string_view s(sci, static_cast<std::size_t>(res.ptr - sci));
  std::string out;
  if (s.front() == '-') {
    out += '-';
    s.remove_prefix(1);
  }
  const auto e = s.find('e');
  std::string digits;
  for (const char c : s.substr(0, e))
    if (c != '.') digits += c;
  int exp = 0;
  std::from_chars(s.data() + e + 1 + (s[e + 1] == '+' ? 1 : 0), s.data() + s.size(), exp);
  if (digits == "0") exp = 0;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(static_cast<std::size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<std::size_t>(exp) + 1 >= digits.size()) {
      out += digits + std::string(static_cast<std::size_t>(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, static_cast<std::size_t>(exp) + 1) + "." +
             digits.substr(static_cast<std::size_t>(exp) + 1);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += exp < 0 ? "e-" : "e+";
    const int mag = exp < 0 ? -exp : exp;
    if (mag < 10) out += '0';
    out += std::to_string(mag);
  }
  return out;
}

/// Python's time.time(): CLOCK_REALTIME's nanoseconds divided by 1e9.
inline double unix_time() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  const std::int64_t ns = static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  return static_cast<double>(ns) / 1e9;
}

} // namespace samples
