// SPDX-License-Identifier: BSL-1.0
#include <coropipe/fork.hpp>

#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
#include <coropipe/sigpipe.hpp>

#include "sys.hpp"

#include <coropipe/asio.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#if defined(__GLIBCXX__)
#include <ext/stdio_sync_filebuf.h>
#endif
#include <iostream>
#include <mutex>
#include <utility>
#include <vector>

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

// The standard streams whose buffer is libstdc++'s stdio-synchronised one
// (the default, until std::ios_base::sync_with_stdio(false)): such a buffer
// holds nothing, everything written through it is already in C stdio's, so
// flushing C stdio is enough. Recorded once, in the parent: flushing a
// stream touches code and data pages that a child would then fault in
// (eight faults of a trivial child's thirty).
struct synced_streams {
  const std::streambuf* narrow[3] = {};
  const std::wstreambuf* wide[3] = {};
};
synced_streams synced;

template <typename Char>
const std::basic_streambuf<Char>* if_synced(const std::basic_streambuf<Char>* buf) noexcept {
#if defined(__GLIBCXX__)
  return dynamic_cast<const __gnu_cxx::stdio_sync_filebuf<Char>*>(buf) != nullptr ? buf : nullptr;
#else
  (void)buf;
  return nullptr;
#endif
}

void record_synced_streams() noexcept {
  synced.narrow[0] = if_synced(std::cout.rdbuf());
  synced.narrow[1] = if_synced(std::cerr.rdbuf());
  synced.narrow[2] = if_synced(std::clog.rdbuf());
  synced.wide[0] = if_synced(std::wcout.rdbuf());
  synced.wide[1] = if_synced(std::wcerr.rdbuf());
  synced.wide[2] = if_synced(std::wclog.rdbuf());
}

template <typename Stream, typename Buf>
void flush_unless_synced(Stream& s, const Buf* synced_buf) {
  if (s.rdbuf() != synced_buf) s.flush();
}

void flush_stdio() noexcept {
  try {
    flush_unless_synced(std::cout, synced.narrow[0]);
    flush_unless_synced(std::cerr, synced.narrow[1]);
    flush_unless_synced(std::clog, synced.narrow[2]);
    flush_unless_synced(std::wcout, synced.wide[0]);
    flush_unless_synced(std::wcerr, synced.wide[1]);
    flush_unless_synced(std::wclog, synced.wide[2]);
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
  if (caught == 0) return;
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

// Calls fn(fd) for every open descriptor above 2: from a listing of
// /proc/self/fd, otherwise for every number below min(RLIMIT_NOFILE, 65536)
// that fcntl(2) knows.
template <typename Fn>
void for_each_open_fd(Fn&& fn) noexcept {
  const int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    rlimit lim{};
    rlim_t top = 1024;
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) top = lim.rlim_cur == RLIM_INFINITY ? rlim_t{1} << 20 : lim.rlim_cur;
    top = std::min<rlim_t>(top, 65536);
    for (int fd = STDERR_FILENO + 1; static_cast<rlim_t>(fd) < top; ++fd)
      if (::fcntl(fd, F_GETFD) >= 0) fn(fd);
    return;
  }
  alignas(8) char buf[1024];  // small: in a child every stack page written is copied
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
      // Positions in /proc/self/fd are descriptor numbers, so closing
      // entries while reading it skips nothing.
      if (fd != dir && fd > STDERR_FILENO) fn(fd);
    }
  }
  ::close(dir);
}

bool close_on_exec(int fd) noexcept {
  const int flags = ::fcntl(fd, F_GETFD);
  return flags >= 0 && (flags & FD_CLOEXEC) != 0;
}

// The close-on-exec descriptors to close in a child, listed in the parent
// just before the fork (a fresh child's /proc/self/fd costs ten times more
// than the parent's, whose entries are already built): the first @p count
// entries of @p out, by their fd.
//
// One poll(2) over the descriptor table finds the open ones (closed slots
// answer POLLNVAL) when the table is small: its size is @p table_size
// (FDSize in /proc/self/status, no open descriptor is at or above it), else
// the soft RLIMIT_NOFILE. The list is made in the polled array itself, and
// the vector keeps its size from one fork to the next: after a fork, every
// page the parent writes costs it a fault, the vector's own (thread-local)
// one included. Otherwise /proc/self/fd is listed.
bool list_descriptors_to_close(std::span<const int> keep, int table_size, std::vector<pollfd>& out,
                               std::size_t& count) noexcept {
  try {
    rlimit lim{};
    rlim_t top = static_cast<rlim_t>(table_size);
    if (table_size <= 0) top = ::getrlimit(RLIMIT_NOFILE, &lim) != 0 ? 1024 : lim.rlim_cur;
    if (top <= 4096) {
      const auto n = static_cast<std::size_t>(top);
      if (out.size() < n) out.resize(n);
      for (std::size_t i = 0; i < n; ++i) out[i] = pollfd{static_cast<int>(i), 0, 0};
      if (::poll(out.data(), n, 0) >= 0) {
        count = 0;
        for (std::size_t i = STDERR_FILENO + 1; i < n; ++i) {
          const pollfd p = out[i];
          if ((p.revents & POLLNVAL) == 0 && !kept(keep, p.fd) && close_on_exec(p.fd)) out[count++] = p;
        }
        return true;
      }
    }
    out.clear();
    for_each_open_fd([&](int fd) {
      if (!kept(keep, fd) && close_on_exec(fd)) out.push_back(pollfd{fd, 0, 0});
    });
    count = out.size();
  } catch (...) {
    return false;
  }
  return true;
}

// The same, done in the child (where another thread of the parent may have
// changed the descriptor table between a listing and the fork).
void close_inherited_descriptors(std::span<const int> keep) noexcept {
  for_each_open_fd([&](int fd) {
    if (!kept(keep, fd) && close_on_exec(fd)) ::close(fd);
  });
}

// A fork copies the parent's memory lazily: every page the child writes is
// copied then (a fault costing microseconds), and every code page it runs
// that the parent has not mapped is mapped then. Children are fast when they
// touch little. Hence the preparations below, made once in the parent:
//  - a spare io_context, constructed here and never used by the parent: each
//    child runs its own copy of it (Asio creates the reactor's descriptors
//    only when first needed, so the spare holds none), instead of building
//    one with fresh allocations;
//  - the lazy symbol bindings the child path needs are resolved, so that each
//    child does not redo the lookups (and their page faults) itself;
//  - _exit is called through a pointer bound at load time, for the same reason.
//
// The spare belongs to the process that made it (a child runs its copy, and
// makes a spare of its own if it forks in turn). Nothing here is written
// again once prepared, in the parent (std::call_once alone would write its
// thread-local callable on every call) or in a child. Threads of a process
// that forks with allow_threads may make their first forks at once: the
// first spare published wins, the others are deleted unused.
struct spare {
  explicit spare(pid_t made_by) : owner(made_by), io(1) {}
  pid_t owner;
  asio::io_context io;
};
std::atomic<spare*> spare_context{nullptr};
std::once_flag prepared_once;
std::atomic<bool> prepared{false};
void (*volatile exit_now)(int) = ::_exit;

void prepare_parent(pid_t self) {
  if (!prepared.load(std::memory_order_acquire)) {
    std::call_once(prepared_once, [] {
      int sig = 0;
      ::prctl(PR_GET_PDEATHSIG, &sig);
      (void)::getppid();
      struct sigaction sa {};
      ::sigaction(SIGPIPE, nullptr, &sa);
      sigset_t set;
      sigemptyset(&set);
      ::pthread_sigmask(SIG_BLOCK, nullptr, &set);
      (void)::fcntl(0, F_GETFD);
      block_sigpipe_in_this_thread();
      record_synced_streams();
      // A rehearsal of what a child's io_context does (coroutine frames from
      // aligned_alloc, the scheduler's condition variable, ...).
      asio::io_context rehearsal(1);
      asio::co_spawn(rehearsal, []() -> asio::awaitable<int> { co_return 0; }, [](std::exception_ptr, int) {});
      rehearsal.run();
      prepared.store(true, std::memory_order_release);
    });
  }
  spare* current = spare_context.load(std::memory_order_acquire);
  if (current != nullptr && current->owner == self) return;
  // The first fork of this process: a spare it inherited is its parent's
  // (the io_context this very process may be running).
  auto* fresh = new spare(self);  // one per process, for its lifetime
  if (!spare_context.compare_exchange_strong(current, fresh, std::memory_order_acq_rel)) {
    delete fresh;  // another thread of this process published one first
  }
}

int run_child_body(asio::io_context& io, child_body body, pid_t parent) noexcept {
  try {
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

// to_close: the descriptors listed by the parent, or empty with listed false
// to find them here. other_threads: the parent ran threads besides its own
// (or did not know), one of which may have held coropipe's locks.
//
// Up to the coroutine, the child makes its system calls inline (raw_syscall)
// and writes none of coropipe's globals: each libc code page it would run,
// and each data page it would write, costs it a page fault.
//
// Every signal is blocked on entry (all_signals_blocked). The parent's
// handlers are reset first; only then does the child take the forking
// thread's mask (with SIGPIPE added), which lets in what was sent meanwhile.
[[noreturn]] void child_main(const fork_options& opts, std::span<const int> keep, bool listed,
                             std::span<const pollfd> to_close, child_body body, pid_t parent,
                             std::uint64_t caught, bool other_threads, const sigset_t& mask) noexcept {
  reset_caught_signals(caught);
  // The kernel's signal set is the first 8 bytes of glibc's sigset_t.
  raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&mask), 0, 8);
  if (opts.parent_death_signal > 0) {
    // If the parent died before prctl took effect, nobody will send the
    // signal: act on it now.
    if (raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, opts.parent_death_signal) != 0 ||
        raw_syscall(SYS_getppid) != parent) {
      ::raise(opts.parent_death_signal);
      ::_exit(128 + opts.parent_death_signal);
    }
  }
  if (listed) {
    for (const pollfd& p : to_close) raw_syscall(SYS_close, p.fd);
  } else {
    close_inherited_descriptors(keep);
  }
  // The parent's /proc/self/status descriptor was closed above with the
  // other inherited ones; its record names the parent, so this process
  // opens its own if it forks in turn.
  reaper_reset_after_fork(other_threads);
  // This copy of the spare is the child's own io_context.
  asio::io_context& io = spare_context.load(std::memory_order_relaxed)->io;
  const int code = run_child_body(io, body, parent);
  // The io_context is not destroyed: run() returned because no work is left,
  // so every coroutine and I/O object has already gone, and tearing down the
  // rest would only copy more pages before _exit frees them all.
  flush_stdio();
  exit_now(code);
  ::_exit(code);  // not reached; tells the compiler so
}

} // namespace

child fork_child_impl(const asio::any_io_executor& ex, const fork_options& opts,
                      std::span<const int> keep_fds, child_body body, error_code& ec,
                      const char*& failed_call) {
  ec.clear();
  failed_call = nullptr;
  const pid_t parent = ::getpid();
  try {
    prepare_parent(parent);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
    return child();
  }
  const process_status ps = read_process_status(parent);
  const int own_threads = 1 + internal_thread_count() + runtime_threads();
  if (!opts.allow_threads && ps.threads > own_threads) {
    ec = errc::fork_in_threaded_process;
    return child();
  }
  flush_stdio();
  // Without threads of the application's, nothing but this thread creates
  // descriptors before the fork, so the list made here is exact (coropipe's
  // reaper only closes its pidfds, whose numbers nobody reuses meanwhile).
  thread_local std::vector<pollfd> to_close;
  std::size_t to_close_count = 0;
  const bool own_threads_only = ps.threads >= 1 && ps.threads <= own_threads;
  const bool listed =
      own_threads_only && list_descriptors_to_close(keep_fds, ps.fd_table_size, to_close, to_close_count);
  pid_t pid;
  int fork_errno = 0;
  {
    const all_signals_blocked blocked;
    const reaper_quiet_for_fork quiet;  // the reaper asleep in poll(), holding no lock
    // The child's mask: the forking thread's, with SIGPIPE blocked as
    // block_sigpipe_in_this_thread() does (made here: the child calls no libc
    // function it need not).
    sigset_t child_mask = blocked.previous();
    sigaddset(&child_mask, SIGPIPE);
    pid = ::fork();
    fork_errno = errno;
    if (pid == 0) {
      child_main(opts, keep_fds, listed, std::span<const pollfd>(to_close.data(), listed ? to_close_count : 0),
                 body, parent, ps.caught, ps.threads != own_threads, child_mask);
    }
  }
  if (pid < 0) {
    ec = detail::errno_code(fork_errno);
    failed_call = "fork";
    return child();
  }

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
        ec = detail::errno_code(err);
        failed_call = "pidfd_open";
        return child();
      }
    }
  }
  try {
    return child_access::make(
        std::allocate_shared<child_state>(asio::recycling_allocator<child_state>(), ex, pid, std::move(pidfd)));
  } catch (...) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    throw;
  }
}

} // namespace coropipe::detail

namespace coropipe {

asio::posix::stream_descriptor child_context::attach(unique_fd fd) const {
  return coropipe::attach(get_executor(), std::move(fd));
}

} // namespace coropipe
