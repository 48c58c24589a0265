// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pool.hpp>

#include <doctest/doctest.h>

#include "pool_support.hpp"
#include "support.hpp"

#include <coropipe/error.hpp>
#include <coropipe/scope.hpp>

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(bind_executor.hpp)
#include COROPIPE_ASIO_INCLUDE(strand.hpp)

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::pool;
using coropipe_test::run;
using coropipe_test::submit_many;
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

namespace {

// Counts what is allocated through it (a handler's associated allocator).
struct allocation_counts {
  int allocated = 0;
  int freed = 0;
};

template <typename T>
struct counting_allocator {
  using value_type = T;
  allocation_counts* counts;
  explicit counting_allocator(allocation_counts* c) noexcept : counts(c) {}
  template <typename U>
  counting_allocator(const counting_allocator<U>& other) noexcept : counts(other.counts) {}
  T* allocate(std::size_t n) {
    ++counts->allocated;
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    ++counts->freed;
    std::allocator<T>().deallocate(p, n);
  }
  template <typename U>
  bool operator==(const counting_allocator<U>& other) const noexcept {
    return counts == other.counts;
  }
};

// A completion handler with an associated allocator.
struct allocating_handler {
  using allocator_type = counting_allocator<void>;
  allocator_type get_allocator() const noexcept { return allocator_type(counts); }
  void operator()(coropipe::error_code ec, int r) const {
    *got = ec;
    *reply = r;
  }
  allocation_counts* counts;
  coropipe::error_code* got;
  int* reply;
};

// Sleeps until @p done or about 5 s.
awaitable<void> wait_for(const std::function<bool()>& done) {
  for (int i = 0; i < 500 && !done(); ++i) co_await sleep_for(10ms);
}

} // namespace

TEST_CASE("a reply's handler runs on its associated executor: a strand, another io_context") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 2});
    // A strand of the pool's io_context.
    auto strand = asio::make_strand(io);
    int on_strand = 0, answered = 0;
    for (int i = 0; i < 20; ++i) {
      p.async_submit(i, asio::bind_executor(strand, [&, i](coropipe::error_code ec, int r) {
                       on_strand += strand.running_in_this_thread() ? 1 : 0;
                       answered += !ec && r == i + 1;
                     }));
    }
    co_await wait_for([&] { return answered == 20; });
    CHECK(answered == 20);
    CHECK(on_strand == 20);
    // Another io_context, run by another thread: the pending request keeps
    // it busy (outstanding work) until its handler has run there.
    asio::io_context other;
    std::atomic<int> replies{0}, ran_there{0};
    std::atomic<bool> closed_there{false};
    p.async_submit(-50, asio::bind_executor(other, [&](coropipe::error_code ec, int r) {
                     ran_there += other.get_executor().running_in_this_thread() ? 1 : 0;
                     replies += !ec && r == -49;
                   }));
    std::thread runner([&] { other.run(); });
    co_await wait_for([&] { return replies.load() == 1; });
    runner.join();  // run() returned: the work ended with the handler
    CHECK(replies.load() == 1);
    CHECK(ran_there.load() == 1);
    co_await p.async_shutdown(use_awaitable);
    // An immediate error goes there too (posted, never called inline).
    other.restart();
    p.async_submit(1, asio::bind_executor(other, [&](coropipe::error_code ec, int) {
                     closed_there = ec == coropipe::errc::pool_closed && other.get_executor().running_in_this_thread();
                   }));
    CHECK(closed_there.load() == false);
    std::thread runner2([&] { other.run(); });
    co_await wait_for([&] { return closed_there.load(); });
    runner2.join();
    CHECK(closed_there.load());
  }());
}

TEST_CASE("async_submit with deferred, callback and allocator-carrying handlers; nothing completes inline") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1});
    // Deferred: nothing happens before the operation is launched.
    auto op = p.async_submit(5, coropipe::compat::deferred);
    CHECK(p.queued() + p.in_flight() == 0);
    auto [ec, r] = co_await std::move(op)(as_tuple);
    CHECK(!ec);
    CHECK(r == 6);
    // A handler's associated allocator holds its request's record.
    allocation_counts counts;
    coropipe::error_code got = coropipe::errc::invalid_argument;
    int reply = 0;
    p.async_submit(10, allocating_handler{&counts, &got, &reply});
    CHECK(counts.allocated == 1);
    CHECK(counts.freed == 0);
    co_await wait_for([&] { return reply == 11; });
    CHECK(!got);
    CHECK(reply == 11);
    CHECK(counts.freed == counts.allocated);
    co_await p.async_shutdown(use_awaitable);
    // An immediate error is posted: the callback does not run inside async_submit().
    bool called = false;
    p.async_submit(1, [&](coropipe::error_code e, int) {
      CHECK(e == coropipe::errc::pool_closed);
      called = true;
    });
    CHECK(called == false);
    co_await sleep_for(1ms);
    CHECK(called);
  }());
}

TEST_CASE("cancellation: a queued and a parked request leave the busy worker alone; terminal only") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .window = 1, .queue_limit = 1});
    asio::cancellation_signal busy_cancel, queued_cancel, parked_cancel;
    std::vector<std::string> order;
    coropipe::error_code busy_ec, queued_ec, parked_ec;
    p.async_submit(-100000, asio::bind_cancellation_slot(busy_cancel.slot(), [&](coropipe::error_code ec, int) {
                     busy_ec = ec;
                     order.push_back("busy");
                   }));
    p.async_submit(1, asio::bind_cancellation_slot(queued_cancel.slot(), [&](coropipe::error_code ec, int) {
                     queued_ec = ec;
                     order.push_back("queued");
                   }));
    p.async_submit(2, asio::bind_cancellation_slot(parked_cancel.slot(), [&](coropipe::error_code ec, int) {
                     parked_ec = ec;
                     order.push_back("parked");
                   }));
    co_await wait_for([&] { return p.in_flight() == 1; });  // the worker is up
    co_await sleep_for(20ms);
    CHECK(p.in_flight() == 1);
    CHECK(p.queued() == 1);  // the third waits for room (backpressure)
    // Partial and total cancellation are not supported: nothing happens.
    parked_cancel.emit(asio::cancellation_type::partial);
    co_await sleep_for(1ms);
    CHECK(order.empty());
    parked_cancel.emit(asio::cancellation_type::terminal);
    CHECK(order.empty());  // posted, not called inside emit()
    co_await sleep_for(1ms);
    queued_cancel.emit(asio::cancellation_type::terminal);
    co_await wait_for([&] { return order.size() == 2; });
    CHECK(parked_ec == asio::error::operation_aborted);
    CHECK(queued_ec == asio::error::operation_aborted);
    CHECK(p.stats()[0].restarts == 0);  // the busy worker was not touched
    CHECK(p.queued() == 0);
    busy_cancel.emit(asio::cancellation_type::terminal);
    co_await wait_for([&] { return order.size() == 3; });
    REQUIRE(order.size() == 3);
    CHECK(order == std::vector<std::string>{"parked", "queued", "busy"});
    CHECK(busy_ec == asio::error::operation_aborted);
    CHECK(co_await p.async_submit(3, use_awaitable) == 4);
    CHECK(p.stats()[0].restarts == 1);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("cancellation from a coroutine: async_submit(use_awaitable) || a timer stops the busy worker") {
  using namespace coropipe::compat::awaitable_operators;
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1});
    auto first = co_await (p.async_submit(-100000, use_awaitable) || sleep_for(100ms));
    CHECK(first.index() == 1);
    CHECK(co_await p.async_submit(1, use_awaitable) == 2);
    CHECK(p.stats()[0].restarts == 1);
    auto second = co_await (p.async_submit(2, use_awaitable) || sleep_for(10s));
    REQUIRE(second.index() == 0);
    CHECK(std::get<0>(second) == 3);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("timeouts: one pool timer serves requests with different deadlines, queued or busy") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .window = 1});
    std::vector<int> order;
    int timed_out = 0;
    auto submit = [&](int x, std::chrono::milliseconds timeout, int tag) {
      p.async_submit(x, coropipe::submit_options{.timeout = timeout}, [&, tag](coropipe::error_code ec, int) {
        timed_out += ec == std::errc::timed_out;
        order.push_back(tag);
      });
    };
    submit(-100000, 300ms, 3);  // busy: its worker is stopped at its deadline
    submit(1000, 100ms, 1);     // queued behind it
    submit(1001, 200ms, 2);
    co_await wait_for([&] { return order.size() == 3; });
    CHECK(order == std::vector<int>{1, 2, 3});
    CHECK(timed_out == 3);
    // A request answered in time is not touched by its deadline.
    auto [ec, r] = co_await p.async_submit(7, coropipe::submit_options{.timeout = 5s}, as_tuple);
    CHECK(!ec);
    CHECK(r == 8);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("destroying a pool with operations outstanding completes each once with pool_closed") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int closed = 0, other = 0;
    allocation_counts counts;
    coropipe::error_code alloc_ec;
    int alloc_reply = 0;
    auto strand = asio::make_strand(io);
    coropipe::error_code awaited;
    bool awaited_done = false;
    asio::cancellation_signal cancel;  // outlives the operation
    {
      int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .window = 2, .queue_limit = 2});
      auto count = [&](coropipe::error_code ec, int) { (ec == coropipe::errc::pool_closed ? closed : other) += 1; };
      p.async_submit(-100000, count);                                                // in flight
      p.async_submit(-100000, coropipe::submit_options{.timeout = 10s}, count);      // in flight, timed
      p.async_submit(1, asio::bind_cancellation_slot(cancel.slot(), count));        // queued
      p.async_submit(2, asio::bind_executor(strand, count));                         // queued
      p.async_submit(3, count);                                                      // parked
      p.async_submit(4, allocating_handler{&counts, &alloc_ec, &alloc_reply});     // parked
      asio::co_spawn(io, [&]() -> awaitable<void> {
        auto [ec, r] = co_await p.async_submit(5, as_tuple);  // parked
        awaited = ec;
        awaited_done = true;
      }, asio::detached);
      co_await wait_for([&] { return p.in_flight() == 2; });  // the worker is up
      CHECK(p.in_flight() == 2);
      CHECK(p.queued() == 2);
    }
    CHECK(coropipe_test::has_children() == false);
    co_await wait_for([&] { return closed + other == 5 && awaited_done && counts.freed == 1; });
    CHECK(closed == 5);
    CHECK(other == 0);
    CHECK(alloc_ec == coropipe::errc::pool_closed);
    CHECK(counts.allocated == 1);
    CHECK(counts.freed == 1);
    CHECK(awaited_done);
    CHECK(awaited == coropipe::errc::pool_closed);
  }());
}

TEST_CASE("a pool and its io_context destroyed with completions still pending leak nothing") {
  int ran = 0;
  {
    asio::io_context io;
    {
      int_pool p(io.get_executor(), forked_inc(), {.workers = 1, .window = 1, .queue_limit = 1});
      for (int i = 0; i < 4; ++i) p.async_submit(-100000, [&](coropipe::error_code, int) { ++ran; });
      asio::co_spawn(io, [&]() -> awaitable<void> { (void)co_await p.async_submit(1, use_awaitable); ++ran; },
                     asio::detached);
      io.run_for(20ms);
    }
    // The io_context is destroyed without running the posted handlers: they
    // are destroyed, with the coroutine's frame.
  }
  CHECK(ran == 0);
  CHECK(coropipe_test::has_children() == false);
}
