// SPDX-License-Identifier: BSL-1.0
#include <coropipe/io.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/attach.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/sigpipe.hpp>

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(ip/tcp.hpp)

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe_test::run;
using coropipe_test::run_all;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

struct pipe_streams {
  asio::posix::stream_descriptor r;
  asio::posix::stream_descriptor w;
};

pipe_streams make_pipe(asio::io_context& io) {
  auto p = coropipe::pipe();
  return {coropipe::attach(io, std::move(p.read_end)), coropipe::attach(io, std::move(p.write_end))};
}

// A deterministic, non-periodic byte pattern.
std::string pattern(std::size_t n, std::uint32_t seed) {
  std::string out(n, '\0');
  std::uint32_t x = seed * 2654435761U + 7U;
  for (auto& c : out) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

// Bytes waiting to be read in a pipe or socket.
std::size_t readable(int fd) {
  int n = 0;
  REQUIRE(::ioctl(fd, FIONREAD, &n) == 0);
  return static_cast<std::size_t>(n);
}


void set_non_blocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  REQUIRE(flags >= 0);
  REQUIRE(::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
}

// Writes all of @p s into a descriptor with room for it (no waiting).
void write_raw(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    REQUIRE(n > 0);
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Reads whatever is available right now (made non-blocking if need be).
std::string read_available(int fd) {
  set_non_blocking(fd);
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// Fills a pipe until it would block; returns the bytes written.
std::size_t fill(int fd) {
  set_non_blocking(fd);
  const std::string chunk(4096, 'f');
  std::size_t total = 0;
  for (;;) {
    const ssize_t n = ::write(fd, chunk.data(), chunk.size());
    if (n <= 0) break;
    total += static_cast<std::size_t>(n);
  }
  return total;
}

bool sigpipe_pending() {
  sigset_t set;
  sigemptyset(&set);
  ::sigpending(&set);
  return sigismember(&set, SIGPIPE) == 1;
}

// Reads until end of stream with coropipe::async_read_some.
template <typename Stream>
awaitable<std::string> read_to_eof(Stream& s, std::size_t buffer_size = 65536) {
  std::string out;
  std::vector<char> buf(buffer_size);
  for (;;) {
    auto [ec, n] = co_await coropipe::async_read_some(s, asio::buffer(buf), as_tuple);
    out.append(buf.data(), n);
    if (ec == asio::error::eof) co_return out;
    if (ec) throw coropipe::system_error(ec, "read_to_eof");
  }
}

// Reads exactly @p n bytes with coropipe::async_read_some.
template <typename Stream>
awaitable<std::string> read_exactly(Stream& s, std::size_t n) {
  std::string out;
  std::vector<char> buf(65536);
  while (out.size() < n) {
    const std::size_t want = std::min(buf.size(), n - out.size());
    const std::size_t got = co_await coropipe::async_read_some(s, asio::buffer(buf.data(), want), use_awaitable);
    out.append(buf.data(), got);
  }
  co_return out;
}

// What the callback of an operation received, and whether it ran at all.
struct completion {
  bool called = false;
  coropipe::error_code ec;
  std::size_t n = 99;

  // The callback, which records here what it receives.
  auto handler() {
    return [this](coropipe::error_code e, std::size_t k) {
      called = true;
      ec = e;
      n = k;
    };
  }
};

// Starts an operation by calling @p initiate with a callback, and checks that
// the callback runs from io.run() only, never inside the initiating call.
template <typename Initiate>
completion completed_in_run(asio::io_context& io, Initiate initiate) {
  completion c;
  initiate(c.handler());
  CHECK_FALSE(c.called);
  io.run();
  CHECK(c.called);
  return c;
}

// Connects @p a to @p b (both of @p io) through the loopback interface.
void connect_loopback(asio::io_context& io, asio::ip::tcp::socket& a, asio::ip::tcp::socket& b) {
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  run(io, [&]() -> awaitable<void> {
    co_await (acceptor.async_accept(b, use_awaitable) && a.async_connect(acceptor.local_endpoint(), use_awaitable));
  }());
}

} // namespace

// --- every kind of completion token -------------------------------------------

TEST_CASE("use_awaitable: read_some returns the bytes there, waits for later ones, and throws eof at the end") {
  asio::io_context io;
  auto p = make_pipe(io);
  write_raw(p.w.native_handle(), "hello");
  run(io, [&]() -> awaitable<void> {
    char buf[16];
    const std::size_t n = co_await coropipe::async_read_some(p.r, asio::buffer(buf), use_awaitable);
    CHECK(std::string(buf, n) == "hello");

    // Nothing there: it waits until a writer comes along.
    auto late_writer = [&]() -> awaitable<void> {
      asio::steady_timer t(io, 10ms);
      co_await t.async_wait(use_awaitable);
      const std::size_t w = co_await coropipe::async_write(p.w, asio::buffer(std::string_view("later")), use_awaitable);
      CHECK(w == 5);
    };
    const std::size_t m = co_await (coropipe::async_read_some(p.r, asio::buffer(buf), use_awaitable) && late_writer());
    CHECK(std::string(buf, m) == "later");

    p.w.close();
    coropipe::error_code got;
    try {
      (void)co_await coropipe::async_read_some(p.r, asio::buffer(buf), use_awaitable);
    } catch (const coropipe::system_error& e) {
      got = e.code();
    }
    CHECK(got == asio::error::eof);
  }());
}

TEST_CASE("as_tuple(use_awaitable): results and errors as values") {
  asio::io_context io;
  auto p = make_pipe(io);
  run(io, [&]() -> awaitable<void> {
    auto [wec, w] = co_await coropipe::async_write(p.w, asio::buffer(std::string_view("Spam 0")), as_tuple);
    CHECK_FALSE(wec);
    CHECK(w == 6);
    auto [wsec, ws] = co_await coropipe::async_write_some(p.w, asio::buffer(std::string_view("Spam 1")), as_tuple);
    CHECK_FALSE(wsec);
    CHECK(ws == 6);
    char buf[64];
    auto [ec, n] = co_await coropipe::async_read_some(p.r, asio::buffer(buf), as_tuple);
    CHECK_FALSE(ec);
    CHECK(std::string(buf, n) == "Spam 0Spam 1");  // bytes, not messages
    p.w.close();
    auto [eof, zero] = co_await coropipe::async_read_some(p.r, asio::buffer(buf), as_tuple);
    CHECK(eof == asio::error::eof);
    CHECK(zero == 0);
    // And again: the end of a stream stays the end.
    auto [eof2, zero2] = co_await coropipe::async_read_some(p.r, asio::buffer(buf), as_tuple);
    CHECK(eof2 == asio::error::eof);
    CHECK(zero2 == 0);
  }());
}

TEST_CASE("redirect_error(use_awaitable) reports the error code without throwing") {
  asio::io_context io;
  auto p = make_pipe(io);
  p.w.close();
  run(io, [&]() -> awaitable<void> {
    char buf[8];
    coropipe::error_code ec;
    const std::size_t n =
        co_await coropipe::async_read_some(p.r, asio::buffer(buf), asio::redirect_error(use_awaitable, ec));
    CHECK(ec == asio::error::eof);
    CHECK(n == 0);
  }());
}

TEST_CASE("a callback is never invoked inside the initiating call, even when the operation can complete at once") {
  asio::io_context io;
  auto p = make_pipe(io);
  write_raw(p.w.native_handle(), "ready");
  char buf[16];

  SUBCASE("read_some with data ready") {
    const completion c = completed_in_run(io, [&](auto cb) { coropipe::async_read_some(p.r, asio::buffer(buf), cb); });
    CHECK_FALSE(c.ec);
    CHECK(std::string(buf, c.n) == "ready");
  }
  SUBCASE("read_some at end of stream") {
    (void)read_available(p.r.native_handle());
    p.w.close();
    const completion c = completed_in_run(io, [&](auto cb) { coropipe::async_read_some(p.r, asio::buffer(buf), cb); });
    CHECK(c.ec == asio::error::eof);
    CHECK(c.n == 0);
  }
  SUBCASE("read_some into an empty buffer") {
    const completion c =
        completed_in_run(io, [&](auto cb) { coropipe::async_read_some(p.r, asio::mutable_buffer(), cb); });
    CHECK_FALSE(c.ec);
    CHECK(c.n == 0);
    CHECK(readable(p.r.native_handle()) == 5);
  }
  SUBCASE("write with room in the pipe") {
    const completion c =
        completed_in_run(io, [&](auto cb) { coropipe::async_write(p.w, asio::buffer(std::string_view("more")), cb); });
    CHECK_FALSE(c.ec);
    CHECK(c.n == 4);
    CHECK(read_available(p.r.native_handle()) == "readymore");
  }
  SUBCASE("write_some with room in the pipe") {
    const completion c = completed_in_run(
        io, [&](auto cb) { coropipe::async_write_some(p.w, asio::buffer(std::string_view("more")), cb); });
    CHECK_FALSE(c.ec);
    CHECK(c.n == 4);
  }
  SUBCASE("write to a pipe whose reader is gone") {
    p.r.close();
    const completion c =
        completed_in_run(io, [&](auto cb) { coropipe::async_write(p.w, asio::buffer(std::string_view("more")), cb); });
    CHECK(c.ec == asio::error::broken_pipe);
    CHECK(c.n == 0);
  }
}

TEST_CASE("callbacks: a read waits for data, a write waits for room") {
  asio::io_context io;
  auto p = make_pipe(io);
  const std::size_t capacity = fill(p.w.native_handle());
  REQUIRE(capacity > 0);
  (void)read_available(p.r.native_handle());  // empty again

  // A read on the empty pipe completes once a byte arrives.
  std::string got;
  char buf[64];
  bool read_done = false;
  coropipe::async_read_some(p.r, asio::buffer(buf), [&](coropipe::error_code ec, std::size_t n) {
    CHECK_FALSE(ec);
    got.assign(buf, n);
    read_done = true;
  });
  io.poll();
  CHECK_FALSE(read_done);
  write_raw(p.w.native_handle(), "x");
  io.run();
  CHECK(read_done);
  CHECK(got == "x");

  // A write into a full pipe completes once the reader made room for it all.
  (void)read_available(p.r.native_handle());
  REQUIRE(fill(p.w.native_handle()) > 0);
  const std::string data = pattern(10000, 1);
  bool write_done = false;
  std::size_t written = 0;
  coropipe::async_write(p.w, asio::buffer(data), [&](coropipe::error_code ec, std::size_t n) {
    CHECK_FALSE(ec);
    written = n;
    write_done = true;
  });
  io.restart();
  io.poll();
  CHECK_FALSE(write_done);
  std::string drained;
  while (!write_done) {
    drained += read_available(p.r.native_handle());
    io.restart();
    io.run_for(1ms);
  }
  drained += read_available(p.r.native_handle());
  CHECK(written == data.size());
  REQUIRE(drained.size() >= data.size());
  CHECK(drained.substr(drained.size() - data.size()) == data);
}

TEST_CASE("deferred: nothing happens until the operation is launched, then it completes normally") {
  asio::io_context io;
  auto p = make_pipe(io);
  char buf[16];
  auto read_op = coropipe::async_read_some(p.r, asio::buffer(buf), coropipe::compat::deferred);
  write_raw(p.w.native_handle(), "abc");
  auto write_op = coropipe::async_write(p.w, asio::buffer(std::string_view("def")), coropipe::compat::deferred);
  io.poll();
  CHECK(readable(p.r.native_handle()) == 3);  // neither read nor written yet

  SUBCASE("launched with use_awaitable") {
    run(io, [&]() -> awaitable<void> {
      const std::size_t w = co_await std::move(write_op)(use_awaitable);
      CHECK(w == 3);
      CHECK(readable(p.r.native_handle()) == 6);
      const std::size_t n = co_await std::move(read_op)(use_awaitable);
      CHECK(std::string(buf, n) == "abcdef");
    }());
  }
  SUBCASE("launched with a callback") {
    std::size_t w = 0;
    std::move(write_op)([&](coropipe::error_code ec, std::size_t k) {
      CHECK_FALSE(ec);
      w = k;
    });
    io.restart();
    io.run();
    CHECK(w == 3);
    std::size_t n = 0;
    std::move(read_op)([&](coropipe::error_code ec, std::size_t k) {
      CHECK_FALSE(ec);
      n = k;
    });
    io.restart();
    io.run();
    CHECK(std::string(buf, n) == "abcdef");
  }
}

// --- end of stream, broken pipe, empty buffers ----------------------------------

TEST_CASE("writing to a pipe whose reader is gone gives broken_pipe with every token, and no SIGPIPE") {
  asio::io_context io;
  auto p = make_pipe(io);
  p.r.close();
  run(io, [&]() -> awaitable<void> {
    auto [ec, n] = co_await coropipe::async_write(p.w, asio::buffer(std::string_view("x")), as_tuple);
    CHECK(ec == asio::error::broken_pipe);
    CHECK(n == 0);
    auto [ec2, n2] = co_await coropipe::async_write_some(p.w, asio::buffer(std::string_view("xy")), as_tuple);
    CHECK(ec2 == asio::error::broken_pipe);
    CHECK(n2 == 0);
    coropipe::error_code thrown;
    try {
      (void)co_await coropipe::async_write(p.w, asio::buffer(std::string_view("x")), use_awaitable);
    } catch (const coropipe::system_error& e) {
      thrown = e.code();
    }
    CHECK(thrown == asio::error::broken_pipe);
  }());
  coropipe::error_code cb_ec;
  coropipe::async_write_some(p.w, asio::buffer(std::string_view("x")), [&](coropipe::error_code e, std::size_t) { cb_ec = e; });
  io.restart();
  io.run();
  CHECK(cb_ec == asio::error::broken_pipe);
  CHECK_FALSE(sigpipe_pending());  // the blocked SIGPIPE was discarded
}

TEST_CASE("broken_pipe, not death by SIGPIPE, in a thread where SIGPIPE was never blocked") {
  // A forked child, and in it a fresh thread (coropipe caches "SIGPIPE is
  // blocked here" per thread) with SIGPIPE unblocked and its default action:
  // the process would die of it if coropipe did not block it.
  const pid_t pid = coropipe_test::fork_raw([] {
    int code = 1;
    std::thread t([&code] {
      sigset_t pipe_only;
      sigemptyset(&pipe_only);
      sigaddset(&pipe_only, SIGPIPE);
      ::pthread_sigmask(SIG_UNBLOCK, &pipe_only, nullptr);
      ::signal(SIGPIPE, SIG_DFL);
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC) != 0) return;
      ::close(fds[0]);
      asio::io_context io;
      asio::posix::stream_descriptor w(io, fds[1]);  // not attach(): nothing blocked SIGPIPE yet
      coropipe::error_code tuple_ec, callback_ec;
      asio::co_spawn(
          io,
          [&]() -> awaitable<void> {
            auto [ec, n] = co_await coropipe::async_write(w, asio::buffer(std::string_view("x")), as_tuple);
            tuple_ec = ec;
            (void)n;
          },
          [](std::exception_ptr) {});
      io.run();
      coropipe::async_write(w, asio::buffer(std::string_view("y")),
                            [&](coropipe::error_code ec, std::size_t) { callback_ec = ec; });
      io.restart();
      io.run();
      sigset_t pending;
      sigemptyset(&pending);
      ::sigpending(&pending);
      const bool still_pending = sigismember(&pending, SIGPIPE) == 1;
      if (tuple_ec == asio::error::broken_pipe && callback_ec == asio::error::broken_pipe && !still_pending) code = 7;
    });
    t.join();
    return code;
  });
  const auto status = coropipe_test::wait_for_pid(pid, 30s);
  REQUIRE(status.has_value());
  INFO("wait status " << *status);
  CHECK_FALSE(WIFSIGNALED(*status));
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 7);
}

TEST_CASE("empty buffers complete at once with 0 bytes, without waiting") {
  asio::io_context io;
  auto p = make_pipe(io);
  run(io, [&]() -> awaitable<void> {
    // The pipe is empty: a non-empty read would wait forever.
    const std::size_t n = co_await coropipe::async_read_some(p.r, asio::mutable_buffer(), use_awaitable);
    CHECK(n == 0);
    auto [ec, m] = co_await coropipe::async_read_some(p.r, asio::mutable_buffer(), as_tuple);
    CHECK_FALSE(ec);
    CHECK(m == 0);
    const std::size_t w = co_await coropipe::async_write(p.w, asio::const_buffer(), use_awaitable);
    CHECK(w == 0);
    const std::size_t ws = co_await coropipe::async_write_some(p.w, asio::const_buffer(), use_awaitable);
    CHECK(ws == 0);
    const std::vector<asio::const_buffer> empties(5);
    auto [wec, wv] = co_await coropipe::async_write(p.w, empties, as_tuple);
    CHECK_FALSE(wec);
    CHECK(wv == 0);
  }());
  CHECK(readable(p.r.native_handle()) == 0);

  // Even into a full pipe, an empty write does not wait.
  REQUIRE(fill(p.w.native_handle()) > 0);
  std::size_t n = 99;
  coropipe::async_write(p.w, asio::const_buffer(), [&](coropipe::error_code ec, std::size_t k) {
    CHECK_FALSE(ec);
    n = k;
  });
  io.restart();
  io.run();
  CHECK(n == 0);
}

// --- gather writes and large transfers ------------------------------------------

TEST_CASE("async_write gathers many buffers (more than one writev takes) in order") {
  asio::io_context io;
  auto p = make_pipe(io);
  std::vector<std::string> parts;
  for (std::uint32_t i = 0; i < 200; ++i) parts.push_back(pattern(i % 7 == 0 ? 0 : (i * 37) % 1500, i));
  std::vector<asio::const_buffer> buffers;
  std::string expected;
  for (const auto& s : parts) {
    buffers.push_back(asio::buffer(s));
    expected += s;
  }
  REQUIRE(expected.size() > std::size_t{64} << 10);  // more than the pipe holds, too

  std::size_t written = 0;
  std::string got;
  run_all(io, [&]() -> awaitable<void> {
                 written = co_await coropipe::async_write(p.w, buffers, use_awaitable);
                 p.w.close();
               }(),
               [&]() -> awaitable<void> { got = co_await read_to_eof(p.r, 1000); }());
  CHECK(written == expected.size());
  CHECK(got.size() == expected.size());
  const bool same = got == expected;
  CHECK(same);
}

TEST_CASE("async_write_some writes a prefix of the buffers with one writev") {
  asio::io_context io;
  auto p = make_pipe(io);
  std::vector<std::string> parts;
  for (std::uint32_t i = 0; i < 100; ++i) parts.push_back(pattern(10 + i, i));
  std::vector<asio::const_buffer> buffers;
  std::string expected;
  std::size_t first_64 = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    buffers.push_back(asio::buffer(parts[i]));
    expected += parts[i];
    if (i < 64) first_64 += parts[i].size();
  }
  const std::size_t n = run(io, coropipe::async_write_some(p.w, buffers, use_awaitable));
  CHECK(n > 0);
  CHECK(n <= first_64);
  const std::string got = read_available(p.r.native_handle());
  CHECK(got.size() == n);
  CHECK(got == expected.substr(0, n));
}

TEST_CASE("8 MiB through a pipe between two coroutines, byte for byte") {
  asio::io_context io;
  auto p = make_pipe(io);
  const std::string data = pattern(std::size_t{8} << 20, 8);
  std::string got;
  got.reserve(data.size());

  SUBCASE("use_awaitable writes of varying sizes, as_tuple reads") {
    run_all(io, [&]() -> awaitable<void> {
                   std::size_t pos = 0;
                   std::uint32_t rng = 12345;
                   while (pos < data.size()) {
                     rng = rng * 1103515245U + 12345U;
                     const std::size_t chunk = std::min<std::size_t>(1 + (rng >> 8) % 300000, data.size() - pos);
                     const std::size_t n =
                         co_await coropipe::async_write(p.w, asio::buffer(data.data() + pos, chunk), use_awaitable);
                     REQUIRE(n == chunk);
                     pos += chunk;
                   }
                   p.w.close();
                 }(),
                 [&]() -> awaitable<void> { got = co_await read_to_eof(p.r, 50000); }());
  }
  SUBCASE("write_some with as_tuple, reads of exact sizes with use_awaitable") {
    run_all(io, [&]() -> awaitable<void> {
                   std::size_t pos = 0;
                   while (pos < data.size()) {
                     auto [ec, n] = co_await coropipe::async_write_some(
                         p.w, asio::buffer(data.data() + pos, std::min<std::size_t>(100000, data.size() - pos)), as_tuple);
                     REQUIRE_FALSE(ec);
                     REQUIRE(n > 0);
                     pos += n;
                   }
                   p.w.close();
                 }(),
                 [&]() -> awaitable<void> {
                   got = co_await read_exactly(p.r, data.size());
                   char extra;
                   auto [ec, n] = co_await coropipe::async_read_some(p.r, asio::buffer(&extra, 1), as_tuple);
                   CHECK(ec == asio::error::eof);
                   CHECK(n == 0);
                 }());
  }
  SUBCASE("callbacks") {
    std::vector<char> buf(65536);
    std::function<void()> read_more = [&] {
      coropipe::async_read_some(p.r, asio::buffer(buf), [&](coropipe::error_code ec, std::size_t n) {
        got.append(buf.data(), n);
        if (!ec) read_more();
        else CHECK(ec == asio::error::eof);
      });
    };
    std::size_t pos = 0;
    std::function<void()> write_more = [&] {
      if (pos == data.size()) {
        p.w.close();
        return;
      }
      const std::size_t chunk = std::min<std::size_t>(777777, data.size() - pos);
      coropipe::async_write(p.w, asio::buffer(data.data() + pos, chunk), [&, chunk](coropipe::error_code ec, std::size_t n) {
        REQUIRE_FALSE(ec);
        REQUIRE(n == chunk);
        pos += n;
        write_more();
      });
    };
    read_more();
    write_more();
    io.run_for(60s);
    CHECK(pos == data.size());
  }
  CHECK(got.size() == data.size());
  const bool same = got == data;
  CHECK(same);
}

// --- per-operation cancellation ---------------------------------------------------

TEST_CASE("a read cancelled while it waits loses no bytes") {
  asio::io_context io;
  auto p = make_pipe(io);
  char buf[64];

  SUBCASE("use_awaitable || timer") {
    run(io, [&]() -> awaitable<void> {
      asio::steady_timer t(io, 20ms);
      auto r = co_await (coropipe::async_read_some(p.r, asio::buffer(buf), use_awaitable) || t.async_wait(use_awaitable));
      CHECK(r.index() == 1);
    }());
  }
  SUBCASE("as_tuple(use_awaitable) || timer") {
    run(io, [&]() -> awaitable<void> {
      asio::steady_timer t(io, 20ms);
      auto r = co_await (coropipe::async_read_some(p.r, asio::buffer(buf), as_tuple) || t.async_wait(use_awaitable));
      CHECK(r.index() == 1);
    }());
  }
  SUBCASE("bind_cancellation_slot with a callback") {
    asio::cancellation_signal sig;
    completion c;
    coropipe::async_read_some(p.r, asio::buffer(buf), asio::bind_cancellation_slot(sig.slot(), c.handler()));
    io.poll();
    CHECK_FALSE(c.called);
    sig.emit(asio::cancellation_type::terminal);
    io.run();
    CHECK(c.called);
    CHECK(c.ec == asio::error::operation_aborted);
    CHECK(c.n == 0);
  }
  SUBCASE("bind_cancellation_slot with as_tuple(use_awaitable)") {
    asio::cancellation_signal sig;
    coropipe::error_code ec;
    std::size_t n = 99;
    run_all(io,
            [&]() -> awaitable<void> {
              std::tie(ec, n) = co_await coropipe::async_read_some(p.r, asio::buffer(buf),
                                                                   asio::bind_cancellation_slot(sig.slot(), as_tuple));
            }(),
            [&]() -> awaitable<void> {
              asio::steady_timer t(io, 20ms);
              co_await t.async_wait(use_awaitable);
              sig.emit(asio::cancellation_type::terminal);
            }());
    CHECK(ec == asio::error::operation_aborted);
    CHECK(n == 0);
  }

  // Whatever comes next is read whole.
  write_raw(p.w.native_handle(), "after the timeout");
  const std::string got = run(io, read_exactly(p.r, 17));
  CHECK(got == "after the timeout");
}

TEST_CASE("a write cancelled while it waits for room reports what it wrote, and the stream stays consistent") {
  asio::io_context io;
  auto p = make_pipe(io);
  (void)coropipe::set_pipe_capacity(p.w.native_handle(), 4096);
  const std::string data = pattern(100000, 3);

  std::size_t reported = 0;
  SUBCASE("bind_cancellation_slot with a callback") {
    asio::cancellation_signal sig;
    completion c;
    coropipe::async_write(p.w, asio::buffer(data), asio::bind_cancellation_slot(sig.slot(), c.handler()));
    io.poll();
    CHECK_FALSE(c.called);
    const std::size_t in_pipe = readable(p.r.native_handle());
    CHECK(in_pipe > 0);
    CHECK(in_pipe < data.size());
    sig.emit(asio::cancellation_type::terminal);
    io.run();
    CHECK(c.called);
    CHECK(c.ec == asio::error::operation_aborted);
    reported = c.n;
    CHECK(reported == in_pipe);
  }
  SUBCASE("use_awaitable || timer") {
    run(io, [&]() -> awaitable<void> {
      asio::steady_timer t(io, 20ms);
      auto r = co_await (coropipe::async_write(p.w, asio::buffer(data), use_awaitable) || t.async_wait(use_awaitable));
      CHECK(r.index() == 1);
    }());
    reported = readable(p.r.native_handle());
  }

  // The pipe holds exactly the first bytes of data, and nothing more arrives.
  const std::string first = read_available(p.r.native_handle());
  CHECK(first.size() == reported);
  CHECK(first == data.substr(0, first.size()));
  io.restart();
  io.run_for(20ms);
  CHECK(readable(p.r.native_handle()) == 0);

  // Writing the rest from there gives the whole, in order.
  std::string rest;
  run_all(io, [&]() -> awaitable<void> {
                 co_await coropipe::async_write(p.w, asio::buffer(data.data() + first.size(), data.size() - first.size()),
                                                use_awaitable);
                 p.w.close();
               }(),
               [&]() -> awaitable<void> { rest = co_await read_to_eof(p.r); }());
  const bool same = first + rest == data;
  CHECK(same);
}

// --- other descriptor-based streams ------------------------------------------------

TEST_CASE("works on a socketpair: both directions at once, eof, broken_pipe") {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  asio::posix::stream_descriptor a = coropipe::attach(io, std::move(d.first));
  asio::posix::stream_descriptor b = coropipe::attach(io, std::move(d.second));
  const std::string a_to_b = pattern(std::size_t{1} << 20, 1), b_to_a = pattern((std::size_t{1} << 20) + 3, 2);
  std::string got_b, got_a;
  run_all(io, [&]() -> awaitable<void> {
                 co_await coropipe::async_write(a, asio::buffer(a_to_b), use_awaitable);
                 ::shutdown(a.native_handle(), SHUT_WR);
               }(),
               [&]() -> awaitable<void> {
                 co_await coropipe::async_write(b, asio::buffer(b_to_a), use_awaitable);
                 ::shutdown(b.native_handle(), SHUT_WR);
               }(),
               [&]() -> awaitable<void> { got_b = co_await read_to_eof(b); }(),
               [&]() -> awaitable<void> { got_a = co_await read_to_eof(a); }());
  CHECK(got_b.size() == a_to_b.size());
  CHECK(got_a.size() == b_to_a.size());
  const bool same = got_b == a_to_b && got_a == b_to_a;
  CHECK(same);


  // A peer that is gone: broken_pipe, no SIGPIPE.
  auto d2 = coropipe::duplex_pair();
  asio::posix::stream_descriptor c = coropipe::attach(io, std::move(d2.first));
  d2.second.reset();
  auto [ec, n] = run(io, coropipe::async_write_some(c, asio::buffer(std::string_view("x")), as_tuple));
  CHECK(ec == asio::error::broken_pipe);
  CHECK(n == 0);
  CHECK_FALSE(sigpipe_pending());
}

TEST_CASE("works on a TCP loopback socket") {
  asio::io_context io;
  asio::ip::tcp::socket a(io), b(io);
  connect_loopback(io, a, b);
  const std::string a_to_b = pattern(std::size_t{1} << 20, 3), b_to_a = pattern(70000, 4);
  std::string got_b, got_a;
  run_all(io, [&]() -> awaitable<void> {
                 co_await coropipe::async_write(a, asio::buffer(a_to_b), use_awaitable);
                 a.shutdown(asio::ip::tcp::socket::shutdown_send);
               }(),
               [&]() -> awaitable<void> {
                 auto [ec, n] = co_await coropipe::async_write(b, asio::buffer(b_to_a), as_tuple);
                 CHECK_FALSE(ec);
                 CHECK(n == b_to_a.size());
                 b.shutdown(asio::ip::tcp::socket::shutdown_send);
               }(),
               [&]() -> awaitable<void> { got_b = co_await read_to_eof(b, 4096); }(),
               [&]() -> awaitable<void> { got_a = co_await read_to_eof(a); }());
  const bool same = got_b == a_to_b && got_a == b_to_a;
  CHECK(same);
  CHECK(got_b.size() == a_to_b.size());

  // A callback on a socket, at end of stream.
  char buf[8];
  completion c;
  coropipe::async_read_some(a, asio::buffer(buf), c.handler());
  io.restart();
  io.run();
  CHECK(c.ec == asio::error::eof);  // b shut down its sending side
  CHECK(c.n == 0);
}

TEST_CASE("a cancelled read on a TCP socket loses nothing") {
  asio::io_context io;
  asio::ip::tcp::socket a(io), b(io);
  connect_loopback(io, a, b);
  run(io, [&]() -> awaitable<void> {
    char buf[64];
    asio::steady_timer t(io, 20ms);
    auto r = co_await (coropipe::async_read_some(a, asio::buffer(buf), use_awaitable) || t.async_wait(use_awaitable));
    CHECK(r.index() == 1);
    co_await coropipe::async_write(b, asio::buffer(std::string_view("later")), use_awaitable);
    const std::string got = co_await read_exactly(a, 5);
    CHECK(got == "later");
  }());
}

// --- fairness ---------------------------------------------------------------------

namespace {

// Counts how often a coroutine driven by an (already expired) timer gets to
// run while @p busy is still at work.
struct ticker {
  asio::io_context& io;
  const bool& busy_done;
  int ticks_while_busy = 0;

  awaitable<void> operator()() {
    asio::steady_timer t(io);
    while (!busy_done) {
      t.expires_after(0ms);
      co_await t.async_wait(use_awaitable);
      if (!busy_done) ++ticks_while_busy;
    }
  }
};

coropipe::unique_fd memfd_with(std::size_t size) {
  coropipe::unique_fd fd(::memfd_create("coropipe-io-test", MFD_CLOEXEC));
  REQUIRE(fd);
  const std::string chunk = pattern(65536, 5);
  for (std::size_t done = 0; done < size; done += chunk.size()) write_raw(fd.get(), chunk);
  REQUIRE(::lseek(fd.get(), 0, SEEK_SET) == 0);
  return fd;
}

} // namespace

TEST_CASE("fairness: a reader that always finds data ready does not starve a timer-driven coroutine") {
  asio::io_context io;
  bool done = false;
  ticker tick{io, done};
  std::size_t total = 0;
  std::size_t reads = 0;

  SUBCASE("16 MiB from a regular file (never EAGAIN), use_awaitable") {
    // A memfd is always ready: the reactor never has to wait for it.
    auto file = coropipe::attach(io, memfd_with(std::size_t{16} << 20));
    run_all(io, [&]() -> awaitable<void> {
                   std::vector<char> buf(4096);
                   for (;;) {
                     auto [ec, n] = co_await coropipe::async_read_some(file, asio::buffer(buf), as_tuple);
                     total += n;
                     ++reads;
                     if (ec) break;
                   }
                   done = true;
                 }(),
                 tick());
    CHECK(total == std::size_t{16} << 20);
  }
  SUBCASE("a pre-filled pipe read 16 bytes at a time, use_awaitable") {
    auto p = make_pipe(io);
    coropipe::error_code ignored;  // a bigger pipe where allowed; any capacity will do
    (void)coropipe::set_pipe_capacity(p.w.native_handle(), coropipe::recommended_pipe_capacity, ignored);
    const std::size_t filled = fill(p.w.native_handle());
    REQUIRE(filled >= 4096);
    run_all(io, [&]() -> awaitable<void> {
                   char buf[16];
                   while (total < filled) {
                     total += co_await coropipe::async_read_some(p.r, asio::buffer(buf), use_awaitable);
                     ++reads;
                   }
                   done = true;
                 }(),
                 tick());
    CHECK(total == filled);
  }
  SUBCASE("16 MiB into a regular file (never EAGAIN), use_awaitable writes") {
    auto file = coropipe::attach(io, memfd_with(0));
    const std::string chunk = pattern(4096, 6);
    run_all(io, [&]() -> awaitable<void> {
                   while (total < (std::size_t{16} << 20)) {
                     total += co_await coropipe::async_write(file, asio::buffer(chunk), use_awaitable);
                     ++reads;
                   }
                   done = true;
                 }(),
                 tick());
    CHECK(total == std::size_t{16} << 20);
  }
  INFO("operations: " << reads << ", timer ticks while they ran: " << tick.ticks_while_busy);
  CHECK(reads >= 4096);
  // A yield every yield_period immediate completions lets the timer in each
  // time (or nearly: at least every other yield, to leave the scheduler some
  // slack).
  CHECK(tick.ticks_while_busy >= 2);
  CHECK(static_cast<std::size_t>(tick.ticks_while_busy) >= reads / (2 * coropipe::detail::yield_period));
}
