// SPDX-License-Identifier: BSL-1.0
#include <coropipe/communicate.hpp>

#include <coropipe/sigpipe.hpp>

#include "process_ops.hpp"
#include "sys.hpp"

#include <coropipe/asio.hpp>

#include <signal.h>

#include <algorithm>
#include <vector>

namespace coropipe::detail {

using namespace compat::awaitable_operators;

namespace {

constexpr auto as_tuple_awaitable = compat::as_tuple(asio::use_awaitable);
constexpr std::size_t chunk = std::size_t{64} << 10;

// One output stream and where its bytes go.
struct capture {
  asio::posix::stream_descriptor* pipe;
  std::string* text;
  bool* truncated;
  std::optional<std::size_t> limit;

  void keep(const char* data, std::size_t n) const {
    std::size_t take = n;
    if (limit) take = std::min(n, *limit > text->size() ? *limit - text->size() : 0);
    text->append(data, take);
    if (take < n) *truncated = true;
  }
};

// Reads until end of stream (then closes the pipe), an error, or cancellation.
asio::awaitable<error_code> read_to_end(capture c) {
  if (!c.pipe->is_open()) co_return error_code();
  std::vector<char> buf(chunk);
  for (;;) {
    if (is_cancelled(co_await asio::this_coro::cancellation_state)) co_return asio::error::operation_aborted;
    auto [ec, n] = co_await c.pipe->async_read_some(asio::buffer(buf), as_tuple_awaitable);
    c.keep(buf.data(), n);
    if (ec == asio::error::eof) {
      error_code ignored;
      c.pipe->close(ignored);
      co_return error_code();
    }
    if (ec) co_return ec;
  }
}

// Writes all of @p input, then closes the pipe (end of input for the program).
asio::awaitable<error_code> write_all(asio::posix::stream_descriptor& in, std::string_view input) {
  if (!in.is_open()) co_return error_code();
  std::size_t done = 0;
  while (done < input.size()) {
    if (is_cancelled(co_await asio::this_coro::cancellation_state)) co_return asio::error::operation_aborted;
    auto [ec, n] = co_await in.async_write_some(asio::buffer(input.substr(done)), as_tuple_awaitable);
    done += n;
    if (ec == asio::error::broken_pipe) {
      discard_pending_sigpipe();
      break;  // the program does not want the rest: not an error
    }
    if (ec) co_return ec;
  }
  error_code ignored;
  in.close(ignored);
  co_return error_code();
}

// The input written (if @p input is set) and both outputs read to their end.
asio::awaitable<error_code> transfer(asio::posix::stream_descriptor* in, std::string_view input,
                                          capture out, capture err) {
  std::tuple<error_code, error_code, error_code> r;
  if (in != nullptr) r = co_await (write_all(*in, input) && read_to_end(out) && read_to_end(err));
  else {
    auto [a, b] = co_await (read_to_end(out) && read_to_end(err));
    r = {error_code(), a, b};
  }
  for (const error_code& ec : {std::get<0>(r), std::get<1>(r), std::get<2>(r)}) {
    if (ec) co_return ec;
  }
  co_return error_code();
}

// What the program left in a pipe when it exited: read without waiting, and
// no more than was there (a grandchild could keep writing forever).
void drain(const capture& c) {
  if (!c.pipe->is_open()) return;
  error_code ec;
  asio::posix::stream_descriptor::bytes_readable available(true);
  c.pipe->io_control(available, ec);
  std::size_t left = ec ? 0 : available.get();
  c.pipe->non_blocking(true, ec);
  std::vector<char> buf(chunk);
  while (left > 0 && !ec) {
    const std::size_t n = c.pipe->read_some(asio::buffer(buf.data(), std::min(left, buf.size())), ec);
    c.keep(buf.data(), n);
    left -= std::min(left, n);
  }
}

void send(const std::shared_ptr<child_state>& st, pid_t pgid, int signo) {
  error_code ignored;
  if (pgid > 0) signal_group(st, pgid, signo, ignored);
  signal_child(*st, signo, ignored);
}

} // namespace

asio::awaitable<std::tuple<error_code, communicate_result>> communicate(
    process& p, std::string_view input, communicate_options opts) {
  co_await asio::this_coro::throw_if_cancelled(false);
  communicate_result r;
  const std::shared_ptr<child_state> st = child_access::state(p);
  if (!st) co_return std::tuple{error_code(errc::no_child), std::move(r)};
  if (!input.empty() && !p.stdin_pipe().is_open())
    co_return std::tuple{error_code(errc::invalid_argument), std::move(r)};
  block_sigpipe_in_this_thread();  // the io_context may run on a thread that never attached

  const capture out{&p.stdout_pipe(), &r.out, &r.out_truncated, opts.output_limit};
  const capture err{&p.stderr_pipe(), &r.err, &r.err_truncated, opts.output_limit};
  asio::steady_timer timer(p.get_executor());
  enum class stop_reason { none, timeout, cancel } why = stop_reason::none;
  error_code failure;  // the first error seen
  bool ended = false;
  bool io_done = false;

  // The program's run, until it ends, the deadline, or a cancellation.
  const auto deadline = opts.timeout ? std::chrono::steady_clock::now() + *opts.timeout
                                     : std::chrono::steady_clock::time_point::max();
  while (!ended && why == stop_reason::none) {
    timer.expires_at(deadline);
    std::size_t index;
    error_code ec;
    if (!io_done) {
      auto first = co_await (wait_ended(st) || transfer(&p.stdin_pipe(), input, out, err) ||
                             timer.async_wait(as_tuple_awaitable));
      index = first.index();
      ec = index == 0 ? std::get<0>(first) : index == 1 ? std::get<1>(first) : std::get<0>(std::get<2>(first));
    } else {
      auto first = co_await (wait_ended(st) || timer.async_wait(as_tuple_awaitable));
      index = first.index() == 0 ? 0 : 2;
      ec = first.index() == 0 ? std::get<0>(first) : std::get<0>(std::get<1>(first));
    }
    if (is_cancelled(co_await asio::this_coro::cancellation_state)) {
      why = stop_reason::cancel;
    } else if (index == 0) {
      if (ec) {
        failure = ec;
        why = stop_reason::cancel;  // cannot wait: stop it, the reap will tell
      } else {
        ended = true;
      }
    } else if (index == 1) {
      io_done = true;
      if (ec && !failure) failure = ec;
    } else {
      why = stop_reason::timeout;
    }
  }

  if (why != stop_reason::none) {
    // Stopping is not cancellable: the grace period, then SIGKILL and the
    // time the kernel takes to end the process.
    co_await asio::this_coro::reset_cancellation_state(
        [](asio::cancellation_type) { return asio::cancellation_type::none; });
    error_code ignored;
    p.stdin_pipe().close(ignored);
    const pid_t pgid = p.process_group();
    send(st, pgid, opts.stop_signal);
    const auto kill_at = std::chrono::steady_clock::now() + opts.grace;
    bool killed = false;
    while (!ended) {
      if (killed) timer.expires_at(std::chrono::steady_clock::time_point::max());
      else timer.expires_at(kill_at);
      std::size_t index;
      error_code ec;
      if (!io_done) {
        auto first = co_await (wait_ended(st) || transfer(nullptr, {}, out, err) ||
                               timer.async_wait(as_tuple_awaitable));
        index = first.index();
        ec = index == 0 ? std::get<0>(first) : index == 1 ? std::get<1>(first) : error_code();
      } else {
        auto first = co_await (wait_ended(st) || timer.async_wait(as_tuple_awaitable));
        index = first.index() == 0 ? 0 : 2;
        ec = first.index() == 0 ? std::get<0>(first) : error_code();
      }
      if (index == 0) {
        if (ec && !failure) failure = ec;
        ended = true;  // or not waitable at all: give up waiting
      } else if (index == 1) {
        io_done = true;
      } else {
        send(st, pgid, SIGKILL);
        killed = true;
      }
    }
    // Members of its group that outlive it go too, while it is unreaped.
    if (pgid > 0) send(st, pgid, SIGKILL);
  }

  drain(out);
  drain(err);
  error_code ignored;
  p.stdin_pipe().close(ignored);
  p.stdout_pipe().close(ignored);
  p.stderr_pipe().close(ignored);

  error_code reap_error;
  if (auto status = st->try_reap(reap_error)) r.status = *status;
  else if (!failure) failure = reap_error ? reap_error : error_code(errc::no_child);

  error_code ec = failure;
  if (why == stop_reason::timeout) ec = asio::error::timed_out;
  else if (why == stop_reason::cancel && !failure) ec = asio::error::operation_aborted;
  co_return std::tuple{ec, std::move(r)};
}

} // namespace coropipe::detail
