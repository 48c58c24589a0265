#include "sys.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string_view>

namespace coropipe::detail {

namespace {

std::atomic<bool> pidfd_refused{false};

} // namespace

process_status read_process_status() noexcept {
  // /proc/self/stat is cheaper to produce than /proc/self/status. After the
  // command name (in parentheses, and free to contain anything) come the
  // fields from the 3rd on: num_threads is the 20th, sigcatch the 34th.
  process_status result;
  const int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return result;
  char buf[1024];
  std::size_t len = 0;
  while (len < sizeof buf) {
    const ssize_t n = ::read(fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += static_cast<std::size_t>(n);
  }
  ::close(fd);
  const std::string_view text(buf, len);
  const std::size_t paren = text.rfind(')');
  if (paren == std::string_view::npos) return result;
  auto number = [](std::string_view token) {
    std::uint64_t v = 0;
    for (char c : token) {
      if (c < '0' || c > '9') break;
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return v;
  };
  std::size_t pos = paren + 2;  // the state, field 3
  for (int field = 3; pos < text.size(); ++field) {
    const std::size_t end = text.find(' ', pos);
    const std::string_view token = text.substr(pos, end == std::string_view::npos ? end : end - pos);
    if (field == 20) result.threads = static_cast<int>(number(token));
    if (field == 34) {
      result.caught = number(token);
      break;
    }
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
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
