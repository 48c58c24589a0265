#include "sys.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <string_view>

namespace coropipe::detail {

namespace {

std::atomic<bool> pidfd_refused{false};

int decimal(std::string_view v) noexcept {
  int n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') break;
    n = n * 10 + (c - '0');
  }
  return n;
}

// One line of /proc/self/status, e.g. "Threads:\t3" or "SigCgt:\t0000000000004a02".
void status_line(std::string_view line, process_status& out, bool& threads, bool& caught) noexcept {
  auto value = [&](std::string_view key) -> std::string_view {
    if (line.substr(0, key.size()) != key) return {};
    std::string_view v = line.substr(key.size());
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    return v;
  };
  if (std::string_view v = value("Threads:"); !v.empty()) {
    out.threads = decimal(v);
    threads = true;
  } else if (std::string_view f = value("FDSize:"); !f.empty()) {
    if (const int size = decimal(f); size > 0) out.fd_table_size = size;
  } else if (std::string_view h = value("SigCgt:"); !h.empty()) {
    std::uint64_t mask = 0;
    for (char c : h) {
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) break;
      mask = (mask << 4) | static_cast<std::uint64_t>(d);
    }
    out.caught = mask;
    caught = true;
  }
}

} // namespace

process_status read_process_status() noexcept {
  // /proc/self/status, not /proc/self/stat (cheaper to produce, but its
  // signal masks stop at signal 31: a handler of a real-time signal would
  // survive in a forked child). Read in small pieces, keeping a partial
  // line: only two short lines matter, and a child copies every stack page
  // its parent wrote.
  process_status result;
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return result;
  char buf[256];
  std::size_t have = 0;
  bool skipping = false;  // in a line longer than the buffer (Groups:, say): none of ours
  bool threads = false, caught = false;
  while (!(threads && caught)) {
    const ssize_t n = ::read(fd, buf + have, sizeof buf - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
    std::size_t start = 0;
    while (const void* nl = std::memchr(buf + start, '\n', have - start)) {
      const std::size_t end = static_cast<std::size_t>(static_cast<const char*>(nl) - buf);
      if (!skipping) status_line(std::string_view(buf + start, end - start), result, threads, caught);
      skipping = false;
      start = end + 1;
    }
    if (start == 0 && have == sizeof buf) {
      skipping = true;
      have = 0;
      continue;
    }
    std::memmove(buf, buf + start, have - start);
    have -= start;
  }
  ::close(fd);
  if (!threads) result.threads = -1;
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
