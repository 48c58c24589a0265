// SPDX-License-Identifier: BSL-1.0
// spawn(): clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) + execve.
//
// The parent prepares everything the child needs (argv, envp, the PATH
// candidates, the descriptor moves) in its own memory, which the child shares.
// The child runs child_main() on a small mmap()ed stack, with every signal
// blocked, and makes raw system calls only: no allocation, no lock, nothing
// that could touch state another thread of the parent holds. On failure it
// writes {step, errno, index} into the shared child_args and exits; the
// parent, resumed once the child has exec'd or exited (CLONE_VFORK), reads it.
//
// Sanitizers: the child's code must not be instrumented. ASan poisons and
// unpoisons the shadow of stack frames on function entry and exit; a frame
// that never returns (execve) would leave the shadow of the mmap()ed stack
// poisoned in the shared address space, and a later mapping at that address
// would report false errors. child_main() and everything it calls is
// therefore COROPIPE_CHILD_CODE (no_sanitize address/undefined), uses no
// library function but syscall(), and copies no aggregate (which the
// compiler could turn into an intercepted memcpy/memset).
#include <coropipe/spawn.hpp>

#include <coropipe/attach.hpp>
#include <coropipe/pipe.hpp>

#include "process_ops.hpp"
#include "sys.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#if defined(COROPIPE_TSAN) && defined(__clang__)
// ThreadSanitizer: not even function entry/exit may be recorded, since the
// child would push onto the (suspended) parent thread's shadow stack.
#define COROPIPE_CHILD_CODE __attribute__((disable_sanitizer_instrumentation))
#elif defined(COROPIPE_TSAN)
#define COROPIPE_CHILD_CODE __attribute__((no_sanitize("thread")))
#else
#define COROPIPE_CHILD_CODE __attribute__((no_sanitize("address", "undefined")))
#endif

#if defined(COROPIPE_TSAN)
// ThreadSanitizer's clone() interceptor treats every clone as a fork: its
// bookkeeping after the call assumes a separate address space, and with
// CLONE_VM the child's half of it lands in the parent's state (a CHECK
// failure in ForkAfter). glibc's __clone is the same function, not intercepted.
extern "C" int __clone(int (*fn)(void*), void* stack, int flags, void* arg, ...);  // NOLINT
#define COROPIPE_CLONE __clone
#else
#define COROPIPE_CLONE ::clone
#endif

extern char** environ;  // NOLINT

namespace coropipe {

std::vector<std::string> environment::entries() const {
  std::vector<std::string> out;
  if (inherit_) {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) out.emplace_back(*e);
  }
  for (const auto& [name, value] : edits_) {
    std::erase_if(out, [&n = name](const std::string& entry) {
      return entry.compare(0, n.size(), n) == 0 && (entry.size() == n.size() || entry[n.size()] == '=');
    });
    if (value) out.push_back(name + "=" + *value);
  }
  return out;
}

namespace detail {

namespace {

// ---------------------------------------------------------------------------
// The child's side.

enum class step : int {
  none,
  prctl,
  parent_gone,
  setsid,
  setpgid,
  dup,       // moving a source above the targets (fcntl F_DUPFD_CLOEXEC)
  dup2,      // putting it in place
  nonblock,  // clearing O_NONBLOCK (fcntl F_SETFL)
  err_to_out,
  chdir,
  close_range,
  execve,
};

struct fd_move {
  int source;  // the parent's descriptor
  int target;  // the number in the program
  bool make_blocking;
};

struct child_args {
  // Prepared by the parent, read by the child.
  const fd_move* moves = nullptr;
  int* temps = nullptr;  // one per move, written by the child
  std::size_t move_count = 0;
  int min_temp = 3;  // above every target
  bool err_to_out = false;
  const int* kept = nullptr;  // the passed descriptors' numbers, sorted
  std::size_t kept_count = 0;
  const char* cwd = nullptr;
  bool new_session = false;
  bool set_pgid = false;
  pid_t pgid = 0;
  int death_signal = 0;
  pid_t parent = 0;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* const* candidates = nullptr;
  std::size_t candidate_count = 0;
  bool searched = false;  // the candidates come from PATH

  // Written by the child when a step fails, before it exits.
  step failed = step::none;
  int error = 0;
  std::size_t index = 0;
};

COROPIPE_CHILD_CODE inline int last_errno() noexcept { return errno; }

[[noreturn]] COROPIPE_CHILD_CODE void fail(child_args* a, step s, int error, std::size_t index) noexcept {
  a->error = error;
  a->index = index;
  a->failed = s;
  ::syscall(SYS_exit, 127);
  __builtin_unreachable();
}

#if defined(__x86_64__) || defined(__aarch64__)
// The kernel's struct sigaction on these architectures (glibc's
// kernel_sigaction): rt_sigaction() straight, no wrapper.
struct kernel_sigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)();
  std::uint64_t mask;
};
#endif

// Handlers go back to the default (they would run on the parent's memory);
// so do SIGPIPE and SIGXFSZ if ignored (coropipe's users may ignore SIGPIPE
// to get EPIPE; the programs they run expect the default). Other ignored
// signals stay ignored, as exec keeps them.
COROPIPE_CHILD_CODE void reset_signals() noexcept {
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
#if defined(__x86_64__) || defined(__aarch64__)
    kernel_sigaction old;
    old.handler = nullptr;
    old.flags = 0;
    old.restorer = nullptr;
    old.mask = 0;
    if (::syscall(SYS_rt_sigaction, sig, nullptr, &old, sizeof old.mask) != 0) continue;
    const bool ignored = old.handler == SIG_IGN;
    if (old.handler == SIG_DFL || (ignored && sig != SIGPIPE && sig != SIGXFSZ)) continue;
    kernel_sigaction dfl;
    dfl.handler = SIG_DFL;
    dfl.flags = 0;
    dfl.restorer = nullptr;
    dfl.mask = 0;
    ::syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof dfl.mask);
#else
    struct sigaction old;
    if (::sigaction(sig, nullptr, &old) != 0) continue;
    const bool ignored = old.sa_handler == SIG_IGN;
    if (old.sa_handler == SIG_DFL || (ignored && sig != SIGPIPE && sig != SIGXFSZ)) continue;
    struct sigaction dfl;
    dfl.sa_handler = SIG_DFL;
    dfl.sa_flags = 0;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
#endif
  }
}

COROPIPE_CHILD_CODE bool is_kept(const child_args* a, int fd) noexcept {
  for (std::size_t i = 0; i < a->kept_count; ++i) {
    if (a->kept[i] == fd) return true;
  }
  return false;
}

// Where close_range() is missing (Linux < 5.9) or lacks CLOSE_RANGE_CLOEXEC
// (< 5.11): mark what /proc/self/fd lists. Its positions are descriptor
// numbers, so changing flags while reading it skips nothing.
COROPIPE_CHILD_CODE bool cloexec_from_proc(const child_args* a) noexcept {
  const long dir = ::syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return false;
  alignas(8) char buf[4096];
  for (;;) {
    const long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
      const char* rec = buf + off;
      const unsigned short reclen = static_cast<unsigned short>(
          static_cast<unsigned char>(rec[16]) | (static_cast<unsigned char>(rec[17]) << 8));
      const char* name = rec + 19;
      off += reclen;
      if (name[0] < '0' || name[0] > '9') continue;
      int fd = 0;
      for (const char* p = name; *p >= '0' && *p <= '9'; ++p) fd = fd * 10 + (*p - '0');
      if (fd > STDERR_FILENO && fd != dir && !is_kept(a, fd)) ::syscall(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC);
    }
  }
  ::syscall(SYS_close, dir);
  return true;
}

// Every descriptor from 3 up, except the passed ones, becomes close-on-exec.
COROPIPE_CHILD_CODE void cloexec_the_rest(child_args* a) noexcept {
  unsigned int lo = 3;
  for (std::size_t i = 0; i <= a->kept_count; ++i) {
    const bool last = i == a->kept_count;
    const unsigned int hi = last ? ~0U : static_cast<unsigned int>(a->kept[i]) - 1;
    if (hi >= lo) {
      if (::syscall(SYS_close_range, lo, hi, CLOSE_RANGE_CLOEXEC) != 0) {
        const int e = last_errno();
        if ((e == ENOSYS || e == EINVAL) && cloexec_from_proc(a)) return;
        fail(a, step::close_range, e, 0);
      }
    }
    if (!last) lo = static_cast<unsigned int>(a->kept[i]) + 1;
  }
}

COROPIPE_CHILD_CODE int child_main(void* arg) noexcept {
  auto* a = static_cast<child_args*>(arg);
  reset_signals();

  if (a->death_signal > 0) {
    if (::syscall(SYS_prctl, PR_SET_PDEATHSIG, a->death_signal, 0L, 0L, 0L) != 0)
      fail(a, step::prctl, last_errno(), 0);
    // The parent may have died before prctl() took effect: then nobody sends
    // the signal, and nobody waits for this child either.
    if (::syscall(SYS_getppid) != a->parent) fail(a, step::parent_gone, ESRCH, 0);
  }
  if (a->new_session && ::syscall(SYS_setsid) < 0) fail(a, step::setsid, last_errno(), 0);
  if (a->set_pgid && ::syscall(SYS_setpgid, 0, a->pgid) != 0) fail(a, step::setpgid, last_errno(), 0);

  // First every source above every target, so that no dup2 overwrites a
  // source still to be placed; then each into place (dup3 clears
  // FD_CLOEXEC on the target; the copies are close-on-exec).
  for (std::size_t i = 0; i < a->move_count; ++i) {
    const long fd = ::syscall(SYS_fcntl, a->moves[i].source, F_DUPFD_CLOEXEC, a->min_temp);
    if (fd < 0) fail(a, step::dup, last_errno(), i);
    a->temps[i] = static_cast<int>(fd);
  }
  for (std::size_t i = 0; i < a->move_count; ++i) {
    const int target = a->moves[i].target;
    if (::syscall(SYS_dup3, a->temps[i], target, 0) < 0) fail(a, step::dup2, last_errno(), i);
    ::syscall(SYS_close, a->temps[i]);
    if (a->moves[i].make_blocking) {
      const long flags = ::syscall(SYS_fcntl, target, F_GETFL);
      if (flags < 0) fail(a, step::nonblock, last_errno(), i);
      if ((flags & O_NONBLOCK) != 0 && ::syscall(SYS_fcntl, target, F_SETFL, flags & ~long{O_NONBLOCK}) != 0)
        fail(a, step::nonblock, last_errno(), i);
    }
  }
  if (a->err_to_out && ::syscall(SYS_dup3, STDOUT_FILENO, STDERR_FILENO, 0) < 0)
    fail(a, step::err_to_out, last_errno(), 0);

  if (a->cwd != nullptr && ::syscall(SYS_chdir, a->cwd) != 0) fail(a, step::chdir, last_errno(), 0);

  cloexec_the_rest(a);

  const std::uint64_t no_signals = 0;
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &no_signals, nullptr, sizeof no_signals);

  // Like execvp(): try each candidate; a candidate that is not there is
  // skipped, one that is not executable is remembered (EACCES wins over
  // ENOENT), anything else ends the search.
  std::size_t denied = a->candidate_count;
  int error = ENOENT;
  for (std::size_t i = 0; i < a->candidate_count; ++i) {
    ::syscall(SYS_execve, a->candidates[i], a->argv, a->envp);
    const int e = last_errno();
    switch (e) {
    case EACCES:
      if (denied == a->candidate_count) denied = i;
      break;
    case ENOENT:
    case ENOTDIR:
    case ESTALE:
    case ENODEV:
    case ETIMEDOUT:
      error = e;
      break;
    default:
      fail(a, step::execve, e, i);
    }
  }
  if (denied != a->candidate_count) fail(a, step::execve, EACCES, denied);
  // Not found: after a PATH search, the program's name is reported.
  fail(a, step::execve, error, a->searched ? a->candidate_count : 0);
}

// ---------------------------------------------------------------------------
// The parent's side.

bool has_nul(std::string_view s) noexcept { return s.find('\0') != std::string_view::npos; }

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\0') out += "\\0";
    else out += c;
  }
  return out + "\"";
}

std::string program_of(const spawn_options& opts) {
  if (!opts.program.empty()) return opts.program.native();
  return opts.argv.empty() ? std::string() : opts.argv[0];
}

} // namespace

std::string invalid_options(const spawn_options& opts) {
  const std::string program = program_of(opts);
  using kind = stdio_access::kind;
  if (opts.argv.empty()) return "argv is empty";
  for (std::size_t i = 0; i < opts.argv.size(); ++i) {
    if (has_nul(opts.argv[i])) return "argv[" + std::to_string(i) + "] contains a NUL byte";
  }
  if (program.empty()) return "the program's name is empty";
  if (has_nul(program)) return "the program's name contains a NUL byte";
  if (has_nul(opts.cwd.native())) return "cwd contains a NUL byte";
  for (const auto& [name, value] : environment_access::edits(opts.env)) {
    if (name.empty() || name.find('=') != std::string::npos || has_nul(name))
      return "invalid environment variable name " + quote(name);
    if (value && has_nul(*value)) return "the value of environment variable " + name + " contains a NUL byte";
  }
  if (stdio_access::kind_of(opts.in) == kind::to_stdout || stdio_access::kind_of(opts.out) == kind::to_stdout)
    return "stdio::to_stdout() is for stderr only";
  const char* names[] = {"in", "out", "err"};
  const stdio* streams[] = {&opts.in, &opts.out, &opts.err};
  for (int i = 0; i < 3; ++i) {
    if (stdio_access::kind_of(*streams[i]) == kind::fd &&
        !stdio_access::fd(const_cast<stdio&>(*streams[i])))
      return std::string("stdio::from() for ") + names[i] + " was given no descriptor";
  }
  std::vector<int> numbers;
  for (const auto& p : opts.fds) {
    if (p.child_fd < 3)
      return "passed descriptor number " + std::to_string(p.child_fd) +
             " is below 3 (0-2 are set with in, out and err)";
    if (!p.fd) return "no descriptor given for number " + std::to_string(p.child_fd);
    if (std::find(numbers.begin(), numbers.end(), p.child_fd) != numbers.end())
      return "descriptor number " + std::to_string(p.child_fd) + " is passed twice";
    numbers.push_back(p.child_fd);
  }
  if (opts.new_session && opts.process_group) return "new_session and process_group exclude each other";
  if (opts.process_group && *opts.process_group < 0) return "process_group is negative";
  if (opts.parent_death_signal < 0 || opts.parent_death_signal > 64) return "parent_death_signal is not a signal";
  return {};
}

namespace {

// Where execve() is tried, in order: the program itself if it names a path,
// else each directory of the PATH that the program will have.
std::vector<std::string> candidates(const std::string& program, const std::vector<std::string>& env) {
  if (program.find('/') != std::string::npos) return {program};
  std::string_view path = "/bin:/usr/bin";
  for (const auto& e : env) {
    if (e.compare(0, 5, "PATH=") == 0) path = std::string_view(e).substr(5);
  }
  std::vector<std::string> out;
  for (;;) {
    const auto colon = path.find(':');
    const std::string_view dir = path.substr(0, colon);
    // An empty entry is the working directory, as for execvp().
    out.push_back(dir.empty() ? program : std::string(dir) + (dir.back() == '/' ? "" : "/") + program);
    if (colon == std::string_view::npos) break;
    path.remove_prefix(colon + 1);
  }
  return out;
}

std::string describe_failure(const child_args& a, const std::vector<fd_move>& moves,
                             const std::vector<std::string>& cands, const std::string& program,
                             const spawn_options& opts) {
  switch (a.failed) {
  case step::prctl:
    return "prctl(PR_SET_PDEATHSIG)";
  case step::parent_gone:
    return "the parent died during the spawn";
  case step::setsid:
    return "setsid";
  case step::setpgid:
    return "setpgid " + std::to_string(opts.process_group.value_or(0));
  case step::dup:
    return "dup " + std::to_string(moves[a.index].source);
  case step::dup2:
    return "dup2 " + std::to_string(moves[a.index].source) + " -> " + std::to_string(moves[a.index].target);
  case step::nonblock:
    return "fcntl(F_SETFL) " + std::to_string(moves[a.index].target);
  case step::err_to_out:
    return "dup2 1 -> 2";
  case step::chdir:
    return "chdir " + opts.cwd.native();
  case step::close_range:
    return "close_range";
  case step::execve:
    return "execve " + (a.index < cands.size() ? cands[a.index] : program);
  case step::none:
    break;
  }
  return "spawn";
}

void reap(pid_t pid) noexcept {
  siginfo_t info;
  while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED) != 0 && errno == EINTR) {
  }
}

// An mmap()ed stack for the child, with a guard page below it, mapped on
// first use and kept (see spawn_impl).
class child_stack {
public:
  static constexpr std::size_t size = std::size_t{64} << 10;

  child_stack() noexcept = default;
  ~child_stack() {
    if (base_ != nullptr) ::munmap(base_, size + page_);
  }
  child_stack(const child_stack&) = delete;
  child_stack& operator=(const child_stack&) = delete;

  // Maps it if it is not yet; false (errno set) if mmap fails.
  bool acquire() noexcept {
    if (base_ != nullptr) return true;
    page_ = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    void* p = ::mmap(nullptr, size + page_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return false;
    base_ = static_cast<char*>(p);
    ::mprotect(base_, page_, PROT_NONE);
    return true;
  }
  void* top() const noexcept { return base_ + page_ + size; }

private:
  char* base_ = nullptr;
  std::size_t page_ = 0;
};

// clone() with every signal blocked in the calling thread, so that no
// handler of the parent's runs in the child while it shares the memory.
pid_t clone_child(child_args& args, void* stack_top, bool with_pidfd, int& pidfd, int& error) noexcept {
  const all_signals_blocked blocked;
  int flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
  if (with_pidfd) flags |= CLONE_PIDFD;
  pidfd = -1;
  const pid_t pid = COROPIPE_CLONE(child_main, stack_top, flags, &args, &pidfd);
  error = pid < 0 ? errno : 0;
  return pid;
}

} // namespace

process spawn_impl(const asio::any_io_executor& ex, spawn_options& opts, error_code& ec,
                   std::string& what) {
  using kind = stdio_access::kind;
  ec.clear();
  what.clear();
  try {
    const std::string program = program_of(opts);
    if (std::string problem = invalid_options(opts); !problem.empty()) {
      ec = errc::invalid_argument;
      what = std::move(problem);
      return process(ex);
    }

    // What execve() gets.
    const std::vector<std::string> env = opts.env.entries();
    const std::vector<std::string> cands = candidates(program, env);
    std::vector<char*> argv;
    argv.reserve(opts.argv.size() + 1);
    for (auto& a : opts.argv) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    std::vector<const char*> cand_ptrs;
    for (const auto& c : cands) cand_ptrs.push_back(c.c_str());

    // The standard streams: the child's ends (closed here on return) and the
    // parent's (attached).
    unique_fd devnull;
    unique_fd child_ends[3];
    asio::posix::stream_descriptor parent_ends[3] = {asio::posix::stream_descriptor(ex),
                                                     asio::posix::stream_descriptor(ex),
                                                     asio::posix::stream_descriptor(ex)};
    stdio* streams[3] = {&opts.in, &opts.out, &opts.err};
    std::vector<fd_move> moves;
    for (int i = 0; i < 3; ++i) {
      stdio& s = *streams[i];
      switch (stdio_access::kind_of(s)) {
      case kind::inherit:
      case kind::to_stdout:
        break;
      case kind::null:
        if (!devnull) {
          devnull.reset(::open("/dev/null", O_RDWR | O_CLOEXEC));
          if (!devnull) {
            ec = last_error();
            what = "open /dev/null";
            return process(ex);
          }
        }
        moves.push_back({devnull.get(), i, false});
        break;
      case kind::pipe: {
        pipe_ends p = coropipe::pipe(ec);
        if (ec) {
          what = "pipe2";
          return process(ex);
        }
        unique_fd& mine = i == 0 ? p.write_end : p.read_end;
        child_ends[i] = std::move(i == 0 ? p.read_end : p.write_end);
        parent_ends[i] = coropipe::attach(ex, std::move(mine), ec);
        if (ec) {
          what = "attach";
          return process(ex);
        }
        moves.push_back({child_ends[i].get(), i, false});
        break;
      }
      case kind::fd:
        moves.push_back({stdio_access::fd(s).get(), i, true});
        break;
      }
    }
    std::vector<int> kept;
    for (const auto& p : opts.fds) {
      moves.push_back({p.fd.get(), p.child_fd, true});
      kept.push_back(p.child_fd);
    }
    std::sort(kept.begin(), kept.end());
    std::vector<int> temps(moves.size(), -1);

    child_args args;
    args.moves = moves.data();
    args.temps = temps.data();
    args.move_count = moves.size();
    args.min_temp = std::max(3, kept.empty() ? 0 : kept.back() + 1);
    args.err_to_out = stdio_access::kind_of(opts.err) == kind::to_stdout;
    args.kept = kept.data();
    args.kept_count = kept.size();
    args.cwd = opts.cwd.empty() ? nullptr : opts.cwd.c_str();
    args.new_session = opts.new_session;
    args.set_pgid = opts.process_group.has_value();
    args.pgid = opts.process_group.value_or(0);
    args.death_signal = opts.parent_death_signal;
    args.parent = ::getpid();
    args.argv = argv.data();
    args.envp = envp.data();
    args.candidates = cand_ptrs.data();
    args.candidate_count = cand_ptrs.size();
    args.searched = program.find('/') == std::string::npos;

    // The stack is kept for the thread's next spawn: its pages stay
    // mapped, so a child does not fault them in afresh (nor the parent pay
    // for mmap, mprotect and munmap) every time. With CLONE_VFORK the
    // child is done with it once clone() returns.
    thread_local child_stack stack;
    if (!stack.acquire()) {
      ec = last_error();
      what = "mmap";
      return process(ex);
    }
    bool with_pidfd = !pidfds_unavailable();
    int pidfd_raw = -1;
    int error = 0;
    pid_t pid = clone_child(args, stack.top(), with_pidfd, pidfd_raw, error);
    if (pid < 0 && with_pidfd && (error == EINVAL || error == EPERM || error == ENOSYS)) {
      // A kernel before 5.2, or a filter that refuses CLONE_PIDFD: waits poll.
      remember_pidfds_unavailable();
      with_pidfd = false;
      pid = clone_child(args, stack.top(), with_pidfd, pidfd_raw, error);
    }
    if (pid < 0) {
      ec = detail::errno_code(error);
      what = "clone";
      return process(ex);
    }
    unique_fd pidfd(with_pidfd ? pidfd_raw : -1);
    if (args.failed != step::none) {
      reap(pid);
      ec = detail::errno_code(args.error);
      what = describe_failure(args, moves, cands, program, opts);
      return process(ex);
    }

    // The program runs: from here on it must end up owned by a handle.
    std::shared_ptr<child_state> state;
    try {
      state = std::make_shared<child_state>(ex, pid, std::move(pidfd));
    } catch (...) {
      ::kill(pid, SIGKILL);
      reap(pid);
      throw;
    }
    pid_t pgid = 0;
    if (opts.new_session) pgid = pid;
    else if (opts.process_group) pgid = *opts.process_group == 0 ? pid : *opts.process_group;
    return process_access::make(child_access::make(std::move(state)), std::move(parent_ends[0]),
                                std::move(parent_ends[1]), std::move(parent_ends[2]), pgid);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
    what = "allocating";
    return process(ex);
  }
}

void signal_group(const std::shared_ptr<child_state>& st, pid_t pgid, int signo, error_code& ec) noexcept {
  ec.clear();
  if (pgid <= 0) {
    ec = errc::invalid_argument;
    return;
  }
  if (!st) {
    ec = errc::no_child;
    return;
  }
  if (st->status) return;
  if (::kill(-pgid, signo) != 0) ec = last_error();
}

} // namespace detail

process::process(const executor_type& ex) : ex_(ex), in_(ex), out_(ex), err_(ex) {}

void process::signal_group(int signo, error_code& ec) noexcept {
  detail::signal_group(detail::child_access::state(*this), pgid_, signo, ec);
}

void process::signal_group(int signo) {
  error_code ec;
  signal_group(signo, ec);
  if (ec) detail::throw_error(ec, "coropipe::process::signal_group", "kill");
}

} // namespace coropipe
