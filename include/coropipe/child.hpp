// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe::child, the handle of a child process: its pid, waiting for it
/// without blocking, signalling it, and never leaving a zombie behind.
#pragma once

#include <coropipe/exit_status.hpp>
#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>

#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <system_error>
#include <type_traits>

namespace coropipe {

namespace detail {

struct child_access;

// Shared between a child handle and its pending waits, so that moving or
// destroying the handle never leaves an operation with a dangling pointer.
struct child_state {
  child_state(const asio::any_io_executor& ex, pid_t pid, unique_fd pidfd);

  // Reaps the child if it has terminated (waitid with WNOHANG); returns its
  // status, or nothing while it runs. A status once reaped is kept.
  std::optional<exit_status> try_reap(error_code& ec) noexcept;

  pid_t pid;
  // Readable once the child has terminated. Not open where pidfds are
  // unavailable: waits then poll waitpid(WNOHANG) with a growing interval.
  asio::posix::stream_descriptor pidfd;
  std::optional<exit_status> status;
};

// The polling interval of the fallback wait: 1 ms doubling up to 50 ms.
inline constexpr std::chrono::milliseconds first_poll_interval{1};
inline constexpr std::chrono::milliseconds max_poll_interval{50};

// An executor, or an execution context (e.g. asio::io_context&) whose
// executor is meant: what fork_child() and spawn() take.
template <typename X>
concept executor_or_context =
    std::is_convertible_v<std::remove_cvref_t<X>&, asio::execution_context&> ||
    std::is_convertible_v<const std::remove_cvref_t<X>&, asio::any_io_executor>;

template <typename X>
asio::any_io_executor executor_of(X& x) {
  if constexpr (std::is_convertible_v<X&, asio::execution_context&>)
    return x.get_executor();
  else
    return x;
}

// The executor an empty handle's operations complete on.
asio::any_io_executor fallback_executor();

// Sends @p signo to the child unless it is already reaped.
void signal_child(child_state& st, int signo, error_code& ec) noexcept;

class wait_op {
public:
  wait_op(std::shared_ptr<child_state> st, std::shared_ptr<asio::steady_timer> kill_timer)
      : st_(std::move(st)), kill_timer_(std::move(kill_timer)) {}

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    switch (phase_) {
    case phase::starting:
      phase_ = phase::waiting;
      if (st_ && !st_->status && st_->pidfd.is_open()) {
        // A pidfd is readable once its child has ended, already ended
        // included: the waitid(WNOHANG) is left to the wake-up.
        arm(self);
        return;
      }
      if (ready(ec)) {
        // Already over: complete through the handler's executor, never from
        // inside the initiating function.
        phase_ = phase::completing;
        ec_ = ec;
        asio::post(std::move(self));
        return;
      }
      arm(self);
      return;
    case phase::waiting:
      if (!ec && !ready(ec)) {
        // A cancellation emitted after the last wait completed, while its
        // completion was queued, reached no operation: the state saw it.
        if (self.get_cancellation_state().cancelled() != asio::cancellation_type::none) {
          finish(self, asio::error::operation_aborted);
          return;
        }
        arm(self);  // a spurious wake-up, or the fallback's next poll
        return;
      }
      finish(self, ec);
      return;
    case phase::completing:
      finish(self, ec_);
      return;
    }
  }

private:
  enum class phase : unsigned char { starting, waiting, completing };

  bool ready(error_code& ec) {
    if (!st_) {
      ec = make_no_child_error();
      return true;
    }
    return st_->try_reap(ec).has_value() || ec;
  }

  template <typename Self>
  void arm(Self& self) {
    if (st_->pidfd.is_open()) {
      st_->pidfd.async_wait(asio::posix::stream_descriptor::wait_read, std::move(self));
      return;
    }
    if (!poll_timer_) {
      poll_timer_ = std::make_shared<asio::steady_timer>(st_->pidfd.get_executor());
      interval_ = first_poll_interval;
    }
    poll_timer_->expires_after(interval_);
    interval_ = std::min(interval_ * 2, max_poll_interval);
    poll_timer_->async_wait(std::move(self));
  }

  template <typename Self>
  void finish(Self& self, error_code ec) {
    if (kill_timer_) kill_timer_->cancel();
    exit_status status;
    if (!ec && st_ && st_->status) status = *st_->status;
    st_.reset();
    poll_timer_.reset();
    kill_timer_.reset();
    self.complete(ec, status);
  }

  static error_code make_no_child_error() noexcept;

  std::shared_ptr<child_state> st_;
  std::shared_ptr<asio::steady_timer> kill_timer_;  // async_stop's escalation
  std::shared_ptr<asio::steady_timer> poll_timer_;  // fallback without pidfds
  std::chrono::milliseconds interval_{0};
  error_code ec_;
  phase phase_ = phase::starting;
};

} // namespace detail

/// Whether a wait on a child uses a pidfd (Linux 5.3+) or polls.
enum class wait_mechanism {
  pidfd,  ///< the pidfd is registered with the executor's reactor
  poll,   ///< no pidfd (old kernel, seccomp, COROPIPE_DISABLE_PIDFD): waitpid(WNOHANG) is polled
};

/// The handle of one child process of this process.
///
/// Obtained from fork_child() (or spawn()). Waiting does not block the
/// executor's thread: the child's pidfd is registered with Asio's reactor and
/// becomes readable when the child terminates; only then is it reaped with
/// waitid(WNOHANG), for its own pid only. No SIGCHLD handler is installed and
/// no other child of the process is reaped, so an application's own waitpid()
/// users are not disturbed. Where pidfds are refused (for forked children
/// pidfd_open(), Linux before 5.3; for spawned programs clone's CLONE_PIDFD,
/// Linux before 5.2; or a seccomp filter), or COROPIPE_DISABLE_PIDFD=1 is set
/// in the environment, waits poll waitpid(pid, WNOHANG) on a timer instead,
/// starting at 1 ms and backing off to 50 ms (see mechanism()).
///
/// **No zombies, no runaways.** A handle destroyed (or assigned over) while its
/// child runs sends SIGKILL and reaps it; a child that must outlive its handle
/// is detach()ed, and reaped in the background when it ends.
///
/// A handle is used from one thread at a time, like Asio's I/O objects.
class child {
public:
  using executor_type = asio::any_io_executor;

  /// An empty handle.
  child() noexcept = default;

  /// Takes charge of @p pid, which must be a child of this process that no one
  /// else reaps (e.g. one started with posix_spawn()).
  /// @throws system_error naming "pidfd_open" for errors other than the
  /// kernel refusing pidfds (which selects the polling fallback).
  [[nodiscard]] static child adopt(const executor_type& ex, pid_t pid);

  child(child&&) noexcept = default;
  /// Kills and reaps the child held so far (as the destructor does) first.
  child& operator=(child&& other) noexcept;
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  /// If the child has not been reaped or detached: SIGKILL, then reap it.
  /// This waitpid() blocks only for as long as the kernel takes to end a
  /// killed process.
  ~child();

  /// The child's process id; kept after it is reaped; 0 for an empty handle.
  [[nodiscard]] pid_t pid() const noexcept { return state_ ? state_->pid : 0; }

  /// True when the handle holds a child (running or reaped).
  [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(state_); }

  /// How waits detect the end of this child.
  [[nodiscard]] wait_mechanism mechanism() const noexcept;

  /// The executor that waits run on.
  [[nodiscard]] executor_type get_executor() const;

  /// The status, once the child has been reaped by a wait.
  [[nodiscard]] std::optional<exit_status> status() const noexcept {
    return state_ ? state_->status : std::nullopt;
  }

  /// Waits asynchronously for the child to terminate, and reaps it.
  ///
  /// Completion signature: `void(error_code, coropipe::exit_status)`.
  ///
  /// Waiting again after the child was reaped completes with the same status.
  /// Supports per-operation cancellation (terminal): a cancelled wait
  /// completes with `asio::error::operation_aborted` and leaves the child
  /// running and the handle unchanged, ready to be waited for again.
  /// Errors: `coropipe::errc::no_child` for an empty handle, ECHILD if someone
  /// else reaped the child.
  template <typename WaitToken = asio::default_completion_token_t<executor_type>>
  auto async_wait(WaitToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_wait_impl(nullptr, std::forward<WaitToken>(token));
  }

  /// Stops the child gracefully and waits for it: sends @p signo (SIGTERM by
  /// default), waits up to @p grace, then sends SIGKILL, and reaps it.
  ///
  /// Completion signature: `void(error_code, coropipe::exit_status)`.
  ///
  /// The status tells what happened (exited on its own, killed by SIGTERM or
  /// by SIGKILL). Cancelling the operation cancels the wait and the pending
  /// SIGKILL (the first signal has been sent).
  template <typename StopToken = asio::default_completion_token_t<executor_type>>
  auto async_stop(std::chrono::steady_clock::duration grace, int signo,
                  StopToken&& token = asio::default_completion_token_t<executor_type>()) {
    std::shared_ptr<asio::steady_timer> kill_timer;
    error_code ec;
    if (state_ && !state_->status) {
      detail::signal_child(*state_, signo, ec);  // ESRCH etc.: the wait will tell
      kill_timer = std::make_shared<asio::steady_timer>(state_->pidfd.get_executor(), grace);
      kill_timer->async_wait([st = std::weak_ptr(state_)](error_code timer_ec) {
        if (timer_ec) return;
        if (auto s = st.lock(); s && !s->status) {
          error_code ignored;
          detail::signal_child(*s, kill_signal, ignored);
        }
      });
    }
    return async_wait_impl(std::move(kill_timer), std::forward<StopToken>(token));
  }

  /// async_stop() with SIGTERM as the first signal.
  template <typename StopToken = asio::default_completion_token_t<executor_type>>
  auto async_stop(std::chrono::steady_clock::duration grace,
                  StopToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_stop(grace, terminate_signal, std::forward<StopToken>(token));
  }

  /// Waits for the child, blocking the calling thread (never call this on an
  /// executor's thread: use async_wait()).
  /// @throws system_error naming "waitpid".
  exit_status wait();
  /// As wait(), reporting the error in @p ec.
  exit_status wait(error_code& ec) noexcept;

  /// Reaps the child if it has terminated, without blocking.
  /// @returns its status, or nothing while it still runs.
  /// @throws system_error naming "waitid".
  std::optional<exit_status> try_wait();
  /// As try_wait(), reporting the error in @p ec.
  std::optional<exit_status> try_wait(error_code& ec) noexcept;

  /// Sends @p signo to the child (through its pidfd where there is one, so a
  /// recycled pid is never hit). A reaped child is not signalled (no error).
  /// @throws system_error naming "pidfd_send_signal" or "kill".
  void signal(int signo);
  /// As signal(), reporting the error in @p ec.
  void signal(int signo, error_code& ec) noexcept;
  /// signal(SIGTERM).
  void terminate() { signal(terminate_signal); }
  /// signal(SIGKILL).
  void kill() { signal(kill_signal); }

  /// Lets the child run on without this handle; it is reaped in the
  /// background when it ends, by a coropipe thread that sleeps in poll() on
  /// the pidfds of detached children. That thread is started by the first
  /// detach(), runs with every signal blocked, and does not count against
  /// fork_child()'s thread check. Pending waits complete with
  /// `asio::error::operation_aborted`. The handle is empty afterwards.
  /// A child forked with a parent-death signal still gets it when the
  /// forking thread ends. Detaching an empty or reaped handle just empties it.
  /// @throws system_error naming "pthread_create" or "eventfd" when the
  /// reaper cannot start; the handle is then unchanged.
  void detach();
  /// As detach(), reporting the error in @p ec.
  void detach(error_code& ec) noexcept;

  static constexpr int terminate_signal = 15;  ///< SIGTERM
  static constexpr int kill_signal = 9;        ///< SIGKILL

private:
  friend struct detail::child_access;
  explicit child(std::shared_ptr<detail::child_state> st) noexcept : state_(std::move(st)) {}

  template <typename Token>
  auto async_wait_impl(std::shared_ptr<asio::steady_timer> kill_timer, Token&& token) {
    // An empty handle has no executor of its own: its no_child error is then
    // delivered through the handler's associated executor (or the system one).
    executor_type ex = state_ ? state_->pidfd.get_executor() : detail::fallback_executor();
    return asio::async_compose<Token, void(error_code, exit_status)>(
        detail::wait_op(state_, std::move(kill_timer)), token, ex);
  }

  void kill_and_reap() noexcept;

  std::shared_ptr<detail::child_state> state_;
};

namespace detail {
struct child_access {
  static child make(std::shared_ptr<child_state> st) noexcept { return child(std::move(st)); }
  static const std::shared_ptr<child_state>& state(const child& c) noexcept { return c.state_; }
};
} // namespace detail

} // namespace coropipe
