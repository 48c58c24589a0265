// SPDX-License-Identifier: BSL-1.0
// Pool workers on another host through ssh, against a real OpenSSH server:
// a private sshd started by each test case (tests/ssh_fixture.hpp) on
// 127.0.0.1. Where it cannot start, each test says so on stdout
// ("SKIPPED: ssh: <reason>", counted by .ci/run) and passes.
#include <coropipe/pool.hpp>

#include <doctest/doctest.h>

#include "ssh_fixture.hpp"
#include "pool_support.hpp"
#include "support.hpp"

#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>
#include <coropipe/launcher.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe_test::run;
using coropipe_test::ssh_server;
using coropipe_test::submit_many;
using int_pool = coropipe::pool<int, int>;
using int_workers = coropipe::pool_workers<int, int>;
using int_group = coropipe::worker_group<int, int>;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);
const std::string worker_program = COROPIPE_POOL_WORKER;
const std::string helper_program = COROPIPE_SSH_POOL_HELPER;

// A test that cannot have its server says so, loudly, and passes.
bool skipped(const ssh_server& server) {
  if (server.available()) return false;
  std::printf("SKIPPED: ssh: %s\n", server.reason().c_str());
  std::fflush(stdout);
  MESSAGE("SKIPPED: ssh: " << server.reason());
  return true;
}

#define SSH_SERVER_OR_SKIP(server) \
  ssh_server server;               \
  if (skipped(server)) return

coropipe::exit_status status_of(const coropipe_test::program_result& r) {
  return coropipe::exit_status::from_wait_status(r.wait_status);
}


awaitable<void> sleep_for(std::chrono::steady_clock::duration d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(use_awaitable);
}

// Waits (running @p io's other work) until @p pred holds or @p timeout passes.
template <typename Pred>
awaitable<bool> eventually(Pred pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) co_return false;
    co_await sleep_for(20ms);
  }
  co_return true;
}

// ssh_launcher()'s options for the private server: its client config (-F),
// the client by its full path.
coropipe::ssh_options ssh_opts(const ssh_server& server) {
  coropipe::ssh_options o;
  o.program = "/usr/bin/ssh";
  o.config_file = server.config_file();
  return o;
}

// Workers running @p argv on the private server through ssh_launcher().
int_workers remote(const ssh_server& server, const std::vector<std::string>& argv,
                   const std::string& alias = ssh_server::host) {
  return int_workers::launched(coropipe::ssh_launcher(alias, ssh_opts(server)), argv);
}

// Reaps the children that a killed helper left to this subreaper (its ssh
// clients, killed by their parent-death signal).
void reap_orphans(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (coropipe_test::has_children() && std::chrono::steady_clock::now() < deadline) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    ::usleep(10000);
  }
}

} // namespace

TEST_CASE("the private sshd runs commands through its own config, its sessions are visible") {
  SSH_SERVER_OR_SKIP(server);
  auto r = coropipe_test::run_program(
      server.ssh_argv(ssh_server::host, {"echo", "hello from", "$((6 * 7))"}));
  CHECK(status_of(r).success());
  CHECK(r.out == "hello from 42\n");
  CHECK_MESSAGE(r.err.empty(), r.err);
  // A remote process shows under sshd.
  auto p = coropipe_test::start_program(server.ssh_argv(ssh_server::host, {"sleep", "30"}));
  std::vector<coropipe_test::remote_process> sleeping;
  for (int i = 0; i < 1000 && sleeping.empty(); ++i) {
    for (const auto& rp : server.processes_running("sleep 30"))
      if (rp.comm == "sleep") sleeping.push_back(rp);
    if (sleeping.empty()) ::usleep(10000);
  }
  CHECK_MESSAGE(sleeping.size() == 1, ssh_server::describe(server.processes()));
  ::kill(p.pid, SIGKILL);
  CHECK_NOTHROW(coropipe_test::finish_program(p, 10s));
  // The banner host prints its banner first.
  r = coropipe_test::run_program(server.ssh_argv(ssh_server::banner_host, {"echo", "ok"}));
  CHECK(r.out == std::string(ssh_server::banner) + "\nok\n");
}

TEST_CASE("spawned workers through an ssh prefix answer, shutdown leaves nothing on the far side") {
  SSH_SERVER_OR_SKIP(server);
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), int_workers::spawned(server.ssh_argv(ssh_server::host, {worker_program, "inc"})),
               {.workers = 2});
    CHECK(co_await p.async_submit(41, use_awaitable) == 42);
    co_await submit_many(p, 500);
    CHECK(server.processes_running(worker_program).size() == 2);
    co_await p.async_shutdown(use_awaitable);
    CHECK(coropipe_test::children_of(::getpid()).size() == 1);  // the server's, only
  }());
  const auto left = server.wait_until_none_running(worker_program, 5s);
  CHECK_MESSAGE(left.empty(), "still running: " << ssh_server::describe(left));
}

TEST_CASE("a remote worker killed on the far side is replaced") {
  SSH_SERVER_OR_SKIP(server);
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_pool p(io.get_executor(), remote(server, {worker_program, "inc"}), {.workers = 1, .max_retries = 2});
    CHECK(co_await p.async_submit(1, use_awaitable) == 2);
    auto remote = server.processes_running(worker_program);
    REQUIRE(remote.size() == 1);
    const pid_t ssh_pid = p.stats()[0].pid;
    // Killed while it works on a request: the request is sent again.
    coropipe::request_info info;
    bool answered = false;
    int reply = 0;
    p.async_submit(-3000, {.info = &info}, [&](coropipe::error_code ec, int r) {
      CHECK_FALSE(ec);
      reply = r;
      answered = true;
    });
    co_await sleep_for(300ms);
    ::kill(remote[0].pid, SIGKILL);
    CHECK(co_await eventually([&] { return answered; }, 30000ms));
    CHECK(reply == -2999);
    CHECK(info.attempts == 2);
    CHECK(p.stats()[0].restarts == 1);
    CHECK(p.stats()[0].pid != ssh_pid);
    co_await submit_many(p, 100);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(server.wait_until_none_running(worker_program, 5s).empty());
}

TEST_CASE("killing the local ssh client is detected and the busy remote worker ends") {
  SSH_SERVER_OR_SKIP(server);
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    // The worker computes (busy CPU, not reading its input) for a minute.
    int_pool p(io.get_executor(), remote(server, {helper_program, "--serve"}), {.workers = 1});
    CHECK(co_await p.async_submit(1, use_awaitable) == 1);
    auto remote = server.processes_running(helper_program);
    REQUIRE(remote.size() == 1);
    coropipe::request_info info;
    bool answered = false;
    coropipe::error_code result;
    p.async_submit(60000, {.info = &info}, [&](coropipe::error_code ec, int) {
      result = ec;
      answered = true;
    });
    co_await sleep_for(300ms);
    const pid_t client = p.stats()[0].pid;
    REQUIRE(client > 0);
    ::kill(client, SIGKILL);
    CHECK(co_await eventually([&] { return answered; }, 10000ms));
    CHECK(result == coropipe::errc::worker_died);
    REQUIRE(info.worker_status.has_value());
    CHECK(info.worker_status->term_signal() == SIGKILL);
    // The far side: the computing worker is gone within a few seconds.
    const auto t0 = std::chrono::steady_clock::now();
    bool gone = false;
    while (!gone && std::chrono::steady_clock::now() - t0 < 5s) {
      gone = !ssh_server::running(remote[0].pid);
      if (!gone) co_await sleep_for(20ms);
    }
    CHECK_MESSAGE(gone, "remote worker " << remote[0].pid << " still runs");
    // And the pool has a new worker.
    CHECK(co_await p.async_submit(5, use_awaitable) == 5);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(server.wait_until_none_running(helper_program, 5s).empty());
}

TEST_CASE("SIGKILL of the pool's process leaves no remote worker running, even mid-computation") {
  SSH_SERVER_OR_SKIP(server);
  for (const bool launched : {true, false}) {
    const std::string how = launched ? "a launched group (ssh_launcher)" : "spawned through an ssh prefix";
    INFO(how);
    std::vector<std::string> argv{helper_program, "--pool", "2", "600000"};
    if (launched) {
      argv.push_back("--ssh-config");
      argv.push_back(server.config_file());
      argv.push_back(ssh_server::host);
    } else {
      for (auto& a : server.ssh_argv(ssh_server::host)) argv.push_back(a);
    }
    auto p = coropipe_test::start_program(argv);
    // Both remote workers computing (their requests are sent once they run).
    std::vector<coropipe_test::remote_process> remote;
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < 30s) {
      remote = server.processes_running(helper_program + " --serve");
      if (remote.size() == 2) break;
      ::usleep(20000);
    }
    REQUIRE(remote.size() == 2);
    ::usleep(500000);  // their requests have arrived: they compute
    ::kill(p.pid, SIGKILL);
    const auto killed = std::chrono::steady_clock::now();
    const auto r = coropipe_test::finish_program(p, 10s);
    CHECK(r.out == "submitted 2\n");
    const auto left = server.wait_until_none_running(helper_program, 10s);
    const auto took = std::chrono::steady_clock::now() - killed;
    CHECK_MESSAGE(left.empty(), "still running: " << ssh_server::describe(left));
    CHECK(took < 5s);  // within a few seconds (the helper's ssh clients die with it)
    MESSAGE("remote workers gone "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms after the SIGKILL");
    reap_orphans(5s);
  }
}

TEST_CASE("a pool destroyed or shut down at once leaves no remote worker running, even mid-computation") {
  SSH_SERVER_OR_SKIP(server);
  for (const bool destroy : {true, false}) {
    const std::string how = destroy ? "destroyed" : "shutdown_mode::immediate";
    INFO(how);
    asio::io_context io;
    int failed = 0;  // (outlives the coroutine: the callbacks run after it)
    run(io, [&]() -> awaitable<void> {
      std::vector<int_group> groups;
      groups.push_back({.workers = remote(server, {helper_program, "--serve"}), .count = 2});
      auto p = std::make_unique<int_pool>(io.get_executor(), std::move(groups), coropipe::pool_options{.window = 1});
      for (int i = 0; i < 4; ++i)
        p->async_submit(i < 2 ? 1 : 600000, [&](coropipe::error_code ec, int) { failed += ec ? 1 : 0; });
      // Both remote workers up and computing (a minute each).
      CHECK(co_await eventually([&] { return server.processes_running(helper_program).size() == 2; }, 30000ms));
      co_await sleep_for(300ms);
      if (destroy) {
        p.reset();  // SIGKILL to the ssh clients, reaped at once
      } else {
        co_await p->async_shutdown(coropipe::shutdown_mode::immediate, use_awaitable);
        p.reset();
      }
      const auto t0 = std::chrono::steady_clock::now();
      const auto left = server.wait_until_none_running(helper_program, 5s);
      CHECK_MESSAGE(left.empty(), "still running: " << ssh_server::describe(left));
      MESSAGE("remote workers gone " << std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::steady_clock::now() - t0)
                                            .count()
                                     << " ms after the pool ended");
    }());
    io.run();  // the callbacks of the failed requests
    CHECK(failed >= 2);  // at least the two long ones: pool_closed
  }
}

TEST_CASE("quoting: arguments with spaces, quotes, dollars, semicolons and newlines arrive byte-exact through ssh") {
  SSH_SERVER_OR_SKIP(server);
  const std::vector<std::string> args{"plain",      "two words",   "it's",        "\"double\"", "$HOME",
                                      "${PATH}",    "$(echo no)",  "`echo no`",   "a;b",          "x | y && z",
                                      "back\\slash", "",            "*",           "~",            "new\nline",
                                      "tab\there",  "'",           "''",          "-n",           "--",
                                      "a\\'b",      "#comment",    "utf-8: \u00fc", "!bang",       "  lead"};
  std::vector<std::string> argv{helper_program, "--print-args"};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto l = coropipe::ssh_launcher(ssh_server::host, ssh_opts(server));
  const auto r = coropipe_test::run_program(l.command(argv));
  CHECK(status_of(r).success());
  CHECK_MESSAGE(r.err.empty(), r.err);
  std::string expected;
  for (const auto& a : args) expected += a + '\0';
  CHECK(r.out == expected);
  // What arrived, argument by argument (for the failure message).
  std::vector<std::string> got;
  std::string cur;
  for (char c : r.out) {
    if (c == '\0') {
      got.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  CHECK(got == args);
}

TEST_CASE("launched workers through ssh_launcher answer, in a group named after the host") {
  SSH_SERVER_OR_SKIP(server);
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    std::vector<int_group> groups;
    groups.push_back({.workers = remote(server, {worker_program, "inc"}), .count = 2});
    int_pool p(io.get_executor(), std::move(groups));
    CHECK(co_await p.async_submit(41, use_awaitable) == 42);
    co_await submit_many(p, 500);
    const auto g = p.groups();
    REQUIRE(g.size() == 1);
    CHECK(g[0].name == ssh_server::host);
    CHECK(g[0].workers_running == 2);
    CHECK_FALSE(g[0].removed);
    CHECK_FALSE(g[0].last_error);
    CHECK(server.processes_running(worker_program).size() == 2);
    co_await p.async_shutdown(use_awaitable);
  }());
  const auto left = server.wait_until_none_running(worker_program, 5s);
  CHECK_MESSAGE(left.empty(), "still running: " << ssh_server::describe(left));
}

TEST_CASE("each way a remote start fails gives its own error, naming the host, and removes the group") {
  SSH_SERVER_OR_SKIP(server);
  struct failure {
    std::string what;
    std::string alias;
    std::vector<std::string> argv;
    coropipe::errc expected;
    std::string in_message;  // what ssh or the remote shell said
  };
  const std::vector<failure> failures{
      {"wrong port", ssh_server::refused_host, {worker_program, "inc"}, coropipe::errc::remote_connection_failed,
       "Connection refused"},
      {"wrong key", ssh_server::wrong_key_host, {worker_program, "inc"},
       coropipe::errc::remote_authentication_failed, "Permission denied"},
      {"changed host key", ssh_server::bad_host_key_host, {worker_program, "inc"},
       coropipe::errc::remote_host_key_rejected, "HOST IDENTIFICATION HAS CHANGED"},
      {"unknown host", "coropipe-test-unknown.invalid", {worker_program, "inc"}, coropipe::errc::remote_host_unknown,
       "Could not resolve hostname"},
      {"missing program", ssh_server::host, {"/nonexistent/coropipe-worker", "inc"},
       coropipe::errc::remote_program_missing, "/nonexistent/coropipe-worker"},
      {"banner before the frames", ssh_server::banner_host, {worker_program, "inc"},
       coropipe::errc::worker_protocol_error, ""},
  };
  for (const auto& f : failures) {
    INFO(f.what);
    asio::io_context io;
    run(io, [&]() -> awaitable<void> {
      std::vector<int_group> groups;
      groups.push_back({.workers = remote(server, f.argv, f.alias), .count = 1, .max_start_failures = 2});
      int removed_calls = 0;
      std::string removed_name, removed_message;
      coropipe::error_code removed_ec;
      int_pool p(io.get_executor(), std::move(groups),
                 {.restart_backoff = 10ms,
                  .on_group_removed = [&](const std::string& name, coropipe::error_code ec, const std::string& msg) {
                    ++removed_calls;
                    removed_name = name;
                    removed_ec = ec;
                    removed_message = msg;
                  }});
      auto [ec, reply] = co_await p.async_submit(1, as_tuple);
      CHECK(ec == f.expected);
      CHECK(co_await eventually([&] { return removed_calls > 0; }, 30000ms));
      CHECK(removed_calls == 1);
      CHECK(removed_name == f.alias);
      CHECK(removed_ec == f.expected);
      CHECK_MESSAGE(removed_message.find(f.alias) != std::string::npos, removed_message);
      CHECK_MESSAGE(removed_message.find(f.in_message) != std::string::npos, removed_message);
      const auto g = p.groups();
      REQUIRE(g.size() == 1);
      CHECK(g[0].removed);
      CHECK(g[0].workers_running == 0);
      CHECK(g[0].last_error == f.expected);
      CHECK_MESSAGE(g[0].last_message.find(f.alias) != std::string::npos, g[0].last_message);
      MESSAGE(f.what << ": " << removed_message);
      // Later requests fail at once, with the same error.
      auto [ec2, reply2] = co_await p.async_submit(2, as_tuple);
      CHECK(ec2 == f.expected);
      co_await p.async_shutdown(use_awaitable);
    }());
  }
  CHECK(server.wait_until_none_running(worker_program, 5s).empty());
}

TEST_CASE("a failing host is removed while the other groups go on") {
  SSH_SERVER_OR_SKIP(server);
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    std::vector<int_group> groups;
    groups.push_back({.workers = remote(server, {worker_program, "inc"}, ssh_server::refused_host), .count = 2});
    groups.push_back({.workers = remote(server, {worker_program, "inc"}), .count = 2});
    std::vector<std::string> removed;
    int_pool p(io.get_executor(), std::move(groups),
               {.restart_backoff = 10ms,
                .on_group_removed = [&](const std::string& name, coropipe::error_code, const std::string&) {
                  removed.push_back(name);
                }});
    co_await submit_many(p, 300);
    CHECK(co_await eventually([&] { return !removed.empty(); }, 30000ms));
    co_await submit_many(p, 300);
    CHECK(removed == std::vector<std::string>{ssh_server::refused_host});
    const auto g = p.groups();
    REQUIRE(g.size() == 2);
    CHECK(g[0].removed);
    CHECK(g[0].last_error == coropipe::errc::remote_connection_failed);
    CHECK_FALSE(g[1].removed);
    CHECK(g[1].workers_running == 2);
    CHECK_FALSE(p.broken());
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(server.wait_until_none_running(worker_program, 5s).empty());
}

TEST_CASE("mixed local and remote workers share the requests") {
  SSH_SERVER_OR_SKIP(server);
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    std::vector<int_group> groups;
    groups.push_back({.workers = int_workers::forked([](int x) -> awaitable<int> { co_return x + 1; }), .count = 1});
    groups.push_back({.workers = int_workers::spawned({worker_program, "inc"}), .count = 1});
    groups.push_back({.workers = remote(server, {worker_program, "inc"}), .count = 2});
    int_pool p(io.get_executor(), std::move(groups), {.window = 1});
    CHECK(co_await p.async_submit(1, use_awaitable) == 2);
    // Every worker up (the remote ones take an ssh login), then a burst.
    CHECK(co_await eventually([&] { return server.processes_running(worker_program).size() == 2; }, 30000ms));
    co_await submit_many(p, 2000);
    // Requests of 30 ms each, one per worker at a time: every worker takes
    // some (tiny ones may all be answered by the local workers while one
    // remote round trip crosses ssh).
    int done = 0, wrong = 0;
    for (int i = 0; i < 40; ++i)
      p.async_submit(-30, [&](coropipe::error_code ec, int r) {
        if (ec || r != -29) ++wrong;
        ++done;
      });
    CHECK(co_await eventually([&] { return done == 40; }, 30000ms));
    CHECK(wrong == 0);
    const auto stats = p.stats();
    REQUIRE(stats.size() == 4);
    for (std::size_t i = 0; i < stats.size(); ++i)
      CHECK_MESSAGE(stats[i].served > 0, "worker " << i << " (pid " << stats[i].pid << ", " << stats[i].restarts
                                                    << " restarts) served none");
    const auto g = p.groups();
    REQUIRE(g.size() == 3);
    CHECK(g[2].name == ssh_server::host);
    CHECK(g[2].workers_running == 2);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(server.wait_until_none_running(worker_program, 5s).empty());
}

#if defined(COROPIPE_SAMPLE_PRIME_POOL)
namespace {
const std::string prime_pool = COROPIPE_SAMPLE_PRIME_POOL;
}

TEST_CASE("prime_pool --host prints the same count with remote, mixed and failing hosts") {
  SSH_SERVER_OR_SKIP(server);
  const std::string expected = "primes below 1000000: 78498\n";
  auto r = coropipe_test::run_program({prime_pool, "--limit", "1000000", "--workers", "2"});
  CHECK(r.out == expected);
  r = coropipe_test::run_program(
      {prime_pool, "--limit", "1000000", "--host", std::string(ssh_server::host) + "/2", "--ssh-config", server.config_file()});
  CHECK(status_of(r).success());
  CHECK(r.out == expected);
  CHECK_MESSAGE(r.err.empty(), r.err);
  // Mixed: one local worker beside them.
  r = coropipe_test::run_program({prime_pool, "--limit", "1000000", "--chunk", "7777", "--workers", "1", "--host",
                                  std::string(ssh_server::host) + "/2", "--ssh-config", server.config_file()});
  CHECK(status_of(r).success());
  CHECK(r.out == expected);
  // A host that cannot be reached is reported and dropped; the others count.
  r = coropipe_test::run_program({prime_pool, "--limit", "1000000", "--host", ssh_server::refused_host, "--host",
                                  std::string(ssh_server::host) + "/2", "--ssh-config", server.config_file()});
  CHECK(status_of(r).success());
  CHECK(r.out == expected);
  CHECK_MESSAGE(r.err.find(ssh_server::refused_host) != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("Connection refused") != std::string::npos, r.err);
  // Only an unreachable host: a clear error, exit status 1.
  r = coropipe_test::run_program({prime_pool, "--limit", "1000000", "--host", ssh_server::refused_host, "--ssh-config",
                                  server.config_file()});
  CHECK(status_of(r).exit_code() == 1);
  CHECK(r.out.empty());
  CHECK_MESSAGE(r.err.find(ssh_server::refused_host) != std::string::npos, r.err);
  CHECK(server.wait_until_none_running(prime_pool, 5s).empty());
}

TEST_CASE("prime_pool --host: a remote worker killed mid-run does not change the count") {
  SSH_SERVER_OR_SKIP(server);
  auto p = coropipe_test::start_program({prime_pool, "--limit", "30000000", "--chunk", "50000", "--host",
                                         std::string(ssh_server::host) + "/2", "--ssh-config", server.config_file()});
  std::vector<coropipe_test::remote_process> remote;
  const auto t0 = std::chrono::steady_clock::now();
  while (remote.size() < 2 && std::chrono::steady_clock::now() - t0 < 30s) {
    remote = server.processes_running(prime_pool + " --serve");
    ::usleep(5000);
  }
  REQUIRE(!remote.empty());
  ::usleep(50000);
  const bool killed = ::kill(remote.front().pid, SIGKILL) == 0;
  const auto r = coropipe_test::finish_program(p, 120s);
  CHECK(status_of(r).success());
  CHECK(r.out == "primes below 30000000: 1857859\n");
  if (killed) CHECK_MESSAGE(r.err.find("replaced") != std::string::npos, r.err);
  CHECK(server.wait_until_none_running(prime_pool, 5s).empty());
}
#endif
