// SPDX-License-Identifier: BSL-1.0
// Stress: parent death. A middle process forks children with fork_child()
// (parent-death signal SIGKILL by default) and spawns `sleep 1000` with
// spawn_options::parent_death_signal, partly while its children are streaming
// to it; it reports their pids, and the test SIGKILLs it. Every one of them
// must be gone within 1 s. The test process is a subreaper, so the orphans
// become its children: it reaps them and checks they died of SIGKILL.
#include <coropipe/attach.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/io.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/spawn.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include "stress.hpp"
#include "stress_streams.hpp"

#include <coropipe/asio.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::unique_fd;
using coropipe_stress::size;

namespace {

constexpr std::size_t stream_chunk = 16 << 10;

// Reads @p in forever (until the middle process dies).
awaitable<void> drain_forever(asio::posix::stream_descriptor& in) {
  std::vector<unsigned char> buf(stream_chunk);
  for (;;) co_await coropipe::async_read_some(in, asio::buffer(buf), use_awaitable);
}

// The middle process: forks @p forks streaming children and spawns @p spawns
// sleeps (half of them once every child's stream is flowing), writes all
// their pids on one line to @p report, and runs until it is killed.
int middle(unique_fd report, std::size_t forks, std::size_t spawns) {
  asio::io_context io;
  std::vector<coropipe::child> kids;
  std::vector<asio::posix::stream_descriptor> ins;
  std::vector<coropipe::process> sleeps;
  for (std::size_t i = 0; i < forks; ++i) {
    auto [r, w] = coropipe::pipe();
    kids.push_back(coropipe::fork_child(
        io,
        [](child_context& ctx, unique_fd out) -> awaitable<int> {
          auto s = ctx.attach(std::move(out));
          std::vector<unsigned char> buf(stream_chunk, 0x5a);
          for (;;) {
            auto [ec, n] = co_await coropipe::async_write(s, asio::buffer(buf), coropipe_stress::as_tuple);
            if (ec) break;
          }
          // The middle process's descriptors are closed before its children
          // get their parent-death signal: stay until the signal comes, so
          // that it alone ends this child.
          asio::steady_timer t(ctx.get_executor(), std::chrono::hours(1));
          co_await t.async_wait(use_awaitable);
          co_return 2;
        },
        std::move(w)));
    ins.push_back(coropipe::attach(io, std::move(r)));
  }
  auto spawn_sleep = [&] {
    sleeps.push_back(coropipe::spawn(io, {.argv = {"sleep", "1000"}, .parent_death_signal = SIGKILL}));
  };
  for (std::size_t i = 0; i < spawns / 2; ++i) spawn_sleep();
  bool failed = false;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        // Mid-stream: every child has delivered a chunk and keeps writing.
        std::vector<unsigned char> buf(stream_chunk);
        for (auto& in : ins) {
          std::size_t got = 0;
          while (got < stream_chunk) got += co_await coropipe::async_read_some(in, asio::buffer(buf), use_awaitable);
        }
        for (std::size_t i = spawns / 2; i < spawns; ++i) spawn_sleep();
        for (auto& in : ins) asio::co_spawn(io, drain_forever(in), asio::detached);
        std::string line;
        for (const auto& k : kids) line += std::to_string(k.pid()) + " ";
        for (const auto& s : sleeps) line += std::to_string(s.pid()) + " ";
        line += "\n";
        if (::write(report.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) failed = true;
      },
      [&](std::exception_ptr e) {
        if (e) failed = true;
      });
  while (!failed) {  // until killed
    if (io.run_one() == 0) return 4;
  }
  return 3;
}

} // namespace

TEST_CASE("SIGKILL to a middle process: its forked children and spawned programs are gone within 1 s") {
  const int rounds = size(5, 20);
  const std::size_t forks = size<std::size_t>(8, 50);
  const std::size_t spawns = size<std::size_t>(8, 50);
  const auto fds_before = coropipe_test::open_fds();
  std::chrono::steady_clock::duration worst{};
  std::size_t total_gone = 0;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    coropipe::pipe_ends report = coropipe::pipe();
    unique_fd& r = report.read_end;
    const pid_t mid = coropipe_test::fork_raw([&] {
      report.read_end.reset();
      return middle(std::move(report.write_end), forks, spawns);
    });
    report.write_end.reset();
    std::vector<pid_t> pids;
    std::map<pid_t, int> statuses;  // of the reaped ones
    // Whatever happens, nothing is left running.
    struct cleanup {
      pid_t mid;
      const std::vector<pid_t>& pids;
      const std::map<pid_t, int>& reaped;
      ~cleanup() {
        if (::kill(mid, SIGKILL) == 0) ::waitpid(mid, nullptr, 0);
        for (pid_t p : pids) {
          if (reaped.count(p) == 0 && ::kill(p, SIGKILL) == 0) ::waitpid(p, nullptr, 0);
        }
      }
    } guard{mid, pids, statuses};

    std::istringstream line(coropipe_test::read_line(r.get(), 30s));
    for (pid_t p; line >> p;) pids.push_back(p);
    REQUIRE(pids.size() == forks + spawns);
    for (pid_t p : pids) {
      CAPTURE(p);
      CHECK(::getpgid(p) >= 0);  // running
    }

    REQUIRE(::kill(mid, SIGKILL) == 0);
    const auto mid_status = coropipe_test::wait_for_pid(mid, 10s);
    REQUIRE(mid_status.has_value());
    CHECK(WIFSIGNALED(*mid_status));
    CHECK(WTERMSIG(*mid_status) == SIGKILL);

    // The middle's children are this subreaper's now: reap them as they die.
    const auto t0 = std::chrono::steady_clock::now();
    std::set<pid_t> left(pids.begin(), pids.end());
    std::vector<std::string> not_ours;
    while (!left.empty() && std::chrono::steady_clock::now() - t0 < 1s) {
      for (auto it = left.begin(); it != left.end();) {
        int st = 0;
        const pid_t got = ::waitpid(*it, &st, WNOHANG);
        if (got == *it) {
          statuses[*it] = st;
          worst = std::max(worst, std::chrono::steady_clock::now() - t0);
          it = left.erase(it);
        } else if (got < 0 && errno != EINTR) {
          not_ours.push_back(std::to_string(*it) + ": " + std::strerror(errno));
          it = left.erase(it);
        } else {
          ++it;
        }
      }
      if (!left.empty()) ::usleep(1000);
    }
    std::string still;
    for (pid_t p : left) still += std::to_string(p) + " (state " + std::string(1, coropipe_test::process_state(p)) + ") ";
    CHECK_MESSAGE(left.empty(), "still there 1 s after the middle process died: " << still);
    for (const auto& n : not_ours) CHECK_MESSAGE(false, "not re-parented to the test: " << n);
    for (const auto& entry : statuses) {
      const pid_t pid = entry.first;
      const int st = entry.second;
      CAPTURE(pid);
      CAPTURE(coropipe::exit_status::from_wait_status(st).to_string());
      CHECK(WIFSIGNALED(st));
      CHECK(WTERMSIG(st) == SIGKILL);
    }
    total_gone += statuses.size();
    // Nobody holds the report pipe any more (descendants never inherited it).
    CHECK(coropipe_test::read_all(r.get(), 5s).empty());
  }
  MESSAGE("parent death: " << rounds << " rounds x (" << forks << " forked children streaming + " << spawns
                           << " spawned sleeps) = " << total_gone
                           << " processes gone after their parent's SIGKILL, the last after "
                           << std::chrono::duration<double, std::milli>(worst).count() << " ms");
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}
