// SPDX-License-Identifier: BSL-1.0
#include <coropipe/attach.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/pipe.hpp>
#include <coropipe/sigpipe.hpp>

#include <coropipe/asio.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using asio::posix::stream_descriptor;

bool is_closed(int fd) {
  errno = 0;
  return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

bool is_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  REQUIRE(flags != -1);
  return (flags & O_NONBLOCK) != 0;
}

bool sigpipe_blocked_in_this_thread() {
  sigset_t mask;
  sigemptyset(&mask);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, nullptr, &mask) == 0);
  return sigismember(&mask, SIGPIPE) == 1;
}

bool sigpipe_pending() {
  sigset_t pending;
  sigemptyset(&pending);
  REQUIRE(::sigpending(&pending) == 0);
  return sigismember(&pending, SIGPIPE) == 1;
}

std::string pattern(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

asio::awaitable<std::string> round_trip(stream_descriptor& writer, stream_descriptor& reader,
                                        std::string message) {
  const std::size_t written =
      co_await asio::async_write(writer, asio::buffer(message), asio::use_awaitable);
  CHECK(written == message.size());
  std::string received;
  std::array<char, 64> buf{};
  while (received.size() < message.size()) {
    const std::size_t n = co_await reader.async_read_some(asio::buffer(buf), asio::use_awaitable);
    received.append(buf.data(), n);
  }
  co_return received;
}

asio::awaitable<std::size_t> write_all(stream_descriptor& writer, const std::string& data) {
  const std::size_t n = co_await asio::async_write(writer, asio::buffer(data), asio::use_awaitable);
  writer.close();  // the reader then sees end of stream
  co_return n;
}

// Reads until end of stream; returns the bytes and the final error (eof).
asio::awaitable<std::pair<std::string, coropipe::error_code>> read_to_eof(stream_descriptor& reader) {
  std::string received;
  std::array<char, 4096> buf{};
  for (;;) {
    auto [ec, n] = co_await reader.async_read_some(
        asio::buffer(buf), coropipe::compat::as_tuple(asio::use_awaitable));
    received.append(buf.data(), n);
    if (ec) co_return std::make_pair(std::move(received), ec);
  }
}

asio::awaitable<std::tuple<coropipe::error_code, std::size_t>> write_with_error(
    stream_descriptor& writer, const std::string& data) {
  auto [ec, n] = co_await asio::async_write(writer, asio::buffer(data),
                                            coropipe::compat::as_tuple(asio::use_awaitable));
  co_return std::make_tuple(ec, n);
}

asio::awaitable<coropipe::error_code> write_catching(stream_descriptor& writer, const std::string& data) {
  try {
    co_await asio::async_write(writer, asio::buffer(data), asio::use_awaitable);
  } catch (const coropipe::system_error& e) {
    co_return e.code();
  }
  co_return coropipe::error_code();
}

// The io_context's epoll descriptor, found among the descriptors that
// appeared after @p before.
int find_new_epoll_fd(const std::vector<int>& before) {
  for (int fd : coropipe_test::open_fds()) {
    bool old = false;
    for (int b : before) old = old || b == fd;
    if (!old && coropipe_test::fd_target(fd) == "anon_inode:[eventpoll]") return fd;
  }
  return -1;
}

} // namespace

TEST_CASE("attach() returns an open stream_descriptor that owns the descriptor") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  const int fd = r.get();
  {
    stream_descriptor stream = coropipe::attach(io, std::move(r));
    CHECK(stream.is_open());
    CHECK(stream.native_handle() == fd);
    CHECK_FALSE(r.valid());  // NOLINT(bugprone-use-after-move): the argument was moved from
    CHECK(stream.get_executor() == asio::any_io_executor(io.get_executor()));
    // Blocking until Asio's first operation on it.
    CHECK_FALSE(is_nonblocking(fd));
    CHECK_FALSE(is_closed(fd));
  }
  // The stream closed it when destroyed.
  CHECK(is_closed(fd));
}

TEST_CASE("attach(io.get_executor(), fd) works too") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  const int fd = w.get();
  stream_descriptor stream = coropipe::attach(io.get_executor(), std::move(w));
  CHECK(stream.is_open());
  CHECK(stream.native_handle() == fd);
  CHECK(stream.get_executor() == asio::any_io_executor(io.get_executor()));

  // And the ec overloads, on both kinds of first argument, clear ec.
  auto [r2, w2] = coropipe::pipe();
  coropipe::error_code ec = std::make_error_code(std::errc::io_error);
  stream_descriptor s2 = coropipe::attach(io.get_executor(), std::move(r2), ec);
  CHECK_FALSE(ec);
  CHECK(s2.is_open());
  ec = std::make_error_code(std::errc::io_error);
  stream_descriptor s3 = coropipe::attach(io, std::move(w2), ec);
  CHECK_FALSE(ec);
  CHECK(s3.is_open());
}

TEST_CASE("two attached ends of a pipe round-trip data in a coroutine") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  stream_descriptor reader = coropipe::attach(io, std::move(r));
  stream_descriptor writer = coropipe::attach(io, std::move(w));
  const std::string got = coropipe_test::run(io, round_trip(writer, reader, "hello through asio"));
  CHECK(got == "hello through asio");
  // Asio's epoll reactor made both ends non-blocking for its operations; its
  // io_uring backend leaves them as they were.
  CHECK(is_nonblocking(reader.native_handle()) == !coropipe_test::io_uring_backend);
  CHECK(is_nonblocking(writer.native_handle()) == !coropipe_test::io_uring_backend);
}

TEST_CASE("a transfer larger than the pipe's capacity completes, then the reader sees eof") {
  using namespace coropipe::compat::awaitable_operators;
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  stream_descriptor reader = coropipe::attach(io, std::move(r));
  stream_descriptor writer = coropipe::attach(io, std::move(w));
  const std::string data = pattern(1 << 20);  // 16 times the default capacity

  auto both = [&]() -> asio::awaitable<std::tuple<std::size_t, std::pair<std::string, coropipe::error_code>>> {
    co_return co_await (write_all(writer, data) && read_to_eof(reader));
  };
  auto [written, result] = coropipe_test::run(io, both());
  CHECK(written == data.size());
  CHECK(result.first.size() == data.size());
  CHECK(result.first == data);
  CHECK(result.second == asio::error::eof);
}

TEST_CASE("attaching an empty unique_fd fails with EBADF naming attach") {
  asio::io_context io;
  SUBCASE("throwing form, on an io_context") {
    bool thrown = false;
    try {
      (void)coropipe::attach(io, coropipe::unique_fd());
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(e.code() == coropipe::error_code(EBADF, coropipe::system_category()));
      CHECK(what.find("attach") != std::string::npos);
    }
    CHECK(thrown);
  }
  SUBCASE("throwing form, on an executor") {
    CHECK_THROWS_WITH_AS((void)coropipe::attach(io.get_executor(), coropipe::unique_fd()),
                         doctest::Contains("attach"), coropipe::system_error);
  }
  SUBCASE("error_code form") {
    coropipe::error_code ec;
    stream_descriptor stream = coropipe::attach(io, coropipe::unique_fd(), ec);
    CHECK(ec == coropipe::error_code(EBADF, coropipe::system_category()));
    CHECK_FALSE(stream.is_open());
    CHECK(stream.native_handle() == -1);
  }
}

// Only Asio's epoll reactor looks at a descriptor when it is assigned.
TEST_CASE("when the reactor refuses the descriptor, attach() reports it and closes the descriptor" *
          doctest::skip(coropipe_test::io_uring_backend)) {
  asio::io_context io;
  const std::vector<int> before = coropipe_test::open_fds();
  stream_descriptor probe(io);  // makes the io_context create its reactor
  const int epoll_fd = find_new_epoll_fd(before);
  REQUIRE(epoll_fd >= 0);

  // An epoll instance cannot watch itself: epoll_ctl fails with EINVAL.
  SUBCASE("error_code form") {
    coropipe::unique_fd self(::fcntl(epoll_fd, F_DUPFD_CLOEXEC, 0));
    REQUIRE(self.valid());
    const int fd = self.get();
    coropipe::error_code ec;
    stream_descriptor stream = coropipe::attach(io, std::move(self), ec);
    // Asio reports the errno in its own "asio.system" category, which (in
    // Asio 1.22) does not compare equal to std::errc or std::system_category.
    CHECK(ec.value() == EINVAL);
    CHECK_FALSE(stream.is_open());
    CHECK(is_closed(fd));
  }
  SUBCASE("throwing form") {
    coropipe::unique_fd self(::fcntl(epoll_fd, F_DUPFD_CLOEXEC, 0));
    REQUIRE(self.valid());
    const int fd = self.get();
    bool thrown = false;
    try {
      (void)coropipe::attach(io, std::move(self));
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(e.code().value() == EINVAL);
      CHECK(what.find("attach") != std::string::npos);
      CHECK(what.find(coropipe::error_code(EINVAL, coropipe::system_category()).message()) !=
            std::string::npos);
    }
    CHECK(thrown);
    CHECK(is_closed(fd));
  }
}

TEST_CASE("attaching a descriptor number that is no longer open reports EBADF") {
  asio::io_context io;
  // Make the io_context open its reactor's descriptors now, so that none of
  // them takes the number closed below.
  const stream_descriptor probe(io);
  auto [r, w] = coropipe::pipe();
  const int stale = r.release();
  REQUIRE(::close(stale) == 0);
  REQUIRE(is_closed(stale));
  coropipe::error_code ec;
  stream_descriptor stream = coropipe::attach(io, coropipe::unique_fd(stale), ec);
  CHECK(ec.value() == EBADF);
  CHECK_FALSE(stream.is_open());
  CHECK_THROWS_WITH_AS((void)coropipe::attach(io, coropipe::unique_fd(stale)),
                       doctest::Contains("attach"), coropipe::system_error);
  CHECK(is_closed(stale));
}

TEST_CASE("release() takes the descriptor back from the stream") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  const int fd = w.get();
  stream_descriptor writer = coropipe::attach(io, std::move(w));

  coropipe::unique_fd back = coropipe::release(writer);
  CHECK_FALSE(writer.is_open());
  CHECK(back.get() == fd);
  CHECK_FALSE(is_closed(fd));

  // It is still the write end of the pipe, and it is ours.
  REQUIRE(::write(back.get(), "mine", 4) == 4);
  back.reset();
  CHECK(is_closed(fd));
  CHECK(coropipe_test::read_all(r.get()) == "mine");
}

TEST_CASE("release() of a closed stream returns an empty unique_fd") {
  asio::io_context io;
  stream_descriptor never_opened(io);
  coropipe::unique_fd none = coropipe::release(never_opened);
  CHECK_FALSE(none.valid());
  CHECK(none.get() == -1);

  auto [r, w] = coropipe::pipe();
  stream_descriptor closed = coropipe::attach(io, std::move(r));
  closed.close();
  CHECK_FALSE(coropipe::release(closed).valid());

  // Releasing twice: the second time there is nothing left.
  stream_descriptor writer = coropipe::attach(io, std::move(w));
  coropipe::unique_fd first = coropipe::release(writer);
  CHECK(first.valid());
  CHECK_FALSE(coropipe::release(writer).valid());
}

TEST_CASE("release() aborts pending operations and keeps O_NONBLOCK") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  const int fd = r.get();
  stream_descriptor reader = coropipe::attach(io, std::move(r));

  std::array<char, 16> buf{};
  coropipe::error_code read_ec;
  std::size_t read_n = 99;
  bool completed = false;
  reader.async_read_some(asio::buffer(buf), [&](const coropipe::error_code& ec, std::size_t n) {
    read_ec = ec;
    read_n = n;
    completed = true;
  });
  coropipe::unique_fd back = coropipe::release(reader);
  CHECK_FALSE(reader.is_open());
  REQUIRE(back.get() == fd);

  io.run();
  CHECK(completed);
  CHECK(read_ec == asio::error::operation_aborted);
  CHECK(read_n == 0);

  // Asio's epoll reactor made it non-blocking when it started the read; that
  // stays. (Its io_uring backend left it blocking, and so it stays.)
  CHECK(is_nonblocking(back.get()) == !coropipe_test::io_uring_backend);
  // The released descriptor still reads what is written to the pipe.
  REQUIRE(::write(w.get(), "late", 4) == 4);
  char c[4] = {};
  CHECK(::read(back.get(), c, sizeof c) == 4);
  CHECK(std::string(c, 4) == "late");
}

TEST_CASE("a released descriptor can be attached again") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  stream_descriptor reader = coropipe::attach(io, std::move(r));
  stream_descriptor writer = coropipe::attach(io, std::move(w));
  stream_descriptor again = coropipe::attach(io, coropipe::release(reader));
  CHECK(coropipe_test::run(io, round_trip(writer, again, "second life")) == "second life");
}

TEST_CASE("attach() blocks SIGPIPE in the calling thread only") {
  sigset_t main_before;
  sigemptyset(&main_before);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, nullptr, &main_before) == 0);
  const bool main_blocked_before = sigismember(&main_before, SIGPIPE) == 1;

  // A fresh thread, whose mask we set ourselves, attaches a descriptor.
  bool blocked_before = true;
  bool blocked_after = false;
  bool harmless_after = false;
  bool attached = false;
  std::thread t([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (::pthread_sigmask(SIG_UNBLOCK, &set, nullptr) != 0) return;
    sigset_t mask;
    ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    blocked_before = sigismember(&mask, SIGPIPE) == 1;

    asio::io_context io;
    coropipe::error_code ec;
    stream_descriptor stream = coropipe::attach(io, coropipe::pipe(ec).read_end, ec);
    attached = !ec && stream.is_open();

    ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    blocked_after = sigismember(&mask, SIGPIPE) == 1;
    harmless_after = coropipe::sigpipe_is_harmless_in_this_thread();
  });
  t.join();

  CHECK(attached);
  CHECK_FALSE(blocked_before);
  CHECK(blocked_after);
  CHECK(harmless_after);

  // The main thread's mask is untouched by what the other thread did.
  CHECK(sigpipe_blocked_in_this_thread() == main_blocked_before);
}

TEST_CASE("after attach() a write to a pipe without reader fails with broken_pipe") {
  asio::io_context io;
  auto [r, w] = coropipe::pipe();
  stream_descriptor writer = coropipe::attach(io, std::move(w));
  CHECK(coropipe::sigpipe_is_harmless_in_this_thread());
  CHECK(sigpipe_blocked_in_this_thread());
  r.reset();  // no reader any more

  SUBCASE("as_tuple") {
    auto [ec, n] = coropipe_test::run(io, write_with_error(writer, "into the void"));
    CHECK(ec == asio::error::broken_pipe);
    CHECK(ec.value() == EPIPE);
    CHECK(n == 0);
  }
  SUBCASE("exception") {
    const coropipe::error_code ec = coropipe_test::run(io, write_catching(writer, "into the void"));
    CHECK(ec == asio::error::broken_pipe);
  }
  // Still alive; the blocked SIGPIPE may be pending: discard it.
  coropipe::discard_pending_sigpipe();
  CHECK_FALSE(sigpipe_pending());
  CHECK(writer.is_open());
}
