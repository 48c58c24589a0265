// SPDX-License-Identifier: BSL-1.0
// Case 8: worker pools. coropipe::pool<int, int> with 2 forked workers
// against Python's ProcessPoolExecutor and multiprocessing.Pool, which the
// bench runs itself (python3, measured inside the script after a warm-up, so
// the interpreter's start-up is not counted), and the pool's round trip
// against case 3's raw ping-pong. The workers and the Python processes may
// use every CPU (the bench pins itself to one).
#include "run.hpp"
#include "pool_cases.hpp"
#include "cases.hpp"

#include "ssh_fixture.hpp"  // tests/: the private sshd

#include <coropipe/batch.hpp>
#include <coropipe/launcher.hpp>
#include <coropipe/pool.hpp>

#include <coropipe/asio.hpp>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {
std::uint64_t allocation_count() noexcept;  // alloc_counter.cpp
void count_allocations(bool on) noexcept;
} // namespace bench

namespace bench {

namespace {

using asio::awaitable;
using asio::use_awaitable;
using int_pool = coropipe::pool<int, int>;

// Lets this thread, and what it starts from now on, run on every CPU.
void allow_every_cpu() noexcept {
  cpu_set_t all;
  CPU_ZERO(&all);
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) CPU_SET(i, &all);
  ::sched_setaffinity(0, sizeof all, &all);
}

// Every CPU for this process's future children (the bench pins itself).
awaitable<void> unpin() {
  allow_every_cpu();
  co_return;
}

awaitable<int> inc(int x) { co_return x + 1; }

int_pool make_pool(asio::io_context& io) {
  return int_pool(io.get_executor(), coropipe::pool_workers<int, int>::forked(inc, unpin), {.workers = 2, .window = 64});
}

// n requests, at most `outstanding` in flight; returns requests/s.
awaitable<double> submit_rate(int_pool& p, int n, int outstanding) {
  auto ex = co_await asio::this_coro::executor;
  for (int i = 0; i < 1000; ++i) (void)co_await p.async_submit(i, use_awaitable);  // warm
  asio::steady_timer wake(ex, clock::time_point::max());
  int next = 0, done = 0, wrong = 0;
  const auto t0 = clock::now();
  while (done < n) {
    while (next < n && next - done < outstanding) {
      const int i = next++;
      p.async_submit(i, [&, i](coropipe::error_code ec, int r) {
        if (ec || r != i + 1) ++wrong;
        ++done;
        if (done == n || next - done < outstanding / 2) wake.cancel();
      });
    }
    (void)co_await wake.async_wait(coropipe::compat::as_tuple(use_awaitable));
  }
  const double secs = seconds_since(t0);
  if (wrong != 0) throw std::runtime_error("wrong replies");
  co_await p.async_shutdown(use_awaitable);
  co_return n / secs;
}

const char* python_script = R"PY(
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
def inc(x):
    return x + 1
if __name__ == "__main__":
    os.sched_setaffinity(0, range(os.cpu_count()))
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "submit":
        with ProcessPoolExecutor(2) as ex:
            list(ex.map(inc, range(200)))
            t = time.perf_counter()
            fs = [ex.submit(inc, i) for i in range(n)]
            for f in fs:
                f.result()
            print(n / (time.perf_counter() - t))
    else:
        sizes = [int(s) for s in sys.argv[3].split(",")]
        best = 0.0
        with mp.Pool(2) as p:
            list(p.imap_unordered(inc, range(200)))
            for cs in sizes:
                t = time.perf_counter()
                for _ in p.imap_unordered(inc, range(n), chunksize=cs):
                    pass
                best = max(best, n / (time.perf_counter() - t))
        print(best)
)PY";

std::string python() {
  for (const char* p : {"/usr/bin/python3", "/usr/local/bin/python3"})
    if (::access(p, X_OK) == 0) return p;
  return "python3";
}

double run_python(const std::string& args) {
  const std::string cmd = python() + " -c '" + python_script + "' " + args;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) throw std::runtime_error("popen python3");
  std::array<char, 256> buf{};
  std::string out;
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), f)) out += buf.data();
  const int rc = ::pclose(f);
  if (rc != 0 || out.empty()) throw std::runtime_error("the Python baseline failed: " + cmd.substr(0, 40));
  return std::stod(out);
}

} // namespace

double pool_submit_rate(int n) {
  asio::io_context io(1);
  auto p = make_pool(io);
  return run_to_completion(io, submit_rate(p, n, 1024));
}

double python_executor_submit_rate(int n) { return run_python("submit " + std::to_string(n)); }

double python_imap_rate(int n, const std::string& chunksizes) {
  return run_python("imap " + std::to_string(n) + " " + chunksizes);
}

double pool_map_rate(int n) {
  asio::io_context io(1);
  auto p = make_pool(io);
  return run_to_completion(io, [&]() -> awaitable<double> {
    std::vector<int> in(static_cast<std::size_t>(n));
    std::iota(in.begin(), in.end(), 0);
    (void)co_await p.async_submit(0, use_awaitable);  // the workers are up
    const auto t0 = clock::now();
    auto out = co_await coropipe::async_map(p, in, use_awaitable);
    const double secs = seconds_since(t0);
    if (out.size() != in.size() || out.back() != n) throw std::runtime_error("wrong replies");
    co_await p.async_shutdown(use_awaitable);
    co_return n / secs;
  }());
}

double pool_batch_map_rate(int n) {
  using batches = coropipe::batch_pool<int, int>;
  asio::io_context io(1);
  batches p(io.get_executor(), batches::workers_type::forked(coropipe::batched(inc), unpin), {.workers = 2});
  return run_to_completion(io, [&]() -> awaitable<double> {
    std::vector<int> in(static_cast<std::size_t>(n));
    std::iota(in.begin(), in.end(), 0);
    const std::vector<int> warm(in.begin(), in.begin() + std::min<std::ptrdiff_t>(n, 10000));
    (void)co_await coropipe::async_batch_map(p, warm, {}, use_awaitable);  // the workers are up
    const auto t0 = clock::now();
    auto out = co_await coropipe::async_batch_map(p, in, {}, use_awaitable);  // chunk size: the default
    const double secs = seconds_since(t0);
    if (out.size() != in.size() || out.back() != n) throw std::runtime_error("wrong replies");
    co_await p.async_shutdown(use_awaitable);
    co_return n / secs;
  }());
}

namespace {

// One request at a time: @p warmup untimed, then the mean round trip of
// @p rounds, in microseconds; shuts @p p down.
awaitable<double> timed_round_trips(int_pool& p, int warmup, int rounds) {
  for (int i = 0; i < warmup; ++i) (void)co_await p.async_submit(i, use_awaitable);
  const auto t0 = clock::now();
  for (int i = 0; i < rounds; ++i)
    if (co_await p.async_submit(i, use_awaitable) != i + 1) throw std::runtime_error("wrong reply");
  const double secs = seconds_since(t0);
  co_await p.async_shutdown(use_awaitable);
  co_return secs / rounds * 1e6;
}

// The raw ping-pong's child runs on the second CPU (pin_child()): so do
// these workers, or the scheduler's placement (same CPU as the bench or not)
// would decide the ratio.
awaitable<void> pin_worker() {
  pin_child();
  co_return;
}

} // namespace

double pool_round_trip(int rounds) {
  asio::io_context io(1);
  int_pool p(io.get_executor(), coropipe::pool_workers<int, int>::forked(inc, pin_worker), {.workers = 2, .window = 64});
  return run_to_completion(io, timed_round_trips(p, 1000, rounds));
}

double pool_allocations_per_request(int n) {
  asio::io_context io(1);
  auto p = make_pool(io);
  return run_to_completion(io, [&]() -> awaitable<double> {
    for (int i = 0; i < 20000; ++i) (void)co_await p.async_submit(i, use_awaitable);
    count_allocations(true);
    const std::uint64_t before = allocation_count();
    for (int i = 0; i < n; ++i) (void)co_await p.async_submit(i, use_awaitable);
    const std::uint64_t after = allocation_count();
    count_allocations(false);
    co_await p.async_shutdown(use_awaitable);
    co_return static_cast<double>(after - before) / n;
  }());
}

// Pools over ssh against the same pools of local spawned workers.
namespace {

// Every CPU for this thread and what it starts in this scope (the bench pins
// itself to one): sshd, the ssh clients and the workers, local and remote alike.
class unpinned {
public:
  unpinned() {
    ::sched_getaffinity(0, sizeof old_, &old_);
    allow_every_cpu();
  }
  ~unpinned() { ::sched_setaffinity(0, sizeof old_, &old_); }
  unpinned(const unpinned&) = delete;
  unpinned& operator=(const unpinned&) = delete;

private:
  cpu_set_t old_{};
};

coropipe_test::ssh_server& private_sshd() {
  static std::unique_ptr<coropipe_test::ssh_server> server = [] {
    unpinned u;
    return std::make_unique<coropipe_test::ssh_server>();
  }();
  return *server;
}

std::string self_exe() {
  std::array<char, 4096> buf{};
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) throw std::runtime_error("readlink /proc/self/exe");
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

// A window of 1024 requests per worker, 4096 in flight, on both sides: over
// ssh, many requests then share each write, packet and wake-up of the two ssh
// processes per worker. Once the pool's reply path lost its coroutine frames
// (local side 4e6 requests/s), 256 and 1024 gave 0.38x to 0.48x on a quiet
// 2-core machine; 1024 and 4096 gave 0.56x to 0.73x in five runs.
constexpr std::size_t ssh_window = 1024;
constexpr int ssh_in_flight = 4096;

// 2 workers, each `<this program> --pool-worker`: spawned here, or launched
// through `ssh -F <the server's config> coropipe-test` (a worker group).
int_pool make_spawned_pool(asio::io_context& io, bool over_ssh) {
  const std::vector<std::string> argv{self_exe(), "--pool-worker"};
  const coropipe::pool_options opts{.workers = 2, .window = ssh_window};
  if (!over_ssh) return int_pool(io.get_executor(), coropipe::pool_workers<int, int>::spawned(argv), opts);
  coropipe::ssh_options o;
  o.program = "/usr/bin/ssh";
  o.config_file = private_sshd().config_file();
  std::vector<coropipe::worker_group<int, int>> groups;
  groups.push_back(
      {.workers = coropipe::pool_workers<int, int>::launched(coropipe::ssh_launcher(coropipe_test::ssh_server::host, o), argv),
       .count = 2});
  return int_pool(io.get_executor(), std::move(groups), opts);
}

// Until every worker has answered (a launched group starts its second
// worker once the first has answered, and an ssh login takes a while).
awaitable<void> all_workers_up(int_pool& p) {
  const auto deadline = clock::now() + std::chrono::seconds(30);
  for (;;) {
    const auto stats = p.stats();
    if (std::all_of(stats.begin(), stats.end(), [](const coropipe::worker_stats& w) { return w.served > 0; })) co_return;
    if (clock::now() > deadline) throw std::runtime_error("the pool's workers did not all start within 30 s");
    std::vector<int> some(64, 1);
    (void)co_await coropipe::async_map(p, some, use_awaitable);
  }
}

} // namespace

std::string ssh_unavailable() {
  const auto& server = private_sshd();
  return server.available() ? std::string() : "ssh: " + server.reason();
}

// Both sides run unpinned, the bench included: a launched group starts its
// second ssh client later, from the pool's thread.
double ssh_pool_submit_rate(int n, bool over_ssh) {
  unpinned u;
  asio::io_context io(1);
  auto p = make_spawned_pool(io, over_ssh);
  return run_to_completion(io, [&]() -> awaitable<double> {
    co_await all_workers_up(p);
    co_return co_await submit_rate(p, n, ssh_in_flight);
  }());
}

double ssh_pool_round_trip(int rounds, bool over_ssh) {
  unpinned u;
  asio::io_context io(1);
  auto p = make_spawned_pool(io, over_ssh);
  return run_to_completion(io, [&]() -> awaitable<double> {
    co_await all_workers_up(p);
    co_return co_await timed_round_trips(p, 200, rounds);
  }());
}

int serve_pool_worker() {
  allow_every_cpu();  // a remote worker is started by sshd: every CPU, like a local one
  return coropipe::serve_stdio<int, int>(inc);
}

} // namespace bench
