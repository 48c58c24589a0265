// SPDX-License-Identifier: BSL-1.0
// prime_pool: counts the primes below N with a pool of worker processes.
//
//   prime_pool [--limit N] [--chunk N] [--workers W] [--spawn]
//              [--host HOST[/N]]... [--ssh-config FILE]
//   prime_pool --serve
//
// The range [0, N) is cut into chunks of --chunk numbers; each chunk is one
// request to a pool of W forked workers (default: one per CPU), which sieve
// it and reply with its count of primes. The total is printed as
// "primes below N: COUNT". A worker that dies (kill -9 it while this runs)
// is reported on stderr, replaced, and its chunk sent again: the count does
// not change. With --spawn the workers are this program re-executed with
// --serve, serving requests on stdin and replies on stdout. Ctrl-C (or
// SIGTERM) stops the workers and the program at once (exit status 130).
// With --host HOST/N, N workers run on HOST through ssh: this same binary,
// at the same path there (a shared filesystem, or a copy), with --serve;
// local workers join them only when --workers is given too. A host that
// keeps failing is reported and dropped; the count does not change.
// See docs/tutorial/04-many-workers.md.
#include <coropipe/coropipe.hpp>
#include <coropipe/pool.hpp>

#include "spam_cli.hpp"

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(signal_set.hpp)

#include <signal.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace {

// [docs:prime-types]
// A request: the numbers [lo, hi). A reply: how many of them are prime.
// Both trivially copyable, so coropipe sends their bytes as they are.
struct chunk {
  std::int64_t lo;
  std::int64_t hi;
};
using prime_pool = coropipe::pool<chunk, std::int64_t>;
// [docs:end]

// A segmented sieve of [lo, hi).
std::int64_t count_primes(std::int64_t lo, std::int64_t hi) {
  if (lo < 2) lo = 2;
  if (hi <= lo) return 0;
  const auto root = static_cast<std::int64_t>(std::sqrt(static_cast<double>(hi))) + 1;
  std::vector<bool> small(static_cast<std::size_t>(root + 1), true);
  std::vector<bool> seg(static_cast<std::size_t>(hi - lo), true);
  for (std::int64_t p = 2; p <= root; ++p) {
    if (!small[static_cast<std::size_t>(p)]) continue;
    for (std::int64_t m = p * p; m <= root; m += p) small[static_cast<std::size_t>(m)] = false;
    for (std::int64_t m = std::max(p * p, (lo + p - 1) / p * p); m < hi; m += p)
      seg[static_cast<std::size_t>(m - lo)] = false;
  }
  std::int64_t n = 0;
  for (bool b : seg) n += b ? 1 : 0;
  return n;
}

// [docs:prime-worker]
// What a worker runs for each request, forked or re-executed alike.
asio::awaitable<std::int64_t> count_chunk(chunk c) { co_return count_primes(c.lo, c.hi); }
// [docs:end]

struct options {
  std::int64_t limit = 10'000'000;
  std::int64_t chunk = 100'000;
  std::size_t workers = 0;  // 0: one per CPU (none with --host)
  bool spawn = false;
  bool serve = false;
  std::vector<coropipe::host_spec> hosts;  // --host
  std::string ssh_config;                  // --ssh-config
};

const char* usage =
    "usage: prime_pool [--limit N] [--chunk N] [--workers W] [--spawn]\n"
    "                  [--host HOST[/N]]... [--ssh-config FILE]\n"
    "       prime_pool --serve\n"
    "  --limit N    count the primes below N (default 10000000)\n"
    "  --chunk N    numbers per request (default 100000)\n"
    "  --workers W  worker processes (default: the number of CPUs)\n"
    "  --spawn      workers are this program re-executed with --serve\n"
    "  --host HOST[/N]  N workers (default 1) on HOST through ssh, running this\n"
    "               binary at the same path there with --serve (repeatable;\n"
    "               local workers too only with --workers)\n"
    "  --ssh-config FILE  the ssh client's config file (ssh -F)\n"
    "  --serve      be a worker: requests on stdin, replies on stdout\n";

// [docs:prime-hosts]
// Workers on other machines: this binary, at the same path there, run with
// --serve through ssh; local workers join them when --workers is given.
std::vector<coropipe::worker_group<chunk, std::int64_t>> worker_groups(const options& opts,
                                                                      prime_pool::workers_type local) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<coropipe::worker_group<chunk, std::int64_t>> groups;
  for (const auto& h : opts.hosts) {
    const auto ssh = coropipe::ssh_launcher(h.host, {.config_file = opts.ssh_config});
    groups.push_back({.workers = prime_pool::workers_type::launched(ssh, {self, "--serve"}), .count = h.workers});
  }
  if (opts.workers != 0) groups.push_back({.workers = std::move(local), .count = opts.workers});
  return groups;
}
// [docs:end]

// [docs:prime-main]
asio::awaitable<int> count(const options& opts) {
  auto ex = co_await asio::this_coro::executor;
  auto workers = opts.spawn ? prime_pool::workers_type::self({"--serve"})  // /proc/self/exe --serve
                            : prime_pool::workers_type::forked(count_chunk);
  const coropipe::pool_options po{
      .workers = opts.workers,
      .max_retries = 3,  // chunks are idempotent: a dead worker's chunk is sent again
      .on_worker_exit =
          [](const coropipe::worker_exit& w) {
            if (!w.expected)
              std::fprintf(stderr, "prime_pool: worker %d %s; replaced\n", static_cast<int>(w.pid),
                           w.status.to_string().c_str());
          },
      .on_group_removed = [](const std::string&, coropipe::error_code,
                             const std::string& message) { std::fprintf(stderr, "prime_pool: %s\n", message.c_str()); }};
  prime_pool pool = opts.hosts.empty() ? prime_pool(ex, std::move(workers), po)
                                       : prime_pool(ex, worker_groups(opts, std::move(workers)), po);
  // Ctrl-C or SIGTERM: stop the workers now (the pool's destructor kills
  // and reaps them when this coroutine ends).
  asio::signal_set stop(ex, SIGINT, SIGTERM);
  bool interrupted = false;
  stop.async_wait([&](coropipe::error_code ec, int) {
    if (ec) return;
    interrupted = true;
    pool.async_shutdown(coropipe::shutdown_mode::immediate, asio::detached);
  });
  std::vector<chunk> chunks;
  for (std::int64_t lo = 0; lo < opts.limit; lo += opts.chunk) chunks.push_back({lo, std::min(lo + opts.chunk, opts.limit)});
  std::int64_t total = 0;
  auto [ec, replies] = co_await coropipe::async_for_each_reply(
      pool, chunks, [&](std::size_t, std::int64_t n) { total += n; }, coropipe::compat::as_tuple(asio::use_awaitable));
  stop.cancel();
  if (interrupted) co_return 130;
  if (ec) {
    std::fprintf(stderr, "prime_pool: %s\n", ec.message().c_str());
    co_return 1;
  }
  co_await pool.async_shutdown(asio::use_awaitable);  // finish, close the workers' input, reap
  std::printf("primes below %lld: %lld\n", static_cast<long long>(opts.limit), static_cast<long long>(total));
  co_return 0;
}
// [docs:end]

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
      if (arg == "--limit") opts.limit = samples::parse_number(arg, value(), 0, 4'000'000'000'000LL);
      else if (arg == "--chunk") opts.chunk = samples::parse_number(arg, value(), 1, 100'000'000);
      else if (arg == "--workers") opts.workers = static_cast<std::size_t>(samples::parse_number(arg, value(), 1, 1024));
      else if (arg == "--spawn") opts.spawn = true;
      else if (arg == "--serve") opts.serve = true;
      else if (arg == "--host") opts.hosts.push_back(coropipe::parse_host_spec(value()));
      else if (arg == "--ssh-config") opts.ssh_config = value();
      else throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "prime_pool: %s\n%s", e.what(), usage);
    return 2;
  }
  // [docs:prime-serve]
  if (opts.serve) return coropipe::serve_stdio<chunk, std::int64_t>(count_chunk);
  // [docs:end]
  try {
    asio::io_context io;
    int code = 1;
    asio::co_spawn(io, count(opts), [&code](std::exception_ptr e, int c) {
      if (e) std::rethrow_exception(e);
      code = c;
    });
    io.run();
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prime_pool: %s\n", e.what());
    return 1;
  }
}
