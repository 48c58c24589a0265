// SPDX-License-Identifier: BSL-1.0
// Stress: holders of the pipe. End of stream and the end of a process are
// separate events: a grandchild can hold a program's stdout open after the
// program exited, and a child can close its stdout and run on. Waits never
// depend on the pipes (spawn.hpp, communicate.hpp), and reads see end of
// stream exactly when the last writer is gone. Every step runs under a
// deadline, and the scenario is repeated.
#include <coropipe/attach.hpp>
#include <coropipe/communicate.hpp>
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

#include <chrono>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::exit_status;
using coropipe::process;
using coropipe::stdio;
using coropipe::unique_fd;
using coropipe_stress::as_tuple;
using coropipe_stress::size;
using coropipe_stress::within;

namespace {

const std::string helper = COROPIPE_CHILD_HELPER;

// A program whose background grandchild keeps its stdout open for 30 s; it
// prints the grandchild's pid and exits 0 at once.
const std::vector<std::string> grandchild_argv = {"sh", "-c", "sleep 30 & echo $!"};

// Reads until end of stream.
awaitable<std::string> read_to_eof(asio::posix::stream_descriptor& in) {
  std::string out;
  char buf[4096];
  for (;;) {
    auto [ec, n] = co_await coropipe::async_read_some(in, asio::buffer(buf), as_tuple);
    out.append(buf, n);
    if (ec == asio::error::eof) co_return out;
    if (ec) throw coropipe::system_error(ec, "read");
  }
}

// Reads until a newline (the stream is expected to hold nothing after it).
awaitable<std::string> read_line(asio::posix::stream_descriptor& in) {
  std::string out;
  char buf[256];
  while (out.find('\n') == std::string::npos) {
    out.append(buf, co_await coropipe::async_read_some(in, asio::buffer(buf), use_awaitable));
  }
  co_return out;
}

// True when no byte and no end of stream arrive on @p in within @p quiet.
// coropipe's read, not Asio's: on Asio 1.22's io_uring backend, Asio's own
// async_read_some on a descriptor set non-blocking (as coropipe's operations
// set it) is not cancelled when the timer wins; it completes only once data or
// the end of the stream arrives (docs/performance.md, "io_uring").
awaitable<bool> stays_open(asio::posix::stream_descriptor& in, std::chrono::milliseconds quiet) {
  using namespace coropipe::compat::awaitable_operators;
  char c;
  asio::steady_timer t(co_await asio::this_coro::executor, quiet);
  auto r = co_await (coropipe::async_read_some(in, asio::buffer(&c, 1), as_tuple) || t.async_wait(use_awaitable));
  co_return r.index() == 1;
}

// Reaps @p pid, an orphan re-parented to this subreaper, within 5 s.
int reap_orphan(pid_t pid) {
  const auto st = coropipe_test::wait_for_pid(pid, 5s);
  REQUIRE_MESSAGE(st.has_value(), "orphan " << pid << " not reaped");
  return *st;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

TEST_CASE("a grandchild holding stdout: the wait completes, reads see end of stream only once it is gone") {
  const int rounds = size(5, 50);
  const auto fds_before = coropipe_test::open_fds();
  double worst_wait_ms = 0, worst_communicate_ms = 0;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    asio::io_context io;
    pid_t grandchild = 0;
    // Whatever happens, the grandchild does not outlive the round.
    struct cleanup {
      pid_t& pid;
      ~cleanup() {
        if (pid > 0 && ::kill(pid, SIGKILL) == 0) coropipe_test::wait_for_pid(pid, 5s);
      }
    } guard{grandchild};

    // Reading by hand: the status first, the end of stream only later.
    process p = coropipe::spawn(io, {.argv = grandchild_argv, .out = stdio::pipe()});
    const auto t0 = std::chrono::steady_clock::now();
    const exit_status st = coropipe_test::run(io, within(5s, p.async_wait(use_awaitable), "async_wait"));
    worst_wait_ms = std::max(worst_wait_ms, ms_since(t0));
    CHECK(st == exit_status::from_code(0));
    const std::string line = coropipe_test::run(io, within(5s, read_line(p.stdout_pipe()), "reading the pid"));
    grandchild = std::stoi(line);
    REQUIRE(grandchild > 0);
    CHECK(line == std::to_string(grandchild) + "\n");
    CHECK(::kill(grandchild, 0) == 0);
    CHECK(coropipe_test::run(io, stays_open(p.stdout_pipe(), 200ms)));  // no end of stream while it runs
    REQUIRE(::kill(grandchild, SIGKILL) == 0);
    CHECK(coropipe_test::run(io, within(5s, read_to_eof(p.stdout_pipe()), "end of stream")).empty());
    const int gst = reap_orphan(grandchild);
    grandchild = 0;
    CHECK(WIFSIGNALED(gst));
    CHECK(WTERMSIG(gst) == SIGKILL);

    // async_communicate: completes once the program has exited, with what it
    // printed, although the grandchild still holds the pipe.
    process q = coropipe::spawn(io, {.argv = grandchild_argv, .out = stdio::pipe()});
    const auto t1 = std::chrono::steady_clock::now();
    auto [ec, r] =
        coropipe_test::run(io, within(5s, coropipe::async_communicate(q, "", as_tuple), "async_communicate"));
    worst_communicate_ms = std::max(worst_communicate_ms, ms_since(t1));
    CHECK_FALSE(ec);
    CHECK(r.status == exit_status::from_code(0));
    REQUIRE(r.out.size() > 1);
    CHECK(r.out.back() == '\n');
    grandchild = std::stoi(r.out);
    REQUIRE(grandchild > 0);
    CHECK(::kill(grandchild, 0) == 0);  // still running, still holding the pipe
    CHECK_FALSE(q.stdout_pipe().is_open());
    REQUIRE(::kill(grandchild, SIGKILL) == 0);
    const int gst2 = reap_orphan(grandchild);
    grandchild = 0;
    CHECK(WIFSIGNALED(gst2));
  }
  MESSAGE("holders/grandchild: " << rounds << " rounds of a program exiting while a grandchild holds its stdout: "
                                 << "async_wait took at most " << worst_wait_ms << " ms, async_communicate at most "
                                 << worst_communicate_ms << " ms");
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("a child that closes its stdout and runs on: end of stream while it runs, then stopping it works") {
  const int rounds = size(10, 200);
  const auto fds_before = coropipe_test::open_fds();
  int spawned = 0, forked = 0;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    asio::io_context io;
    const bool gently = round % 2 == 0;  // async_stop(), or terminate() and async_wait()

    // A spawned program.
    process p = coropipe::spawn(io, {.argv = {helper, "close-stdout", "30"}, .out = stdio::pipe()});
    CHECK(coropipe_test::run(io, within(5s, read_to_eof(p.stdout_pipe()), "end of stream (spawned)")) == "bye\n");
    CHECK_FALSE(p.try_wait().has_value());  // end of stream, and the program runs on
    exit_status st;
    if (gently) {
      st = coropipe_test::run(io, within(5s, p.async_stop(2s, use_awaitable), "async_stop (spawned)"));
    } else {
      p.terminate();
      st = coropipe_test::run(io, within(5s, p.async_wait(use_awaitable), "async_wait (spawned)"));
    }
    CHECK(st == exit_status::killed(SIGTERM));
    ++spawned;

    // A forked child.
    auto [r, w] = coropipe::pipe();
    coropipe::child c = coropipe::fork_child(
        io,
        [](child_context& ctx, unique_fd out) -> awaitable<int> {
          auto s = ctx.attach(std::move(out));
          co_await asio::async_write(s, asio::buffer(std::string_view("bye\n")), use_awaitable);
          s.close();
          asio::steady_timer t(ctx.get_executor(), 30s);
          co_await t.async_wait(use_awaitable);
          co_return 0;
        },
        std::move(w));
    auto in = coropipe::attach(io, std::move(r));
    CHECK(coropipe_test::run(io, within(5s, read_to_eof(in), "end of stream (forked)")) == "bye\n");
    CHECK_FALSE(c.try_wait().has_value());
    if (gently) {
      st = coropipe_test::run(io, within(5s, c.async_stop(2s, use_awaitable), "async_stop (forked)"));
    } else {
      c.terminate();
      st = coropipe_test::run(io, within(5s, c.async_wait(use_awaitable), "async_wait (forked)"));
    }
    CHECK(st == exit_status::killed(SIGTERM));
    ++forked;
  }
  MESSAGE("holders/closed stdout: " << rounds << " rounds, " << spawned << " spawned programs and " << forked
                                    << " forked children closed stdout and ran on; each read end of stream, then "
                                       "was stopped with SIGTERM");
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}
