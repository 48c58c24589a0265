// SPDX-License-Identifier: BSL-1.0
/// @file
/// fork_child(): run a coroutine in a fork()ed child process.
///
/// ```
/// auto [in, out] = coropipe::pipe();
/// coropipe::child c = coropipe::fork_child(io,
///     [](coropipe::child_context& ctx, coropipe::unique_fd out) -> asio::awaitable<int> {
///       auto w = ctx.attach(std::move(out));
///       co_await asio::async_write(w, asio::buffer("hello", 5), asio::use_awaitable);
///       co_return 0;                          // the child's exit code
///     },
///     std::move(out));                        // handed to the child, closed here
/// ```
///
/// ### What the child is
/// The child runs the function on a fresh `asio::io_context` of its own, in its
/// only thread, and never returns into the parent's code: when the coroutine
/// finishes, the child flushes stdio and `_exit`s with the coroutine's result
/// (`awaitable<void>` means 0). An exception escaping the coroutine is printed
/// to stderr and the child exits with 1. Destructors of the parent's objects
/// and `atexit` handlers do not run in the child.
///
/// ### Descriptors: who closes what
/// Arguments after the function are moved into the child, like std::thread's.
/// Each `unique_fd` among them is handed to the child: it stays open there and
/// its copy in the parent is closed when fork_child() returns. In the child,
/// every other close-on-exec descriptor is closed before the function runs —
/// the parent's ends of its pipes, its other children's pipes and pidfds,
/// Asio's reactor descriptors — so the child behaves like an exec'd program:
/// it keeps 0, 1, 2, what it was handed, and what was opened without
/// O_CLOEXEC. Hence end-of-stream reaches the parent when the child exits, and
/// the child's writes fail with broken_pipe once the parent's reader is gone.
/// A descriptor captured in the lambda instead of passed as an argument is
/// closed in the child if it is close-on-exec (everything coropipe makes is).
///
/// ### Fork hazards
/// - **Threads.** fork() copies only the calling thread. A lock that another
///   thread held at that instant (in malloc, in stdio, in your own code) stays
///   locked forever in the child; only async-signal-safe calls are then safe.
///   fork_child() therefore refuses, with `errc::fork_in_threaded_process`,
///   when the process runs more than one thread (coropipe's own background
///   reaper excepted: fork_child() forks only while it sleeps in poll(),
///   holding no lock), including an io_context run by several threads. Start
///   a program with spawn() instead, or set `fork_options::allow_threads` if
///   you know the other threads hold no lock the child needs.
/// - **The parent's Asio objects** are copied into the child but must not be
///   used there: their descriptors are closed, and their reactor belongs to
///   the parent. Pass unique_fds and attach them with child_context::attach().
///   fork_child() does not call `notify_fork()` on the parent's io_context:
///   the parent's context carries on untouched, and the child never uses it.
/// - **Signals.** Handlers the parent installed (including those of an
///   `asio::signal_set`) are reset to SIG_DFL in the child, as exec would;
///   ignored signals stay ignored and the signal mask is inherited, with
///   SIGPIPE blocked (see sigpipe.hpp). A signal sent to the child before
///   its handlers are reset waits until they are, so it never runs a
///   handler of the parent's (the forking thread blocks every signal for
///   the duration of the fork() call, as posix_spawn() does). `asio::signal_set` cannot be used in a
///   forked child (Asio's signal state is process-global and was copied).
/// - **stdio.** C stdio and the standard iostreams are flushed before the
///   fork, so nothing buffered is printed twice. The child flushes its own
///   before it exits.
/// - **Parent death.** By default the child gets SIGKILL when the thread that
///   forked it ends (PR_SET_PDEATHSIG; the race with a parent dying during the
///   fork is closed by checking getppid()). Note that it is the forking
///   *thread* whose end counts.
///
/// ### What fork_child() keeps in the parent
/// To make each fork cheap, the first call prepares once, for the process's
/// lifetime: a spare `asio::io_context` (without descriptors) that each
/// child runs its copy of, and one close-on-exec descriptor open on
/// /proc/self/status (the thread count and the caught signals are read
/// from it before each fork). Children close that descriptor with the
/// other inherited ones; a process forked otherwise opens its own. If the
/// application closes it, a new one is opened (the old number, perhaps
/// reused by then, is left alone).
#pragma once

#include <coropipe/child.hpp>
#include <coropipe/error.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>

#include <sys/types.h>

#include <concepts>
#include <cstddef>
#include <functional>
#include <span>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropipe {

/// How fork_child() starts a child.
struct fork_options {
  /// Fork even though the process runs several threads (see the hazards above).
  bool allow_threads = false;
  /// Sent to the child when the thread that forked it ends; 0 for none.
  int parent_death_signal = 9;  // SIGKILL
};

/// What a forked child's function receives: its own io_context.
class child_context {
public:
  explicit child_context(asio::io_context& io, pid_t parent) noexcept : io_(&io), parent_(parent) {}

  /// The child's own io_context.
  [[nodiscard]] asio::io_context& context() const noexcept { return *io_; }
  /// Its executor.
  [[nodiscard]] asio::any_io_executor get_executor() const { return io_->get_executor(); }
  /// attach() on the child's io_context.
  [[nodiscard]] asio::posix::stream_descriptor attach(unique_fd fd) const;
  /// The process that forked this child.
  [[nodiscard]] pid_t parent_pid() const noexcept { return parent_; }

private:
  asio::io_context* io_;
  pid_t parent_;
};

namespace detail {

// The child's function, type-erased without allocating: it is only ever
// invoked in the child, where the parent's stack frames live on unchanged.
struct child_body {
  void* object;
  asio::awaitable<int> (*invoke)(void* object, child_context& ctx);
};

// On failure sets @p ec and @p failed_call (the system call's name).
child fork_child_impl(const asio::any_io_executor& ex, const fork_options& opts,
                      std::span<const int> keep_fds, child_body body, error_code& ec,
                      const char*& failed_call);

// Descriptors among fork_child()'s arguments stay open in the child.
template <typename T>
void collect_fds(std::vector<int>&, const T&) {}
inline void collect_fds(std::vector<int>& out, const unique_fd& fd) {
  if (fd) out.push_back(fd.get());
}
inline void collect_fds(std::vector<int>& out, const pipe_ends& p) {
  collect_fds(out, p.read_end);
  collect_fds(out, p.write_end);
}
inline void collect_fds(std::vector<int>& out, const duplex_ends& p) {
  collect_fds(out, p.first);
  collect_fds(out, p.second);
}
inline void collect_fds(std::vector<int>& out, const std::vector<unique_fd>& fds) {
  for (const auto& fd : fds) collect_fds(out, fd);
}

template <typename T>
inline constexpr bool is_awaitable_int_or_void =
    std::is_same_v<T, asio::awaitable<int>> || std::is_same_v<T, asio::awaitable<void>>;

template <typename F, typename... Args>
struct bound_child {
  F f;
  std::tuple<Args...> args;

  static asio::awaitable<int> invoke(void* self, child_context& ctx) {
    auto& b = *static_cast<bound_child*>(self);
    using R = std::invoke_result_t<F&, child_context&, Args&&...>;
    if constexpr (std::is_same_v<R, asio::awaitable<int>>) {
      return std::apply([&](Args&... a) { return std::invoke(b.f, ctx, std::move(a)...); }, b.args);
    } else {
      return run_void(b, ctx);
    }
  }

  static asio::awaitable<int> run_void(bound_child& b, child_context& ctx) {
    co_await std::apply([&](Args&... a) { return std::invoke(b.f, ctx, std::move(a)...); }, b.args);
    co_return 0;
  }
};

} // namespace detail

/// A function fork_child() can run: called with `child_context&` and the
/// arguments (as rvalues), it returns `asio::awaitable<int>` (the exit code)
/// or `asio::awaitable<void>` (exit code 0).
template <typename F, typename... Args>
concept child_function =
    std::is_invocable_v<std::decay_t<F>&, child_context&, std::decay_t<Args>&&...> &&
    detail::is_awaitable_int_or_void<
        std::invoke_result_t<std::decay_t<F>&, child_context&, std::decay_t<Args>&&...>>;

namespace detail {
template <typename Where, typename F, typename... Args>
child fork_bound(Where& where, const fork_options& opts, error_code& ec,
                 const char*& failed_call, F&& f, Args&&... args) {
  bound_child<std::decay_t<F>, std::decay_t<Args>...> body{
      std::forward<F>(f), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
  std::vector<int> keep;
  std::apply([&](const auto&... a) { (collect_fds(keep, a), ...); }, body.args);
  return fork_child_impl(executor_of(where), opts, keep, child_body{&body, &decltype(body)::invoke},
                         ec, failed_call);
}
} // namespace detail

/// Forks a child process that runs `f(ctx, args...)` on an io_context of its
/// own, and returns its handle (waits run on @p where's executor).
///
/// @param where  an executor or execution context (e.g. `asio::io_context&`)
///               for the returned handle's waits.
/// @param opts   see fork_options.
/// @param ec     set on failure; an empty handle is returned and the
///               arguments are destroyed (descriptors among them closed).
/// Errors: `errc::fork_in_threaded_process`; "fork" EAGAIN (RLIMIT_NPROC) or
/// ENOMEM; "pidfd_open" EMFILE (the child is then killed and reaped).
template <detail::executor_or_context Where, typename F, typename... Args>
  requires child_function<F, Args...>
child fork_child(Where&& where, const fork_options& opts, error_code& ec, F&& f,
                 Args&&... args) {
  const char* failed_call = nullptr;
  return detail::fork_bound(where, opts, ec, failed_call, std::forward<F>(f),
                            std::forward<Args>(args)...);
}

/// As above, throwing system_error whose what() names the failing call.
template <detail::executor_or_context Where, typename F, typename... Args>
  requires child_function<F, Args...>
child fork_child(Where&& where, const fork_options& opts, F&& f, Args&&... args) {
  error_code ec;
  const char* failed_call = nullptr;
  child c = detail::fork_bound(where, opts, ec, failed_call, std::forward<F>(f),
                               std::forward<Args>(args)...);
  if (ec) detail::throw_error(ec, "coropipe::fork_child", failed_call);
  return c;
}

namespace detail {
// True when the last of Args is `error_code&` (a non-const lvalue error_code).
template <typename... Args>
consteval bool ends_with_error_code() {
  if constexpr (sizeof...(Args) == 0) {
    return false;
  } else {
    return std::is_same_v<std::tuple_element_t<sizeof...(Args) - 1, std::tuple<Args...>>, error_code&>;
  }
}

template <typename F, typename Tuple, typename Indices>
inline constexpr bool is_child_function_of_prefix = false;
template <typename F, typename Tuple, std::size_t... I>
inline constexpr bool is_child_function_of_prefix<F, Tuple, std::index_sequence<I...>> =
    child_function<F, std::tuple_element_t<I, Tuple>...>;

// f can be called with the arguments before the trailing error_code&.
template <typename F, typename... Args>
concept child_function_then_error_code =
    ends_with_error_code<Args...>() &&
    is_child_function_of_prefix<F, std::tuple<Args...>, std::make_index_sequence<sizeof...(Args) - 1>>;
} // namespace detail

/// fork_child() with default fork_options, throwing system_error whose what()
/// names the failing call.
///
/// A non-const `error_code` lvalue as the last argument is not handed to the
/// child: it selects the overload below.
template <detail::executor_or_context Where, typename F, typename... Args>
  requires(!detail::ends_with_error_code<Args...>() && child_function<F, Args...>)
child fork_child(Where&& where, F&& f, Args&&... args) {
  return coropipe::fork_child(where, fork_options{}, std::forward<F>(f), std::forward<Args>(args)...);
}

/// fork_child() with default fork_options (the same as the throwing form
/// above), reporting the error in the last argument, an `error_code&`:
/// `fork_child(io, f, args..., ec)`. On failure an empty handle is returned
/// and the arguments are destroyed (descriptors among them closed).
///
/// The last argument selects this form whenever it is a non-const
/// `error_code` lvalue, even when `f` could take an error_code there. To hand
/// an error_code to the child itself, pass it as an rvalue or a const lvalue
/// (`std::as_const(e)`, `coropipe::error_code(e)`), or end with an
/// `error_code&` of your own for the failure: `fork_child(io, f, code, ec)`.
template <detail::executor_or_context Where, typename F, typename... ArgsThenErrorCode>
  requires detail::child_function_then_error_code<F, ArgsThenErrorCode...>
child fork_child(Where&& where, F&& f, ArgsThenErrorCode&&... args_then_ec) {
  constexpr std::size_t n = sizeof...(ArgsThenErrorCode) - 1;
  auto all = std::forward_as_tuple(std::forward<ArgsThenErrorCode>(args_then_ec)...);
  error_code& ec = std::get<n>(all);
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return coropipe::fork_child(where, fork_options{}, ec, std::forward<F>(f), std::get<I>(std::move(all))...);
  }(std::make_index_sequence<n>{});
}

} // namespace coropipe
