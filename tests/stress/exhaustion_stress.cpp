// Stress: resource exhaustion. With RLIMIT_NOFILE lowered, every call that
// creates descriptors fails with EMFILE, named, and leaks nothing; with
// RLIMIT_NPROC at zero (in a child that gave up root, for which the limit is
// enforced), fork_child() and spawn() fail with EAGAIN. After each failure the
// limit is restored and everything works again. The cycle repeats.
#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/io.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/spawn.hpp>

#include <doctest/doctest.h>

#include "stress.hpp"
#include "support.hpp"

#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>

#include <grp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::unique_fd;
using coropipe_test::open_fds;
using coropipe_test::run;
using coropipe_test::scoped_rlimit;

namespace {

bool names(const std::system_error& e, const char* call) { return std::strstr(e.what(), call) != nullptr; }

// One round trip through every facility, with nothing exhausted.
void everything_works(asio::io_context& io) {
  auto [r, w] = coropipe::pipe();
  auto [a, b] = coropipe::duplex_pair();
  auto rs = coropipe::attach(io, std::move(r));
  coropipe::child c = coropipe::fork_child(
      io,
      [](child_context& ctx, unique_fd out) -> awaitable<int> {
        auto ws = ctx.attach(std::move(out));
        co_await coropipe::async_write(ws, asio::buffer("ok", 2), use_awaitable);
        co_return 7;
      },
      std::move(w));
  run(io, [&]() -> awaitable<void> {
    char buf[8];
    std::size_t got = 0;
    for (;;) {
      auto [ec, n] = co_await coropipe::async_read_some(rs, asio::buffer(buf + got, sizeof buf - got),
                                                       asio::experimental::as_tuple(use_awaitable));
      got += n;
      if (ec) break;
    }
    REQUIRE(std::string(buf, got) == "ok");
    auto st = co_await c.async_wait(use_awaitable);
    REQUIRE(st.exit_code() == 7);
    coropipe::process p = coropipe::spawn(io, {.argv = {"/bin/true"}, .out = coropipe::stdio::pipe()});
    auto pst = co_await p.async_wait(use_awaitable);
    REQUIRE(pst.success());
  }(), 30s);
}

template <typename F>
std::system_error expect_error(const char* what, F&& f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e;
  }
  FAIL(what << ": no error reported");
  return std::system_error(std::error_code());
}

} // namespace

TEST_CASE("EMFILE: pipe, duplex_pair, attach, fork_child and spawn fail cleanly and recover") {
  asio::io_context io;
  everything_works(io);  // warm up: the reactor, fork_child's spare context
  const int cycles = coropipe_stress::size(200, 20000);
  const auto start = std::chrono::steady_clock::now();
  int failures = 0;
  int spawn_partial = 0;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const auto before = open_fds();
    {
      auto spare = coropipe::pipe();  // for duplicate()
      scoped_rlimit lim(RLIMIT_NOFILE, static_cast<rlim_t>(coropipe_test::lowest_free_fd()));

      auto e = expect_error("pipe", [] { (void)coropipe::pipe(); });
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(names(e, "pipe2"));
      std::error_code ec;
      auto ends = coropipe::pipe(ec);
      CHECK(ec == std::errc::too_many_files_open);
      CHECK((!ends.read_end && !ends.write_end));

      e = expect_error("duplex_pair", [] { (void)coropipe::duplex_pair(); });
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(names(e, "socketpair"));

      e = expect_error("duplicate", [&] { (void)spare.read_end.duplicate(); });
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(names(e, "F_DUPFD_CLOEXEC"));
      ++failures;

      e = expect_error("fork_child", [&] {
        (void)coropipe::fork_child(io, [](child_context&) -> awaitable<int> { co_return 0; });
      });
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(names(e, "pidfd_open"));
      ++failures;

      e = expect_error("spawn", [&] { (void)coropipe::spawn(io, {.argv = {"/bin/true"}}); });
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(names(e, "clone"));
      e = expect_error("spawn with a pipe", [&] { (void)coropipe::spawn(io, {.argv = {"/bin/true"}, .in = coropipe::stdio::pipe()}); });
      CHECK(e.code() == std::errc::too_many_files_open);
      CHECK(names(e, "pipe2"));
      failures += 4;
    }
    {
      // attach() on a fresh io_context must create its reactor's descriptors.
      auto [r, w] = coropipe::pipe();
      asio::io_context fresh;
      scoped_rlimit lim(RLIMIT_NOFILE, static_cast<rlim_t>(coropipe_test::lowest_free_fd()));
      try {
        auto s = coropipe::attach(fresh, std::move(r));
        FAIL("attach on a fresh io_context succeeded without descriptors");
      } catch (const std::system_error& e) {
        CHECK(e.code().value() == EMFILE);
        INFO(e.what());
        CHECK(std::string(e.what()).find("Too many open files") != std::string::npos);
        ++failures;
      }
      CHECK(!r);
    }
    {
      // spawn() with every stream on a pipe needs 3 pipes and a pidfd: each
      // headroom short of that fails at a different step, leaking nothing.
      const int headroom = cycle % 7;
      const int low = coropipe_test::lowest_free_fd();
      scoped_rlimit lim(RLIMIT_NOFILE, static_cast<rlim_t>(low + headroom));
      std::error_code ec;
      coropipe::process p = coropipe::spawn(
          io, {.argv = {"/bin/true"}, .in = coropipe::stdio::pipe(), .out = coropipe::stdio::pipe(),
               .err = coropipe::stdio::pipe()}, ec);
      CHECK(ec == std::errc::too_many_files_open);
      CHECK(!p.valid());  // (open_fds() itself needs a descriptor: checked below)
      ++spawn_partial;
    }
    {
      const auto after = open_fds();
      INFO("before: " << coropipe_test::describe_fds(before) << ", after: " << coropipe_test::describe_fds(after));
      REQUIRE(after == before);
    }
    everything_works(io);
    REQUIRE(open_fds() == before);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("exhaustion EMFILE: " << cycles << " fail/recover cycles, " << failures << " EMFILE failures checked, "
                                << spawn_partial << " partial spawns, " << secs << " s");
}

namespace {

// In a child that is no longer root (RLIMIT_NPROC binds only processes
// without CAP_SYS_RESOURCE and CAP_SYS_ADMIN): returns 0, or the number of
// the check that failed (reported on stderr); @p report gets the figures.
int nproc_cycles(int cycles, int report) {
  int step = 0;
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "nproc child: check %d failed: %s\n", step, what);
    return step;
  };
  if (::getuid() == 0) {
    ++step;
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0)
      return fail("cannot drop root");
  }
  asio::io_context io;
  int failures = 0;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    step = 10;
    {
      scoped_rlimit lim(RLIMIT_NPROC, 0);
      try {
        (void)coropipe::fork_child(io, [](child_context&) -> awaitable<int> { co_return 0; });
        return fail("fork_child succeeded under RLIMIT_NPROC 0");
      } catch (const std::system_error& e) {
        ++step;
        if (e.code() != std::errc::resource_unavailable_try_again) return fail(e.what());
        ++step;
        if (!names(e, "fork")) return fail(e.what());
      }
      step = 20;
      try {
        (void)coropipe::spawn(io, {.argv = {"/bin/true"}, .out = coropipe::stdio::pipe()});
        return fail("spawn succeeded under RLIMIT_NPROC 0");
      } catch (const std::system_error& e) {
        ++step;
        if (e.code() != std::errc::resource_unavailable_try_again) return fail(e.what());
        ++step;
        if (!names(e, "clone")) return fail(e.what());
      }
      failures += 2;
    }
    step = 30;
    try {
      coropipe::child c = coropipe::fork_child(io, [](child_context&) -> awaitable<int> { co_return 3; });
      coropipe::process p = coropipe::spawn(io, {.argv = {"/bin/true"}});
      bool ok = false;
      run(io, [&]() -> awaitable<void> {
        auto a = co_await c.async_wait(use_awaitable);
        auto b = co_await p.async_wait(use_awaitable);
        ok = a.exit_code() == 3 && b.success();
      }(), 30s);
      if (!ok) return fail("after recovery: wrong exit statuses");
    } catch (const std::exception& e) {
      return fail(e.what());
    }
  }
  const std::string line = std::to_string(cycles) + " " + std::to_string(failures) + "\n";
  (void)!::write(report, line.data(), line.size());
  return 0;
}

} // namespace

TEST_CASE("RLIMIT_NPROC: fork_child and spawn fail with EAGAIN and recover") {
  const int cycles = coropipe_stress::size(100, 10000);
  const auto start = std::chrono::steady_clock::now();
  auto [r, w] = coropipe::pipe();
  const int report = w.get();
  const pid_t pid = coropipe_test::fork_raw([&] { return nproc_cycles(cycles, report); });
  w.reset();
  const std::string figures = coropipe_test::read_all(r.get(), 120s);
  auto status = coropipe_test::wait_for_pid(pid, 30s);
  if (!status) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
  int done = 0, failures = 0;
  REQUIRE(std::sscanf(figures.c_str(), "%d %d", &done, &failures) == 2);
  CHECK(done == cycles);
  CHECK(failures == 2 * cycles);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("exhaustion NPROC (as uid " << (::getuid() == 0 ? 65534 : ::getuid()) << "): " << done
                                      << " fail/recover cycles, " << failures << " EAGAIN failures checked, "
                                      << secs << " s");
}
