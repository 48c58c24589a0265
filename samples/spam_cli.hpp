// SPDX-License-Identifier: BSL-1.0
// The command line shared by the spam samples.
#pragma once

#include <charconv>
#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace samples {

struct spam_options {
  std::optional<long long> count;                    // messages to send; none: forever
  std::chrono::nanoseconds tick = std::chrono::seconds(1);  // time.sleep(1) is one tick
  std::size_t read_size = 32;                        // os.read(pipein, 32)
  bool help = false;
};

/// Parses "250ms", "1s", "1.5s", "100us", "0s" (a number and a unit).
inline std::chrono::nanoseconds parse_duration(std::string_view text) {
  double value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr == text.data())
    throw std::invalid_argument("bad duration '" + std::string(text) + "' (examples: 250ms, 1s)");
  const std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
  double scale = 0;
  if (unit == "s") scale = 1e9;
  else if (unit == "ms") scale = 1e6;
  else if (unit == "us") scale = 1e3;
  else if (unit == "ns") scale = 1;
  else throw std::invalid_argument("bad duration '" + std::string(text) + "': the unit must be s, ms, us or ns");
  if (value < 0 || value * scale > 3.6e15)
    throw std::invalid_argument("bad duration '" + std::string(text) + "': out of range (0 to 1h)");
  return std::chrono::nanoseconds(static_cast<long long>(value * scale));
}

/// Parses a whole decimal number in [lo, hi].
inline long long parse_number(std::string_view flag, std::string_view text, long long lo, long long hi) {
  long long value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size() || value < lo || value > hi)
    throw std::invalid_argument(std::string(flag) + " takes a whole number from " + std::to_string(lo) +
                                " to " + std::to_string(hi) + ", not '" + std::string(text) + "'");
  return value;
}

inline const char* spam_usage() {
  return "usage: %s [--count N] [--tick DURATION] [--read-size N]\n"
         "  A forked child writes 'Spam 0' ... 'Spam 4' over a pipe, forever, sleeping\n"
         "  0, 1, 2, 3, 4 ticks before each; the parent prints every read it makes.\n"
         "  --count N        the child sends N messages and closes; the parent prints\n"
         "                   what it reads until end of stream and exits 0\n"
         "  --tick DURATION  the child's unit of sleep: 250ms, 1s, 100us (default 1s)\n"
         "  --read-size N    bytes asked for per read (default 32)\n"
         "  --help           print this text\n"
         "  Ctrl-C or SIGTERM stops the child and the program.\n";
}

/// Parses argv; throws std::invalid_argument with a one-line message.
inline spam_options parse_spam_options(int argc, char** argv) {
  spam_options opts;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view value;
    bool has_value = false;
    if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto take_value = [&]() -> std::string_view {
      if (has_value) return value;
      if (i + 1 >= argc) throw std::invalid_argument(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      opts.help = true;
    } else if (arg == "--count") {
      opts.count = parse_number(arg, take_value(), 0, 1'000'000'000'000LL);
    } else if (arg == "--tick") {
      opts.tick = parse_duration(take_value());
    } else if (arg == "--read-size") {
      opts.read_size = static_cast<std::size_t>(parse_number(arg, take_value(), 1, 1 << 26));
    } else {
      throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
    }
  }
  return opts;
}

} // namespace samples
