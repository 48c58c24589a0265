// SPDX-License-Identifier: BSL-1.0
// What the pool tests share (tests/pool_test.cpp, tests/ssh_test.cpp).
#pragma once

#include <coropipe/asio.hpp>
#include <coropipe/pool.hpp>

#include <doctest/doctest.h>

#include <chrono>

namespace coropipe_test {

/// Submits @p n requests (0 to n - 1) at once; each must be answered x + 1.
inline asio::awaitable<void> submit_many(coropipe::pool<int, int>& p, int n) {
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
  while (done < n) (void)co_await all.async_wait(coropipe::compat::as_tuple(asio::use_awaitable));
  CHECK(wrong == 0);
}

} // namespace coropipe_test
