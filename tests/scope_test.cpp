// SPDX-License-Identifier: BSL-1.0
#include <coropipe/scope.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/error.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::exit_status;
using coropipe_test::run;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);
const std::string helper = COROPIPE_CHILD_HELPER;

awaitable<void> sleep_for(std::chrono::steady_clock::duration d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(use_awaitable);
}

awaitable<int> exit_after(child_context& ctx, int ms, int code) {
  asio::steady_timer t(ctx.get_executor(), std::chrono::milliseconds(ms));
  co_await t.async_wait(use_awaitable);
  co_return code;
}

// Reads a line of text from a pipe.
awaitable<std::string> read_line(asio::posix::stream_descriptor& in) {
  std::string s;
  char c = 0;
  for (;;) {
    auto [ec, n] = co_await asio::async_read(in, asio::buffer(&c, 1), as_tuple);
    if (ec || n == 0 || c == '\n') co_return s;
    s += c;
  }
}

bool gone_or_zombie(pid_t pid) {
  const char st = coropipe_test::process_state(pid);
  return st == 0 || st == 'Z';
}

} // namespace

TEST_CASE("the body's result is the scope's; a child still running at the end is stopped and reaped") {
  asio::io_context io;
  pid_t pid = 0;
  coropipe::child* handle = nullptr;
  const int r = run(io, [&]() -> awaitable<int> {
    co_return co_await coropipe::async_scope(
        io.get_executor(),
        [&](coropipe::scope& s) -> awaitable<int> {
          coropipe::process& p = s.spawn({.argv = {helper, "sleep", "100"}});
          pid = p.pid();
          handle = &p;
          CHECK(s.running() == 1);
          co_return 42;
        },
        use_awaitable);
  }());
  CHECK(r == 42);
  CHECK(pid > 0);
  CHECK(gone_or_zombie(pid) == true);
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("stop_children: the stop signal first, SIGKILL after the grace period") {
  asio::io_context io;
  const auto start = std::chrono::steady_clock::now();
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(), coropipe::scope_options{.grace = 200ms},
        [&](coropipe::scope& s) -> awaitable<void> {
          coropipe::process& p = s.spawn({.argv = {helper, "ignore-term", "100"}, .out = coropipe::stdio::pipe()});
          CHECK(co_await read_line(p.stdout_pipe()) == "ready");  // SIG_IGN is in place
        },
        use_awaitable);
  }());
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took >= 200ms);
  CHECK(took < 30s);
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("a custom stop signal reaches the child") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(), coropipe::scope_options{.stop_signal = SIGINT, .grace = 10s},
        [&](coropipe::scope& s) -> awaitable<void> {
          s.spawn({.argv = {helper, "sleep", "100"}});
          co_return;
        },
        use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("wait_for_children: the scope waits for children to end on their own") {
  asio::io_context io;
  coropipe::child* c = nullptr;
  const auto start = std::chrono::steady_clock::now();
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(), coropipe::scope_options{.at_end = coropipe::scope_end::wait_for_children},
        [&](coropipe::scope& s) -> awaitable<void> {
          c = &s.fork([](child_context& ctx) { return exit_after(ctx, 300, 0); });
          s.fork([](child_context& ctx) { return exit_after(ctx, 10, 5); });  // failing, not fail_fast
          co_return;
        },
        use_awaitable);
  }());
  CHECK(std::chrono::steady_clock::now() - start >= 300ms);
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("a body that throws: the exception is the scope's, children are stopped and reaped") {
  asio::io_context io;
  CHECK_THROWS_WITH_AS(run(io, [&]() -> awaitable<void> {
                         co_await coropipe::async_scope(
                             io.get_executor(),
                             [&](coropipe::scope& s) -> awaitable<void> {
                               s.spawn({.argv = {helper, "sleep", "100"}});
                               s.fork([](child_context& ctx) { return exit_after(ctx, 100000, 0); });
                               throw std::runtime_error("body failed");
                               co_return;
                             },
                             use_awaitable);
                       }()),
                       "body failed", std::runtime_error);
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("cancelling the scope cancels the body and stops the children; completion waits for them") {
  asio::io_context io;
  asio::cancellation_signal cancel;
  asio::steady_timer t(io, 100ms);
  t.async_wait([&](coropipe::error_code) { cancel.emit(asio::cancellation_type::terminal); });
  bool body_saw_abort = false;
  std::exception_ptr e = run(io, [&]() -> awaitable<std::exception_ptr> {
    auto [ep] = co_await coropipe::async_scope(
        io.get_executor(),
        [&](coropipe::scope& s) -> awaitable<void> {
          s.spawn({.argv = {helper, "sleep", "100"}});
          try {
            co_await sleep_for(100s);
          } catch (const coropipe::system_error& err) {
            body_saw_abort = err.code() == asio::error::operation_aborted;
            throw;
          }
        },
        asio::bind_cancellation_slot(cancel.slot(), as_tuple));
    co_return ep;
  }(), 30s);
  CHECK(body_saw_abort == true);
  REQUIRE(e != nullptr);
  CHECK_THROWS_AS(std::rethrow_exception(e), coropipe::system_error);
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("fail_fast: a failing child cancels the body, stops its siblings, and names itself") {
  asio::io_context io;
  pid_t failing = 0;
  try {
    run(io, [&]() -> awaitable<void> {
      co_await coropipe::async_scope(
          io.get_executor(), coropipe::scope_options{.fail_fast = true},
          [&](coropipe::scope& s) -> awaitable<void> {
            s.spawn({.argv = {helper, "sleep", "100"}});
            failing = s.fork(coropipe::scope_fork_options{.name = "the failing one"},
                             [](child_context& ctx) { return exit_after(ctx, 50, 3); })
                          .pid();
            co_await sleep_for(100s);  // cancelled
          },
          use_awaitable);
    }(), 30s);
    FAIL("the scope did not fail");
  } catch (const coropipe::child_failed_error& err) {
    CHECK(err.code() == coropipe::errc::child_failed);
    CHECK(err.pid() == failing);
    CHECK(err.name() == "the failing one");
    CHECK(err.status().exited());
    CHECK(err.status().exit_code() == 3);
    CHECK(std::string(err.what()).find("the failing one") != std::string::npos);
  }
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("fail_fast: a child killed by a signal fails the scope too; a successful one does not") {
  asio::io_context io;
  try {
    run(io, [&]() -> awaitable<void> {
      co_await coropipe::async_scope(
          io.get_executor(), coropipe::scope_options{.fail_fast = true},
          [&](coropipe::scope& s) -> awaitable<void> {
            s.fork([](child_context& ctx) { return exit_after(ctx, 0, 0); });
            co_await sleep_for(100ms);
            s.spawn({.argv = {helper, "sleep", "100"}}).kill();
            co_await sleep_for(100s);
          },
          use_awaitable);
    }(), 30s);
    FAIL("the scope did not fail");
  } catch (const coropipe::child_failed_error& err) {
    CHECK(err.status().signaled());
    CHECK(err.status().term_signal() == SIGKILL);
    CHECK(err.name() == helper);
  }
}

TEST_CASE("fail_fast does not count children the scope itself stopped") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(), coropipe::scope_options{.fail_fast = true},
        [&](coropipe::scope& s) -> awaitable<void> {
          s.spawn({.argv = {helper, "sleep", "100"}});
          co_return;
        },
        use_awaitable);
  }());
}

TEST_CASE("grandchildren in a spawned leader's process group are killed when the scope ends") {
  asio::io_context io;
  pid_t grandchild = 0;
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(),
        [&](coropipe::scope& s) -> awaitable<void> {
          coropipe::process& p = s.spawn(
              {.argv = {helper, "grandchild", "100"}, .out = coropipe::stdio::pipe(), .process_group = 0});
          grandchild = std::stoi(co_await read_line(p.stdout_pipe()));
          co_await sleep_for(100ms);  // the leader has exited, unreaped; its grandchild sleeps on
          CHECK(s.running() == 0);
          CHECK(coropipe_test::process_state(p.pid()) == 'Z');  // kept, so its group id is ours
          CHECK(::kill(grandchild, 0) == 0);
        },
        use_awaitable);
  }());
  REQUIRE(grandchild > 0);
  // The test runner is a subreaper: the orphan is ours to reap.
  const auto status = coropipe_test::wait_for_pid(grandchild, 5000ms);
  REQUIRE(status.has_value());
  CHECK(WIFSIGNALED(*status));
}

TEST_CASE("a forked child in a new process group: its own children are killed with it") {
  asio::io_context io;
  auto ends = coropipe::pipe();  // not a structured binding: clang 14 cannot capture those
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(), coropipe::scope_options{.at_end = coropipe::scope_end::wait_for_children},
        [&](coropipe::scope& s) -> awaitable<void> {
          s.fork(coropipe::scope_fork_options{.new_process_group = true},
                 [](child_context&, coropipe::unique_fd w) -> awaitable<int> {
                   const pid_t pid = ::fork();
                   if (pid == 0) {
                     ::pause();
                     ::_exit(0);
                   }
                   const std::string text = std::to_string(pid) + "\n";
                   (void)!::write(w.get(), text.data(), text.size());
                   co_return 0;
                 },
                 std::move(ends.write_end));
          co_return;
        },
        use_awaitable);
  }());
  const std::string text = coropipe_test::read_all(ends.read_end.get(), 5000ms);
  const pid_t grandchild = std::stoi(text);
  const auto status = coropipe_test::wait_for_pid(grandchild, 5000ms);
  REQUIRE(status.has_value());
  CHECK(WIFSIGNALED(*status));
  CHECK(WTERMSIG(*status) == SIGKILL);
}

TEST_CASE("scopes nest: the inner one ends (and reaps) before the outer body goes on") {
  asio::io_context io;
  pid_t inner_pid = 0;
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(),
        [&](coropipe::scope& outer) -> awaitable<void> {
          outer.spawn({.argv = {helper, "sleep", "100"}});
          const int v = co_await coropipe::async_scope(
              io.get_executor(),
              [&](coropipe::scope& inner) -> awaitable<int> {
                inner_pid = inner.spawn({.argv = {helper, "sleep", "100"}}).pid();
                co_return 1;
              },
              use_awaitable);
          CHECK(v == 1);
          CHECK(gone_or_zombie(inner_pid) == true);
          CHECK(outer.running() == 1);
        },
        use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("adopted children and processes are owned like the others") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(),
        [&](coropipe::scope& s) -> awaitable<void> {
          coropipe::child c =
              coropipe::fork_child(io, [](child_context& ctx) { return exit_after(ctx, 100000, 0); });
          coropipe::child& owned = s.adopt(std::move(c), "adopted");
          CHECK(c.valid() == false);
          CHECK(owned.valid() == true);
          s.adopt(coropipe::spawn(io, {.argv = {helper, "sleep", "100"}}));
          CHECK(s.running() == 2);
          // A child of the scope can still be waited for by hand.
          coropipe::child& quick = s.fork([](child_context& ctx) { return exit_after(ctx, 0, 7); });
          const exit_status st = co_await quick.async_wait(use_awaitable);
          CHECK(st.exit_code() == 7);
          CHECK_THROWS_AS(s.adopt(coropipe::child()), coropipe::system_error);
        },
        use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("a scope with no children completes at once, with the body's value") {
  asio::io_context io;
  const std::string r = run(io, [&]() -> awaitable<std::string> {
    co_return co_await coropipe::async_scope(
        io.get_executor(), [](coropipe::scope&) -> awaitable<std::string> { co_return "empty"; }, use_awaitable);
  }());
  CHECK(r == "empty");
}
