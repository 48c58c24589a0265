// SPDX-License-Identifier: BSL-1.0
// Stress: worker pools under fire. Many requests while workers are killed at
// random (exactly-once accounting with retries; worker_died without), a
// crash loop that must end with the restart-budget error, thousands of
// in-flight requests cancelled, a pool of Python workers, and a pool in a
// process with threads. Each test case also fails if it leaves a child or a
// descriptor behind (tests/main.cpp).
#include <coropipe/pool.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include "stress.hpp"

#include <coropipe/error.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe_stress::size;
using int_pool = coropipe::pool<int, int>;
using int_workers = coropipe::pool_workers<int, int>;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

awaitable<void> sleep_for(std::chrono::steady_clock::duration d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(use_awaitable);
}

awaitable<int> inc(int x) {
  if (x < 0) co_await sleep_for(std::chrono::milliseconds(-x));
  co_return (x < 0 ? -x : x) + 1;
}

struct tally {
  std::vector<unsigned char> completions;  // per request
  std::size_t ok = 0, died = 0, aborted = 0, wrong = 0, other = 0, done = 0;
};

// Submits requests 0..n-1 (value: @p value_of(i)) with at most @p in_flight
// outstanding; kills a random worker every @p kill_every until all completed.
awaitable<void> hammer(int_pool& p, tally& t, int n, std::size_t in_flight, std::chrono::milliseconds kill_every,
                       std::size_t max_kills, std::size_t& kills) {
  auto ex = co_await asio::this_coro::executor;
  t.completions.assign(static_cast<std::size_t>(n), 0);
  asio::steady_timer wake(ex, std::chrono::steady_clock::time_point::max());
  std::mt19937 rng(12345);
  int next = 0;
  auto last_kill = std::chrono::steady_clock::now();
  while (t.done < static_cast<std::size_t>(n)) {
    while (next < n && static_cast<std::size_t>(next) - t.done < in_flight) {
      const int i = next++;
      p.async_submit(i, [&t, &wake, i](coropipe::error_code ec, int r) {
        ++t.completions[static_cast<std::size_t>(i)];
        if (!ec) {
          if (r == i + 1) ++t.ok;
          else ++t.wrong;
        } else if (ec == coropipe::errc::worker_died) {
          ++t.died;
        } else if (ec == asio::error::operation_aborted) {
          ++t.aborted;
        } else {
          ++t.other;
        }
        ++t.done;
        wake.cancel();
      });
    }
    if (kills < max_kills && std::chrono::steady_clock::now() - last_kill >= kill_every) {
      last_kill = std::chrono::steady_clock::now();
      auto stats = p.stats();
      const auto& s = stats[rng() % stats.size()];
      if (s.pid > 0 && ::kill(s.pid, SIGKILL) == 0) ++kills;
    }
    wake.expires_after(5ms);
    (void)co_await wake.async_wait(as_tuple);
  }
}

bool exactly_once(const tally& t) {
  for (unsigned char c : t.completions)
    if (c != 1) return false;
  return true;
}

} // namespace

TEST_CASE("requests while workers are killed at random: with retries every one is answered exactly once") {
  asio::io_context io;
  const int n = size(100'000, 1'000'000);
  tally t;
  std::size_t kills = 0;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), int_workers::forked(inc),
               {.workers = 2, .max_retries = 1000, .restart_budget = 100000, .restart_backoff = 0ms});
    co_await hammer(p, t, n, 256, 20ms, size<std::size_t>(40, 400), kills);
    co_await p.async_shutdown(use_awaitable);
  }(), 600s);
  MESSAGE(n << " requests, " << kills << " workers killed");
  CHECK(kills > 0);
  CHECK(exactly_once(t));
  CHECK(t.ok == static_cast<std::size_t>(n));
  CHECK(t.wrong == 0);
  CHECK(t.died == 0);
  CHECK(t.other == 0);
}

TEST_CASE("requests while workers are killed at random: without retries the failures are worker_died and add up") {
  asio::io_context io;
  const int n = size(100'000, 1'000'000);
  tally t;
  std::size_t kills = 0;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), int_workers::forked(inc),
               {.workers = 2, .restart_budget = 100000, .restart_backoff = 0ms});
    co_await hammer(p, t, n, 256, 20ms, size<std::size_t>(40, 400), kills);
    co_await p.async_shutdown(use_awaitable);
  }(), 600s);
  MESSAGE(n << " requests, " << kills << " workers killed, " << t.died << " requests failed");
  CHECK(exactly_once(t));
  CHECK(t.ok + t.died == static_cast<std::size_t>(n));
  CHECK(t.wrong == 0);
  CHECK(t.other == 0);
  CHECK(t.died > 0);
}

TEST_CASE("a crash loop ends with the restart-budget error, not a hang") {
  asio::io_context io;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    for (int round = 0; round < size(3, 30); ++round) {
      int_pool p(io.get_executor(),
                 int_workers::forked([](int) -> awaitable<int> {
                   std::_Exit(3);
                   co_return 0;
                 }),
                 {.workers = 2, .max_retries = 1000000, .restart_budget = 50, .restart_backoff = 0ms});
      std::vector<coropipe::error_code> errors(100);
      int done = 0;
      for (int i = 0; i < 100; ++i)
        p.async_submit(i, [&, i](coropipe::error_code ec, int) {
          errors[static_cast<std::size_t>(i)] = ec;
          ++done;
        });
      while (done < 100) co_await sleep_for(5ms);
      for (const auto& ec : errors) CHECK(ec == coropipe::errc::pool_restart_budget_exhausted);
      CHECK(p.broken());
      co_await p.async_shutdown(use_awaitable);
    }
  }(), 300s);
}

TEST_CASE("thousands of in-flight requests cancelled: each completes once, the pool serves on") {
  asio::io_context io;
  const int n = size(5'000, 50'000);
  coropipe_test::run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), int_workers::forked(inc), {.workers = 2, .window = 64});
    std::vector<asio::cancellation_signal> signals(static_cast<std::size_t>(n));
    std::vector<unsigned char> completions(static_cast<std::size_t>(n), 0);
    int ok = 0, aborted = 0, other = 0, done = 0;
    for (int i = 0; i < n; ++i) {
      p.async_submit(-1, asio::bind_cancellation_slot(signals[static_cast<std::size_t>(i)].slot(),
                                                      [&, i](coropipe::error_code ec, int r) {
                                                        ++completions[static_cast<std::size_t>(i)];
                                                        if (!ec && r == 2) ++ok;
                                                        else if (ec == asio::error::operation_aborted) ++aborted;
                                                        else ++other;
                                                        ++done;
                                                      }));
    }
    co_await sleep_for(50ms);
    for (auto& s : signals) s.emit(asio::cancellation_type::terminal);
    for (int i = 0; i < 60000 && done < n; ++i) co_await sleep_for(5ms);
    MESSAGE(ok << " answered, " << aborted << " cancelled");
    CHECK(done == n);
    CHECK(ok + aborted == n);
    CHECK(other == 0);
    CHECK(aborted > 0);
    bool once = true;
    for (unsigned char c : completions) once = once && c == 1;
    CHECK(once);
    CHECK(co_await p.async_submit(1, use_awaitable) == 2);
    CHECK(p.broken() == false);
    co_await p.async_shutdown(use_awaitable);
  }(), 300s);
}

TEST_CASE("a pool of Python workers, killed at random, with retries") {
#if defined(COROPIPE_PYTHON3)
  asio::io_context io;
  const int n = size(20'000, 200'000);
  int ok = 0, wrong = 0, failed = 0;
  std::size_t kills = 0;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), int_workers::spawned({COROPIPE_PYTHON3, COROPIPE_POOL_PYTHON_WORKER}),
               {.workers = 2, .max_retries = 1000, .restart_budget = 100000, .restart_backoff = 0ms});
    std::mt19937 rng(7);
    int done = 0, next = 0;
    while (done < n) {
      while (next < n && next - done < 256) {
        const int i = next++;
        p.async_submit(i, [&, i](coropipe::error_code ec, int r) {
          if (ec) ++failed;
          else if (r == 2 * i) ++ok;
          else ++wrong;
          ++done;
        });
      }
      co_await sleep_for(20ms);
      if (kills < 10 && rng() % 4 == 0) {
        auto stats = p.stats();
        const auto& s = stats[rng() % stats.size()];
        if (s.pid > 0 && ::kill(s.pid, SIGKILL) == 0) ++kills;
      }
    }
    co_await p.async_shutdown(use_awaitable);
  }(), 600s);
  MESSAGE(n << " requests through Python workers, " << kills << " killed");
  CHECK(ok == n);
  CHECK(wrong == 0);
  CHECK(failed == 0);
#else
  MESSAGE("SKIPPED: python3 not found at configure time");
#endif
}

TEST_CASE("a pool in a process with threads: forked workers are refused, spawned ones serve") {
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    while (!stop) std::this_thread::sleep_for(1ms);
  });
  asio::io_context io;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    {
      int_pool p(io.get_executor(), int_workers::forked(inc),
                 {.workers = 1, .restart_budget = 2, .restart_backoff = 1ms});
      auto [ec, r] = co_await p.async_submit(1, as_tuple);
      CHECK(ec == coropipe::errc::pool_restart_budget_exhausted);
      CHECK(p.last_start_error() == coropipe::errc::fork_in_threaded_process);
      co_await p.async_shutdown(use_awaitable);
    }
    int_pool p(io.get_executor(), int_workers::spawned({COROPIPE_POOL_WORKER, "inc"}), {.workers = 2});
    std::vector<int> in(size<std::size_t>(20'000, 200'000));
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>(i);
    auto out = co_await coropipe::async_map(p, in, use_awaitable);
    bool right = out.size() == in.size();
    for (std::size_t i = 0; right && i < in.size(); ++i) right = out[i] == in[i] + 1;
    CHECK(right);
    co_await p.async_shutdown(use_awaitable);
  }(), 600s);
  stop = true;
  busy.join();
}
