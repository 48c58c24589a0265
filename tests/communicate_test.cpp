// SPDX-License-Identifier: BSL-1.0
#include <coropipe/communicate.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/error.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>

#include <random>
#include <string>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::communicate_options;
using coropipe::communicate_result;
using coropipe::exit_status;
using coropipe::process;
using coropipe::stdio;
using coropipe_test::run;

namespace {

const std::string helper = COROPIPE_CHILD_HELPER;
constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

process piped(asio::io_context& io, std::vector<std::string> argv) {
  return coropipe::spawn(io, {.argv = std::move(argv), .in = stdio::pipe(), .out = stdio::pipe(), .err = stdio::pipe()});
}

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + i / 251) & 0xff);
  return s;
}

using outcome = std::tuple<coropipe::error_code, communicate_result>;

} // namespace

TEST_CASE("async_communicate: input in, output out, status") {
  asio::io_context io;
  process p = piped(io, {"sh", "-c", "cat; echo done >&2; exit 3"});
  const communicate_result r = run(io, coropipe::async_communicate(p, "some input\n", use_awaitable));
  CHECK(r.out == "some input\n");
  CHECK(r.err == "done\n");
  CHECK(r.status == exit_status::from_code(3));
  CHECK_FALSE(r.out_truncated);
  CHECK_FALSE(r.err_truncated);
  // The pipes are closed and the program reaped.
  CHECK_FALSE(p.stdout_pipe().is_open());
  CHECK(p.status() == exit_status::from_code(3));
}

TEST_CASE("32 MiB each way through cat, checked byte for byte (no deadlock)") {
  asio::io_context io;
  std::string input(32 << 20, '\0');
  std::mt19937_64 rng(42);
  for (std::size_t i = 0; i < input.size(); i += 8) {
    const auto v = rng();
    std::memcpy(&input[i], &v, 8);
  }
  process p = piped(io, {"cat"});
  const communicate_result r = run(io, coropipe::async_communicate(p, input, use_awaitable), 120s);
  CHECK(r.status.success());
  CHECK(r.out.size() == input.size());
  CHECK(r.out == input);
  CHECK_MESSAGE(r.err.empty(), r.err);
}

TEST_CASE("stdout and stderr are read concurrently") {
  asio::io_context io;
  constexpr std::size_t size = 8 << 20;
  process p = piped(io, {helper, "write-both", std::to_string(size)});
  const communicate_result r = run(io, coropipe::async_communicate(p, "", use_awaitable));
  CHECK(r.status.success());
  const std::string expected = pattern(size);
  CHECK(r.out == expected);
  CHECK(r.err == expected);
}

TEST_CASE("output_limit keeps the first bytes of each stream; the program still runs to its end") {
  asio::io_context io;
  process p = piped(io, {helper, "write-both", "1000000"});
  const communicate_result r =
      run(io, coropipe::async_communicate(p, "", {.output_limit = 1000}, use_awaitable));
  CHECK(r.status.success());
  CHECK(r.out == pattern(1000));
  CHECK(r.err == pattern(1000));
  CHECK(r.out_truncated);
  CHECK(r.err_truncated);

  process q = piped(io, {"sh", "-c", "printf 12345"});
  const communicate_result exact = run(io, coropipe::async_communicate(q, "", {.output_limit = 5}, use_awaitable));
  CHECK(exact.out == "12345");
  CHECK_FALSE(exact.out_truncated);
}

TEST_CASE("timeout: the program is stopped and what it printed is kept") {
  asio::io_context io;
  process p = piped(io, {helper, "ready-sleep", "60"});
  const auto [ec, r] = run(io, coropipe::async_communicate(p, "", {.timeout = 300ms}, as_tuple));
  CHECK(ec == asio::error::timed_out);
  CHECK(r.out == "ready\n");
  CHECK(r.status == exit_status::killed(SIGTERM));
  CHECK(p.status() == exit_status::killed(SIGTERM));
}

TEST_CASE("timeout: a program that ignores SIGTERM gets SIGKILL after the grace period") {
  asio::io_context io;
  process p = piped(io, {helper, "ignore-term", "60"});
  const auto [ec, r] = run(io, coropipe::async_communicate(p, "", {.timeout = 300ms, .grace = 100ms}, as_tuple));
  CHECK(ec == asio::error::timed_out);
  CHECK(r.out == "ready\n");
  CHECK(r.status == exit_status::killed(SIGKILL));
}

TEST_CASE("what the program prints while it is being stopped is kept") {
  asio::io_context io;
  process p = piped(io, {helper, "term-message", "60"});
  const auto [ec, r] = run(io, coropipe::async_communicate(p, "", {.timeout = 300ms, .grace = 10s}, as_tuple));
  CHECK(ec == asio::error::timed_out);
  CHECK(r.out == "ready\ngot TERM\n");
  CHECK(r.status == exit_status::from_code(0));
}

TEST_CASE("cancellation stops the program; a parallel_group gets the partial result") {
  asio::io_context io;
  process p = piped(io, {helper, "ready-sleep", "60"});
  asio::steady_timer timer(io, 300ms);
  using coropipe::compat::deferred;
  auto [order, ec, r, timer_ec] = run(io, coropipe::compat::make_parallel_group(
                                              coropipe::async_communicate(p, "", deferred),
                                              timer.async_wait(deferred))
                                              .async_wait(coropipe::compat::wait_for_one(), use_awaitable));
  CHECK(order[0] == 1);  // the timer first
  CHECK_FALSE(timer_ec);
  CHECK(ec == asio::error::operation_aborted);
  CHECK(r.out == "ready\n");
  CHECK(r.status == exit_status::killed(SIGTERM));
}

TEST_CASE("cancellation through operator||: the program is stopped and reaped before || returns") {
  asio::io_context io;
  process p = piped(io, {helper, "ready-sleep", "60"});
  asio::steady_timer timer(io, 300ms);
  const auto which = run(io, [&]() -> awaitable<std::size_t> {
    auto v = co_await (coropipe::async_communicate(p, "", use_awaitable) || timer.async_wait(use_awaitable));
    co_return v.index();
  }());
  CHECK(which == 1);
  CHECK(p.status() == exit_status::killed(SIGTERM));
  CHECK_FALSE(p.stdout_pipe().is_open());
}

TEST_CASE("a program that exits without reading its input: the rest is dropped, no error") {
  asio::io_context io;
  process p = piped(io, {"sh", "-c", "head -c 10 >/dev/null; exit 0"});
  const std::string input(4 << 20, 'x');
  const auto [ec, r] = run(io, coropipe::async_communicate(p, input, as_tuple));
  CHECK_FALSE(ec);
  CHECK(r.status.success());
}

TEST_CASE("a grandchild holding stdout open does not hold up async_communicate") {
  asio::io_context io;
  process p = piped(io, {helper, "grandchild", "60"});
  const communicate_result r = run(io, coropipe::async_communicate(p, "", use_awaitable), 30s);
  CHECK(r.status.success());
  REQUIRE_FALSE(r.out.empty());
  const pid_t grandchild = std::stoi(r.out);
  ::kill(grandchild, SIGKILL);
  CHECK(coropipe_test::wait_for_pid(grandchild, 30s).has_value());
}

TEST_CASE("a timeout stops the whole process group of a program that leads one") {
  asio::io_context io;
  process p = coropipe::spawn(io, {.argv = {"sh", "-c", helper + " sleep 60 & echo $!; wait"},
                                   .out = stdio::pipe(), .process_group = 0});
  const auto [ec, r] = run(io, coropipe::async_communicate(p, "", {.timeout = 1s}, as_tuple));
  CHECK(ec == asio::error::timed_out);
  CHECK(r.status == exit_status::killed(SIGTERM));
  REQUIRE_FALSE(r.out.empty());
  // The grandchild was stopped too; it is this subreaper's to reap now.
  const auto gs = coropipe_test::wait_for_pid(std::stoi(r.out), 30s);
  REQUIRE(gs);
  CHECK(exit_status::from_wait_status(*gs).signaled());
}

TEST_CASE("streams that are not pipes are left alone; input needs a stdin pipe") {
  asio::io_context io;
  process p = coropipe::spawn(io, {.argv = {"sh", "-c", "exit 3"}});
  const communicate_result r = run(io, coropipe::async_communicate(p, "", use_awaitable));
  CHECK(r.status == exit_status::from_code(3));
  CHECK(r.out.empty());

  process q = coropipe::spawn(io, {.argv = {"true"}, .out = stdio::pipe()});
  const auto [ec, r2] = run(io, coropipe::async_communicate(q, "input", as_tuple));
  CHECK(ec == coropipe::errc::invalid_argument);
  CHECK(run(io, q.async_wait(use_awaitable)).success());  // left running, not stopped

  process empty(io.get_executor());
  const auto [ec3, r3] = run(io, coropipe::async_communicate(empty, "", as_tuple));
  CHECK(ec3 == coropipe::errc::no_child);
}

TEST_CASE("a callback completion token") {
  asio::io_context io;
  process p = piped(io, {"cat"});
  coropipe::error_code ec;
  communicate_result result;
  bool called = false;
  coropipe::async_communicate(p, "by callback", [&](coropipe::error_code e, communicate_result r) {
    ec = e;
    result = std::move(r);
    called = true;
  });
  CHECK_FALSE(called);  // never inside the initiating function
  io.run_for(30s);
  CHECK(called);
  CHECK_FALSE(ec);
  CHECK(result.out == "by callback");
}
