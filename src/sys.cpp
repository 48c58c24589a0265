#include "sys.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace coropipe::detail {

namespace {

// Parses the number after "<key>:" in /proc/self/status text.
bool find_field(std::string_view text, std::string_view key, int base, std::uint64_t& value) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t eol = text.find('\n', pos);
    const std::string_view line = text.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ':') {
      std::uint64_t v = 0;
      bool any = false;
      for (char c : line.substr(key.size() + 1)) {
        int digit;
        if (c >= '0' && c <= '9') digit = c - '0';
        else if (base == 16 && c >= 'a' && c <= 'f') digit = c - 'a' + 10;
        else if (c == ' ' || c == '\t') continue;
        else break;
        v = v * static_cast<std::uint64_t>(base) + static_cast<std::uint64_t>(digit);
        any = true;
      }
      value = v;
      return any;
    }
    if (eol == std::string_view::npos) break;
    pos = eol + 1;
  }
  return false;
}

std::atomic<bool> pidfd_refused{false};

} // namespace

process_status read_process_status() noexcept {
  process_status result;
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return result;
  char buf[8192];
  std::size_t len = 0;
  while (len < sizeof buf) {
    const ssize_t n = ::read(fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += static_cast<std::size_t>(n);
  }
  ::close(fd);
  const std::string_view text(buf, len);
  std::uint64_t value = 0;
  if (find_field(text, "Threads", 10, value)) result.threads = static_cast<int>(value);
  if (find_field(text, "SigCgt", 16, value)) result.caught = value;
  return result;
}

bool pidfds_unavailable() noexcept {
  return pidfd_refused.load(std::memory_order_relaxed) ||
         std::getenv("COROPIPE_DISABLE_PIDFD") != nullptr;
}

void remember_pidfds_unavailable() noexcept {
  pidfd_refused.store(true, std::memory_order_relaxed);
}

} // namespace coropipe::detail
