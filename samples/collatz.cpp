// SPDX-License-Identifier: BSL-1.0
// collatz: the Collatz chain of every number below N, computed by a pool of
// worker processes in batches (coropipe/batch.hpp).
//
//   collatz [--limit N] [--workers W] [--chunk C] [--unbatched]
//
// Each number n in [1, N) is one item: its number of Collatz steps (n -> n/2
// when even, 3n + 1 when odd, until 1). The items travel in batches of C
// (default: chosen by async_batch_map()), one message per batch, to W forked
// workers (default 2). Prints the number below N with the longest chain, its
// steps, the total of all steps and the items per second. --unbatched sends
// one message per item instead (coropipe::async_map on a pool<int64, int>),
// to show what batching saves; the results are the same.
// See docs/tutorial/04-many-workers.md.
#include <coropipe/batch.hpp>
#include <coropipe/pool.hpp>

#include "spam_cli.hpp"

#include <coropipe/asio.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

// [docs:collatz-item]
// The work for one item: a plain function, cheap next to a message.
int collatz_steps(std::int64_t n) {
  int steps = 0;
  for (; n > 1; ++steps) n = n % 2 == 0 ? n / 2 : 3 * n + 1;
  return steps;
}
// [docs:end]

asio::awaitable<int> collatz_steps_async(std::int64_t n) { co_return collatz_steps(n); }

struct options {
  std::int64_t limit = 1'000'000;
  std::size_t workers = 2;
  std::size_t chunk = 0;
  bool unbatched = false;
};

const char* usage =
    "usage: collatz [--limit N] [--workers W] [--chunk C] [--unbatched]\n"
    "  --limit N     the numbers 1 .. N-1 (default 1000000)\n"
    "  --workers W   worker processes (default 2)\n"
    "  --chunk C     items per batch (default: async_batch_map chooses)\n"
    "  --unbatched   one message per item (pool<int64, int> and async_map)\n";

// [docs:collatz-map]
asio::awaitable<std::vector<int>> steps_batched(const std::vector<std::int64_t>& numbers, const options& opts) {
  using collatz_pool = coropipe::batch_pool<std::int64_t, int>;  // pool<batch<int64_t>, batch<int>>
  collatz_pool pool(co_await asio::this_coro::executor,
                    collatz_pool::workers_type::forked(coropipe::batched(collatz_steps)),
                    {.workers = opts.workers});
  auto steps = co_await coropipe::async_batch_map(pool, numbers, {.chunk_size = opts.chunk}, asio::use_awaitable);
  co_await pool.async_shutdown(asio::use_awaitable);
  co_return steps;
}
// [docs:end]

asio::awaitable<std::vector<int>> steps_unbatched(const std::vector<std::int64_t>& numbers, const options& opts) {
  using item_pool = coropipe::pool<std::int64_t, int>;
  item_pool pool(co_await asio::this_coro::executor, item_pool::workers_type::forked(collatz_steps_async),
                 {.workers = opts.workers});
  auto steps = co_await coropipe::async_map(pool, numbers, asio::use_awaitable);
  co_await pool.async_shutdown(asio::use_awaitable);
  co_return steps;
}

asio::awaitable<void> run(const options& opts) {
  std::vector<std::int64_t> numbers(static_cast<std::size_t>(opts.limit > 1 ? opts.limit - 1 : 0));
  std::iota(numbers.begin(), numbers.end(), std::int64_t{1});
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int> steps;
  if (opts.unbatched) steps = co_await steps_unbatched(numbers, opts);
  else steps = co_await steps_batched(numbers, opts);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
  std::size_t best = 0;
  long long total = 0;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    total += steps[i];
    if (steps[i] > steps[best]) best = i;
  }
  if (!steps.empty())
    std::printf("longest below %lld: %lld (%d steps)\n", static_cast<long long>(opts.limit),
                static_cast<long long>(numbers[best]), steps[best]);
  std::printf("total steps: %lld\n", total);
  std::fprintf(stderr, "collatz: %zu items in %.3f s (%.0f items/s, %s)\n", steps.size(), took.count(),
               static_cast<double>(steps.size()) / took.count(), opts.unbatched ? "one message per item" : "batched");
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view arg = argv[i];
      auto value = [&]() -> std::string_view {
        if (i + 1 >= argc) throw std::invalid_argument(std::string(arg) + " needs a value");
        return argv[++i];
      };
      if (arg == "--limit") opts.limit = samples::parse_number(arg, value(), 1, 100'000'000);
      else if (arg == "--workers") opts.workers = static_cast<std::size_t>(samples::parse_number(arg, value(), 1, 256));
      else if (arg == "--chunk") opts.chunk = static_cast<std::size_t>(samples::parse_number(arg, value(), 1, 10'000'000));
      else if (arg == "--unbatched") opts.unbatched = true;
      else throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "collatz: %s\n%s", e.what(), usage);
    return 2;
  }
  try {
    asio::io_context io;
    asio::co_spawn(io, run(opts), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io.run();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collatz: %s\n", e.what());
    return 1;
  }
}
