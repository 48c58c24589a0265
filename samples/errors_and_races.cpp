// SPDX-License-Identifier: BSL-1.0
// errors_and_races: the examples of docs/errors.md, run. Channels over
// socketpairs in one process; one end writes bytes that are not a frame, and
// each example prints what the other end's receive saw.
#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

using namespace coropipe::compat::awaitable_operators;
using namespace std::chrono_literals;

namespace {

using channel = coropipe::channel<std::string>;

struct connected_channels {
  channel a;
  channel b;
};

// Two channels, each on one end of a new socketpair.
connected_channels connected(asio::io_context& io) {
  auto [x, y] = coropipe::duplex_pair();
  return {channel(coropipe::attach(io, std::move(x))), channel(coropipe::attach(io, std::move(y)))};
}

// Writes bytes that are not a frame (a negative length) into ch's stream.
asio::awaitable<void> send_garbage(channel& ch) {
  static constexpr char garbage[] = {'\x80', '\0', '\0', '\x01', 'x'};
  co_await ch.async_flush(asio::use_awaitable);
  co_await asio::async_write(ch.framed().next_layer(), asio::buffer(garbage), asio::use_awaitable);
}

asio::awaitable<void> throw_or_value(asio::io_context& io) {
  auto [a, b] = connected(io);
  co_await send_garbage(a);
  // [docs:errors-throw-or-value]
  // use_awaitable: an error is thrown, as a coropipe::system_error.
  try {
    std::optional<std::string> msg = co_await b.async_receive(asio::use_awaitable);
  } catch (const coropipe::system_error& e) {
    std::printf("thrown: %s\n", e.code().message().c_str());
  }
  // as_tuple: the error is a value; the operation itself never throws.
  auto [ec, msg] = co_await b.async_receive(coropipe::compat::as_tuple(asio::use_awaitable));
  if (ec == coropipe::errc::malformed_frame)  // sticky: the same error again
    std::printf("returned: %s\n", ec.message().c_str());
  // [docs:end]
}

void sync_pair() {
  // [docs:errors-sync-pair]
  coropipe::error_code ec;
  coropipe::pipe_ends ends = coropipe::pipe(ec);  // never throws: the error is in ec
  if (ec) std::printf("pipe: %s\n", ec.message().c_str());
  // coropipe::pipe() throws coropipe::system_error instead, its what() naming
  // the call: "coropipe::pipe: pipe2: Too many open files".
  // [docs:end]
  std::printf("sync pair: %s\n", ec ? "failed" : "two ends");
}

asio::awaitable<void> ends_of_stream(asio::io_context& io) {
  auto [a, b] = connected(io);
  auto [in, out] = coropipe::pipe();
  auto reader = coropipe::attach(io, std::move(in));
  out.reset();  // the only write end: closed
  // [docs:errors-end-of-stream]
  // A receive of a channel or framed_stream: an empty optional, no error.
  co_await a.async_close(asio::use_awaitable);
  std::optional<std::string> none = co_await b.async_receive(asio::use_awaitable);
  std::printf("channel receive at the end: %s\n", none ? "a message" : "an empty optional");
  // A byte read (Asio's, or coropipe's io.hpp): the error asio::error::eof.
  char byte;
  auto [ec, n] = co_await reader.async_read_some(asio::buffer(&byte, 1),
                                                 coropipe::compat::as_tuple(asio::use_awaitable));
  std::printf("byte read at the end: %zu bytes, %s\n", n, ec == asio::error::eof ? "asio::error::eof" : "?");
  // [docs:end]
}

asio::awaitable<void> or_race(asio::io_context& io) {
  auto [a, b] = connected(io);
  co_await send_garbage(a);
  // [docs:errors-or-race]
  // ||: waits for the first branch to *succeed*. The receive fails at once
  // (a bad frame), so || waits for the timer, returns the timer's branch, and
  // the receive's error is lost.
  asio::steady_timer timer(io, 100ms);
  auto r = co_await (b.async_receive(asio::use_awaitable) || timer.async_wait(asio::use_awaitable));
  std::printf("||: branch %zu won\n", r.index());  // 1, the timer's, after 100 ms
  // [docs:end]
}

asio::awaitable<void> parallel_group(asio::io_context& io) {
  auto [a, b] = connected(io);
  co_await send_garbage(a);
  // [docs:errors-parallel-group]
  // make_parallel_group + wait_for_one(): ends on the first completion,
  // whatever its outcome, and cancels the others; every result is a value.
  asio::steady_timer timer(io, 60s);
  auto [order, ec, msg, timer_ec] =
      co_await coropipe::compat::make_parallel_group(b.async_receive(coropipe::compat::deferred),
                                                     timer.async_wait(coropipe::compat::deferred))
          .async_wait(coropipe::compat::wait_for_one(), asio::use_awaitable);
  if (order[0] == 0)  // the receive, at once
    std::printf("parallel group: the receive first, %s; the timer %s\n", ec.message().c_str(),
                timer_ec == asio::error::operation_aborted ? "cancelled" : "?");
  // [docs:end]
}

asio::awaitable<void> fails() {
  co_await asio::post(asio::use_awaitable);
  throw std::runtime_error("an error nobody caught");
}

void escaping(asio::io_context& io) {
  // [docs:errors-co-spawn]
  // The completion handler gets the exception that ended the coroutine; rethrown,
  // it leaves io.run() (asio::detached would drop it without a word).
  asio::co_spawn(io, fails(), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  try {
    io.run();
  } catch (const std::exception& e) {
    std::printf("out of io.run(): %s\n", e.what());
  }
  // [docs:end]
  io.restart();
}

void run(asio::io_context& io, asio::awaitable<void> coro) {
  asio::co_spawn(io, std::move(coro), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  io.run();
  io.restart();
}

} // namespace

int main() try {
  asio::io_context io;
  run(io, throw_or_value(io));
  sync_pair();
  run(io, ends_of_stream(io));
  run(io, or_race(io));
  run(io, parallel_group(io));
  escaping(io);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "errors_and_races: %s\n", e.what());
  return 1;
}
