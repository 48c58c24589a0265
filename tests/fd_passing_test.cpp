// SPDX-License-Identifier: BSL-1.0
#include <coropipe/fd_passing.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/address.hpp>
#include <coropipe/error.hpp>
#include <coropipe/listener.hpp>
#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::errc;
using coropipe::error_code;
using coropipe::unique_fd;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);
using socket_t = coropipe::socket_type;

std::pair<socket_t, socket_t> socket_pair(asio::io_context& io) {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  socket_t a(io), b(io);
  a.assign(asio::generic::stream_protocol(AF_UNIX, 0), sv[0]);
  b.assign(asio::generic::stream_protocol(AF_UNIX, 0), sv[1]);
  return {std::move(a), std::move(b)};
}

std::pair<unique_fd, unique_fd> make_pipe() {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  return {unique_fd(p[0]), unique_fd(p[1])};
}

std::string read_to_end(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

std::string unique_path() {
  static std::atomic<int> n{0};
  return "/tmp/coropipe-test-" + std::to_string(::getpid()) + "-fd-" + std::to_string(n++) + ".sock";
}

std::string python_for_tests() {
  for (const char* p : {COROPIPE_PYTHON313, COROPIPE_PYTHON312, COROPIPE_PYTHON311})
    if (*p != '\0') return p;
  return {};
}

} // namespace

TEST_CASE("fd_passing: a pipe's read end handed over, read directly by the receiver") {
  asio::io_context io;
  auto ab_pair = socket_pair(io);  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& a = ab_pair.first;
  auto& b = ab_pair.second;
  auto rw_pair = make_pipe();  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& r = rw_pair.first;
  auto& w = rw_pair.second;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    // [docs:fd-handover]
    // Sender: hand over the pipe's read end, then close ours.
    const std::array<int, 1> fds{r.get()};
    co_await coropipe::async_send_fds(a, std::span<const int>(fds), use_awaitable);
    r.reset();
    // Receiver: the descriptor arrives as a unique_fd (close-on-exec set).
    std::vector<unique_fd> got = co_await coropipe::async_receive_fds(b, 1, use_awaitable);
    // [docs:end]
    REQUIRE(got.size() == 1);
    CHECK((::fcntl(got[0].get(), F_GETFD) & FD_CLOEXEC) != 0);
    REQUIRE(::write(w.get(), "hello", 5) == 5);
    w.reset();
    CHECK(read_to_end(got[0].get()) == "hello");
  }());
}

TEST_CASE("fd_passing: many descriptors; zero; more than 253 refused") {
  asio::io_context io;
  auto ab_pair = socket_pair(io);  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& a = ab_pair.first;
  auto& b = ab_pair.second;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    std::vector<int> many(253, STDIN_FILENO);
    co_await coropipe::async_send_fds(a, std::span<const int>(many), use_awaitable);
    auto got = co_await coropipe::async_receive_fds(b, 253, use_awaitable);
    CHECK(got.size() == 253);
    got.clear();
    co_await coropipe::async_send_fds(a, std::span<const int>(), use_awaitable);
    auto none = co_await coropipe::async_receive_fds(b, 0, use_awaitable);
    CHECK(none.empty());
    std::vector<int> too_many(254, STDIN_FILENO);
    auto [ec] = co_await coropipe::async_send_fds(a, std::span<const int>(too_many), as_tuple);
    CHECK(ec == errc::descriptor_passing_failed);
    auto [rec, fds] = co_await coropipe::async_receive_fds(b, 254, as_tuple);
    CHECK(rec == errc::descriptor_passing_failed);
  }());
}

TEST_CASE("fd_passing: a count mismatch is an error and nothing leaks") {
  asio::io_context io;
  auto ab_pair = socket_pair(io);  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& a = ab_pair.first;
  auto& b = ab_pair.second;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    const std::array<int, 3> three{STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO};
    co_await coropipe::async_send_fds(a, std::span<const int>(three), use_awaitable);
    auto [ec, fds] = co_await coropipe::async_receive_fds(b, 1, as_tuple);
    CHECK(ec == errc::descriptor_passing_failed);
    CHECK(fds.empty());
    // A plain byte where descriptors were expected.
    co_await asio::async_write(a, asio::buffer("\x01", 1), use_awaitable);
    auto [ec2, fds2] = co_await coropipe::async_receive_fds(b, 1, as_tuple);
    CHECK(ec2 == errc::descriptor_passing_failed);
    a.close();
    auto [ec3, fds3] = co_await coropipe::async_receive_fds(b, 1, as_tuple);
    CHECK(ec3 == asio::error::eof);
  }());
}

TEST_CASE("fd_passing: truncated control data (receiver out of descriptors) closes what arrived") {
  asio::io_context io;
  auto ab_pair = socket_pair(io);  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& a = ab_pair.first;
  auto& b = ab_pair.second;
  const std::array<int, 8> eight{0, 0, 0, 0, 0, 0, 0, 0};
  coropipe_test::run(io, [&]() -> awaitable<void> {
    co_await coropipe::async_send_fds(a, std::span<const int>(eight), use_awaitable);
    error_code ec;
    std::vector<unique_fd> fds;
    {
      // Room for only a few more descriptors: the kernel installs what fits
      // and sets MSG_CTRUNC.
      const int lowest = coropipe_test::lowest_free_fd();
      coropipe_test::scoped_rlimit limit(RLIMIT_NOFILE, static_cast<rlim_t>(lowest + 3));
      std::tie(ec, fds) = co_await coropipe::async_receive_fds(b, 8, as_tuple);
    }
    CHECK(ec == errc::descriptor_passing_failed);
    CHECK(fds.empty());
  }());
}

TEST_CASE("fd_passing: credentials header first (SO_PASSCRED) is walked past") {
  asio::io_context io;
  auto ab_pair = socket_pair(io);  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& a = ab_pair.first;
  auto& b = ab_pair.second;
  const int one = 1;
  REQUIRE(::setsockopt(b.native_handle(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0);
  auto rw_pair = make_pipe();  // not a structured binding: clang 14 cannot capture those in lambdas
  auto& r = rw_pair.first;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    const std::array<int, 1> fds{r.get()};
    co_await coropipe::async_send_fds(a, std::span<const int>(fds), use_awaitable);
    auto got = co_await coropipe::async_receive_fds(b, 1, use_awaitable);
    CHECK(got.size() == 1);
  }());
}

TEST_CASE("fd_passing: Python's send_handle to coropipe, and coropipe to Python's recv_handle") {
  const std::string py = python_for_tests();
  if (py.empty()) {
    MESSAGE("no Python found at configure time: SKIPPED");
    return;
  }
  {
    asio::io_context io;
    coropipe::listener l(io, coropipe::address::unix_path(unique_path()));
    auto p = coropipe_test::start_program({py, COROPIPE_MP_PEER, "send_handle", l.local_address().python_literal()});
    std::string data;
    coropipe_test::run(io, [&]() -> awaitable<void> {
      auto s = co_await l.async_accept(use_awaitable);
      auto fds = co_await coropipe::async_receive_fds(s.next_layer(), 1, use_awaitable);
      REQUIRE(fds.size() == 1);
      data = read_to_end(fds[0].get());
      co_await s.async_send(asio::buffer("read", 4), use_awaitable);
      co_await s.async_close(use_awaitable);
    }());
    const auto res = coropipe_test::finish_program(p);
    INFO("stderr: " << res.err);
    CHECK(data == "through the pipe from Python");
    CHECK(res.out == "ok\n");
  }
  {
    asio::io_context io;
    coropipe::listener l(io, coropipe::address::abstract(unique_path().substr(5)));
    auto p = coropipe_test::start_program({py, COROPIPE_MP_PEER, "recv_handle", l.local_address().python_literal()});
    coropipe_test::run(io, [&]() -> awaitable<void> {
      auto s = co_await l.async_accept(use_awaitable);
      auto rw_pair = make_pipe();  // not a structured binding: clang 14 cannot capture those in lambdas
      auto& r = rw_pair.first;
      auto& w = rw_pair.second;
      const std::array<int, 1> fds{r.get()};
      co_await coropipe::async_send_fds(s.next_layer(), std::span<const int>(fds), use_awaitable);
      r.reset();
      REQUIRE(::write(w.get(), "through the pipe from coropipe", 30) == 30);
      w.reset();
      auto msg = co_await s.async_receive(use_awaitable);
      CHECK(msg);
    }());
    const auto res = coropipe_test::finish_program(p);
    INFO("stderr: " << res.err);
    CHECK(res.out == "through the pipe from coropipe\n");
  }
}
