// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pipe.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <limits>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace {

bool has_cloexec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  REQUIRE(flags != -1);
  return (flags & FD_CLOEXEC) != 0;
}

int status_flags(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  REQUIRE(flags != -1);
  return flags;
}

bool is_closed(int fd) {
  errno = 0;
  return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

bool is_power_of_two(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }

// The lowest descriptor number not in use: with RLIMIT_NOFILE set to it, no
// new descriptor can be allocated.
rlim_t lowest_free_fd() {
  int fd = 0;
  while (::fcntl(fd, F_GETFD) != -1) ++fd;
  return static_cast<rlim_t>(fd);
}

// Under UBSan (clang's -fsanitize=vptr), the first virtual call through a
// given dynamic type is validated by probing memory through a pipe, which
// fails while no descriptor can be allocated and is then reported as an
// invalid vptr. Making the virtual calls of error_category and system_error
// once beforehand puts them in the sanitizer's cache. Harmless without it.
void warm_up_error_category_calls() {
  const coropipe::error_code ec(EMFILE, coropipe::system_category());
  CHECK_FALSE(ec.message().empty());
  CHECK(ec == std::errc::too_many_files_open);
  CHECK(ec.default_error_condition() == std::errc::too_many_files_open);
  try {
    throw coropipe::system_error(ec, "warm-up");
  } catch (const coropipe::system_error& e) {
    CHECK(e.code() == ec);
    CHECK(std::string(e.what()).find("warm-up") != std::string::npos);
  }
}

// What a call that failed reported: its code and what().
struct failure {
  bool thrown = false;
  coropipe::error_code code;
  std::string what;
};

template <typename F>
failure catch_system_error(F f) {
  failure result;
  try {
    f();
  } catch (const coropipe::system_error& e) {
    result.thrown = true;
    result.code = e.code();
    result.what = e.what();
  }
  return result;
}

void write_exactly(int fd, const std::string& data) {
  REQUIRE(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
}

std::string read_some(int fd, std::size_t max = 256) {
  std::vector<char> buf(max);
  const ssize_t n = ::read(fd, buf.data(), buf.size());
  REQUIRE(n >= 0);
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

int socket_option(int fd, int option) {
  int value = 0;
  socklen_t len = sizeof value;
  REQUIRE(::getsockopt(fd, SOL_SOCKET, option, &value, &len) == 0);
  REQUIRE(len == sizeof value);
  return value;
}

} // namespace

static_assert(coropipe::recommended_pipe_capacity == std::size_t{1} << 20);
static_assert(coropipe::recommended_pipe_capacity == 1024 * 1024);
static_assert(std::is_same_v<decltype(coropipe::recommended_pipe_capacity), const std::size_t>);

TEST_CASE("pipe() gives two valid close-on-exec, blocking ends") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  REQUIRE(ends.read_end.valid());
  REQUIRE(ends.write_end.valid());
  CHECK(ends.read_end.get() != ends.write_end.get());

  CHECK(has_cloexec(ends.read_end.get()));
  CHECK(has_cloexec(ends.write_end.get()));

  const int read_flags = status_flags(ends.read_end.get());
  const int write_flags = status_flags(ends.write_end.get());
  CHECK((read_flags & O_NONBLOCK) == 0);
  CHECK((write_flags & O_NONBLOCK) == 0);
  CHECK((read_flags & O_ACCMODE) == O_RDONLY);
  CHECK((write_flags & O_ACCMODE) == O_WRONLY);
}

TEST_CASE("bytes written to write_end are read from read_end, and closing write_end gives EOF") {
  coropipe::pipe_ends ends = coropipe::pipe();
  write_exactly(ends.write_end.get(), "hello, pipe");
  CHECK(read_some(ends.read_end.get()) == "hello, pipe");

  write_exactly(ends.write_end.get(), "last words");
  const int write_fd = ends.write_end.get();
  ends.write_end.reset();
  CHECK(is_closed(write_fd));
  CHECK(coropipe_test::read_all(ends.read_end.get()) == "last words");
  CHECK(read_some(ends.read_end.get()).empty());  // EOF again: read returns 0
}

TEST_CASE("pipe() works with structured bindings") {
  auto [r, w] = coropipe::pipe();
  static_assert(std::is_same_v<decltype(r), coropipe::unique_fd>);
  static_assert(std::is_same_v<decltype(w), coropipe::unique_fd>);
  REQUIRE(r.valid());
  REQUIRE(w.valid());
  write_exactly(w.get(), "bound");
  w.reset();
  CHECK(coropipe_test::read_all(r.get()) == "bound");
}

TEST_CASE("pipe(ec) succeeds and clears ec") {
  coropipe::error_code ec = std::make_error_code(std::errc::io_error);
  coropipe::pipe_ends ends = coropipe::pipe(ec);
  CHECK_FALSE(ec);
  CHECK(ends.read_end.valid());
  CHECK(ends.write_end.valid());
  CHECK(has_cloexec(ends.read_end.get()));
  CHECK(has_cloexec(ends.write_end.get()));
}

TEST_CASE("pipe() out of descriptors throws EMFILE naming pipe2, and works again afterwards") {
  const std::vector<int> before = coropipe_test::open_fds();
  warm_up_error_category_calls();
  // Only record results while the limit holds; check them afterwards.
  failure thrown;
  coropipe::error_code ec;
  coropipe::pipe_ends ends;
  {
    coropipe_test::scoped_rlimit limit(RLIMIT_NOFILE, lowest_free_fd());
    thrown = catch_system_error([] { (void)coropipe::pipe(); });
    ends = coropipe::pipe(ec);
  }
  CAPTURE(thrown.what);
  CHECK(thrown.thrown);
  CHECK(thrown.code == coropipe::error_code(EMFILE, coropipe::system_category()));
  CHECK(thrown.code == std::errc::too_many_files_open);
  CHECK(thrown.what.find("pipe2") != std::string::npos);

  CHECK(ec == coropipe::error_code(EMFILE, coropipe::system_category()));
  CHECK_FALSE(ends.read_end.valid());
  CHECK_FALSE(ends.write_end.valid());
  CHECK(ends.read_end.get() == -1);
  CHECK(ends.write_end.get() == -1);
  CHECK(coropipe_test::open_fds() == before);  // nothing half-made was left open

  // The limit is restored: pipe() works again.
  CHECK_NOTHROW(ends = coropipe::pipe());
  CHECK(ends.read_end.valid());
  CHECK(ends.write_end.valid());
}

TEST_CASE("duplex_pair() ends are close-on-exec and bytes flow both ways") {
  coropipe::duplex_ends ends = coropipe::duplex_pair();
  REQUIRE(ends.first.valid());
  REQUIRE(ends.second.valid());
  CHECK(ends.first.get() != ends.second.get());
  CHECK(has_cloexec(ends.first.get()));
  CHECK(has_cloexec(ends.second.get()));
  CHECK((status_flags(ends.first.get()) & O_NONBLOCK) == 0);
  CHECK((status_flags(ends.second.get()) & O_NONBLOCK) == 0);

  write_exactly(ends.first.get(), "ping");
  CHECK(read_some(ends.second.get()) == "ping");
  write_exactly(ends.second.get(), "pong");
  CHECK(read_some(ends.first.get()) == "pong");

  // Closing one end gives EOF at the other.
  ends.first.reset();
  CHECK(read_some(ends.second.get()).empty());
}

TEST_CASE("duplex_pair() is a pair of AF_UNIX stream sockets") {
  const coropipe::duplex_ends ends = coropipe::duplex_pair();
  for (int fd : {ends.first.get(), ends.second.get()}) {
    CAPTURE(fd);
    CHECK(socket_option(fd, SO_TYPE) == SOCK_STREAM);
    CHECK(socket_option(fd, SO_DOMAIN) == AF_UNIX);
  }
}

TEST_CASE("duplex_pair(ec) clears ec on success and reports EMFILE when out of descriptors") {
  coropipe::error_code ec = std::make_error_code(std::errc::io_error);
  {
    const coropipe::duplex_ends ends = coropipe::duplex_pair(ec);
    CHECK_FALSE(ec);
    CHECK(ends.first.valid());
    CHECK(ends.second.valid());
  }
  const std::vector<int> before = coropipe_test::open_fds();
  warm_up_error_category_calls();
  failure thrown;
  coropipe::duplex_ends ends;
  {
    coropipe_test::scoped_rlimit limit(RLIMIT_NOFILE, lowest_free_fd());
    ends = coropipe::duplex_pair(ec);
    thrown = catch_system_error([] { (void)coropipe::duplex_pair(); });
  }
  CHECK(ec == std::errc::too_many_files_open);
  CHECK_FALSE(ends.first.valid());
  CHECK_FALSE(ends.second.valid());
  CAPTURE(thrown.what);
  CHECK(thrown.thrown);
  CHECK(thrown.code == std::errc::too_many_files_open);
  CHECK(thrown.what.find("socketpair") != std::string::npos);
  CHECK(coropipe_test::open_fds() == before);
}

TEST_CASE("a fresh pipe has the Linux default capacity of 64 KiB") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  CHECK(coropipe::pipe_capacity(ends.read_end.get()) == 65536);
  CHECK(coropipe::pipe_capacity(ends.write_end.get()) == 65536);
  coropipe::error_code ec = std::make_error_code(std::errc::io_error);
  CHECK(coropipe::pipe_capacity(ends.write_end.get(), ec) == 65536);
  CHECK_FALSE(ec);
}

TEST_CASE("set_pipe_capacity() rounds up to a power of two and is seen from either end") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  const std::size_t set = coropipe::set_pipe_capacity(ends.write_end.get(), 100000);
  CHECK(set >= 100000);
  CHECK(is_power_of_two(set));
  CHECK(set == 131072);  // 100000 rounded up to a power-of-two number of 4 KiB pages
  CHECK(coropipe::pipe_capacity(ends.write_end.get()) == set);
  CHECK(coropipe::pipe_capacity(ends.read_end.get()) == set);

  // Setting it through the read end changes the same pipe.
  coropipe::error_code ec = std::make_error_code(std::errc::io_error);
  const std::size_t smaller = coropipe::set_pipe_capacity(ends.read_end.get(), 8192, ec);
  CHECK_FALSE(ec);
  CHECK(smaller == 8192);
  CHECK(coropipe::pipe_capacity(ends.write_end.get()) == 8192);
}

TEST_CASE("set_pipe_capacity(recommended_pipe_capacity) gives 1 MiB") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  const std::size_t set =
      coropipe::set_pipe_capacity(ends.write_end.get(), coropipe::recommended_pipe_capacity);
  CHECK(set == coropipe::recommended_pipe_capacity);
  CHECK(coropipe::pipe_capacity(ends.read_end.get()) == coropipe::recommended_pipe_capacity);
}

TEST_CASE("a pipe with a larger capacity holds that many bytes without blocking") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  REQUIRE(coropipe::set_pipe_capacity(ends.write_end.get(), 262144) == 262144);
  // Make the write end non-blocking only to prove no byte above capacity fits.
  const int flags = status_flags(ends.write_end.get());
  REQUIRE(::fcntl(ends.write_end.get(), F_SETFL, flags | O_NONBLOCK) == 0);
  const std::string chunk(262144, 'z');
  CHECK(::write(ends.write_end.get(), chunk.data(), chunk.size()) == 262144);
  errno = 0;
  CHECK(::write(ends.write_end.get(), "+", 1) == -1);
  CHECK(errno == EAGAIN);
}

TEST_CASE("set_pipe_capacity() on a descriptor that is not a pipe fails with EBADF") {
  const coropipe::duplex_ends sockets = coropipe::duplex_pair();
  const int dev_null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  REQUIRE(dev_null >= 0);
  const coropipe::unique_fd null_fd(dev_null);

  for (int fd : {sockets.first.get(), null_fd.get()}) {
    CAPTURE(fd);
    bool thrown = false;
    try {
      (void)coropipe::set_pipe_capacity(fd, 100000);
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(e.code() == coropipe::error_code(EBADF, coropipe::system_category()));
      CHECK(what.find("fcntl(F_SETPIPE_SZ)") != std::string::npos);
    }
    CHECK(thrown);

    coropipe::error_code ec;
    CHECK(coropipe::set_pipe_capacity(fd, 100000, ec) == 0);
    CHECK(ec == coropipe::error_code(EBADF, coropipe::system_category()));
  }
}

TEST_CASE("pipe_capacity() on a descriptor that is not a pipe fails with EBADF") {
  const coropipe::duplex_ends sockets = coropipe::duplex_pair();
  bool thrown = false;
  try {
    (void)coropipe::pipe_capacity(sockets.second.get());
  } catch (const coropipe::system_error& e) {
    thrown = true;
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(e.code() == coropipe::error_code(EBADF, coropipe::system_category()));
    CHECK(what.find("fcntl(F_GETPIPE_SZ)") != std::string::npos);
  }
  CHECK(thrown);

  coropipe::error_code ec;
  CHECK(coropipe::pipe_capacity(sockets.second.get(), ec) == 0);
  CHECK(ec == std::errc::bad_file_descriptor);
}

TEST_CASE("pipe_capacity(-1) fails with EBADF") {
  coropipe::error_code ec;
  CHECK(coropipe::pipe_capacity(-1, ec) == 0);
  CHECK(ec == coropipe::error_code(EBADF, coropipe::system_category()));
  CHECK_THROWS_AS((void)coropipe::pipe_capacity(-1), coropipe::system_error);

  coropipe::error_code set_ec;
  CHECK(coropipe::set_pipe_capacity(-1, 65536, set_ec) == 0);
  CHECK(set_ec == coropipe::error_code(EBADF, coropipe::system_category()));
}

TEST_CASE("set_pipe_capacity() above INT_MAX fails with EINVAL and leaves the pipe alone") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  const auto too_big = static_cast<std::size_t>(std::numeric_limits<int>::max()) + 1;

  coropipe::error_code ec;
  CHECK(coropipe::set_pipe_capacity(ends.write_end.get(), too_big, ec) == 0);
  CHECK(ec == coropipe::error_code(EINVAL, coropipe::system_category()));

  coropipe::error_code ec_max;
  CHECK(coropipe::set_pipe_capacity(ends.write_end.get(), std::numeric_limits<std::size_t>::max(),
                                    ec_max) == 0);
  CHECK(ec_max == std::errc::invalid_argument);

  bool thrown = false;
  try {
    (void)coropipe::set_pipe_capacity(ends.write_end.get(), too_big);
  } catch (const coropipe::system_error& e) {
    thrown = true;
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK(what.find("fcntl(F_SETPIPE_SZ)") != std::string::npos);
  }
  CHECK(thrown);
  CHECK(coropipe::pipe_capacity(ends.read_end.get()) == 65536);
}

TEST_CASE("shrinking a pipe below the bytes queued in it fails with EBUSY") {
  const coropipe::pipe_ends ends = coropipe::pipe();
  write_exactly(ends.write_end.get(), std::string(8192, 'q'));

  coropipe::error_code ec;
  CHECK(coropipe::set_pipe_capacity(ends.write_end.get(), 4096, ec) == 0);
  CHECK(ec == coropipe::error_code(EBUSY, coropipe::system_category()));
  CHECK_THROWS_WITH_AS((void)coropipe::set_pipe_capacity(ends.read_end.get(), 4096),
                       doctest::Contains("fcntl(F_SETPIPE_SZ)"), coropipe::system_error);
  CHECK(coropipe::pipe_capacity(ends.read_end.get()) == 65536);

  // The queued bytes are intact, and once drained the pipe can shrink.
  std::string drained;
  while (drained.size() < 8192) {
    const std::string got = read_some(ends.read_end.get(), 8192 - drained.size());
    REQUIRE_FALSE(got.empty());
    drained += got;
  }
  CHECK(drained == std::string(8192, 'q'));
  CHECK(coropipe::set_pipe_capacity(ends.write_end.get(), 4096) == 4096);
  CHECK(coropipe::pipe_capacity(ends.read_end.get()) == 4096);
}
