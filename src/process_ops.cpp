// SPDX-License-Identifier: BSL-1.0
// The coroutines behind process::async_stop_group() and pipeline's waits and
// stops. Each runs as its own co_spawn()ed operation (detail::async_run), on
// the programs' shared child_states, so that moving or destroying the handles
// meanwhile leaves nothing dangling.
#include "process_ops.hpp"

#include <coropipe/error.hpp>

#include "sys.hpp"

#include <coropipe/asio.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <optional>

namespace coropipe::detail {

using namespace compat::awaitable_operators;

namespace {

constexpr auto as_tuple_awaitable = compat::as_tuple(asio::use_awaitable);

// True once the program has ended (reaped or not); never reaps it.
bool has_ended(const child_state& st, error_code& ec) noexcept {
  ec.clear();
  if (st.status) return true;
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(st.pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno != EINTR) {
      ec = last_error();
      return false;
    }
  }
  return info.si_pid != 0;
}

} // namespace

asio::awaitable<error_code> wait_ended(std::shared_ptr<child_state> st) {
  std::optional<asio::steady_timer> timer;
  std::chrono::milliseconds interval = first_poll_interval;
  for (;;) {
    error_code ec;
    if (has_ended(*st, ec) || ec) co_return ec;
    // A cancellation between two waits is remembered by the state, not by a
    // wait: look before starting the next one.
    const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return asio::error::operation_aborted;
    if (st->pidfd.is_open()) {
      auto [wec] = co_await st->pidfd.async_wait(asio::posix::stream_descriptor::wait_read, as_tuple_awaitable);
      if (wec) co_return wec;
    } else {
      if (!timer) timer.emplace(st->pidfd.get_executor());
      timer->expires_after(interval);
      interval = std::min(interval * 2, max_poll_interval);
      auto [tec] = co_await timer->async_wait(as_tuple_awaitable);
      if (tec) co_return tec;
    }
  }
}

asio::awaitable<std::tuple<error_code, exit_status>> wait_one(std::shared_ptr<child_state> st) {
  const auto ex = st->pidfd.get_executor();
  auto [ec, status] = co_await asio::async_compose<decltype(as_tuple_awaitable),
                                                   void(error_code, exit_status)>(
      wait_op(std::move(st), nullptr), as_tuple_awaitable, ex);
  co_return std::tuple{ec, status};
}

asio::awaitable<std::tuple<error_code, std::vector<exit_status>>> wait_programs(
    std::vector<std::shared_ptr<child_state>> states) {
  co_await asio::this_coro::throw_if_cancelled(false);
  std::vector<exit_status> statuses(states.size());
  if (states.empty() || std::find(states.begin(), states.end(), nullptr) != states.end())
    co_return std::tuple{error_code(errc::no_child), statuses};
  // Last first: the first program, which may lead the others' process
  // group, stays unreaped (and its group id reserved) as long as possible.
  for (std::size_t i = states.size(); i-- > 0;) {
    auto [ec, status] = co_await wait_one(states[i]);
    if (ec) co_return std::tuple{ec, statuses};
    statuses[i] = status;
  }
  co_return std::tuple{error_code(), statuses};
}

asio::awaitable<std::tuple<error_code, std::vector<exit_status>>> stop_programs(
    std::vector<std::shared_ptr<child_state>> states, pid_t pgid,
    std::chrono::steady_clock::duration grace, int signo) {
  co_await asio::this_coro::throw_if_cancelled(false);
  std::vector<exit_status> statuses(states.size());
  if (states.empty() || std::find(states.begin(), states.end(), nullptr) != states.end())
    co_return std::tuple{error_code(errc::no_child), statuses};
  const auto leader = states.front();
  auto signal_all = [&](int sig) {
    error_code ignored;  // ESRCH and the like: the waits will tell
    if (pgid > 0) signal_group(leader, pgid, sig, ignored);
    for (const auto& s : states) signal_child(*s, sig, ignored);
  };
  signal_all(signo);

  asio::steady_timer timer(leader->pidfd.get_executor());
  const auto deadline = std::chrono::steady_clock::now() + grace;
  bool killed = false;
  for (std::size_t i = states.size(); i-- > 0;) {
    for (;;) {
      if (killed) timer.expires_at(std::chrono::steady_clock::time_point::max());
      else timer.expires_at(deadline);
      auto first = co_await (wait_ended(states[i]) || timer.async_wait(as_tuple_awaitable));
      if (is_cancelled(co_await asio::this_coro::cancellation_state)) co_return std::tuple{error_code(asio::error::operation_aborted), statuses};
      if (first.index() == 0) {
        if (const error_code ec = std::get<0>(first)) co_return std::tuple{ec, statuses};
        break;
      }
      signal_all(SIGKILL);  // the grace period is over
      killed = true;
    }
  }
  // Every program has ended. What is left of the group goes now, while its
  // leader is unreaped and its id cannot have been given to anyone else.
  if (pgid > 0) {
    error_code ignored;
    signal_group(leader, pgid, SIGKILL, ignored);
  }
  for (std::size_t i = 0; i < states.size(); ++i) {
    error_code ec;
    const auto status = states[i]->try_reap(ec);
    if (ec) co_return std::tuple{ec, statuses};
    if (status) statuses[i] = *status;
  }
  co_return std::tuple{error_code(), statuses};
}

asio::awaitable<std::tuple<error_code, exit_status>> stop_group(
    std::shared_ptr<child_state> state, pid_t pgid, std::chrono::steady_clock::duration grace,
    int signo) {
  co_await asio::this_coro::throw_if_cancelled(false);
  if (!state) co_return std::tuple{error_code(errc::no_child), exit_status()};
  if (pgid <= 0) co_return std::tuple{error_code(errc::invalid_argument), exit_status()};
  std::vector<std::shared_ptr<child_state>> one;
  one.push_back(std::move(state));
  auto result = co_await stop_programs(std::move(one), pgid, grace, signo);
  co_return std::tuple{std::get<0>(result), std::get<1>(result).front()};
}

} // namespace coropipe::detail
