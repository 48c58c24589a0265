// SPDX-License-Identifier: BSL-1.0
// Helpers shared by coropipe's tests. Header-only; each test executable
// includes it after the header under test.
#pragma once

#include <coropipe/asio.hpp>

#include "spawn_support.hpp"

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
int status_file_fd() noexcept;        // src/sys.cpp
}

namespace coropipe_test {

/// Whether this build runs on Asio's io_uring backend (COROPIPE_IO_URING),
/// where descriptors are not registered when assigned: no epoll instance, no
/// O_NONBLOCK set by Asio, no refusal of a descriptor at attach().
#if defined(ASIO_HAS_IO_URING_AS_DEFAULT)
inline constexpr bool io_uring_backend = true;
#else
inline constexpr bool io_uring_backend = false;
#endif

using namespace std::chrono_literals;

/// Runs @p io until @p done is set or @p timeout passes. Unlike run_for(),
/// returns as soon as @p done is set, even while other work (a background
/// flush waiting on a full pipe) keeps the io_context busy.
inline void run_until(asio::io_context& io, const bool& done, std::chrono::nanoseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  io.restart();
  while (!done && io.run_one_until(deadline) != 0) {
  }
}

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
  run_until(io, done, timeout);
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
  run_until(io, done, timeout);
  if (!done) throw std::runtime_error("coroutine did not complete within the timeout (hang)");
  if (error) std::rethrow_exception(error);
}

/// The descriptors open in this process, sorted (coropipe's background
/// reaper's own descriptor and its /proc/self/status excluded: they live as
/// long as the process).
// What a coropipe::system_error says, without the " [category:value]" that
// Boost.System's system_error appends to what() (standalone: what() itself).
inline std::string what_of(const std::exception& e) {
  std::string what = e.what();
  if (COROPIPE_ASIO_BOOST && !what.empty() && what.back() == ']') {
    const auto open = what.rfind(" [");
    if (open != std::string::npos) what.erase(open);
  }
  return what;
}

inline std::vector<int> open_fds() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  const int self = ::dirfd(dir);
  const int reaper = coropipe::detail::background_reaper_fd();
  const int status = coropipe::detail::status_file_fd();
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    if (fd != self && fd != reaper && fd != status) fds.push_back(fd);
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
    if (::setrlimit(resource_, &lim) != 0) throw coropipe::system_error(errno, coropipe::system_category(), "setrlimit");
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
    if (n < 0) throw coropipe::system_error(errno, coropipe::system_category(), "read");
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
  // Every signal is blocked across the fork, so that one sent to the child at
  // once (a test's SIGINT) waits until the child has its default actions: a
  // signal caught by the parent's handlers meanwhile would be lost (under
  // ThreadSanitizer, whose deferred delivery finds SIG_DFL and drops it).
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw coropipe::system_error(err, coropipe::system_category(), "fork");
  }
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
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
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
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return pid;
}

/// The lowest descriptor number not in use: an RLIMIT_NOFILE of this value
/// makes the next descriptor-creating call fail with EMFILE.
inline int lowest_free_fd() {
  const int fd = ::fcntl(0, F_DUPFD, 0);
  if (fd < 0) throw coropipe::system_error(errno, coropipe::system_category(), "fcntl(F_DUPFD)");
  ::close(fd);
  return fd;
}

} // namespace coropipe_test

#include <spawn.h>

extern char** environ;

namespace coropipe_test {

/// A program started with its stdout and stderr on pipes (stdin: the file
/// @p stdin_path, /dev/null by default).
struct started_program {
  pid_t pid = -1;
  int out = -1;  // read end of its stdout
  int err = -1;  // read end of its stderr
};

/// @p stdin_fd: the program's stdin (default /dev/null); not closed here.
inline started_program start_program(const std::vector<std::string>& argv, int stdin_fd = -1) {
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw coropipe::system_error(errno, coropipe::system_category(), "pipe2");
  if (::pipe2(err, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(out[0]);
    ::close(out[1]);
    throw coropipe::system_error(e, coropipe::system_category(), "pipe2");
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (stdin_fd < 0) posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  else posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  const clean_spawnattr attr;
  auto args = spawn_args(argv);
  pid_t pid = -1;
  const int r = ::posix_spawn(&pid, args[0], &fa, &attr.attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(err[1]);
  if (r != 0) {
    ::close(out[0]);
    ::close(err[0]);
    throw coropipe::system_error(r, coropipe::system_category(), "posix_spawn " + argv[0]);
  }
  return {pid, out[0], err[0]};
}

struct program_result {
  std::string out;
  std::string err;
  int wait_status = 0;
};

/// Collects what is left of a started program's stdout and stderr, then
/// reaps it; kills it (and throws) if it is not done within @p timeout.
inline program_result finish_program(started_program& p, std::chrono::milliseconds timeout = 60s) {
  program_result r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[65536];
  while (p.out >= 0 || p.err >= 0) {
    pollfd fds[2] = {{p.out, POLLIN, 0}, {p.err, POLLIN, 0}};
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, nullptr, 0);
      if (p.out >= 0) ::close(p.out);
      if (p.err >= 0) ::close(p.err);
      throw std::runtime_error("program did not finish in time");
    }
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR)
      throw coropipe::system_error(errno, coropipe::system_category(), "poll");
    for (int i = 0; i < 2; ++i) {
      int& fd = i == 0 ? p.out : p.err;
      if (fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      else if (n == 0 || errno != EINTR) {
        ::close(fd);
        fd = -1;
      }
    }
  }
  auto status = wait_for_pid(p.pid, std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::max(deadline - std::chrono::steady_clock::now(),
                                                 std::chrono::steady_clock::duration(1s))));
  if (!status) {
    ::kill(p.pid, SIGKILL);
    ::waitpid(p.pid, nullptr, 0);
    throw std::runtime_error("program did not exit in time");
  }
  r.wait_status = *status;
  return r;
}

inline program_result run_program(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 60s) {
  auto p = start_program(argv);
  return finish_program(p, timeout);
}

/// Runs a program with @p input as its stdin (a file, so no deadlock).
inline program_result run_program_with_input(const std::vector<std::string>& argv, const std::string& input,
                                             std::chrono::milliseconds timeout = 60s) {
  char path[] = "/tmp/coropipe-test-input-XXXXXX";
  const int fd = ::mkostemp(path, O_CLOEXEC);
  if (fd < 0) throw coropipe::system_error(errno, coropipe::system_category(), "mkostemp");
  ::unlink(path);
  if (::write(fd, input.data(), input.size()) != static_cast<ssize_t>(input.size()) || ::lseek(fd, 0, SEEK_SET) != 0) {
    ::close(fd);
    throw coropipe::system_error(errno, coropipe::system_category(), "write");
  }
  started_program p;
  try {
    p = start_program(argv, fd);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return finish_program(p, timeout);
}

/// The path of an executable found on PATH, or "" if there is none.
inline std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

/// Reads one line from a blocking descriptor, byte by byte (so that nothing
/// after the newline is consumed).
inline std::string read_line(int fd, std::chrono::milliseconds timeout = 30s) {
  std::string line;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) throw std::runtime_error("read_line: timed out");
    char c;
    const ssize_t n = ::read(fd, &c, 1);
    if (n <= 0) return line;
    if (c == '\n') return line;
    line += c;
  }
}

} // namespace coropipe_test

// --- Helpers of the message-layer tests (io, frame, framed_stream, channel) ---

#include <type_traits>

namespace coropipe_test {

/// Runs all of @p coroutines on @p io concurrently until every one has
/// completed; rethrows the first exception (in the order given). Never
/// detached. Still running after @p timeout: a failure (a hang).
inline void run_all(asio::io_context& io, std::vector<asio::awaitable<void>> coroutines,
                    std::chrono::seconds timeout = 60s) {
  std::vector<std::exception_ptr> errors(coroutines.size());
  std::size_t left = coroutines.size();
  for (std::size_t i = 0; i < coroutines.size(); ++i) {
    asio::co_spawn(io, std::move(coroutines[i]), [&errors, &left, i](std::exception_ptr e) {
      errors[i] = e;
      --left;
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  io.restart();
  while (left != 0 && io.run_one_until(deadline) != 0) {
  }
  if (left != 0) throw std::runtime_error("coroutines did not complete within the timeout (hang)");
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

/// run_all() of the coroutines given as arguments.
template <typename... More>
  requires(std::is_same_v<More, asio::awaitable<void>> && ...)
void run_all(asio::io_context& io, asio::awaitable<void> first, More... more) {
  std::vector<asio::awaitable<void>> all;
  all.push_back(std::move(first));
  (all.push_back(std::move(more)), ...);
  run_all(io, std::move(all));
}

/// The path of the executable @p name found along $PATH, if any.
inline std::optional<std::string> find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return std::nullopt;
  std::string dirs = path;
  std::size_t start = 0;
  for (;;) {
    const std::size_t colon = dirs.find(':', start);
    std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string::npos) return std::nullopt;
    start = colon + 1;
  }
}

/// A program started with its stdin, stdout and stderr all on pipes.
struct piped_program {
  pid_t pid = -1;
  int in = -1;   // write end of its stdin
  int out = -1;  // read end of its stdout
  int err = -1;  // read end of its stderr
};

/// Starts @p argv (argv[0] a path) with stdin, stdout and stderr on pipes;
/// the caller's ends are close-on-exec and blocking. The caller closes them
/// and reaps the program (wait_for_pid).
inline piped_program start_piped_program(const std::vector<std::string>& argv) {
  int in[2];
  if (::pipe2(in, O_CLOEXEC) != 0) throw coropipe::system_error(errno, coropipe::system_category(), "pipe2");
  started_program p;
  try {
    p = start_program(argv, in[0]);
  } catch (...) {
    ::close(in[0]);
    ::close(in[1]);
    throw;
  }
  ::close(in[0]);
  return {p.pid, in[1], p.out, p.err};
}

} // namespace coropipe_test

// --- Helpers of the stress scenarios (tests/stress) ---


namespace coropipe_test {

/// Seconds since @p t0, for the throughput a scenario reports.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Runs @p check (the reading and checking of what @p child wrote), then
/// waits for @p child (a coropipe::child or process) and stores its exit
/// status in @p status. One coroutine, so that one deadline covers both, and
/// the child is reaped only once its stream has been read to the end.
template <typename Child, typename Status>
asio::awaitable<void> then_wait(asio::awaitable<void> check, Child& child, Status& status) {
  co_await std::move(check);
  status = co_await child.async_wait(asio::use_awaitable);
}

} // namespace coropipe_test
