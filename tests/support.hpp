// Helpers shared by coropipe's tests. Header-only; each test executable
// includes it after the header under test.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace coropipe::detail {
int background_reaper_fd() noexcept;  // src/reaper.cpp
}

namespace coropipe_test {

using namespace std::chrono_literals;

/// Runs @p aw on @p io until it completes, and returns its result or rethrows
/// its exception. Never detached: a failure inside reaches the test. A
/// coroutine still running after @p timeout is a failure (a hang).
template <typename T>
T run(asio::io_context& io, asio::awaitable<T> aw, std::chrono::seconds timeout = 60s) {
  std::exception_ptr error;
  std::optional<T> result;
  bool done = false;
  asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e, T r) {
    error = e;
    if (!e) result.emplace(std::move(r));
    done = true;
  });
  io.restart();
  io.run_for(timeout);
  if (!done) throw std::runtime_error("coroutine did not complete within the timeout (hang)");
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

inline void run(asio::io_context& io, asio::awaitable<void> aw, std::chrono::seconds timeout = 60s) {
  std::exception_ptr error;
  bool done = false;
  asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  io.restart();
  io.run_for(timeout);
  if (!done) throw std::runtime_error("coroutine did not complete within the timeout (hang)");
  if (error) std::rethrow_exception(error);
}

/// The descriptors open in this process, sorted (coropipe's background
/// reaper's own descriptor excluded: it lives as long as the process).
inline std::vector<int> open_fds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  const int self = ::dirfd(dir);
  const int reaper = coropipe::detail::background_reaper_fd();
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    if (fd != self && fd != reaper) fds.push_back(fd);
  }
  ::closedir(dir);
  std::sort(fds.begin(), fds.end());
  return fds;
}

inline std::string fd_target(int fd) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  char target[256];
  const ssize_t n = ::readlink(path, target, sizeof target - 1);
  return n < 0 ? std::string("?") : std::string(target, static_cast<std::size_t>(n));
}

inline std::string describe_fds(const std::vector<int>& fds) {
  std::string s = "[";
  for (int fd : fds) {
    if (s.size() > 1) s += ", ";
    s += std::to_string(fd) + "=" + fd_target(fd);
  }
  return s + "]";
}

/// True when this process has any child, running or zombie.
inline bool has_children() {
  siginfo_t info{};
  return ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

/// The pids of this process's children (from /proc).
inline std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> pids;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return pids;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream stat(std::string("/proc/") + e->d_name + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto close = text.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(text.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) pids.push_back(std::atoi(e->d_name));
  }
  ::closedir(dir);
  return pids;
}

/// The state letter of @p pid from /proc ('Z' for a zombie), or 0 when gone.
inline char process_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return 0;
  return text[close + 2];
}

inline std::string describe_children() {
  std::string s;
  for (pid_t pid : children_of(::getpid())) {
    if (!s.empty()) s += ", ";
    s += std::to_string(pid) + " (state " + std::string(1, process_state(pid)) + ")";
  }
  return s.empty() ? "(unlisted)" : s;
}

inline void kill_and_reap_all_children() {
  for (pid_t pid : children_of(::getpid())) ::kill(pid, SIGKILL);
  while (::waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
  }
}

/// Sets a resource limit for the lifetime of the object.
class scoped_rlimit {
public:
  scoped_rlimit(int resource, rlim_t soft) : resource_(resource) {
    ::getrlimit(resource_, &old_);
    rlimit lim = old_;
    lim.rlim_cur = soft;
    if (::setrlimit(resource_, &lim) != 0) throw std::system_error(errno, std::system_category(), "setrlimit");
  }
  ~scoped_rlimit() { ::setrlimit(resource_, &old_); }
  scoped_rlimit(const scoped_rlimit&) = delete;
  scoped_rlimit& operator=(const scoped_rlimit&) = delete;

private:
  int resource_;
  rlimit old_{};
};

/// Reads from a blocking descriptor until end of stream, giving up (and
/// throwing) if no byte arrives within @p timeout.
inline std::string read_all(int fd, std::chrono::milliseconds timeout = 30s) {
  std::string out;
  char buf[65536];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) throw std::runtime_error("read_all: timed out");
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::system_error(errno, std::system_category(), "read");
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

/// Blocking wait for a raw pid with a deadline; returns the waitpid status.
inline std::optional<int> wait_for_pid(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
    ::usleep(1000);
  }
}

} // namespace coropipe_test

namespace coropipe_test {

/// fork()s a plain child that runs @p body and _exits with its result (99 if
/// it throws), so that nothing in the child ever returns into the test
/// framework. Returns the child's pid.
template <typename Body>
pid_t fork_raw(Body&& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::system_category(), "fork");
  if (pid == 0) {
    // doctest's crash handlers must not run in the child: default actions.
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      struct sigaction sa {};
      if (::sigaction(sig, nullptr, &sa) == 0 && sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL) {
        sa.sa_handler = SIG_DFL;
        sa.sa_flags = 0;
        ::sigaction(sig, &sa, nullptr);
      }
    }
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fork_raw: child threw: %s\n", e.what());
    } catch (...) {
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

/// The lowest descriptor number not in use: an RLIMIT_NOFILE of this value
/// makes the next descriptor-creating call fail with EMFILE.
inline int lowest_free_fd() {
  const int fd = ::fcntl(0, F_DUPFD, 0);
  if (fd < 0) throw std::system_error(errno, std::system_category(), "fcntl(F_DUPFD)");
  ::close(fd);
  return fd;
}

} // namespace coropipe_test
