// SPDX-License-Identifier: BSL-1.0
// Process scopes: one watcher coroutine per child observes its end (without
// reaping group leaders), and run_scope() drives the body and the end of the
// children with one timer used both as a wake-up and as the grace deadline.
#include <coropipe/scope.hpp>

#include "process_ops.hpp"
#include "sys.hpp"

#include <coropipe/asio.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>

namespace coropipe {

child_failed_error::child_failed_error(pid_t pid, std::string name, exit_status status)
    : system_error(errc::child_failed,
                   "coropipe::async_scope: child " + std::to_string(pid) + " (" + name + ") " + status.to_string()),
      pid_(pid), name_(std::move(name)), status_(status) {}

namespace detail {

namespace {
constexpr auto as_tuple_awaitable = compat::as_tuple(asio::use_awaitable);

exit_status status_of(const siginfo_t& info) noexcept {
  switch (info.si_code) {
  case CLD_KILLED:
    return exit_status::killed(info.si_status);
  case CLD_DUMPED:
    return exit_status::killed(info.si_status, true);
  default:
    return exit_status::from_wait_status((info.si_status & 0xff) << 8);
  }
}
} // namespace

struct scope_entry {
  std::string name;
  pid_t pgid = 0;  // > 0: the child leads this process group
  std::optional<child> c;
  std::optional<process> p;
  std::shared_ptr<child_state> state;
  std::optional<exit_status> ended;  // observed; a leader stays unreaped
  bool stopped_by_scope = false;
  bool watched = true;  // the watcher coroutine has not finished

  child& get() noexcept { return p ? static_cast<child&>(*p) : *c; }
};

struct scope_state {
  scope_state(const asio::any_io_executor& executor, const scope_options& o)
      : ex(executor), opts(o), wake(executor) {}

  asio::any_io_executor ex;
  scope_options opts;
  asio::steady_timer wake;
  asio::cancellation_signal body_cancel;
  std::vector<std::shared_ptr<scope_entry>> entries;
  bool closed = false;
  bool body_done = false;
  bool signalled = false;  // the stop signal went out
  bool killed = false;     // SIGKILL went out
  std::exception_ptr body_error;
  std::shared_ptr<scope_entry> failure;

  void notify() { wake.cancel(); }

  void signal_entry(scope_entry& e, int signo) {
    error_code ignored;
    e.stopped_by_scope = true;
    // A leader not reaped yet keeps its group's id reserved (even a zombie).
    if (e.pgid > 0 && !e.state->status) ::kill(-e.pgid, signo);
    if (!e.ended) signal_child(*e.state, signo, ignored);
  }

  void signal_all(int signo) {
    for (auto& e : entries)
      if (!e->ended || e->pgid > 0) signal_entry(*e, signo);
  }

  [[nodiscard]] bool all_ended() const noexcept {
    return std::all_of(entries.begin(), entries.end(), [](const auto& e) { return e->ended && !e->watched; });
  }
};

namespace {

void observe_end(scope_entry& e) {
  exit_status status;
  if (e.state->status) {
    status = *e.state->status;
  } else if (e.pgid > 0) {
    // Seen, not reaped: the group's id stays ours until the scope ends.
    siginfo_t info{};
    int r;
    do {
      r = ::waitid(P_PID, static_cast<id_t>(e.state->pid), &info, WEXITED | WNOHANG | WNOWAIT);
    } while (r != 0 && errno == EINTR);
    if (r == 0 && info.si_pid != 0) status = status_of(info);
  } else {
    error_code ec;
    if (auto s = e.state->try_reap(ec)) status = *s;
  }
  e.ended = status;
}

asio::awaitable<void> watch(std::shared_ptr<scope_state> st, std::shared_ptr<scope_entry> e) {
  (void)co_await wait_ended(e->state);  // an error (ECHILD: reaped elsewhere) ends the watch too
  observe_end(*e);
  if (st->opts.fail_fast && !e->ended->success() && !e->stopped_by_scope && !st->failure) st->failure = e;
}

// Waits for a wake-up or @p deadline; true when the scope operation itself was
// cancelled meanwhile (its cancellation state is then reset).
asio::awaitable<bool> wait_for(scope_state& st, std::chrono::steady_clock::time_point deadline) {
  st.wake.expires_at(deadline);
  (void)co_await st.wake.async_wait(as_tuple_awaitable);
  const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
  if (cs.cancelled() == asio::cancellation_type::none) co_return false;
  co_await asio::this_coro::reset_cancellation_state();
  co_return true;
}

} // namespace

std::shared_ptr<scope_state> make_scope_state(const asio::any_io_executor& ex, const scope_options& opts) {
  return std::make_shared<scope_state>(ex, opts);
}

asio::awaitable<void> run_scope(std::shared_ptr<scope_state> st, asio::awaitable<void> body) {
  co_await asio::this_coro::throw_if_cancelled(false);
  asio::co_spawn(st->ex, std::move(body),
                 asio::bind_cancellation_slot(st->body_cancel.slot(), [st](std::exception_ptr e) {
                   st->body_error = e;
                   st->body_done = true;
                   st->notify();
                 }));
  using clock = std::chrono::steady_clock;
  bool cancelled = false;
  bool body_cancelled = false;
  auto deadline = clock::time_point::max();
  for (;;) {
    const bool failing = static_cast<bool>(st->failure);
    if (!st->body_done && !body_cancelled && (cancelled || failing)) {
      body_cancelled = true;
      st->body_cancel.emit(asio::cancellation_type::terminal);
    }
    bool stop = cancelled || failing;
    if (st->body_done) {
      st->closed = true;
      if (st->opts.at_end == scope_end::stop_children || st->body_error) stop = true;
      if (st->all_ended()) break;
    }
    if (stop && !st->signalled) {
      st->signalled = true;
      st->signal_all(st->opts.stop_signal);
      deadline = clock::now() + st->opts.grace;
    }
    if (st->signalled && !st->killed && clock::now() >= deadline) {
      st->killed = true;
      st->signal_all(SIGKILL);
      deadline = clock::time_point::max();
    }
    if (co_await wait_for(*st, deadline)) {
      if (cancelled && st->signalled && !st->killed) {
        deadline = clock::now();  // cancelled again while stopping: SIGKILL now
      }
      cancelled = true;
    }
  }
  // Every child has ended. Leftovers of the leaders' groups go now, while the
  // leaders are unreaped and their ids cannot have been reused; then reap.
  for (auto& e : st->entries) {
    if (e->pgid > 0 && !e->state->status) ::kill(-e->pgid, SIGKILL);
    error_code ignored;
    (void)e->state->try_reap(ignored);
  }
  auto failure = std::move(st->failure);
  auto body_error = std::move(st->body_error);
  st->entries.clear();  // closes the pidfds
  if (failure) throw child_failed_error(failure->state->pid, failure->name, failure->ended.value_or(exit_status()));
  if (body_error) std::rethrow_exception(body_error);
}

} // namespace detail

scope::executor_type scope::get_executor() const noexcept { return st_->ex; }

void scope::check_open() const {
  if (st_->closed) detail::throw_error(errc::scope_closed, "coropipe::scope");
}

child& scope::adopt_child(child c, pid_t pgid, std::string name) {
  auto e = std::make_shared<detail::scope_entry>();
  e->name = std::move(name);
  e->pgid = pgid;
  e->state = detail::child_access::state(c);
  e->c.emplace(std::move(c));
  if (!e->state) detail::throw_error(errc::no_child, "coropipe::scope::adopt");
  st_->entries.push_back(e);
  if (st_->signalled) st_->signal_entry(*e, st_->killed ? SIGKILL : st_->opts.stop_signal);
  asio::co_spawn(st_->ex, detail::watch(st_, e), [st = st_, e](std::exception_ptr) {
    e->watched = false;
    st->notify();
  });
  return e->get();
}

child& scope::adopt(child c, std::string name) {
  if (st_->closed) {
    child doomed = std::move(c);  // killed and reaped here
    detail::throw_error(errc::scope_closed, "coropipe::scope::adopt");
  }
  return adopt_child(std::move(c), 0, name.empty() ? std::string("child") : std::move(name));
}

process& scope::adopt(process p, std::string name) {
  if (st_->closed) {
    process doomed = std::move(p);
    detail::throw_error(errc::scope_closed, "coropipe::scope::adopt");
  }
  auto e = std::make_shared<detail::scope_entry>();
  e->name = name.empty() ? std::to_string(p.pid()) : std::move(name);
  e->pgid = p.process_group() == p.pid() ? p.pid() : 0;
  e->state = detail::child_access::state(p);
  if (!e->state) detail::throw_error(errc::no_child, "coropipe::scope::adopt");
  e->p.emplace(std::move(p));
  st_->entries.push_back(e);
  if (st_->signalled) st_->signal_entry(*e, st_->killed ? SIGKILL : st_->opts.stop_signal);
  asio::co_spawn(st_->ex, detail::watch(st_, e), [st = st_, e](std::exception_ptr) {
    e->watched = false;
    st->notify();
  });
  return *e->p;
}

process& scope::spawn(spawn_options opts) {
  check_open();
  std::string name = opts.argv.empty() ? std::string() : opts.argv.front();
  return adopt(coropipe::spawn(st_->ex, std::move(opts)), std::move(name));
}

std::size_t scope::running() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(st_->entries.begin(), st_->entries.end(), [](const auto& e) { return !e->ended; }));
}

} // namespace coropipe
