// SPDX-License-Identifier: BSL-1.0
// pool_worker: a spawned pool worker for the tests, built on serve_stdio().
// Requests and replies are ints. Modes (argv[1]):
//   inc          reply x + 1; x < 0 sleeps -x ms first; x == 1000000 aborts
//   print        as inc, but printf()s to stdout first (must not corrupt frames)
//   garbage      writes a banner (no frame) to the real stdout, then serves
//   init-fail    the initializer throws
//   batch-inc    as inc, on batch<int> requests (batched())
#include <coropipe/pool.hpp>

#include <coropipe/batch.hpp>

#include <coropipe/asio.hpp>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <unistd.h>

namespace {

asio::awaitable<int> inc(int x) {
  if (x == 1000000) std::abort();
  if (x < 0) {
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(-x));
    co_await t.async_wait(asio::use_awaitable);
  }
  co_return x + 1;
}

} // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "inc";
  if (mode == "garbage") {
    (void)!::write(1, "Welcome to the worker!\n", 23);  // a banner: no frame
    return coropipe::serve_stdio<int, int>(inc);
  }
  if (mode == "print") {
    return coropipe::serve_stdio<int, int>([](int x) -> asio::awaitable<int> {
      if (x < 3) std::printf("stray output %d\n", x);
      std::fflush(stdout);
      co_return x + 1;
    });
  }
  if (mode == "batch-inc") {
    return coropipe::serve_stdio<coropipe::batch<int>, coropipe::batch<int>>(coropipe::batched(inc));
  }
  if (mode == "init-fail") {
    return coropipe::serve_stdio<int, int>(inc, [] { throw std::runtime_error("no database"); });
  }
  return coropipe::serve_stdio<int, int>(inc);
}
