// SPDX-License-Identifier: BSL-1.0
#include <coropipe/line_reader.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <optional>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::line_reader;
using coropipe::stdio;
using coropipe_test::run;

namespace {

const std::string helper = COROPIPE_CHILD_HELPER;
constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

template <typename Reader>
awaitable<std::vector<std::string>> all_lines(Reader& r) {
  std::vector<std::string> lines;
  while (auto line = co_await r.async_read_line(use_awaitable)) lines.push_back(*line);
  co_return lines;
}

// A pipe whose write end the test writes to directly, and whose read end is
// attached; the reader refers to it.
struct fed_pipe {
  asio::posix::stream_descriptor in;
  coropipe::unique_fd out;

  explicit fed_pipe(asio::io_context& io) : in(io) {
    auto [r, w] = coropipe::pipe();
    in = coropipe::attach(io, std::move(r));
    out = std::move(w);
  }
  void write(const std::string& s) { REQUIRE(::write(out.get(), s.data(), s.size()) == static_cast<ssize_t>(s.size())); }
  void close() { out.reset(); }
};

} // namespace

TEST_CASE("lines of a program's output, the last one without a newline, then the end (again and again)") {
  asio::io_context io;
  coropipe::process p =
      coropipe::spawn(io, {.argv = {"printf", "first\n\nthird\r\nlast without newline"}, .out = stdio::pipe()});
  line_reader lines(p.stdout_pipe());
  static_assert(std::is_same_v<decltype(lines), line_reader<asio::posix::stream_descriptor&>>);
  CHECK(run(io, all_lines(lines)) ==
        std::vector<std::string>{"first", "", "third\r", "last without newline"});
  auto [ec, end] = run(io, lines.async_read_line(as_tuple));
  CHECK_FALSE(ec);
  CHECK_FALSE(end.has_value());
  CHECK(run(io, p.async_wait(use_awaitable)).success());
}

TEST_CASE("each line is delivered as soon as it has arrived, not at the end of the stream") {
  asio::io_context io;
  coropipe::process p = coropipe::spawn(io, {.argv = {helper, "lines-on-demand", "3"}, .in = stdio::pipe(), .out = stdio::pipe()});
  line_reader lines(p.stdout_pipe());
  const auto got = run(io, [&]() -> awaitable<std::vector<std::string>> {
    std::vector<std::string> seen;
    // The program prints line I+1 only after it is sent a byte, which is sent
    // only once line I has been read: this needs line-by-line delivery.
    for (int i = 1; i <= 3; ++i) {
      auto line = co_await lines.async_read_line(use_awaitable);
      seen.push_back(line.value_or("(end)"));
      if (i < 3) co_await asio::async_write(p.stdin_pipe(), asio::buffer("x", 1), use_awaitable);
    }
    auto end = co_await lines.async_read_line(use_awaitable);
    seen.push_back(end.value_or("(end)"));
    co_return seen;
  }(), 30s);
  CHECK(got == std::vector<std::string>{"line 1", "line 2", "line 3", "(end)"});
  CHECK(run(io, p.async_wait(use_awaitable)).success());
}

TEST_CASE("a line arriving one byte at a time is assembled") {
  asio::io_context io;
  coropipe::process p = coropipe::spawn(io, {.argv = {helper, "slow-bytes", "ab\ncd\n"}, .out = stdio::pipe()});
  line_reader lines(p.stdout_pipe());
  CHECK(run(io, all_lines(lines)) == std::vector<std::string>{"ab", "cd"});
  CHECK(run(io, p.async_wait(use_awaitable)).success());
}

TEST_CASE("many lines in one read, and a large one across many reads") {
  asio::io_context io;
  fed_pipe pipe(io);
  std::string text;
  for (int i = 0; i < 1000; ++i) text += "line " + std::to_string(i) + "\n";
  const std::string big(100000, 'b');
  text += big + "\n";
  line_reader lines(pipe.in);
  std::vector<std::string> got;
  run(io, [&]() -> awaitable<void> {
    // Written from a second pipe user: the test writes, the reader reads, in
    // turns small enough for the pipe's buffer.
    std::size_t sent = 0;
    while (sent < text.size()) {
      const std::size_t n = std::min<std::size_t>(32768, text.size() - sent);
      pipe.write(text.substr(sent, n));
      sent += n;
      // Read whatever complete lines are there now.
      for (;;) {
        asio::steady_timer t(io, 20ms);
        auto r = co_await (lines.async_read_line(use_awaitable) || t.async_wait(use_awaitable));
        if (r.index() == 1) break;
        auto line = std::get<0>(r);
        REQUIRE(line);
        got.push_back(*line);
      }
    }
    pipe.close();
    while (auto line = co_await lines.async_read_line(use_awaitable)) got.push_back(*line);
  }());
  REQUIRE(got.size() == 1001);
  CHECK(got[0] == "line 0");
  CHECK(got[999] == "line 999");
  CHECK(got[1000] == big);
}

TEST_CASE("a line longer than the limit is an error; the next line is read normally") {
  asio::io_context io;
  fed_pipe pipe(io);
  pipe.write("short\n" + std::string(50, 'x') + "\nafter\n12345678\n123456789");
  pipe.close();
  line_reader lines(pipe.in, 8);
  CHECK(lines.max_line() == 8);
  std::vector<std::pair<coropipe::error_code, std::optional<std::string>>> got;
  run(io, [&]() -> awaitable<void> {
    for (int i = 0; i < 6; ++i) {
      auto [ec, line] = co_await lines.async_read_line(as_tuple);
      got.emplace_back(ec, line);
    }
  }());
  REQUIRE(got.size() == 6);
  CHECK(got[0].second == "short");
  CHECK(got[1].first == coropipe::errc::message_too_large);
  CHECK(got[2].second == "after");
  CHECK(got[3].second == "12345678");  // exactly the limit
  CHECK(got[4].first == coropipe::errc::message_too_large);  // the last, unterminated, is too long too
  CHECK_FALSE(got[5].first);
  CHECK_FALSE(got[5].second);
}

TEST_CASE("a too-long line is reported before its end arrives, and skipped when it does") {
  asio::io_context io;
  fed_pipe pipe(io);
  line_reader lines(pipe.in, 10);
  pipe.write(std::string(11, 'y'));  // no newline yet
  auto [ec, line] = run(io, lines.async_read_line(as_tuple));
  CHECK(ec == coropipe::errc::message_too_large);
  pipe.write(std::string(5000, 'y') + "\nnext\n");
  CHECK(run(io, lines.async_read_line(use_awaitable)) == "next");
}

TEST_CASE("a cancelled read loses nothing; reading goes on") {
  asio::io_context io;
  fed_pipe pipe(io);
  line_reader lines(pipe.in);
  pipe.write("partial ");
  const auto first = run(io, [&]() -> awaitable<std::size_t> {
    asio::steady_timer t(io, 50ms);
    auto r = co_await (lines.async_read_line(use_awaitable) || t.async_wait(use_awaitable));
    co_return r.index();
  }());
  CHECK(first == 1);  // the timer won: the read was cancelled
  pipe.write("line\n");
  CHECK(run(io, lines.async_read_line(use_awaitable)) == "partial line");
}

TEST_CASE("a reader that owns its stream; errors other than end of stream are reported") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  line_reader lines(coropipe::attach(io, std::move(r)));
  static_assert(std::is_same_v<decltype(lines), line_reader<asio::posix::stream_descriptor>>);
  REQUIRE(::write(w.get(), "owned\n", 6) == 6);
  w.reset();
  CHECK(run(io, lines.async_read_line(use_awaitable)) == "owned");
  CHECK(run(io, lines.async_read_line(use_awaitable)) == std::nullopt);

  asio::posix::stream_descriptor closed(io);
  line_reader bad(closed);
  auto [ec, line] = run(io, bad.async_read_line(as_tuple));
  CHECK(ec == asio::error::bad_descriptor);
  CHECK_FALSE(line);
}
