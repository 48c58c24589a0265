// SPDX-License-Identifier: BSL-1.0
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

#include <coropipe/asio.hpp>

#include <grp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::unique_fd;
using coropipe_test::open_fds;
using coropipe_test::run;
using coropipe_test::scoped_rlimit;

namespace {

bool names(const coropipe::system_error& e, const char* call) { return std::strstr(e.what(), call) != nullptr; }

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
                                                       coropipe::compat::as_tuple(use_awaitable));
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

// Under UBSan, a virtual call whose (vptr, type) pair is not in the vptr
// check's cache is validated by probing memory through a pipe, which fails
// (and is reported as an invalid vptr) while no descriptor is left. The error
// paths taken under the limit build messages through the error categories
// (coropipe's errors and Asio's), so their pairs are put in the cache first.
void ubsan_warm_up() {
  (void)coropipe::error_code(EMFILE, coropipe::system_category()).message();
  (void)coropipe::error_code(EMFILE, asio::error::get_system_category()).message();
  (void)coropipe::system_error(coropipe::error_code(EMFILE, coropipe::system_category()), "warm-up").what();
}

struct outcome {
  const char* call = nullptr;
  const char* named = nullptr;
  bool thrown = false;
  std::exception_ptr ep;
  coropipe::error_code code;
  std::string what;

  // Fills code and what from the exception (once descriptors are available).
  void inspect() {
    if (!ep) return;
    try {
      std::rethrow_exception(ep);
    } catch (const coropipe::system_error& e) {
      code = e.code();
      what = e.what();
    } catch (...) {
      what = "not a coropipe::system_error";
    }
  }
};

// Runs @p f, which should throw coropipe::system_error; records what it threw
// without any virtual call (see the EMFILE test). The exception is inspected
// later by rethrowing it.
template <typename F>
outcome attempt(const char* call, const char* named, F&& f) {
  std::exception_ptr ep;
  try {
    f();
  } catch (...) {
    ep = std::current_exception();
  }
  outcome o;
  o.call = call;
  o.named = named;
  o.what = "no error";
  o.thrown = static_cast<bool>(ep);
  o.ep = std::move(ep);
  return o;
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
    ubsan_warm_up();
    // While the limit holds, outcomes are only recorded: checking them (a
    // doctest assertion, a virtual call that UBSan's vptr check validates
    // with a pipe) needs descriptors too.
    std::vector<outcome> outcomes;
    coropipe::error_code pipe_ec, spawn_ec;
    bool pipe_ends_empty = false, spawn_empty = false;
    {
      auto spare = coropipe::pipe();  // for duplicate()
      scoped_rlimit lim(RLIMIT_NOFILE, static_cast<rlim_t>(coropipe_test::lowest_free_fd()));
      outcomes.push_back(attempt("pipe", "pipe2", [] { (void)coropipe::pipe(); }));
      auto ends = coropipe::pipe(pipe_ec);
      pipe_ends_empty = !ends.read_end && !ends.write_end;
      outcomes.push_back(attempt("duplex_pair", "socketpair", [] { (void)coropipe::duplex_pair(); }));
      outcomes.push_back(attempt("duplicate", "F_DUPFD_CLOEXEC", [&] { (void)spare.read_end.duplicate(); }));
      outcomes.push_back(attempt("fork_child", "pidfd_open", [&] {
        (void)coropipe::fork_child(io, [](child_context&) -> awaitable<int> { co_return 0; });
      }));
      outcomes.push_back(attempt("spawn", "clone", [&] { (void)coropipe::spawn(io, {.argv = {"/bin/true"}}); }));
      outcomes.push_back(attempt("spawn with a pipe", "pipe2", [&] {
        (void)coropipe::spawn(io, {.argv = {"/bin/true"}, .in = coropipe::stdio::pipe()});
      }));
    }
    {
      // attach() on a fresh io_context must create its reactor's descriptors.
      auto p = coropipe::pipe();
      asio::io_context fresh;
      {
        scoped_rlimit lim(RLIMIT_NOFILE, static_cast<rlim_t>(coropipe_test::lowest_free_fd()));
        outcomes.push_back(attempt("attach on a fresh io_context", "Too many open files",
                                   [&] { (void)coropipe::attach(fresh, std::move(p.read_end)); }));
      }
      CHECK(!p.read_end);  // closed by the failed attach
    }
    {
      // spawn() with every stream on a pipe needs 3 pipes and a pidfd: each
      // headroom short of that fails at a different step, leaking nothing.
      const int headroom = cycle % 7;
      const int low = coropipe_test::lowest_free_fd();
      scoped_rlimit lim(RLIMIT_NOFILE, static_cast<rlim_t>(low + headroom));
      coropipe::process p = coropipe::spawn(
          io, {.argv = {"/bin/true"}, .in = coropipe::stdio::pipe(), .out = coropipe::stdio::pipe(),
               .err = coropipe::stdio::pipe()}, spawn_ec);
      spawn_empty = !p.valid();
      ++spawn_partial;
    }
    for (auto& o : outcomes) {
      o.inspect();
      INFO(o.call << ": " << o.what);
      CHECK(o.thrown);
      CHECK(o.code.value() == EMFILE);
      CHECK(o.what.find(o.named) != std::string::npos);
      ++failures;
    }
    CHECK(pipe_ec == std::errc::too_many_files_open);
    CHECK(pipe_ends_empty);
    CHECK(spawn_ec == std::errc::too_many_files_open);
    CHECK(spawn_empty);
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
      } catch (const coropipe::system_error& e) {
        ++step;
        if (e.code() != std::errc::resource_unavailable_try_again) return fail(e.what());
        ++step;
        if (!names(e, "fork")) return fail(e.what());
      }
      step = 20;
      try {
        (void)coropipe::spawn(io, {.argv = {"/bin/true"}, .out = coropipe::stdio::pipe()});
        return fail("spawn succeeded under RLIMIT_NPROC 0");
      } catch (const coropipe::system_error& e) {
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
