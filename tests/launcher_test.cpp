// SPDX-License-Identifier: BSL-1.0
// Launchers: quoting for the remote shell (checked through a real `sh -c`),
// ssh's command line, host specs, the classification of failed starts with
// ssh's real messages, and pools of workers launched through a stand-in for
// srun/kubectl (tests/stdio_launcher.sh) and for ssh (tests/fake_ssh.sh).
// The real sshd tests are in ssh_test.cpp.
#include <coropipe/launcher.hpp>

#include <coropipe/communicate.hpp>
#include <coropipe/pool.hpp>
#include <coropipe/spawn.hpp>

#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

using coropipe_test::run;
using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;

namespace {

const std::string child_helper = COROPIPE_CHILD_HELPER;
const std::string worker_program = COROPIPE_POOL_WORKER;
const std::string stdio_launcher = COROPIPE_STDIO_LAUNCHER;
const std::string fake_ssh = COROPIPE_FAKE_SSH;
constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

using int_pool = coropipe::pool<int, int>;
using int_workers = int_pool::workers_type;

// Arguments that a naive join would break.
const std::vector<std::string> nasty_args = {
    "plain",
    "two words",
    "it's",
    "'",
    "''",
    "\"double\"",
    "$HOME",
    "${PATH}",
    "$(echo injected)",
    "`echo injected`",
    "a; echo injected",
    "a && b || c",
    "line one\nline two",
    "",
    "tab\there",
    "back\\slash",
    "*",
    "~",
    "-n",
    "--",
    "#not a comment",
    "!bang",
    "<in >out 2>&1 |",
    "gr\xc3\xbc\xc3\x9f dich \xe2\x9c\x93",  // UTF-8
    "\xff\xfe raw bytes",                      // not UTF-8
    "trailing space ",
};

// Runs @p argv and returns its stdout (stderr must be empty, exit 0).
awaitable<std::string> output_of(std::vector<std::string> argv) {
  auto ex = co_await asio::this_coro::executor;
  coropipe::process p = coropipe::spawn(
      ex, {.argv = std::move(argv), .out = coropipe::stdio::pipe(), .err = coropipe::stdio::pipe()});
  auto r = co_await coropipe::async_communicate(p, {}, {.timeout = 30s}, use_awaitable);
  CHECK(r.err == "");
  CHECK(r.status.success());
  co_return r.out;
}

std::string nul_joined(const std::vector<std::string>& args) {
  std::string s;
  for (const auto& a : args) {
    s += a;
    s += '\0';
  }
  return s;
}

} // namespace

TEST_CASE("shell_quote: single quotes around everything, a quote as '\\''") {
  CHECK(coropipe::shell_quote("abc") == "'abc'");
  CHECK(coropipe::shell_quote("") == "''");
  CHECK(coropipe::shell_quote("it's") == "'it'\\''s'");
  CHECK(coropipe::shell_quote("'") == "''\\'''");
  CHECK(coropipe::shell_quote("two words") == "'two words'");
  CHECK(coropipe::shell_quote("$HOME; rm -rf /") == "'$HOME; rm -rf /'");
  CHECK(coropipe::shell_quote("a\nb") == "'a\nb'");
  CHECK(coropipe::shell_quote("\xc3\xbc") == "'\xc3\xbc'");
}

TEST_CASE("remote_command: exec and one quoted word per argument; empty argv refused") {
  CHECK(coropipe::remote_command({"prog"}) == "exec 'prog'");
  CHECK(coropipe::remote_command({"/opt/my prog", "a b", ""}) == "exec '/opt/my prog' 'a b' ''");
  CHECK_THROWS_AS((void)coropipe::remote_command({}), std::invalid_argument);
}

TEST_CASE("remote_command: every argument arrives byte for byte through sh -c (and bash -c)") {
  asio::io_context io;
  std::vector<std::string> argv = {"/usr/bin/printf", "%s\\000"};
  argv.insert(argv.end(), nasty_args.begin(), nasty_args.end());
  const std::string command = coropipe::remote_command(argv);
  run(io, [&]() -> awaitable<void> {
    for (std::string shell : {"/bin/sh", "/bin/bash"}) {
      if (::access(shell.c_str(), X_OK) != 0) continue;
      CAPTURE(shell);
      std::vector<std::string> sh_argv = {shell, "-c", command};
      CHECK(co_await output_of(std::move(sh_argv)) == nul_joined(nasty_args));
    }
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("parse_host_spec: HOST and HOST/N; bad specs name the text") {
  auto check = [](std::string_view text, const std::string& host, std::size_t n) {
    CAPTURE(text);
    const auto s = coropipe::parse_host_spec(text);
    CHECK(s.host == host);
    CHECK(s.workers == n);
  };
  check("build1", "build1", 1);
  check("build1/4", "build1", 4);
  check("user@host:22/2", "user@host:22", 2);
  check("user@[::1]:2222/3", "user@[::1]:2222", 3);
  check("127.0.0.1/4096", "127.0.0.1", 4096);
  check("alias-with-dash", "alias-with-dash", 1);
  for (std::string_view bad : {"", "/3", "h/0", "h/x", "h/", "h/-1", "h/4097", "h/99999999999", "-oProxyCommand=x",
                               "-oProxyCommand=x/2", "two words/2", "a/b/2"}) {
    CAPTURE(bad);
    try {
      (void)coropipe::parse_host_spec(bad);
      FAIL("accepted");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find("'" + std::string(bad) + "'") != std::string::npos);
    }
  }
}

TEST_CASE("ssh_launcher: no pty, never prompts, options before '--', the host last; bad hosts refused") {
  const auto l = coropipe::ssh_launcher("build1");
  CHECK(l.host == "build1");
  CHECK(l.quote_for_shell);
  const auto& p = l.prefix;
  REQUIRE(p.size() >= 4);
  CHECK(p.front() == "ssh");
  CHECK(p[p.size() - 2] == "--");
  CHECK(p.back() == "build1");
  auto has = [&](const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); };
  CHECK(has(p, "-T"));
  CHECK(has(p, "BatchMode=yes"));
  CHECK(has(p, "StrictHostKeyChecking=accept-new"));
  CHECK(has(p, "ConnectTimeout=10"));
  CHECK(has(p, "ServerAliveInterval=15"));
  CHECK(has(p, "ServerAliveCountMax=3"));
  CHECK_FALSE(has(coropipe::ssh_launcher("h", {.connect_timeout = std::chrono::seconds(0),
                                               .server_alive_interval = std::chrono::seconds(0)}).prefix,
                  "ServerAliveCountMax=3"));
  CHECK_FALSE(has(p, "ControlMaster=auto"));

  const auto cmd = l.command({"/opt/prime pool", "--serve"});
  REQUIRE(cmd.size() == p.size() + 1);
  CHECK(cmd.back() == "exec '/opt/prime pool' '--serve'");

  // user@host:port becomes -l and -p; explicit options win over the text.
  const auto u = coropipe::ssh_launcher("alice@10.0.0.5:2222", {.config_file = "/tmp/cfg", .control_master = true,
                                                                 .control_path = "/run/cm-%C",
                                                                 .extra_options = {"-o", "Compression=yes"}});
  CHECK(u.host == "alice@10.0.0.5:2222");
  CHECK(u.prefix.back() == "10.0.0.5");
  auto after = [&](const std::vector<std::string>& v, const std::string& opt) -> std::string {
    auto it = std::find(v.begin(), v.end(), opt);
    return it == v.end() || it + 1 == v.end() ? std::string("<none>") : *(it + 1);
  };
  CHECK(after(u.prefix, "-l") == "alice");
  CHECK(after(u.prefix, "-p") == "2222");
  CHECK(after(u.prefix, "-F") == "/tmp/cfg");
  CHECK(has(u.prefix, "ControlMaster=auto"));
  CHECK(has(u.prefix, "ControlPath=/run/cm-%C"));
  // extra options come first (ssh keeps the first value of an option)
  CHECK(std::find(u.prefix.begin(), u.prefix.end(), "Compression=yes") <
        std::find(u.prefix.begin(), u.prefix.end(), "BatchMode=yes"));
  const auto v6 = coropipe::ssh_launcher("[::1]:22", {.user = "bob", .port = 2200});
  CHECK(v6.prefix.back() == "::1");
  CHECK(after(v6.prefix, "-p") == "2200");
  CHECK(after(v6.prefix, "-l") == "bob");
  CHECK(coropipe::ssh_launcher("fe80::1").prefix.back() == "fe80::1");

  for (const char* bad : {"", "-oProxyCommand=touch /tmp/x", "host:0", "host:99999", "host:x", "[::1", "a b", "u@"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS((void)coropipe::ssh_launcher(bad), std::invalid_argument);
  }
}

TEST_CASE("command_launcher: the argv appended as it is, labelled") {
  const auto l = coropipe::command_launcher({"srun", "--ntasks=1", "--quiet"});
  CHECK(l.host == "srun");
  CHECK_FALSE(l.quote_for_shell);
  CHECK(l.command({"/opt/w", "a b"}) == std::vector<std::string>{"srun", "--ntasks=1", "--quiet", "/opt/w", "a b"});
  const auto k = coropipe::command_launcher({"kubectl", "exec", "-i", "worker-0", "--"}, "pod worker-0");
  CHECK(k.host == "pod worker-0");
  CHECK(k.command({"w"}).back() == "w");
  CHECK_THROWS_AS((void)coropipe::command_launcher({}), std::invalid_argument);
  CHECK_THROWS_AS((void)l.command({}), std::invalid_argument);
  // The docs' Slurm and Kubernetes launchers (chapter 4, "More machines").
  // [docs:launcher-slurm-k8s]
  auto slurm = coropipe::command_launcher({"srun", "--ntasks=1", "--quiet"}, "slurm");
  auto pod = coropipe::command_launcher({"kubectl", "exec", "-i", "workers-0", "--"}, "workers-0");
  // [docs:end]
  CHECK(slurm.command({"/opt/w", "--serve"}) ==
        std::vector<std::string>{"srun", "--ntasks=1", "--quiet", "/opt/w", "--serve"});
  CHECK(pod.command({"/opt/w", "--serve"}) ==
        std::vector<std::string>{"kubectl", "exec", "-i", "workers-0", "--", "/opt/w", "--serve"});
  CHECK(pod.host == "workers-0");
}

TEST_CASE("classify_launch_failure: ssh's own failures (255) told apart by its messages") {
  using coropipe::errc;
  const auto ssh_failed = coropipe::exit_status::from_code(255);
  struct sample {
    const char* text;
    errc expected;
  };
  // Messages as OpenSSH 9.2 prints them.
  const sample samples[] = {
      {"ssh: Could not resolve hostname nosuchhost.invalid: Name or service not known\r\n", errc::remote_host_unknown},
      {"ssh: Could not resolve hostname x: Temporary failure in name resolution\r\n", errc::remote_host_unknown},
      {"ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n", errc::remote_connection_failed},
      {"ssh: connect to host 10.255.255.1 port 22: Connection timed out\r\n", errc::remote_connection_failed},
      {"ssh: connect to host 192.0.2.1 port 22: No route to host\r\n", errc::remote_connection_failed},
      {"kex_exchange_identification: read: Connection reset by peer\r\nConnection reset by 127.0.0.1 port 2222\r\n",
       errc::remote_connection_failed},
      {"kex_exchange_identification: Connection closed by remote host\r\nConnection closed by 127.0.0.1 port 2222\r\n",
       errc::remote_connection_failed},
      {"alice@127.0.0.1: Permission denied (publickey).\r\n", errc::remote_authentication_failed},
      {"Warning: Identity file /nonexistent not accessible: No such file or directory.\n"
       "alice@127.0.0.1: Permission denied (publickey,password).\r\n",
       errc::remote_authentication_failed},
      {"Received disconnect from 127.0.0.1 port 2222:2: Too many authentication failures\r\n",
       errc::remote_authentication_failed},
      {"No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\n"
       "Host key verification failed.\r\n",
       errc::remote_host_key_rejected},
      {"@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
       "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
       "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
       "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n",
       errc::remote_host_key_rejected},
      {"", errc::remote_start_failed},
      {"Can't open user config file /nope: No such file or directory\r\n", errc::remote_start_failed},
  };
  for (const auto& s : samples) {
    CAPTURE(s.text);
    CHECK(coropipe::classify_launch_failure(ssh_failed, s.text) == s.expected);
  }
}

TEST_CASE("classify_launch_failure: the remote shell's missing program, and other ends") {
  using coropipe::errc;
  using coropipe::exit_status;
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(127), "sh: 1: exec: /opt/w: not found\n") ==
        errc::remote_program_missing);
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(127),
                                          "bash: line 1: /opt/w: No such file or directory\n") ==
        errc::remote_program_missing);
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(127), "") == errc::remote_program_missing);
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(126), "sh: 1: exec: /etc/passwd: Permission denied\n") ==
        errc::remote_program_missing);
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(1), "bash: worker: command not found\n") ==
        errc::remote_program_missing);
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(1),
                                          "coropipe::serve_stdio: initializer failed: no database\n") ==
        errc::remote_start_failed);
  CHECK(coropipe::classify_launch_failure(exit_status::killed(9), "") == errc::remote_start_failed);
  CHECK(coropipe::classify_launch_failure(exit_status::from_code(0), "") == errc::remote_start_failed);
}

TEST_CASE("launch_failure_line: the telling line, else the last one, printable") {
  CHECK(coropipe::launch_failure_line("Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\r\n"
                                      "alice@127.0.0.1: Permission denied (publickey).\r\n") ==
        "alice@127.0.0.1: Permission denied (publickey).");
  CHECK(coropipe::launch_failure_line("first\nsecond\n\n") == "second");
  CHECK(coropipe::launch_failure_line("") == "");
  CHECK(coropipe::launch_failure_line("bell\a here") == "bell? here");
  CHECK(coropipe::launch_failure_line(std::string(1000, 'x')).size() == 300);
}

TEST_CASE("command_launcher: the worker runs through a stand-in for srun/kubectl, which forwards stdio") {
  asio::io_context io;
  const auto l = coropipe::command_launcher({stdio_launcher}, "stand-in");
  run(io, [&]() -> awaitable<void> {
    // The program really ran through it, with the argv unquoted.
    const auto env_argv = l.command({child_helper, "print-env"});
    const std::string env = co_await output_of(env_argv);
    CHECK(env.find("COROPIPE_LAUNCHED_BY=stdio_launcher\n") != std::string::npos);
    const auto args_argv = l.command({child_helper, "print-args", "a b", "$x"});
    const std::string args = co_await output_of(args_argv);
    CHECK(args == child_helper + "\nprint-args\na b\n$x\n");
    // A pool of workers launched through it gets its replies.
    int_pool p(io.get_executor(), {{.workers = int_workers::launched(l, {worker_program, "inc"}), .count = 3}});
    std::vector<int> got(200);
    for (int i = 0; i < 200; ++i) got[static_cast<std::size_t>(i)] = co_await p.async_submit(i, use_awaitable);
    for (int i = 0; i < 200; ++i) CHECK(got[static_cast<std::size_t>(i)] == i + 1);
    const auto groups = p.groups();
    REQUIRE(groups.size() == 1);
    CHECK(groups[0].name == "stand-in");
    CHECK(groups[0].workers_running == 3);
    CHECK_FALSE(groups[0].removed);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("ssh_launcher: the quoted command runs through a stand-in ssh client (sh -c on this machine)") {
  asio::io_context io;
  const auto l = coropipe::ssh_launcher("nowhere", {.program = fake_ssh, .config_file = "/dev/null"});
  run(io, [&]() -> awaitable<void> {
    std::vector<std::string> argv = {"/usr/bin/printf", "%s\\000"};
    argv.insert(argv.end(), nasty_args.begin(), nasty_args.end());
    const auto ssh_argv = l.command(argv);
    CHECK(co_await output_of(ssh_argv) == nul_joined(nasty_args));
    int_pool p(io.get_executor(), {{.workers = int_workers::launched(l, {worker_program, "inc"}), .count = 2}});
    for (int i = 0; i < 50; ++i) CHECK(co_await p.async_submit(i, use_awaitable) == i + 1);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

namespace {

// A launcher that fails like ssh does: @p text on stderr, exit status @p code.
coropipe::launcher failing_launcher(const std::string& text, int code, const std::string& label) {
  return coropipe::command_launcher(
      {"/bin/sh", "-c", "printf '%s\\n' \"$0\" >&2; exit " + std::to_string(code), text}, label);
}

// A launcher whose "remote shell" runs the worker through sh, after @p prelude.
coropipe::launcher shell_launcher(const std::string& prelude, const std::string& label) {
  return coropipe::command_launcher({"/bin/sh", "-c", prelude + " exec \"$@\"", "sh"}, label);
}

} // namespace

TEST_CASE("groups: a host that keeps failing is removed with one message; the other groups go on") {
  asio::io_context io;
  std::vector<std::string> removed;
  coropipe::error_code removed_ec;
  run(io, [&]() -> awaitable<void> {
    const auto down = failing_launcher("ssh: connect to host 127.0.0.1 port 1: Connection refused", 255, "down");
    int_pool p(io.get_executor(),
               {{.workers = int_workers::launched(down, {worker_program, "inc"}), .count = 3},
                {.workers = int_workers::spawned({worker_program, "inc"}), .count = 2, .name = "here"}},
               {.restart_backoff = 1ms,
                .on_group_removed = [&](const std::string& name, coropipe::error_code ec, const std::string& message) {
                  removed.push_back(name + " | " + message);
                  removed_ec = ec;
                }});
    // Every request gets its reply, none is lost to the failing host.
    for (int i = 0; i < 300; ++i) CHECK(co_await p.async_submit(i, use_awaitable) == i + 1);
    // The failing group is removed within a few starts (backoff 1, 2, 4 ms).
    for (int i = 0; i < 200 && removed.empty(); ++i) {
      asio::steady_timer t(io, 10ms);
      co_await t.async_wait(use_awaitable);
    }
    REQUIRE(removed.size() == 1);
    CHECK(removed_ec == coropipe::errc::remote_connection_failed);
    CHECK(removed[0].find("down | group 'down' (3 workers) removed after 3 failed starts in a row") == 0);
    CHECK(removed[0].find("Connection refused") != std::string::npos);
    const auto groups = p.groups();
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].removed);
    CHECK(groups[0].workers_running == 0);
    CHECK(groups[0].last_error == coropipe::errc::remote_connection_failed);
    CHECK(groups[0].last_message.find("down: could not connect") == 0);
    CHECK(groups[0].last_message.find("(exited with 255)") != std::string::npos);
    CHECK_FALSE(groups[1].removed);
    CHECK(groups[1].name == "here");
    CHECK_FALSE(p.broken());
    CHECK(co_await p.async_submit(41, use_awaitable) == 42);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("groups: each start-failure kind gives its error; with every group removed, requests fail with it") {
  struct failure {
    coropipe::launcher l;
    coropipe::errc expected;
    std::string in_message;
  };
  const std::vector<failure> failures = {
      {failing_launcher("ssh: Could not resolve hostname nowhere.invalid: Name or service not known", 255, "h"),
       coropipe::errc::remote_host_unknown, "Could not resolve hostname"},
      {failing_launcher("alice@127.0.0.1: Permission denied (publickey).", 255, "h"),
       coropipe::errc::remote_authentication_failed, "Permission denied (publickey)"},
      {failing_launcher("Host key verification failed.", 255, "h"), coropipe::errc::remote_host_key_rejected,
       "Host key verification failed"},
      {shell_launcher("", "h"), coropipe::errc::remote_program_missing, "not found"},
      {shell_launcher("echo 'Welcome to host h!';", "h"), coropipe::errc::worker_protocol_error, "not a message frame"},
      {shell_launcher("exit 3;", "h"), coropipe::errc::remote_start_failed, "exited with 3"},
  };
  for (const auto& f : failures) {
    CAPTURE(f.in_message);
    asio::io_context io;
    int calls = 0;
    run(io, [&]() -> awaitable<void> {
      const std::string program = f.expected == coropipe::errc::remote_program_missing ? "/nonexistent/worker" : worker_program;
      int_pool p(io.get_executor(), {{.workers = int_workers::launched(f.l, {program, "inc"}), .count = 2}},
                 {.restart_backoff = 1ms, .on_group_removed = [&](const std::string&, coropipe::error_code, const std::string&) { ++calls; }});
      auto [ec, r] = co_await p.async_submit(1, as_tuple);
      if (f.expected == coropipe::errc::remote_start_failed) {
        // Ending before the first reply may be a crash on the request: it
        // counts as an attempt (worker_died), and as a failed start.
        CHECK(ec == coropipe::errc::worker_died);
        for (int i = 0; i < 5 && ec == coropipe::errc::worker_died; ++i) {
          auto [e, x] = co_await p.async_submit(1, as_tuple);
          ec = e;
        }
      }
      CHECK(ec == f.expected);
      auto [ec2, r2] = co_await p.async_submit(2, as_tuple);
      CHECK(ec2 == f.expected);
      CHECK(p.broken());
      const auto groups = p.groups();
      REQUIRE(groups.size() == 1);
      CHECK(groups[0].removed);
      CHECK(groups[0].last_error == f.expected);
      CAPTURE(groups[0].last_message);
      CHECK(groups[0].last_message.find(f.in_message) != std::string::npos);
      co_await p.async_shutdown(use_awaitable);
    }());
    CHECK(calls == 1);
    CHECK(coropipe_test::has_children() == false);
  }
}

TEST_CASE("groups: a launched group's later workers start once the first has answered") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    const auto l = coropipe::command_launcher({stdio_launcher}, "stand-in");
    int_pool p(io.get_executor(), {{.workers = int_workers::launched(l, {worker_program, "inc"}), .count = 3}});
    CHECK(p.groups()[0].workers_running == 1);  // the first only
    CHECK(co_await p.async_submit(1, use_awaitable) == 2);
    for (int i = 0; i < 200 && p.groups()[0].workers_running < 3; ++i) {
      asio::steady_timer t(io, 5ms);
      co_await t.async_wait(use_awaitable);
    }
    CHECK(p.groups()[0].workers_running == 3);
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("groups: a pool with no worker in any group is refused") {
  asio::io_context io;
  CHECK_THROWS_AS(int_pool(io.get_executor(), std::vector<coropipe::worker_group<int, int>>{}), coropipe::system_error);
  CHECK_THROWS_AS(int_pool(io.get_executor(), {{.workers = int_workers::spawned({worker_program}), .count = 0}}),
                  coropipe::system_error);
}
