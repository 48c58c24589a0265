// SPDX-License-Identifier: BSL-1.0
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

// /proc/self/status stays open from one fork to the next and is read again
// with pread(2) from offset 0, which makes the kernel write it anew: opening
// and closing it cost about as much as reading it (its buffer is allocated
// and freed each time). /proc/self resolves when the file is opened, so the
// descriptor belongs to the process that opened it; another one (a child
// forked since, by coropipe or by anyone) opens its own. A descriptor that
// is no longer ours (the application closed it, its number may be reused)
// reads as no status at all: it is forgotten, never closed, and a new one
// opened. Encoded as (pid << 32) | descriptor; 0 when there is none.
std::atomic<std::uint64_t> status_file{0};

std::uint64_t encode_status_file(pid_t pid, int fd) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(pid)) << 32) | static_cast<std::uint32_t>(fd);
}

// The descriptor in @p encoded if process @p self opened it, else -1.
int status_file_of(std::uint64_t encoded, pid_t self) noexcept {
  if (encoded == 0 || static_cast<pid_t>(encoded >> 32) != self) return -1;
  return static_cast<int>(encoded & 0xffffffffU);
}

int status_fd(pid_t self) noexcept {
  std::uint64_t cur = status_file.load(std::memory_order_acquire);
  if (const int fd = status_file_of(cur, self); fd >= 0) return fd;
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  if (status_file.compare_exchange_strong(cur, encode_status_file(self, fd), std::memory_order_acq_rel)) return fd;
  ::close(fd);  // another thread was first
  return status_file_of(cur, self);
}

// Parses the complete lines of status text in @p text (a last line without
// its newline is left alone: a read may have cut it short) and returns how
// many bytes they take. With @p skip_first, the first line (the rest of one
// too long for the buffer) is skipped.
std::size_t parse_lines(std::string_view text, bool skip_first, process_status& result, bool& threads,
                        bool& caught) noexcept {
  std::size_t done = 0;
  for (std::size_t nl; (nl = text.find('\n', done)) != std::string_view::npos; done = nl + 1) {
    if (!skip_first) status_line(text.substr(done, nl - done), result, threads, caught);
    skip_first = false;
  }
  return done;
}

// Reads the status from @p fd in one pread(2): the kernel writes the whole
// text anew for a read from offset 0, so one read is one consistent
// snapshot, even with other threads reading the same descriptor (reading
// it in pieces, each piece could come from another thread's snapshot).
// False when it holds no thread count (not a status file).
bool read_status(int fd, process_status& result) noexcept {
  char buf[2048];
  ssize_t n;
  do {
    n = ::pread(fd, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  bool threads = false, caught = false;
  parse_lines(std::string_view(buf, static_cast<std::size_t>(n)), false, result, threads, caught);
  if ((threads && caught) || static_cast<std::size_t>(n) < sizeof buf) return threads;
  // Longer than the buffer (a very long Groups: line, say) with what we need
  // beyond it: read it again, in pieces, through a descriptor of our own
  // (whose reads all come from one snapshot).
  const int own = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (own < 0) return threads;
  result = process_status{};
  threads = caught = false;
  std::size_t have = 0;
  bool skipping = false;  // in a line longer than the buffer: none of ours
  while (!(threads && caught)) {
    n = ::read(own, buf + have, sizeof buf - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
    const std::size_t done = parse_lines(std::string_view(buf, have), skipping, result, threads, caught);
    if (done == 0 && have == sizeof buf) {
      skipping = true;
      have = 0;
      continue;
    }
    if (done > 0) skipping = false;
    std::memmove(buf, buf + done, have - done);
    have -= done;
  }
  ::close(own);
  return threads;
}

} // namespace

process_status read_process_status(pid_t self) noexcept {
  // /proc/self/status, not /proc/self/stat (cheaper to produce, but its
  // signal masks stop at signal 31: a handler of a real-time signal would
  // survive in a forked child).
  for (int attempt = 0; attempt < 2; ++attempt) {
    process_status result;
    const int fd = status_fd(self);
    if (fd < 0) break;
    if (read_status(fd, result)) return result;
    std::uint64_t ours = encode_status_file(self, fd);
    status_file.compare_exchange_strong(ours, 0, std::memory_order_acq_rel);  // forgotten, not closed
  }
  return process_status{};  // threads -1: unknown
}

int status_file_fd() noexcept { return status_file_of(status_file.load(std::memory_order_acquire), ::getpid()); }

bool pidfds_unavailable() noexcept {
  return pidfd_refused.load(std::memory_order_relaxed) ||
         std::getenv("COROPIPE_DISABLE_PIDFD") != nullptr;
}

void remember_pidfds_unavailable() noexcept {
  pidfd_refused.store(true, std::memory_order_relaxed);
}

} // namespace coropipe::detail
