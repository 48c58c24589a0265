#include <coropipe/fork.hpp>

#include <coropipe/error.hpp>
#include <coropipe/sigpipe.hpp>

#include "sys.hpp"

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>

#if defined(__SANITIZE_THREAD__)
#define COROPIPE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COROPIPE_TSAN 1
#endif
#endif

namespace coropipe::detail {

namespace {

// Threads that the runtime, not the application, starts.
constexpr int runtime_threads() noexcept {
#if defined(COROPIPE_TSAN)
  return 1;  // ThreadSanitizer's background thread
#else
  return 0;
#endif
}

void flush_stdio() noexcept {
  try {
    std::cout.flush();
    std::cerr.flush();
    std::clog.flush();
    std::wcout.flush();
    std::wcerr.flush();
    std::wclog.flush();
  } catch (...) {
  }
  std::fflush(nullptr);
}

// Writes a line to stderr with write(2) only: safe whatever state stdio is in.
void report(const char* a, const char* b = "", const char* c = "") noexcept {
  char buf[1024];
  int n = std::snprintf(buf, sizeof buf, "coropipe: forked child %d: %s%s%s\n",
                        static_cast<int>(::getpid()), a, b, c);
  if (n < 0) return;
  std::size_t len = std::min(static_cast<std::size_t>(n), sizeof buf - 1);
  (void)!::write(STDERR_FILENO, buf, len);
}

// As exec would: handlers installed by the parent are reset to the default.
void reset_caught_signals(std::uint64_t caught) noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig <= 64 && caught != 0; ++sig, caught >>= 1) {
    if ((caught & 1U) != 0) ::sigaction(sig, &dfl, nullptr);
  }
}

bool kept(std::span<const int> keep, int fd) noexcept {
  return std::find(keep.begin(), keep.end(), fd) != keep.end();
}

void close_if_cloexec(int fd, std::span<const int> keep) noexcept {
  if (fd <= STDERR_FILENO || kept(keep, fd)) return;
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0 && (flags & FD_CLOEXEC) != 0) ::close(fd);
}

// Closes every close-on-exec descriptor not in keep. /proc/self/fd lists
// them; its positions are descriptor numbers, so closing while reading it
// skips nothing. Without /proc, the descriptors below the soft RLIMIT_NOFILE
// (at most 65536) are checked one by one.
void close_inherited_descriptors(std::span<const int> keep) noexcept {
  const int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    rlimit lim{};
    rlim_t top = 1024;
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) top = lim.rlim_cur;
    top = std::min<rlim_t>(top, 65536);
    for (int fd = 3; static_cast<rlim_t>(fd) < top; ++fd) close_if_cloexec(fd, keep);
    return;
  }
  alignas(8) char buf[4096];
  for (;;) {
    const long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
      unsigned short reclen;
      std::memcpy(&reclen, buf + off + 16, sizeof reclen);
      const char* name = buf + off + 19;
      off += reclen;
      if (name[0] < '0' || name[0] > '9') continue;
      int fd = 0;
      for (const char* p = name; *p >= '0' && *p <= '9'; ++p) fd = fd * 10 + (*p - '0');
      if (fd != dir) close_if_cloexec(fd, keep);
    }
  }
  ::close(dir);
}

int run_child_body(child_body body, pid_t parent) noexcept {
  try {
    asio::io_context io(1);
    child_context ctx(io, parent);
    std::exception_ptr error;
    int result = 1;
    bool done = false;
    asio::co_spawn(io, body.invoke(body.object, ctx), [&](std::exception_ptr e, int r) {
      error = e;
      result = r;
      done = true;
    });
    io.run();
    if (error) std::rethrow_exception(error);
    if (!done) {
      report("the coroutine did not complete (its io_context ran out of work)");
      return 1;
    }
    return result;
  } catch (const std::exception& e) {
    report("uncaught exception: ", e.what());
  } catch (...) {
    report("uncaught exception of unknown type");
  }
  return 1;
}

[[noreturn]] void child_main(const fork_options& opts, std::span<const int> keep, child_body body,
                             pid_t parent, std::uint64_t caught) noexcept {
  if (opts.parent_death_signal > 0) {
    // If the parent died before prctl took effect, nobody will send the
    // signal: act on it now.
    if (::prctl(PR_SET_PDEATHSIG, opts.parent_death_signal) != 0 || ::getppid() != parent) {
      ::raise(opts.parent_death_signal);
      ::_exit(128 + opts.parent_death_signal);
    }
  }
  reset_caught_signals(caught);
  close_inherited_descriptors(keep);
  reaper_reset_after_fork();
  block_sigpipe_in_this_thread();
  const int code = run_child_body(body, parent);
  flush_stdio();
  ::_exit(code);
}

} // namespace

child fork_child_impl(const asio::any_io_executor& ex, const fork_options& opts,
                      std::span<const int> keep_fds, child_body body, std::error_code& ec,
                      const char*& failed_call) {
  ec.clear();
  failed_call = nullptr;
  const process_status ps = read_process_status();
  if (!opts.allow_threads && ps.threads > 1 + internal_thread_count() + runtime_threads()) {
    ec = errc::fork_in_threaded_process;
    return child();
  }
  flush_stdio();
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ec = last_error();
    failed_call = "fork";
    return child();
  }
  if (pid == 0) child_main(opts, keep_fds, body, parent, ps.caught);

  // From here on the child exists: it must end up owned by a handle, or be
  // killed and reaped.
  unique_fd pidfd;
  if (!pidfds_unavailable()) {
    pidfd.reset(sys_pidfd_open(pid, 0));
    if (!pidfd) {
      const int err = errno;
      if (err == ENOSYS || err == EPERM || err == EACCES) {
        remember_pidfds_unavailable();
      } else {
        ::kill(pid, SIGKILL);
        while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
        }
        ec = std::error_code(err, std::system_category());
        failed_call = "pidfd_open";
        return child();
      }
    }
  }
  try {
    return child_access::make(std::make_shared<child_state>(ex, pid, std::move(pidfd)));
  } catch (...) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    throw;
  }
}

} // namespace coropipe::detail
