// SPDX-License-Identifier: BSL-1.0
/// @file
/// Process scopes: structured lifetime for any number of child processes.
///
/// ```
/// int code = co_await coropipe::async_scope(io.get_executor(),
///     [&](coropipe::scope& s) -> asio::awaitable<int> {
///       coropipe::process& p = s.spawn({.argv = {"sleep", "100"}});
///       coropipe::child& c = s.fork([](coropipe::child_context&) -> asio::awaitable<int> { co_return 0; });
///       co_return 7;                      // p is stopped and reaped before the scope completes
///     },
///     asio::use_awaitable);
/// ```
///
/// A scope runs a body (a coroutine given the `scope&`) and owns every child
/// started through it: forked with scope::fork(), spawned with
/// scope::spawn(), or handed in with scope::adopt(). The operation completes
/// only once **every** child of the scope has been reaped, whatever happened:
/// the body returned, threw, or the operation was cancelled. After completion
/// no child of the scope is running or a zombie, and every descriptor the
/// scope created (its children's pidfds) is closed. Scopes nest: a body may
/// run another async_scope(), which ends before the outer body can.
///
/// ### When the body ends
/// Children still running are, by default (`scope_end::stop_children`),
/// stopped: `scope_options::stop_signal` (SIGTERM) is sent to each (to its
/// whole process group when it leads one), then SIGKILL to those still
/// running after `scope_options::grace`, and each is reaped. With
/// `scope_end::wait_for_children` the scope waits for them to end on their
/// own instead. A body that throws, a failing child under `fail_fast`, or a
/// cancellation of the scope operation always stops the children. A second
/// cancellation while the scope stops them sends SIGKILL at once.
///
/// ### Failing children (`fail_fast`, like a Trio nursery)
/// With `scope_options::fail_fast`, the first child that fails (exits with a
/// non-zero code or is killed by a signal, the scope's own stop signals
/// excepted) cancels the body (per-operation cancellation, terminal: its
/// pending operation completes with `operation_aborted`), its siblings are
/// stopped, and the scope completes with a child_failed_error, whose code is
/// `errc::child_failed`, naming the child (pid, name) and its exit_status.
///
/// ### Grandchildren: what is guaranteed
/// A child that leads a process group (scope::spawn() with
/// `spawn_options::process_group = 0` or `new_session`, scope::fork() with
/// `scope_fork_options::new_process_group`, or adopted with its group) may
/// leave members of its group behind when it exits: a shell's background job,
/// a daemon that forked. The scope watches such a leader's exit **without
/// reaping it** (`waitid(..., WEXITED | WNOWAIT)`), so its process id, and
/// thus the group's id, cannot be reused by anyone. When the scope ends it
/// sends the group the stop signal (with the leader, when it still runs) and,
/// once the leader has ended, SIGKILL, and only then reaps the leader.
/// Guaranteed: every process that is still a member of the leader's process
/// group at that moment is killed, however deep it descends from the child.
/// Not guaranteed: a process that left the group (`setpgid()` into another
/// group, `setsid()` as daemons do) escapes, and so do descendants of a
/// child that does not lead a group of its own (it shares the scope's
/// group). Killed grandchildren are not reaped by the scope: they are their
/// parents' (or init's, or a subreaper's) to reap. If you reap a group
/// leader yourself (async_wait() on the handle the scope returned), the
/// scope can no longer signal its group safely and does not.
///
/// ### Threads
/// A scope and its children are used from the executor it runs on; run it on
/// a single-threaded io_context or a strand.
#pragma once

#include <coropipe/child.hpp>
#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropipe {

/// What a scope does with children still running when its body ends.
enum class scope_end {
  stop_children,      ///< stop signal, grace, SIGKILL (the default)
  wait_for_children,  ///< wait for them to end on their own
};

/// How a scope ends its children.
struct scope_options {
  /// Children running when the body ends: stopped (the default) or awaited.
  scope_end at_end = scope_end::stop_children;
  /// The first signal of a stop (SIGTERM).
  int stop_signal = 15;
  /// How long stopped children get before SIGKILL.
  std::chrono::steady_clock::duration grace = std::chrono::seconds(1);
  /// A failing child cancels the body and stops its siblings; the scope then
  /// completes with child_failed_error.
  bool fail_fast = false;
};

/// How scope::fork() starts a child.
struct scope_fork_options {
  /// fork_child()'s options.
  fork_options fork{};
  /// The child leads a new process group (made both in the child, first
  /// thing, and in the parent, so no signal can miss it): the scope then
  /// stops the whole group (see the file's documentation on grandchildren).
  bool new_process_group = false;
  /// The name the scope's errors give the child; empty: "forked child".
  std::string name{};
};

/// The error a fail_fast scope completes with when a child failed: code
/// `errc::child_failed`, what() naming the child and how it ended.
class child_failed_error : public system_error {
public:
  child_failed_error(pid_t pid, std::string name, exit_status status);
  /// The failed child's process id.
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }
  /// Its name: what scope::adopt() was given, a spawned program's argv[0],
  /// or "forked child".
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// How it ended.
  [[nodiscard]] exit_status status() const noexcept { return status_; }

private:
  pid_t pid_;
  std::string name_;
  exit_status status_;
};

namespace detail {
struct scope_state;
struct scope_entry;
asio::awaitable<void> run_scope(std::shared_ptr<scope_state> st, asio::awaitable<void> body);
std::shared_ptr<scope_state> make_scope_state(const asio::any_io_executor& ex, const scope_options& opts);
} // namespace detail

/// The children of one async_scope(): the handle its body is given.
class scope {
public:
  using executor_type = asio::any_io_executor;

  explicit scope(std::shared_ptr<detail::scope_state> st) noexcept : st_(std::move(st)) {}
  scope(const scope&) = delete;
  scope& operator=(const scope&) = delete;

  /// The executor of the scope (and of its children's waits).
  [[nodiscard]] executor_type get_executor() const noexcept;

  /// Forks a child (see fork_child()) that the scope owns; the reference
  /// stays valid until the scope completes.
  /// @throws system_error as fork_child() does; `errc::scope_closed` once
  /// the body has ended.
  template <typename F, typename... Args>
    requires child_function<F, Args...>
  child& fork(const scope_fork_options& opts, F&& f, Args&&... args) {
    check_open();
    child c;
    if (opts.new_process_group) {
      c = fork_child(get_executor(), opts.fork,
                     [fn = std::forward<F>(f)](child_context& ctx, std::decay_t<Args>... a) mutable {
                       ::setpgid(0, 0);
                       return std::invoke(fn, ctx, std::move(a)...);
                     },
                     std::forward<Args>(args)...);
      ::setpgid(c.pid(), c.pid());  // the child may have done it already
    } else {
      c = fork_child(get_executor(), opts.fork, std::forward<F>(f), std::forward<Args>(args)...);
    }
    const pid_t pgid = opts.new_process_group ? c.pid() : 0;
    return adopt_child(std::move(c), pgid, opts.name.empty() ? std::string("forked child") : opts.name);
  }

  /// fork() with default options.
  template <typename F, typename... Args>
    requires child_function<F, Args...>
  child& fork(F&& f, Args&&... args) {
    return fork(scope_fork_options{}, std::forward<F>(f), std::forward<Args>(args)...);
  }

  /// Spawns a program (see spawn()) that the scope owns; a program started in
  /// a process group of its own is stopped with its group.
  /// @throws system_error as spawn() does; `errc::scope_closed` once the body
  /// has ended.
  process& spawn(spawn_options opts);

  /// Hands @p c to the scope, which owns it from now on.
  /// @param name  what errors call it; empty: "child".
  /// @throws system_error `errc::scope_closed` once the body has ended (the
  /// child is then killed and reaped, as its destructor does).
  child& adopt(child c, std::string name = {});
  /// Hands @p p to the scope; its process group, if it leads one, is stopped
  /// with it. @param name empty: the process's pid as text.
  process& adopt(process p, std::string name = {});

  /// The number of children the scope owns that have not ended yet.
  [[nodiscard]] std::size_t running() const noexcept;

private:
  void check_open() const;
  child& adopt_child(child c, pid_t pgid, std::string name);

  std::shared_ptr<detail::scope_state> st_;
};

namespace detail {
template <typename T>
struct scope_result {
  std::optional<T> value;
};
template <>
struct scope_result<void> {};

template <typename T, typename F>
asio::awaitable<void> scope_body(F& f, scope& s, scope_result<T>& out) {
  if constexpr (std::is_void_v<T>) {
    co_await std::invoke(f, s);
  } else {
    out.value.emplace(co_await std::invoke(f, s));
  }
}

template <typename T, typename F>
asio::awaitable<T> scope_coro(asio::any_io_executor ex, scope_options opts, F f) {
  auto st = make_scope_state(ex, opts);
  scope s(st);
  scope_result<T> result;
  co_await run_scope(st, scope_body<T>(f, s, result));  // rethrows the body's or a child's failure
  if constexpr (!std::is_void_v<T>) co_return std::move(*result.value);
}

template <typename F>
using scope_value_t = typename std::invoke_result_t<F&, scope&>::value_type;
} // namespace detail

/// Runs `body(scope&)` and completes once it has ended and every child of
/// the scope has been reaped (see the file's documentation).
///
/// Completion signature: `void(std::exception_ptr, T)` (`void(std::exception_ptr)`
/// for `awaitable<void>`), as asio::co_spawn(): the body's exception, a
/// child_failed_error (fail_fast), or nothing, with the body's result.
/// Cancelling the operation (per-operation, terminal) cancels the body and
/// stops the children; the operation still completes only when they are
/// reaped.
///
/// @param ex    the executor the body and the children's waits run on.
/// @param opts  see scope_options.
/// @param body  a callable taking `coropipe::scope&` and returning
///              `asio::awaitable<T>`; kept alive until completion.
template <typename F, typename Token = asio::default_completion_token_t<asio::any_io_executor>>
auto async_scope(const asio::any_io_executor& ex, const scope_options& opts, F body,
                 Token&& token = asio::default_completion_token_t<asio::any_io_executor>()) {
  using T = detail::scope_value_t<F>;
  return asio::co_spawn(ex, detail::scope_coro<T>(ex, opts, std::move(body)), std::forward<Token>(token));
}

/// async_scope() with default scope_options.
template <typename F, typename Token = asio::default_completion_token_t<asio::any_io_executor>>
  requires std::is_invocable_v<F&, scope&>
auto async_scope(const asio::any_io_executor& ex, F body,
                 Token&& token = asio::default_completion_token_t<asio::any_io_executor>()) {
  return async_scope(ex, scope_options{}, std::move(body), std::forward<Token>(token));
}

} // namespace coropipe
