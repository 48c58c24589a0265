// SPDX-License-Identifier: BSL-1.0
/// @file
/// spawn(): start a program from an argv (never through a shell), with its
/// standard streams inherited, on `/dev/null`, on pipes, or on descriptors you
/// own; coropipe::process, its handle.
///
/// ```
/// coropipe::process p = coropipe::spawn(io, {.argv = {"sort", "-n"},
///                                            .in = coropipe::stdio::pipe(),
///                                            .out = coropipe::stdio::pipe()});
/// co_await asio::async_write(p.stdin_pipe(), asio::buffer("3\n1\n2\n"sv), asio::use_awaitable);
/// p.stdin_pipe().close();                              // end of input for sort
/// // ... read p.stdout_pipe() to its end, then:
/// coropipe::exit_status st = co_await p.async_wait(asio::use_awaitable);
/// ```
///
/// ### How the program is started
/// The program is started with `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`,
/// the way glibc's posix_spawn() does it: the parent's memory is shared, not
/// copied, so a parent with a large resident set spawns as fast as a small
/// one, and the calling thread is suspended only until the program has been
/// exec'd (or has failed to be). The child runs on a small stack of its own
/// with every signal blocked and makes raw system calls only (no allocation,
/// no lock), so spawn() is safe in a process with many threads — unlike
/// fork_child(). The pidfd comes with the clone, so the program is waited for
/// through it (see child.hpp).
///
/// In the child, before the program is exec'd (every signal stays blocked
/// until the very end):
/// - signal handlers are reset to the default, and so is SIGPIPE (and
///   SIGXFSZ) when ignored; other ignored signals stay ignored, as exec keeps
///   them (that is how `nohup` works);
/// - the parent-death signal is set, then the parent is checked to still be
///   there (closing the race with a parent that died during the spawn);
/// - a new session or process group is made, if asked for;
/// - the standard streams and passed descriptors are put in place (each is
///   first moved above every target number, so overlapping numbers are fine).
///   Those coropipe creates (pipes, `/dev/null`) are blocking; a descriptor
///   you give (stdio::from(), passed descriptors) is made blocking by
///   clearing O_NONBLOCK on its open file description, which it shares with
///   any copy you keep. Inherited streams are left as they are;
/// - the working directory is changed;
/// - every other descriptor is marked close-on-exec with one close_range()
///   call — also those some library opened without O_CLOEXEC — so the program
///   sees 0, 1, 2 and the descriptors passed on purpose, nothing else;
/// - the signal mask is emptied and the program is exec'd: each PATH
///   candidate in turn, like execvp().
///
/// ### Failures are errors, not exit status 127
/// When a step fails, the child records the step and errno in memory it
/// shares with the parent, and exits; spawn() reaps it and reports a
/// `system_error` with the errno (`coropipe::system_category()`) whose what()
/// names the step: `coropipe::spawn: chdir /nonexistent: No such file or
/// directory`, `coropipe::spawn: execve ./data.txt: Permission denied`.
/// Arguments that can never work (an empty argv, a NUL byte inside an
/// argument, ...) give `coropipe::errc::invalid_argument` before anything is
/// created. On any failure no descriptor and no child is left behind.
#pragma once

#include <coropipe/child.hpp>
#include <coropipe/error.hpp>
#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>

#include <sys/types.h>

#include <chrono>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

namespace coropipe {

class stdio;
class process;
struct spawn_options;

namespace detail {
struct stdio_access;
struct environment_access;
struct process_access;
} // namespace detail

/// Where one standard stream of a spawned program goes.
class stdio {
public:
  /// The parent's own stream (the default), passed as it is: a non-blocking
  /// descriptor stays non-blocking.
  stdio() noexcept = default;

  /// The parent's own stream; the same as `stdio()`.
  [[nodiscard]] static stdio inherit() noexcept { return stdio(); }

  /// `/dev/null`: reading gives end of stream, writes are discarded.
  [[nodiscard]] static stdio null() noexcept { return stdio(kind::null); }

  /// A new pipe: the program gets one end, the parent the other, attached to
  /// the spawning executor as process::stdin_pipe(), stdout_pipe() or
  /// stderr_pipe(). The program's end is fresh, hence blocking.
  [[nodiscard]] static stdio pipe() noexcept { return stdio(kind::pipe); }

  /// A descriptor the caller owns, moved in: the program gets it, and the
  /// parent's copy is closed when spawn() returns (success or not). It is made
  /// blocking in the child (O_NONBLOCK cleared on the open file description,
  /// which every copy shares): never hand over a descriptor that an Asio
  /// object still uses.
  [[nodiscard]] static stdio from(unique_fd fd) noexcept { return stdio(kind::fd, std::move(fd)); }

  /// For stderr only: wherever stdout goes (`2>&1`).
  [[nodiscard]] static stdio to_stdout() noexcept { return stdio(kind::to_stdout); }

private:
  friend struct detail::stdio_access;
  enum class kind : unsigned char { inherit, null, pipe, fd, to_stdout };
  explicit stdio(kind k, unique_fd fd = unique_fd()) noexcept : kind_(k), fd_(std::move(fd)) {}

  kind kind_ = kind::inherit;
  unique_fd fd_;
};

/// A descriptor passed to a spawned program at a chosen number.
struct passed_fd {
  /// The number the program sees it as; 3 or more (0-2 are stdio's).
  int child_fd = -1;
  /// The descriptor, moved in; closed in the parent when spawn() returns.
  /// Made blocking in the child, like stdio::from().
  unique_fd fd{};
};

namespace detail {
// One element of passed_fds' initializer list. The list's elements are const;
// the descriptor is mutable so that it can be moved out of them.
struct passed_fd_init {
  // Implicit: the point is `{passed_fd{...}}`.
  passed_fd_init(passed_fd p) noexcept : value(std::move(p)) {}
  passed_fd_init(int child_fd, unique_fd fd) noexcept : value{child_fd, std::move(fd)} {}
  mutable passed_fd value;
};
} // namespace detail

/// The descriptors of spawn_options::fds: a `std::vector<passed_fd>` that can
/// also be list-initialized, which a vector of a move-only type cannot be
/// (its `std::initializer_list` constructor copies):
///
/// ```
/// coropipe::spawn(io, {.argv = {"worker"},
///                      .fds = {coropipe::passed_fd{3, std::move(events_w)},
///                              coropipe::passed_fd{4, std::move(control_r)}}});
/// ```
///
/// The descriptors are moved out of the list; an lvalue passed_fd does not
/// compile (write `std::move(p)`). Everything else is std::vector's.
class passed_fds : public std::vector<passed_fd> {
public:
  /// No descriptor.
  passed_fds() noexcept = default;
  /// Takes the descriptors of @p fds.
  passed_fds(std::vector<passed_fd> fds) noexcept { swap(fds); }
  /// Takes the descriptors of the list, in order: `{passed_fd{3, std::move(fd)}}`
  /// (or `{{3, std::move(fd)}}`).
  passed_fds(std::initializer_list<detail::passed_fd_init> fds) {
    reserve(fds.size());
    for (const auto& f : fds) push_back(std::move(f.value));
  }
};

/// The environment of a spawned program: the parent's (read when spawn() is
/// called), or an empty one, with edits applied in order.
///
/// ```
/// opts.env.set("LC_ALL", "C").unset("DISPLAY");          // the parent's, edited
/// opts.env = coropipe::environment::empty().set("PATH", "/usr/bin");  // replaced
/// ```
class environment {
public:
  /// The parent's environment, unedited (the default).
  environment() = default;

  /// An environment with no variable at all.
  [[nodiscard]] static environment empty() {
    environment e;
    e.inherit_ = false;
    return e;
  }

  /// Sets @p name to @p value, replacing any earlier value. The name must be
  /// non-empty without `=`; neither may contain a NUL byte (checked by
  /// spawn(), which reports `errc::invalid_argument`).
  environment& set(std::string name, std::string value) {
    edits_.emplace_back(std::move(name), std::move(value));
    return *this;
  }

  /// Removes @p name.
  environment& unset(std::string name) {
    edits_.emplace_back(std::move(name), std::nullopt);
    return *this;
  }

  /// The `NAME=value` entries the program gets, with the parent's
  /// environment read now.
  [[nodiscard]] std::vector<std::string> entries() const;

private:
  friend struct detail::environment_access;
  bool inherit_ = true;
  std::vector<std::pair<std::string, std::optional<std::string>>> edits_;
};

/// Everything spawn() needs to know. An aggregate: use designated
/// initializers, in this order, for what differs from the defaults.
///
/// ```
/// coropipe::spawn(io, {.argv = {"make", "-j4"}, .out = coropipe::stdio::pipe(),
///                      .err = coropipe::stdio::to_stdout(), .cwd = "/src"});
/// ```
struct spawn_options {
  /// The arguments, argv[0] first. Must not be empty.
  std::vector<std::string> argv{};
  /// The program to run; empty: argv[0]. A name without `/` is looked for in
  /// the PATH of the program's environment (`/bin:/usr/bin` when it has
  /// none), like execvp() but never through a shell; a name with `/` is a
  /// path, relative to `cwd` when it is relative.
  std::filesystem::path program{};
  /// stdin.
  stdio in{};
  /// stdout.
  stdio out{};
  /// stderr (stdio::to_stdout() for `2>&1`).
  stdio err{};
  /// More descriptors for the program, at chosen numbers: inline,
  /// `.fds = {coropipe::passed_fd{3, std::move(fd)}}`, or added with pass_fd().
  passed_fds fds{};
  /// The program's environment.
  environment env{};
  /// The program's working directory; empty: the parent's.
  std::filesystem::path cwd{};
  /// Start a new session (setsid()): the program leads a new session and a
  /// new process group, and has no controlling terminal.
  bool new_session = false;
  /// 0: a new process group led by the program (setpgid(0, 0)); a process
  /// group id: join that group. Nothing: the parent's group. Not together
  /// with new_session.
  std::optional<pid_t> process_group{};
  /// Sent to the program when the thread that spawned it ends (for instance
  /// because the process died); 0 for none (the default). The race with a
  /// parent that dies during the spawn is closed: the child then exits.
  int parent_death_signal = 0;

  /// Passes @p fd to the program as descriptor number @p child_fd (3 or more).
  spawn_options& pass_fd(int child_fd, unique_fd fd) {
    fds.push_back(passed_fd{child_fd, std::move(fd)});
    return *this;
  }
};

namespace detail {

struct stdio_access {
  using kind = stdio::kind;
  static kind kind_of(const stdio& s) noexcept { return s.kind_; }
  static unique_fd& fd(stdio& s) noexcept { return s.fd_; }
};

struct environment_access {
  static bool inherits(const environment& e) noexcept { return e.inherit_; }
  static const auto& edits(const environment& e) noexcept { return e.edits_; }
};

// Runs a coroutine that reports (error_code, T) as an asynchronous operation
// with the completion signature void(error_code, T): co_spawn()ed on
// @p ex, forwarding the handler's cancellation slot (per-operation
// cancellation reaches the coroutine), executor and allocator.
template <typename Handler, typename T>
class run_handler {
public:
  run_handler(Handler h, asio::any_io_executor ex) : handler_(std::move(h)), ex_(std::move(ex)) {}

  using cancellation_slot_type = asio::associated_cancellation_slot_t<Handler>;
  cancellation_slot_type get_cancellation_slot() const noexcept {
    return asio::get_associated_cancellation_slot(handler_);
  }
  using executor_type = asio::associated_executor_t<Handler, asio::any_io_executor>;
  executor_type get_executor() const noexcept { return asio::get_associated_executor(handler_, ex_); }
  using allocator_type = asio::associated_allocator_t<Handler>;
  allocator_type get_allocator() const noexcept { return asio::get_associated_allocator(handler_); }

  void operator()(std::exception_ptr e, std::tuple<error_code, T> r) {
    // The coroutines report errors as values; what escapes is a bug or
    // std::bad_alloc, and leaves the io_context's run(), as from a handler.
    if (e) std::rethrow_exception(e);
    std::move(handler_)(std::get<0>(r), std::move(std::get<1>(r)));
  }

private:
  Handler handler_;
  asio::any_io_executor ex_;
};

template <typename T, typename Token>
auto async_run(asio::any_io_executor ex, asio::awaitable<std::tuple<error_code, T>> op,
               Token&& token) {
  return asio::async_initiate<Token, void(error_code, T)>(
      [](auto handler, asio::any_io_executor on,
         asio::awaitable<std::tuple<error_code, T>> body) {
        using handler_type = decltype(handler);
        asio::co_spawn(on, std::move(body), run_handler<handler_type, T>(std::move(handler), on));
      },
      token, std::move(ex), std::move(op));
}

// Stops the programs of @p states: @p signo to each one not reaped yet (and
// to process group @p pgid unless 0), then SIGKILL to those still running
// after @p grace; once every program has ended, SIGKILL to the group (its
// leader, the first state when it leads it, is still unreaped then, so its id
// cannot have been reused), and every program is reaped.
asio::awaitable<std::tuple<error_code, std::vector<exit_status>>> stop_programs(
    std::vector<std::shared_ptr<child_state>> states, pid_t pgid,
    std::chrono::steady_clock::duration grace, int signo);

// Waits for the programs of @p states, last first, and reaps them.
asio::awaitable<std::tuple<error_code, std::vector<exit_status>>> wait_programs(
    std::vector<std::shared_ptr<child_state>> states);

asio::awaitable<std::tuple<error_code, exit_status>> stop_group(
    std::shared_ptr<child_state> state, pid_t pgid, std::chrono::steady_clock::duration grace,
    int signo);

// Sends @p signo to process group @p pgid unless the program of @p st has been
// reaped (its group's id could then belong to someone else).
void signal_group(const std::shared_ptr<child_state>& st, pid_t pgid, int signo,
                  error_code& ec) noexcept;

// On failure sets @p ec, and @p what to the failing step ("chdir /x").
process spawn_impl(const asio::any_io_executor& ex, spawn_options& opts, error_code& ec,
                   std::string& what);

} // namespace detail

/// A program started by spawn(): a coropipe::child (waits, stops, signals,
/// detach(), the same exit_status as forked children; see child.hpp) plus the
/// parent's ends of its piped standard streams, and its process group.
///
/// Like a child, a process destroyed while its program runs closes its pipes,
/// then kills and reaps the program; detach() lets the program run on.
/// Waiting never depends on the pipes: a program that has exited is reaped
/// even while a grandchild still holds its stdout open.
class process : public child {
public:
  /// An empty process (no program) whose operations run on @p ex.
  explicit process(const executor_type& ex);

  process(process&&) noexcept = default;
  /// Kills and reaps the program held so far (as the destructor does) first.
  process& operator=(process&&) noexcept = default;
  process(const process&) = delete;
  process& operator=(const process&) = delete;
  ~process() = default;

  /// The executor the process's waits and pipes run on.
  [[nodiscard]] executor_type get_executor() const noexcept { return ex_; }

  /// The parent's end of the program's stdin, when it was stdio::pipe();
  /// otherwise not open. Close it to give the program end of input.
  [[nodiscard]] asio::posix::stream_descriptor& stdin_pipe() noexcept { return in_; }
  /// The parent's end of the program's stdout, when it was stdio::pipe().
  [[nodiscard]] asio::posix::stream_descriptor& stdout_pipe() noexcept { return out_; }
  /// The parent's end of the program's stderr, when it was stdio::pipe().
  [[nodiscard]] asio::posix::stream_descriptor& stderr_pipe() noexcept { return err_; }

  /// The program's process group when it was started in one of its own or
  /// told to join one (spawn_options::new_session, process_group); 0 when it
  /// shares the parent's group.
  [[nodiscard]] pid_t process_group() const noexcept { return pgid_; }

  /// Sends @p signo to the program's whole process group (kill(-pgid)).
  /// Nothing is sent once the program has been reaped: the group's id could
  /// belong to someone else by then.
  /// @throws system_error naming "kill": `errc::invalid_argument` when
  /// process_group() is 0 (signalling the parent's own group is refused).
  void signal_group(int signo);
  /// As signal_group(), reporting the error in @p ec.
  void signal_group(int signo, error_code& ec) noexcept;

  /// Stops the program's whole process group and reaps the program: sends
  /// @p signo to the group, waits until the program has ended or @p grace has
  /// passed, then sends SIGKILL to the group (to whatever of it is left:
  /// members that outlive the program are not waited for), and reaps the
  /// program. Grandchildren in the group are killed, but not reaped here:
  /// they are their own parents' to reap.
  ///
  /// Completion signature: `void(error_code, coropipe::exit_status)`.
  ///
  /// `errc::invalid_argument` when process_group() is 0, `errc::no_child`
  /// for an empty process. Cancelling the operation (per-operation
  /// cancellation, terminal) completes it with
  /// `asio::error::operation_aborted`; the first signal has been sent.
  template <typename StopToken = asio::default_completion_token_t<executor_type>>
  auto async_stop_group(std::chrono::steady_clock::duration grace, int signo,
                        StopToken&& token = asio::default_completion_token_t<executor_type>()) {
    return detail::async_run<exit_status>(
        get_executor(), detail::stop_group(detail::child_access::state(*this), pgid_, grace, signo),
        std::forward<StopToken>(token));
  }

  /// async_stop_group() with SIGTERM as the first signal.
  template <typename StopToken = asio::default_completion_token_t<executor_type>>
  auto async_stop_group(std::chrono::steady_clock::duration grace,
                        StopToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_stop_group(grace, terminate_signal, std::forward<StopToken>(token));
  }

private:
  friend struct detail::process_access;
  process(child c, asio::posix::stream_descriptor in, asio::posix::stream_descriptor out,
          asio::posix::stream_descriptor err, pid_t pgid) noexcept
      : child(std::move(c)), ex_(in.get_executor()), in_(std::move(in)), out_(std::move(out)),
        err_(std::move(err)), pgid_(pgid) {}

  executor_type ex_;
  asio::posix::stream_descriptor in_;
  asio::posix::stream_descriptor out_;
  asio::posix::stream_descriptor err_;
  pid_t pgid_ = 0;
};

namespace detail {
struct process_access {
  static process make(child c, asio::posix::stream_descriptor in, asio::posix::stream_descriptor out,
                      asio::posix::stream_descriptor err, pid_t pgid) noexcept {
    return process(std::move(c), std::move(in), std::move(out), std::move(err), pgid);
  }
};
} // namespace detail

/// Starts a program (see the top of this page for what happens in the child)
/// and returns its handle; waits and pipes run on @p where's executor.
///
/// @param where  an executor or execution context (e.g. `asio::io_context&`).
/// @param opts   the program, its arguments and how to start it; descriptors
///               in it are closed in the parent when spawn() returns.
/// @throws system_error whose what() names the failing step:
/// `errc::invalid_argument` for options that can never work ("argv is
/// empty", "argv[1] contains a NUL byte", "stdio::to_stdout() is for stderr
/// only", ...), or the errno of the step that failed: "allocating", "mmap"
/// (the child's stack), "pipe2", "open /dev/null", "clone", "attach",
/// "chdir <dir>", "setsid", "setpgid <pgid>", "prctl(PR_SET_PDEATHSIG)",
/// "the parent died during the spawn" (ESRCH), "dup <fd>" (moving it above the
/// target numbers), "dup2 <fd> -> <n>", "fcntl(F_SETFL) <n>", "close_range",
/// "execve <path>" (ENOENT for a program found nowhere on the
/// PATH; EACCES when a candidate was not executable; ENOEXEC for a file that
/// is neither a binary nor a script with `#!`).
template <detail::executor_or_context Where>
[[nodiscard]] process spawn(Where&& where, spawn_options opts) {
  error_code ec;
  std::string what;
  process p = detail::spawn_impl(detail::executor_of(where), opts, ec, what);
  if (ec) detail::throw_error(ec, "coropipe::spawn", what.c_str());
  return p;
}

/// As above, reporting the error in @p ec (the step is not reported: use the
/// throwing form to have it named); the process is then empty.
template <detail::executor_or_context Where>
[[nodiscard]] process spawn(Where&& where, spawn_options opts, error_code& ec) {
  std::string what;
  return detail::spawn_impl(detail::executor_of(where), opts, ec, what);
}

} // namespace coropipe
