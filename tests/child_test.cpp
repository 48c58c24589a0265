// SPDX-License-Identifier: BSL-1.0
#include <coropipe/child.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/error.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child;
using coropipe::exit_status;
using coropipe_test::run;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

// A plain child (fork, no exec) that sleeps, then exits with @p code.
pid_t sleeper(std::chrono::milliseconds sleep, int code) {
  return coropipe_test::fork_raw([=] {
    ::usleep(static_cast<useconds_t>(sleep.count() * 1000));
    return code;
  });
}

// A plain child that ignores SIGTERM and sleeps for a minute.
pid_t stubborn() {
  // Block SIGTERM across the fork so that the child cannot receive it before
  // it has set SIG_IGN; then unblock in both.
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, &old);
  const pid_t pid = coropipe_test::fork_raw([&] {
    ::signal(SIGTERM, SIG_IGN);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    ::sleep(60);
    return 0;
  });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return pid;
}

// Sets COROPIPE_DISABLE_PIDFD for the lifetime of the object.
struct no_pidfds {
  no_pidfds() { ::setenv("COROPIPE_DISABLE_PIDFD", "1", 1); }
  ~no_pidfds() { ::unsetenv("COROPIPE_DISABLE_PIDFD"); }
};

} // namespace

TEST_CASE("an empty handle") {
  child c;
  CHECK_FALSE(c.valid());
  CHECK(c.pid() == 0);
  CHECK_FALSE(c.status());
  coropipe::error_code ec;
  c.wait(ec);
  CHECK(ec == coropipe::errc::no_child);
  CHECK_FALSE(c.try_wait(ec));
  CHECK(ec == coropipe::errc::no_child);
  c.signal(SIGTERM, ec);
  CHECK(ec == coropipe::errc::no_child);
  CHECK_THROWS_AS(c.kill(), coropipe::system_error);
  CHECK_THROWS_AS(c.wait(), coropipe::system_error);
  c.detach(ec);  // emptying an empty handle is fine
  CHECK_FALSE(ec);

  asio::io_context io;
  auto [wait_ec, st] = run(io, c.async_wait(as_tuple));
  CHECK(wait_ec == coropipe::errc::no_child);
}

TEST_CASE("adopt() takes a child of this process and async_wait reaps it with its exit code") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(10ms, 9));
  CHECK(c.valid());
  CHECK(c.mechanism() == coropipe::wait_mechanism::pidfd);
  const pid_t pid = c.pid();
  CHECK(run(io, c.async_wait(use_awaitable)) == exit_status::from_code(9));
  CHECK(c.status() == exit_status::from_code(9));
  CHECK(c.pid() == pid);
  CHECK(coropipe_test::process_state(pid) == 0);  // reaped: no zombie
  // Waiting again gives the same status; signalling a reaped child is a no-op.
  CHECK(run(io, c.async_wait(use_awaitable)) == exit_status::from_code(9));
  CHECK(c.wait() == exit_status::from_code(9));
  CHECK_NOTHROW(c.kill());
}

TEST_CASE("adopt() refuses what is not a child of this process") {
  asio::io_context io;
  try {
    (void)child::adopt(io.get_executor(), 1);
    FAIL("no exception");
  } catch (const coropipe::system_error& e) {
    CHECK(e.code() == std::errc::no_child_process);
    CHECK(std::string(e.what()).find("coropipe::child::adopt: waitid") == 0);
  }
  CHECK_THROWS_AS((void)child::adopt(io.get_executor(), 0), coropipe::system_error);
  CHECK_THROWS_AS((void)child::adopt(io.get_executor(), -5), coropipe::system_error);
}

TEST_CASE("the status tells an exit code from a signal") {
  asio::io_context io;
  child a = child::adopt(io.get_executor(), sleeper(0ms, 9));
  child b = child::adopt(io.get_executor(), sleeper(60s, 0));
  b.kill();
  CHECK(run(io, a.async_wait(use_awaitable)) == exit_status::from_code(9));
  const exit_status killed = run(io, b.async_wait(use_awaitable));
  CHECK(killed == exit_status::killed(SIGKILL));
  CHECK(killed.to_string() == "killed by SIGKILL");
  CHECK(killed != exit_status::from_code(9));
}

TEST_CASE("async_wait does not block the io_context thread") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(300ms, 0));
  int ticks = 0;
  run(io, [&]() -> awaitable<void> {
    auto ticker = [&]() -> awaitable<void> {
      asio::steady_timer t(co_await asio::this_coro::executor);
      for (;;) {
        t.expires_after(10ms);
        co_await t.async_wait(use_awaitable);
        ++ticks;
      }
    };
    // The ticker keeps running while the wait is pending; || cancels it after.
    co_await (c.async_wait(use_awaitable) || ticker());
  }());
  CHECK(ticks >= 3);
  CHECK(c.status() == exit_status::from_code(0));
}

TEST_CASE("a cancelled wait leaves the child running and waitable") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(60s, 0));
  const auto outcome = run(io, [&]() -> awaitable<std::size_t> {
    asio::steady_timer timeout(co_await asio::this_coro::executor, 50ms);
    auto r = co_await (c.async_wait(use_awaitable) || timeout.async_wait(use_awaitable));
    co_return r.index();
  }());
  CHECK(outcome == 1);  // the timeout won
  CHECK_FALSE(c.status());
  CHECK(coropipe_test::process_state(c.pid()) != 0);
  CHECK(coropipe_test::process_state(c.pid()) != 'Z');
  // An explicit cancellation slot reports operation_aborted.
  asio::cancellation_signal cancel;
  coropipe::error_code seen;
  c.async_wait(asio::bind_cancellation_slot(cancel.slot(), [&](coropipe::error_code ec, exit_status) { seen = ec; }));
  asio::post(io, [&] { cancel.emit(asio::cancellation_type::terminal); });
  io.restart();
  io.run();
  CHECK(seen == asio::error::operation_aborted);
  // ...and the child can still be waited for.
  c.kill();
  CHECK(run(io, c.async_wait(use_awaitable)) == exit_status::killed(SIGKILL));
}

TEST_CASE("a callback completion is never invoked inside async_wait") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(0ms, 4));
  ::usleep(50000);  // certainly over by now
  bool inside = true, called = false;
  exit_status got;
  c.async_wait([&](coropipe::error_code ec, exit_status st) {
    CHECK_FALSE(inside);
    CHECK_FALSE(ec);
    got = st;
    called = true;
  });
  inside = false;
  CHECK_FALSE(called);
  io.run();
  CHECK(called);
  CHECK(got == exit_status::from_code(4));
}

TEST_CASE("two concurrent waits both get the status") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(50ms, 6));
  auto [a, b] = run(io, [&]() -> awaitable<std::tuple<exit_status, exit_status>> {
    co_return co_await (c.async_wait(use_awaitable) && c.async_wait(use_awaitable));
  }());
  CHECK(a == exit_status::from_code(6));
  CHECK(b == exit_status::from_code(6));
}

TEST_CASE("async_stop: a child that honours SIGTERM ends by it") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(60s, 0));
  ::usleep(20000);
  CHECK(run(io, c.async_stop(5s, use_awaitable)) == exit_status::killed(SIGTERM));
}

TEST_CASE("async_stop: a child that ignores SIGTERM gets SIGKILL after the grace period") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), stubborn());
  CHECK(run(io, c.async_stop(100ms, use_awaitable)) == exit_status::killed(SIGKILL));
}

TEST_CASE("async_stop with another first signal, and on a child already over") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(60s, 0));
  CHECK(run(io, c.async_stop(5s, SIGINT, use_awaitable)) == exit_status::killed(SIGINT));
  // Over already: the stored status, no signal sent to a recycled pid.
  CHECK(run(io, c.async_stop(5s, use_awaitable)) == exit_status::killed(SIGINT));
}

TEST_CASE("a handle destroyed while its child runs kills and reaps it") {
  asio::io_context io;
  pid_t pid = 0;
  {
    child c = child::adopt(io.get_executor(), sleeper(60s, 0));
    pid = c.pid();
  }
  CHECK(coropipe_test::process_state(pid) == 0);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("move-assigning over a running child kills and reaps it; moves keep waits valid") {
  asio::io_context io;
  child a = child::adopt(io.get_executor(), sleeper(60s, 0));
  const pid_t first = a.pid();
  a = child::adopt(io.get_executor(), sleeper(10ms, 2));
  CHECK(coropipe_test::process_state(first) == 0);
  // A wait started before the handle moves completes normally.
  exit_status got;
  bool done = false;
  a.async_wait([&](coropipe::error_code ec, exit_status st) {
    CHECK_FALSE(ec);
    got = st;
    done = true;
  });
  child b = std::move(a);
  CHECK_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): documented state
  io.run();
  CHECK(done);
  CHECK(got == exit_status::from_code(2));
  CHECK(b.status() == exit_status::from_code(2));
}

TEST_CASE("detach() lets the child run on and reaps it in the background") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(100ms, 0));
  const pid_t pid = c.pid();
  c.detach();
  CHECK_FALSE(c.valid());
  CHECK(coropipe_test::process_state(pid) != 0);  // still running
  // Reaped by the background reaper: no zombie stays (waits up to 5 s).
  for (int i = 0; i < 500 && coropipe_test::process_state(pid) != 0; ++i) ::usleep(10000);
  CHECK(coropipe_test::process_state(pid) == 0);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("detach() aborts pending waits") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(50ms, 0));
  coropipe::error_code seen;
  c.async_wait([&](coropipe::error_code ec, exit_status) { seen = ec; });
  c.detach();
  io.run();
  CHECK(seen == asio::error::operation_aborted);
  for (int i = 0; i < 500 && coropipe_test::has_children(); ++i) ::usleep(10000);
}

TEST_CASE("waits reap only their own child") {
  asio::io_context io;
  const pid_t other = sleeper(0ms, 1);  // someone else's child, over at once
  child c = child::adopt(io.get_executor(), sleeper(100ms, 0));
  CHECK(run(io, c.async_wait(use_awaitable)).success());
  // The other one is still there for its owner to reap.
  int status = 0;
  CHECK(::waitpid(other, &status, 0) == other);
  CHECK(WEXITSTATUS(status) == 1);
}

TEST_CASE("a child reaped by someone else gives ECHILD, not a hang") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(10ms, 0));
  REQUIRE(::waitpid(c.pid(), nullptr, 0) == c.pid());  // stolen
  auto [ec, st] = run(io, c.async_wait(as_tuple));
  CHECK(ec == std::errc::no_child_process);
}

TEST_CASE("wait() and try_wait() block and poll") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(100ms, 3));
  CHECK_FALSE(c.try_wait());
  CHECK(c.wait() == exit_status::from_code(3));
  CHECK(c.try_wait() == exit_status::from_code(3));
}

TEST_CASE("signal() delivers any signal") {
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(60s, 0));
  c.signal(SIGUSR2);
  CHECK(run(io, c.async_wait(use_awaitable)) == exit_status::killed(SIGUSR2));
  c.signal(SIGUSR2);  // reaped: nothing happens
  coropipe::error_code ec;
  child d = child::adopt(io.get_executor(), sleeper(60s, 0));
  d.signal(12345, ec);
  CHECK(ec == std::errc::invalid_argument);
  try {
    d.signal(12345);
    FAIL("no exception");
  } catch (const coropipe::system_error& e) {
    CHECK(std::string(e.what()).find("coropipe::child::signal: pidfd_send_signal") == 0);
  }
}

TEST_CASE("without pidfds, waits poll and still work (the documented fallback)") {
  no_pidfds off;
  asio::io_context io;
  child c = child::adopt(io.get_executor(), sleeper(30ms, 8));
  CHECK(c.mechanism() == coropipe::wait_mechanism::poll);
  CHECK(run(io, c.async_wait(use_awaitable)) == exit_status::from_code(8));

  child d = child::adopt(io.get_executor(), stubborn());
  CHECK(run(io, d.async_stop(50ms, use_awaitable)) == exit_status::killed(SIGKILL));

  child e = child::adopt(io.get_executor(), sleeper(60s, 0));
  const auto outcome = run(io, [&]() -> awaitable<std::size_t> {
    asio::steady_timer timeout(co_await asio::this_coro::executor, 30ms);
    auto r = co_await (e.async_wait(use_awaitable) || timeout.async_wait(use_awaitable));
    co_return r.index();
  }());
  CHECK(outcome == 1);
  CHECK_FALSE(e.status());

  child f = child::adopt(io.get_executor(), sleeper(50ms, 0));
  f.detach();
  for (int i = 0; i < 500 && coropipe_test::has_children(); ++i) ::usleep(10000);
  // e is killed and reaped by its destructor.
}
