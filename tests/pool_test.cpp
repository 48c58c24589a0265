// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pool.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/error.hpp>
#include <coropipe/scope.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <numeric>
#include <set>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::pool;
using coropipe_test::run;
using int_pool = coropipe::pool<int, int>;
using int_workers = coropipe::pool_workers<int, int>;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);
const std::string worker_program = COROPIPE_POOL_WORKER;

awaitable<void> sleep_for(std::chrono::steady_clock::duration d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(use_awaitable);
}

// x + 1; negative x: sleep -x ms first; 1000000: abort().
awaitable<int> inc(int x) {
  if (x == 1000000) std::abort();
  if (x < 0) co_await sleep_for(std::chrono::milliseconds(-x));
  co_return x + 1;
}

int_workers forked_inc() { return int_workers::forked(inc); }

// Submits @p n requests at once and checks every reply.
awaitable<void> submit_many(int_pool& p, int n) {
  auto ex = co_await asio::this_coro::executor;
  int done = 0;
  int wrong = 0;
  asio::steady_timer all(ex, std::chrono::steady_clock::time_point::max());
  for (int i = 0; i < n; ++i) {
    p.async_submit(i, [&, i](coropipe::error_code ec, int r) {
      if (ec || r != i + 1) ++wrong;
      if (++done == n) all.cancel();
    });
  }
  while (done < n) (void)co_await all.async_wait(as_tuple);
  CHECK(wrong == 0);
}

} // namespace

TEST_CASE("a forked pool answers requests; graceful shutdown reaps every worker") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
    CHECK(co_await p.async_submit(41, use_awaitable) == 42);
    co_await submit_many(p, 1000);
    auto stats = p.stats();
    REQUIRE(stats.size() == 2);
    CHECK(stats[0].served + stats[1].served == 1001);
    CHECK(stats[0].pid > 0);
    CHECK(stats[0].restarts == 0);
    co_await p.async_shutdown(use_awaitable);
    CHECK(coropipe_test::has_children() == false);
    for (const auto& s : p.stats()) {
      REQUIRE(s.last_exit.has_value());
      CHECK(s.last_exit->success());
    }
    auto [ec, r] = co_await p.async_submit(1, as_tuple);
    CHECK(ec == coropipe::errc::pool_closed);
  }());
}

TEST_CASE("a worker that crashes fails only its request, with its exit status; a replacement serves on") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1});
    coropipe::request_info info;
    auto [ec, r] = co_await p.async_submit(1000000, coropipe::submit_options{.info = &info}, as_tuple);
    CHECK(ec == coropipe::errc::worker_died);
    REQUIRE(info.worker_status.has_value());
    CHECK(info.worker_status->term_signal() == SIGABRT);
    CHECK(info.worker_pid > 0);
    CHECK(info.attempts == 1);
    CHECK(co_await p.async_submit(1, use_awaitable) == 2);
    CHECK(p.stats()[0].restarts == 1);
    REQUIRE(p.stats()[0].last_exit.has_value());
    CHECK(p.stats()[0].last_exit->term_signal() == SIGABRT);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("with retries, a request whose worker is killed is answered by another") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .max_retries = 1});
    coropipe::request_info info;
    bool done = false;
    int reply = 0;
    coropipe::error_code got;
    p.async_submit(-300, coropipe::submit_options{.info = &info}, [&](coropipe::error_code ec, int r) {
      got = ec;
      reply = r;
      done = true;
    });
    co_await sleep_for(100ms);
    REQUIRE(info.worker_pid == 0);  // filled on completion only
    ::kill(p.stats()[0].pid, SIGKILL);
    for (int i = 0; i < 500 && !done; ++i) co_await sleep_for(10ms);
    REQUIRE(done);
    CHECK(!got);
    CHECK(reply == -299);
    CHECK(info.attempts == 2);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("a worker that keeps dying ends with the restart-budget error, not a loop") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(),
               int_workers::forked(inc, []() -> awaitable<void> { throw std::runtime_error("bad init"); }),
               {.workers = 2, .max_retries = 100, .restart_budget = 5, .restart_backoff = 1ms});
    auto [ec, r] = co_await p.async_submit(1, as_tuple);
    CHECK(ec == coropipe::errc::pool_restart_budget_exhausted);
    CHECK(p.broken());
    auto [ec2, r2] = co_await p.async_submit(2, as_tuple);
    CHECK(ec2 == coropipe::errc::pool_restart_budget_exhausted);
    co_await p.async_shutdown(use_awaitable);
  }(), 60s);
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("a timed-out request stops its busy worker; a request on another worker is untouched") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
    bool other_done = false;
    int other = 0;
    p.async_submit(-400, [&](coropipe::error_code ec, int r) {
      CHECK(!ec);
      other = r;
      other_done = true;
    });
    co_await sleep_for(50ms);
    coropipe::request_info info;
    const auto start = std::chrono::steady_clock::now();
    auto [ec, r] = co_await p.async_submit(-100000, coropipe::submit_options{.timeout = 100ms, .info = &info}, as_tuple);
    CHECK(ec == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    for (int i = 0; i < 500 && !other_done; ++i) co_await sleep_for(10ms);
    CHECK(other_done);
    CHECK(other == -399);
    CHECK(co_await p.async_submit(5, use_awaitable) == 6);
    std::size_t restarts = 0;
    for (const auto& s : p.stats()) restarts += s.restarts;
    CHECK(restarts == 1);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("a cancelled request: queued ones are removed, a busy worker is replaced, others are sent again") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .window = 4});
    asio::cancellation_signal cancel;
    coropipe::error_code first_ec;
    bool first_done = false;
    p.async_submit(-100000, asio::bind_cancellation_slot(cancel.slot(), [&](coropipe::error_code ec, int) {
                     first_ec = ec;
                     first_done = true;
                   }));
    int second = 0;
    bool second_done = false;
    p.async_submit(7, [&](coropipe::error_code ec, int r) {  // in flight behind the first
      CHECK(!ec);
      second = r;
      second_done = true;
    });
    co_await sleep_for(100ms);
    cancel.emit(asio::cancellation_type::terminal);
    for (int i = 0; i < 500 && !(first_done && second_done); ++i) co_await sleep_for(10ms);
    CHECK(first_ec == asio::error::operation_aborted);
    CHECK(second == 8);
    CHECK(p.stats()[0].restarts == 1);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("backpressure: a small queue and window still complete every request") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .window = 1, .queue_limit = 2});
    co_await submit_many(p, 200);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("max_requests_per_worker replaces workers, even with one worker (no deadlock)") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .max_requests_per_worker = 3, .restart_budget = 1});
    co_await submit_many(p, 20);
    CHECK(p.stats()[0].restarts >= 6);
    CHECK(p.broken() == false);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("immediate shutdown fails pending requests with pool_closed and reaps the workers") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
    int failed = 0;
    for (int i = 0; i < 10; ++i)
      p.async_submit(-100000, [&](coropipe::error_code ec, int) { failed += ec == coropipe::errc::pool_closed; });
    co_await sleep_for(50ms);
    co_await p.async_shutdown(coropipe::shutdown_mode::immediate, use_awaitable);
    co_await sleep_for(10ms);
    CHECK(failed == 10);
    CHECK(coropipe_test::has_children() == false);
  }());
}

TEST_CASE("destroying a pool kills and reaps its workers at once") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    coropipe::error_code got;
    {
      int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
      p.async_submit(-100000, [&](coropipe::error_code ec, int) { got = ec; });
      co_await sleep_for(50ms);
    }
    CHECK(coropipe_test::has_children() == false);
    co_await sleep_for(10ms);
    CHECK(got == coropipe::errc::pool_closed);
  }());
}

TEST_CASE("a pool inside a scope: the scope's end leaves nothing running") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_scope(
        io.get_executor(),
        [&](coropipe::scope&) -> awaitable<void> {
          int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
          CHECK(co_await p.async_submit(1, use_awaitable) == 2);
        },
        use_awaitable);
    CHECK(coropipe_test::has_children() == false);
  }());
}

TEST_CASE("spawned C++ workers (serve_stdio): replies, stray printf, garbage, failing initializer") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    {
      int_pool p(io.get_executor(), int_workers::spawned({worker_program, "print"}), {.workers = 2});
      co_await submit_many(p, 300);
      co_await p.async_shutdown(use_awaitable);
    }
    {
      int_pool p(io.get_executor(), int_workers::spawned({worker_program, "inc"}), {.workers = 1});
      coropipe::request_info info;
      auto [ec, r] = co_await p.async_submit(1000000, coropipe::submit_options{.info = &info}, as_tuple);
      CHECK(ec == coropipe::errc::worker_died);
      REQUIRE(info.worker_status.has_value());
      CHECK(info.worker_status->term_signal() == SIGABRT);
      CHECK(co_await p.async_submit(1, use_awaitable) == 2);
      co_await p.async_shutdown(use_awaitable);
    }
    {
      int_pool p(io.get_executor(), int_workers::spawned({worker_program, "garbage"}),
                 {.workers = 1, .restart_budget = 2, .restart_backoff = 1ms});
      auto [ec, r] = co_await p.async_submit(1, as_tuple);
      CHECK((ec == coropipe::errc::worker_died || ec == coropipe::errc::pool_restart_budget_exhausted));
      co_await p.async_shutdown(use_awaitable);
    }
    {
      int_pool p(io.get_executor(), int_workers::spawned({worker_program, "init-fail"}),
                 {.workers = 1, .max_retries = 10, .restart_budget = 3, .restart_backoff = 1ms});
      auto [ec, r] = co_await p.async_submit(1, as_tuple);
      CHECK(ec == coropipe::errc::pool_restart_budget_exhausted);
      co_await p.async_shutdown(use_awaitable);
    }
    {
      int_pool p(io.get_executor(), int_workers::spawned({"/nonexistent/worker"}),
                 {.workers = 1, .restart_budget = 2, .restart_backoff = 1ms});
      auto [ec, r] = co_await p.async_submit(1, as_tuple);
      CHECK(ec == coropipe::errc::pool_restart_budget_exhausted);
      CHECK(p.last_start_error() == std::errc::no_such_file_or_directory);
      co_await p.async_shutdown(use_awaitable);
    }
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("serve_stdio: a worker whose stdin hangs up while it works exits at once") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    coropipe::process w = coropipe::spawn(io, {.argv = {worker_program, "inc"},
                                               .in = coropipe::stdio::pipe(),
                                               .out = coropipe::stdio::pipe()});
    coropipe::channel<int> tx(std::move(w.stdin_pipe()));
    co_await tx.async_send(-100000, use_awaitable);  // 100 s of work
    co_await tx.async_flush(use_awaitable);
    co_await sleep_for(100ms);
    co_await tx.async_close(use_awaitable);
    const auto start = std::chrono::steady_clock::now();
    asio::steady_timer limit(io, 10s);
    limit.async_wait([&](coropipe::error_code ec) {
      if (!ec) w.kill();
    });
    const coropipe::exit_status st = co_await w.async_wait(use_awaitable);
    limit.cancel();
    CHECK(st.exited());
    CHECK(std::chrono::steady_clock::now() - start < 5s);
  }());
}

TEST_CASE("a pool of Python workers (multiprocessing.connection only)") {
#if defined(COROPIPE_PYTHON3)
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), int_workers::spawned({COROPIPE_PYTHON3, COROPIPE_POOL_PYTHON_WORKER}),
               {.workers = 2});
    CHECK(co_await p.async_submit(21, use_awaitable) == 42);
    coropipe::request_info info;
    auto [ec, r] = co_await p.async_submit(1000000, coropipe::submit_options{.info = &info}, as_tuple);
    CHECK(ec == coropipe::errc::worker_died);
    CHECK(info.worker_status.has_value());
    CHECK(co_await p.async_submit(4, use_awaitable) == 8);
    co_await p.async_shutdown(use_awaitable);
  }());
#else
  MESSAGE("SKIPPED: python3 not found at configure time");
#endif
}

TEST_CASE("async_map keeps the order; async_for_each_reply delivers every reply once") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
    std::vector<int> in(5000);
    std::iota(in.begin(), in.end(), 0);
    std::vector<int> out = co_await coropipe::async_map(p, in, use_awaitable);
    REQUIRE(out.size() == in.size());
    bool ordered = true;
    for (std::size_t i = 0; i < in.size(); ++i) ordered = ordered && out[i] == in[i] + 1;
    CHECK(ordered);
    std::set<std::size_t> seen;
    long long sum = 0;
    const std::size_t n = co_await coropipe::async_for_each_reply(
        p, in,
        [&](std::size_t i, int r) {
          seen.insert(i);
          sum += r;
        },
        use_awaitable);
    CHECK(n == in.size());
    CHECK(seen.size() == in.size());
    CHECK(sum == 5000LL * 4999 / 2 + 5000);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("without retries, killed workers fail their requests and the numbers add up") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 2, .window = 4});
    int ok = 0, died = 0, other = 0, done = 0;
    const int n = 200;
    asio::steady_timer all(io, std::chrono::steady_clock::time_point::max());
    for (int i = 0; i < n; ++i) {
      p.async_submit(-5, [&](coropipe::error_code ec, int r) {
        if (!ec && r == -4) ++ok;
        else if (ec == coropipe::errc::worker_died) ++died;
        else ++other;
        if (++done == n) all.cancel();
      });
    }
    for (int k = 0; k < 5 && done < n; ++k) {
      co_await sleep_for(40ms);
      for (const auto& s : p.stats())
        if (s.pid > 0) ::kill(s.pid, SIGKILL);
    }
    while (done < n) (void)co_await all.async_wait(as_tuple);
    CHECK(ok + died == n);
    CHECK(other == 0);
    CHECK(died > 0);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("large requests (beyond the copy threshold and the send buffer) are dispatched and answered") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    using blob_pool = coropipe::pool<std::vector<char>, std::int64_t>;
    blob_pool p(io.get_executor(),
                blob_pool::workers_type::forked([](std::vector<char> v) -> awaitable<std::int64_t> {
                  co_return static_cast<std::int64_t>(v.size()) + v.front();
                }),
                {.workers = 2, .window = 4});
    int right = 0, done = 0;
    asio::steady_timer all(io, std::chrono::steady_clock::time_point::max());
    for (int i = 0; i < 20; ++i) {
      std::vector<char> v(std::size_t{1} << 20, static_cast<char>(i));
      p.async_submit(v, [&, i](coropipe::error_code ec, std::int64_t r) {
        right += !ec && r == (std::int64_t{1} << 20) + i;
        if (++done == 20) all.cancel();
      });
    }
    while (done < 20) (void)co_await all.async_wait(as_tuple);
    CHECK(right == 20);
    co_await p.async_shutdown(use_awaitable);
  }());
}
