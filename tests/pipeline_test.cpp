// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pipeline.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/communicate.hpp>
#include <coropipe/error.hpp>

#include <coropipe/asio.hpp>

#include <signal.h>

#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::exit_status;
using coropipe::pipeline;
using coropipe::pipeline_options;
using coropipe::pipeline_status;
using coropipe::spawn_options;
using coropipe::stdio;
using coropipe_test::run;

namespace {

const std::string helper = COROPIPE_CHILD_HELPER;
constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

awaitable<std::string> read_to_eof(asio::posix::stream_descriptor& in) {
  std::string out;
  char buf[65536];
  for (;;) {
    auto [ec, n] = co_await in.async_read_some(asio::buffer(buf), as_tuple);
    out.append(buf, n);
    if (ec == asio::error::eof) co_return out;
    if (ec) throw coropipe::system_error(ec, "read");
  }
}

awaitable<void> write_and_close(asio::posix::stream_descriptor& out, const std::string& text) {
  co_await asio::async_write(out, asio::buffer(text), use_awaitable);
  out.close();
}

// Feeds @p input to the pipeline's stdin pipe while reading its stdout pipe;
// then waits for it.
std::pair<std::string, pipeline_status> feed(asio::io_context& io, pipeline& p, const std::string& input) {
  return run(io, [&]() -> awaitable<std::pair<std::string, pipeline_status>> {
    std::string out;
    if (p.stdin_pipe().is_open()) {
      out = co_await (write_and_close(p.stdin_pipe(), input) && read_to_eof(p.stdout_pipe()));
    } else {
      out = co_await read_to_eof(p.stdout_pipe());
    }
    co_return std::pair{out, co_await p.async_wait(use_awaitable)};
  }());
}

coropipe::system_error spawn_error(asio::io_context& io, pipeline_options opts) {
  try {
    (void)coropipe::spawn(io, std::move(opts));
  } catch (const coropipe::system_error& e) {
    return e;
  }
  FAIL("spawn() did not throw");
  return coropipe::system_error(coropipe::error_code());
}

} // namespace

TEST_CASE("yes | head -n 3: each stage's status, like PIPESTATUS, and the pipefail summary") {
  asio::io_context io;
  pipeline p = coropipe::spawn(io, spawn_options{.argv = {"yes"}} |
                                       spawn_options{.argv = {"head", "-n", "3"}, .out = stdio::pipe()});
  REQUIRE(p.size() == 2);
  CHECK(p.process_group() == 0);
  const auto [out, st] = feed(io, p, "");
  CHECK(out == "y\ny\ny\n");
  REQUIRE(st.stages.size() == 2);
  CHECK(st.stages[0] == exit_status::killed(SIGPIPE));
  CHECK(st.stages[1] == exit_status::from_code(0));
  CHECK(st.last() == exit_status::from_code(0));
  CHECK(st.pipefail() == exit_status::killed(SIGPIPE));
  CHECK(st.pipefail().shell_code() == 141);
  CHECK_FALSE(st.success());
}

TEST_CASE("a | b | c gives what sh -c 'a | b | c' gives") {
  asio::io_context io;
  std::string input;
  for (int i = 0; i < 2000; ++i) input += std::string(1, static_cast<char>('a' + (i * 7) % 26)) + "x" + std::to_string(i % 13) + "\n";

  pipeline p = coropipe::spawn(io, spawn_options{.argv = {"tr", "a-z", "A-Z"}, .in = stdio::pipe()} |
                                       spawn_options{.argv = {"sort"}} | spawn_options{.argv = {"uniq", "-c"}} |
                                       spawn_options{.argv = {"sort", "-rn"}, .out = stdio::pipe()});
  const auto [out, st] = feed(io, p, input);
  CHECK(st.success());
  CHECK(st.stages.size() == 4);

  coropipe::process sh = coropipe::spawn(io, {.argv = {"sh", "-c", "tr a-z A-Z | sort | uniq -c | sort -rn"},
                                              .in = stdio::pipe(), .out = stdio::pipe()});
  const auto expected = run(io, coropipe::async_communicate(sh, input, use_awaitable));
  CHECK(expected.status.success());
  CHECK_FALSE(out.empty());
  CHECK(out == expected.out);
}

TEST_CASE("the bytes between stages do not pass through the parent: it holds no end of those pipes") {
  asio::io_context io;
  asio::posix::stream_descriptor reactor_made(io);  // the io_context's own descriptors
  const auto before = coropipe_test::open_fds();
  pipeline p = coropipe::spawn(io, spawn_options{.argv = {"cat"}, .in = stdio::pipe()} | spawn_options{.argv = {"cat"}} |
                                       spawn_options{.argv = {"cat"}, .out = stdio::pipe()});
  int pipes = 0;
  for (int fd : coropipe_test::open_fds()) {
    if (std::find(before.begin(), before.end(), fd) == before.end() &&
        coropipe_test::fd_target(fd).find("pipe:") == 0)
      ++pipes;
  }
  CHECK(pipes == 2);  // the first stage's stdin, the last stage's stdout
  const auto [out, st] = feed(io, p, "through three cats\n");
  CHECK(out == "through three cats\n");
  CHECK(st.success());
}

TEST_CASE("a failing stage does not hang the others") {
  asio::io_context io;
  {
    pipeline p = coropipe::spawn(io, spawn_options{.argv = {"yes"}} | spawn_options{.argv = {"false"}});
    const pipeline_status st = run(io, p.async_wait(use_awaitable), 30s);
    CHECK(st.stages[0] == exit_status::killed(SIGPIPE));
    CHECK(st.stages[1] == exit_status::from_code(1));
    CHECK(st.pipefail() == exit_status::from_code(1));
  }
  {
    pipeline p = coropipe::spawn(io, spawn_options{.argv = {"sh", "-c", "exit 3"}} |
                                         spawn_options{.argv = {"cat"}, .out = stdio::pipe()});
    const auto [out, st] = feed(io, p, "");
    CHECK(out.empty());
    CHECK(st.stages[0] == exit_status::from_code(3));
    CHECK(st.stages[1] == exit_status::from_code(0));
    CHECK(st.last().success());
    CHECK(st.pipefail() == exit_status::from_code(3));
  }
}

TEST_CASE("each stage's stderr is its own; the stages are processes") {
  asio::io_context io;
  pipeline p = coropipe::spawn(io, spawn_options{.argv = {"sh", "-c", "echo to-stderr >&2; echo to-stdout"}, .err = stdio::pipe()} |
                                       spawn_options{.argv = {"cat"}, .out = stdio::pipe()});
  const std::string err = run(io, read_to_eof(p.stages()[0].stderr_pipe()));
  const auto [out, st] = feed(io, p, "");
  CHECK(err == "to-stderr\n");
  CHECK(out == "to-stdout\n");
  CHECK(st.success());
  CHECK(p.stages()[0].status() == exit_status::from_code(0));
}

TEST_CASE("a stage that cannot be started: the error names it, and the stages already started are killed and reaped") {
  asio::io_context io;
  const auto e = spawn_error(io, spawn_options{.argv = {helper, "sleep", "60"}} |
                                     spawn_options{.argv = {"no-such-program-coropipe"}} | spawn_options{.argv = {"cat"}});
  CHECK(e.code() == std::errc::no_such_file_or_directory);
  CHECK(coropipe_test::what_of(e) ==
        "coropipe::spawn: stage 1 (no-such-program-coropipe): execve no-such-program-coropipe: No such file or directory");
  CHECK_FALSE(coropipe_test::has_children());

  coropipe::error_code ec;
  pipeline p = coropipe::spawn(io, spawn_options{.argv = {"true"}} | spawn_options{.argv = {"true"}, .cwd = "/nonexistent"}, ec);
  CHECK(ec == std::errc::no_such_file_or_directory);
  CHECK(p.size() == 0);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("pipelines that cannot work are invalid_argument") {
  asio::io_context io;
  auto check = [&](pipeline_options opts, const std::string& what) {
    INFO("expecting: " << what);
    const auto e = spawn_error(io, std::move(opts));
    CHECK(e.code() == coropipe::errc::invalid_argument);
    CHECK(coropipe_test::what_of(e) == "coropipe::spawn: " + what + ": invalid argument");
  };
  check({}, "the pipeline has no stage");
  check(spawn_options{.argv = {"a"}, .out = stdio::pipe()} | spawn_options{.argv = {"b"}},
        "stage 0 (a): out is set, but its stdout is the next stage's stdin");
  check(spawn_options{.argv = {"a"}} | spawn_options{.argv = {"b"}, .in = stdio::null()},
        "stage 1 (b): in is set, but the previous stage's stdout is its stdin");
  pipeline_options grouped = spawn_options{.argv = {"a"}} | spawn_options{.argv = {"b"}, .new_session = true};
  grouped.new_process_group = true;
  check(std::move(grouped), "stage 1 (b): new_session or process_group set in a pipeline with new_process_group");
  check(spawn_options{.argv = {"a"}} | spawn_options{}, "stage 1: argv is empty");
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("new_process_group: the stages share a group led by the first; async_stop stops them all") {
  asio::io_context io;
  {
    pipeline_options opts = spawn_options{.argv = {helper, "print-ids"}} | spawn_options{.argv = {"cat"}, .out = stdio::pipe()};
    opts.new_process_group = true;
    pipeline p = coropipe::spawn(io, std::move(opts));
    CHECK(p.process_group() == p.stages()[0].pid());
    CHECK(p.stages()[1].process_group() == p.process_group());
    const auto [out, st] = feed(io, p, "");
    std::istringstream is(out);
    pid_t pid = 0, ppid = 0, pgid = 0;
    is >> pid >> ppid >> pgid;
    CHECK(pgid == p.stages()[0].pid());
    CHECK(st.success());
  }
  {
    pipeline_options opts = spawn_options{.argv = {helper, "sleep", "60"}} | spawn_options{.argv = {helper, "sleep", "60"}} |
                            spawn_options{.argv = {helper, "ignore-term", "60"}, .out = stdio::pipe()};
    opts.new_process_group = true;
    pipeline p = coropipe::spawn(io, std::move(opts));
    // Once ignore-term has said "ready", it ignores SIGTERM.
    run(io, [&]() -> awaitable<void> {
      char buf[6];
      co_await asio::async_read(p.stdout_pipe(), asio::buffer(buf), use_awaitable);
    }());
    const pipeline_status st = run(io, p.async_stop(200ms, use_awaitable));
    CHECK(st.stages[0] == exit_status::killed(SIGTERM));
    CHECK(st.stages[1] == exit_status::killed(SIGTERM));
    CHECK(st.stages[2] == exit_status::killed(SIGKILL));
  }
}

TEST_CASE("a cancelled wait leaves the pipeline running; signal() reaches every stage") {
  asio::io_context io;
  pipeline p = coropipe::spawn(io, spawn_options{.argv = {helper, "sleep", "60"}} | spawn_options{.argv = {helper, "sleep", "60"}});
  asio::steady_timer timer(io, 100ms);
  const auto first = run(io, [&]() -> awaitable<std::size_t> {
    auto v = co_await (p.async_wait(use_awaitable) || timer.async_wait(use_awaitable));
    co_return v.index();
  }());
  CHECK(first == 1);
  CHECK_FALSE(p.stages()[0].status());
  p.signal(SIGUSR1);
  const pipeline_status st = run(io, p.async_wait(use_awaitable));
  CHECK(st.stages[0] == exit_status::killed(SIGUSR1));
  CHECK(st.stages[1] == exit_status::killed(SIGUSR1));
}

TEST_CASE("pipeline_status: last, pipefail, success") {
  pipeline_status st;
  CHECK(st.success());
  CHECK(st.last().success());
  CHECK(st.pipefail().success());
  st.stages = {exit_status::from_code(2), exit_status::killed(SIGPIPE), exit_status::from_code(0)};
  CHECK(st.last() == exit_status::from_code(0));
  CHECK(st.pipefail() == exit_status::killed(SIGPIPE));
  CHECK_FALSE(st.success());
  st.stages = {exit_status::from_code(0), exit_status::from_code(0)};
  CHECK(st.pipefail().success());
  CHECK(st.success());
}

TEST_CASE("an empty pipeline, and a pipeline of one stage") {
  asio::io_context io;
  pipeline empty;
  CHECK(empty.size() == 0);
  auto [ec, st] = run(io, [&]() -> awaitable<std::tuple<coropipe::error_code, pipeline_status>> {
    co_return co_await empty.async_wait(as_tuple);
  }());
  CHECK(ec == coropipe::errc::no_child);
  coropipe::error_code sec;
  empty.signal(SIGTERM, sec);
  CHECK(sec == coropipe::errc::no_child);

  pipeline_options one;
  one.stages.push_back(spawn_options{.argv = {"sh", "-c", "exit 5"}});
  pipeline p = coropipe::spawn(io, std::move(one));
  CHECK(run(io, p.async_wait(use_awaitable)).pipefail() == exit_status::from_code(5));
}
