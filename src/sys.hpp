// SPDX-License-Identifier: BSL-1.0
// Private helpers shared by coropipe's sources: thin, errno-preserving
// wrappers of Linux system calls that glibc 2.36 does not wrap.
#pragma once

#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <mutex>
#include <coropipe/error.hpp>

#include <system_error>

// COROPIPE_TSAN: this source is built with ThreadSanitizer (g++ or clang).
#if defined(__SANITIZE_THREAD__)
#define COROPIPE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COROPIPE_TSAN 1
#endif
#endif

namespace coropipe::detail {

inline error_code last_error() noexcept { return detail::errno_code(errno); }

// A system call made inline, without calling into libc: in a freshly forked
// child, each libc code page it runs for the first time costs a page fault
// (fork does not copy the page-table entries of file-backed code), about a
// microsecond apiece. Returns what the kernel returns: -errno on failure.
// On x86-64 only, and not under ThreadSanitizer (which watches descriptors
// through libc's close); elsewhere libc's syscall(2).
inline long raw_syscall(long n, long a = 0, long b = 0, long c = 0, long d = 0) noexcept {
#if defined(__x86_64__) && !defined(COROPIPE_TSAN)
  long ret;
  __asm__ volatile("mov %5, %%r10\n\tsyscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(d)
                   : "rcx", "r10", "r11", "memory");
  return ret;
#else
  const long ret = ::syscall(n, a, b, c, d);
  return ret == -1 ? -errno : ret;
#endif
}

inline int sys_pidfd_open(pid_t pid, unsigned int flags) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, flags));
}

inline int sys_pidfd_send_signal(int pidfd, int sig) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0U));
}

// What /proc/self/status says of the calling process.
struct process_status {
  int threads = -1;             // -1 when /proc is unavailable
  std::uint64_t caught = 0;     // bit (n-1) set: signal n has a handler (1 to 64)
  int fd_table_size = -1;       // FDSize: every open descriptor is below it (-1: unknown)
};
// Reads /proc/self/status of the calling process, whose pid is @p self.
process_status read_process_status(pid_t self) noexcept;
// The /proc/self/status descriptor read_process_status keeps open in this
// process, or -1 (for the tests' descriptor accounting).
int status_file_fd() noexcept;

// Number of threads coropipe itself runs in this process (the reaper).
int internal_thread_count() noexcept;

// Forgets coropipe's process-global state in a freshly forked child, whose
// copy of it describes the parent (threads that do not exist, locked mutexes).
// @p other_threads: the parent may have run threads besides coropipe's.
void reaper_reset_after_fork(bool other_threads) noexcept;

// Hands a detached child to the background reaper, which then owns pidfd
// (-1 without pidfds). On failure (the thread cannot start) nothing is taken.
void reap_in_background(pid_t pid, int pidfd, error_code& ec, const char*& failed_call);

// Held by a thread while it forks: the background reaper (if one runs) is
// then asleep in poll(), holding no lock of its own, of malloc's or of a
// sanitizer's allocator, which the child would inherit locked (the allocator
// of clang 14's AddressSanitizer, Debian 12's, is not locked around fork():
// a thread the child starts could wait on such a lock forever). Release it
// in the parent after fork(); the child forgets it with
// reaper_reset_after_fork().
class reaper_quiet_for_fork {
public:
  reaper_quiet_for_fork() noexcept;
  ~reaper_quiet_for_fork();
  reaper_quiet_for_fork(const reaper_quiet_for_fork&) = delete;
  reaper_quiet_for_fork& operator=(const reaper_quiet_for_fork&) = delete;

private:
  std::mutex* busy_;  // the reaper's, locked; null when no reaper runs
};

// The background reaper's eventfd, or -1 (for the tests' descriptor accounting).
int background_reaper_fd() noexcept;

// True when pidfd_open() has been refused in this process (the result is
// remembered), or when COROPIPE_DISABLE_PIDFD is set in the environment.
bool pidfds_unavailable() noexcept;
void remember_pidfds_unavailable() noexcept;

// Every signal blocked in the calling thread while this lives; the previous
// mask restored after. Held across fork() or clone(), as posix_spawn() does:
// a signal sent to the new child before it has reset the parent's handlers
// stays pending there instead of running one of them (an application's
// handler, or a test framework's, in a process that is not the
// application); the child sets its own mask once its handlers are the
// default ones.
class all_signals_blocked {
public:
  all_signals_blocked() noexcept {
    sigset_t all;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous_);
  }
  ~all_signals_blocked() { ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }
  all_signals_blocked(const all_signals_blocked&) = delete;
  all_signals_blocked& operator=(const all_signals_blocked&) = delete;

  // The calling thread's mask before this blocked everything.
  const sigset_t& previous() const noexcept { return previous_; }

private:
  sigset_t previous_;
};

} // namespace coropipe::detail
