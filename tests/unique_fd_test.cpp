// SPDX-License-Identifier: BSL-1.0
#include <coropipe/unique_fd.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace {

// True when @p fd is not an open descriptor (fcntl fails with EBADF).
bool is_closed(int fd) {
  errno = 0;
  return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

struct raw_pipe {
  int read_fd = -1;
  int write_fd = -1;
};

// A pipe made without coropipe, so that these tests depend on unique_fd only.
raw_pipe make_raw_pipe() {
  int fds[2] = {-1, -1};
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  return {fds[0], fds[1]};
}

void close_raw(int fd) { REQUIRE(::close(fd) == 0); }

} // namespace

static_assert(!std::is_copy_constructible_v<coropipe::unique_fd>);
static_assert(!std::is_copy_assignable_v<coropipe::unique_fd>);
static_assert(std::is_nothrow_move_constructible_v<coropipe::unique_fd>);
static_assert(std::is_nothrow_move_assignable_v<coropipe::unique_fd>);
static_assert(std::is_nothrow_default_constructible_v<coropipe::unique_fd>);
static_assert(std::is_nothrow_swappable_v<coropipe::unique_fd>);
static_assert(!std::is_convertible_v<int, coropipe::unique_fd>, "the int constructor is explicit");
static_assert(!std::is_convertible_v<coropipe::unique_fd, bool>, "operator bool is explicit");
static_assert(std::is_constructible_v<bool, coropipe::unique_fd>);

TEST_CASE("a default-constructed unique_fd is empty") {
  const coropipe::unique_fd fd;
  CHECK(fd.get() == -1);
  CHECK_FALSE(fd.valid());
  CHECK_FALSE(static_cast<bool>(fd));
  CHECK_FALSE(fd);

  const coropipe::unique_fd minus_one(-1);
  CHECK(minus_one.get() == -1);
  CHECK_FALSE(minus_one.valid());
}

TEST_CASE("unique_fd owns its descriptor and closes it on destruction") {
  const raw_pipe p = make_raw_pipe();
  {
    const coropipe::unique_fd r(p.read_fd);
    CHECK(r.get() == p.read_fd);
    CHECK(r.valid());
    CHECK(static_cast<bool>(r));
    CHECK(is_open(p.read_fd));
  }
  CHECK(is_closed(p.read_fd));
  {
    const coropipe::unique_fd w(p.write_fd);
    CHECK(is_open(p.write_fd));
  }
  CHECK(is_closed(p.write_fd));
}

TEST_CASE("move construction transfers ownership and empties the source") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd w(p.write_fd);
  {
    coropipe::unique_fd source(p.read_fd);
    coropipe::unique_fd target(std::move(source));
    CHECK(target.get() == p.read_fd);
    CHECK(target.valid());
    CHECK(source.get() == -1);  // NOLINT(bugprone-use-after-move): moved-from state is specified
    CHECK_FALSE(source.valid());
    {
      // Destroying the moved-from object must not close what target now owns.
      coropipe::unique_fd moved_from(std::move(target));
      coropipe::unique_fd again(std::move(moved_from));
      CHECK(again.get() == p.read_fd);
    }
    // `again` went out of scope: now the descriptor is closed, exactly once.
    CHECK(is_closed(p.read_fd));
    CHECK(target.get() == -1);
  }
  CHECK(is_open(p.write_fd));
}

TEST_CASE("move assignment transfers ownership and closes the previous descriptor") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd target(p.read_fd);
  coropipe::unique_fd source(p.write_fd);

  target = std::move(source);
  CHECK(target.get() == p.write_fd);
  CHECK(source.get() == -1);  // NOLINT(bugprone-use-after-move)
  CHECK_FALSE(source.valid());
  CHECK(is_closed(p.read_fd));  // the descriptor target held before
  CHECK(is_open(p.write_fd));

  // Assigning an empty one closes the held descriptor too.
  target = coropipe::unique_fd();
  CHECK_FALSE(target.valid());
  CHECK(is_closed(p.write_fd));
}

TEST_CASE("move-assigning a unique_fd to itself keeps the descriptor open") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd r(p.read_fd);
  coropipe::unique_fd w(p.write_fd);
  coropipe::unique_fd& alias = r;
  r = std::move(alias);
  CHECK(r.get() == p.read_fd);
  CHECK(is_open(p.read_fd));
}

TEST_CASE("release() gives the descriptor up without closing it") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd w(p.write_fd);
  int released = -1;
  {
    coropipe::unique_fd r(p.read_fd);
    released = r.release();
    CHECK(released == p.read_fd);
    CHECK(r.get() == -1);
    CHECK_FALSE(r.valid());
    CHECK(r.release() == -1);  // releasing an empty one gives -1
  }
  CHECK(is_open(released));
  // Still the read end of the same pipe.
  REQUIRE(::write(w.get(), "x", 1) == 1);
  char c = 0;
  CHECK(::read(released, &c, 1) == 1);
  CHECK(c == 'x');
  close_raw(released);
}

TEST_CASE("reset() with the descriptor already held is a no-op") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd w(p.write_fd);
  coropipe::unique_fd r(p.read_fd);
  r.reset(p.read_fd);
  CHECK(r.get() == p.read_fd);
  CHECK(is_open(p.read_fd));
  REQUIRE(::write(w.get(), "y", 1) == 1);
  char c = 0;
  CHECK(::read(r.get(), &c, 1) == 1);
  CHECK(c == 'y');
}

TEST_CASE("reset(other) closes the old descriptor and takes the new one") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd fd(p.read_fd);
  fd.reset(p.write_fd);
  CHECK(fd.get() == p.write_fd);
  CHECK(is_closed(p.read_fd));
  CHECK(is_open(p.write_fd));

  fd.reset();  // default argument: becomes empty, closing what it held
  CHECK(fd.get() == -1);
  CHECK_FALSE(fd.valid());
  CHECK(is_closed(p.write_fd));

  fd.reset();  // resetting an empty one is harmless
  CHECK_FALSE(fd.valid());
}

TEST_CASE("close() closes the descriptor and leaves the owner empty") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd r(p.read_fd);
  coropipe::unique_fd w(p.write_fd);

  CHECK_NOTHROW(r.close());
  CHECK(r.get() == -1);
  CHECK_FALSE(r.valid());
  CHECK(is_closed(p.read_fd));

  coropipe::error_code ec = std::make_error_code(std::errc::io_error);  // must be cleared
  w.close(ec);
  CHECK_FALSE(ec);
  CHECK_FALSE(w.valid());
  CHECK(is_closed(p.write_fd));
}

TEST_CASE("close() on an empty unique_fd throws coropipe::system_error with EBADF naming close") {
  coropipe::unique_fd fd;
  bool thrown = false;
  try {
    fd.close();
  } catch (const coropipe::system_error& e) {
    thrown = true;
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(e.code() == coropipe::error_code(EBADF, coropipe::system_category()));
    CHECK(e.code() == std::errc::bad_file_descriptor);
    CHECK(what.find("close") != std::string::npos);
  }
  CHECK(thrown);
  CHECK_FALSE(fd.valid());
}

TEST_CASE("close(ec) on an empty unique_fd sets EBADF") {
  coropipe::unique_fd fd;
  coropipe::error_code ec;
  fd.close(ec);
  CHECK(ec == coropipe::error_code(EBADF, coropipe::system_category()));
  CHECK(ec == std::errc::bad_file_descriptor);
  CHECK_FALSE(fd.valid());

  // A second close on the (still) empty owner reports the same.
  coropipe::error_code again;
  fd.close(again);
  CHECK(again == std::errc::bad_file_descriptor);
}

TEST_CASE("close() reports close()'s own failure and still leaves the owner empty") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd w(p.write_fd);
  coropipe::unique_fd r(p.read_fd);
  // Close the descriptor behind the owner's back: its close() then fails.
  close_raw(p.read_fd);
  coropipe::error_code ec;
  r.close(ec);
  CHECK(ec == std::errc::bad_file_descriptor);
  CHECK(r.get() == -1);
  CHECK_FALSE(r.valid());
}

TEST_CASE("duplicate() gives a second close-on-exec descriptor for the same pipe") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd r(p.read_fd);
  coropipe::unique_fd w(p.write_fd);

  // Clear FD_CLOEXEC on the original, so the duplicate's flag is its own.
  REQUIRE(::fcntl(w.get(), F_SETFD, 0) == 0);

  coropipe::unique_fd dup = w.duplicate();
  REQUIRE(dup.valid());
  CHECK(dup.get() != w.get());
  CHECK(dup.get() != r.get());
  const int flags = ::fcntl(dup.get(), F_GETFD);
  REQUIRE(flags != -1);
  CHECK((flags & FD_CLOEXEC) != 0);
  CHECK(w.valid());  // the original is untouched

  // Write on the duplicate, read on the original read end.
  REQUIRE(::write(dup.get(), "dup", 3) == 3);
  char buf[8] = {};
  CHECK(::read(r.get(), buf, sizeof buf) == 3);
  CHECK(std::string(buf, 3) == "dup");

  // The pipe reports EOF only once both write descriptors are closed.
  w.reset();
  REQUIRE(::write(dup.get(), "!", 1) == 1);
  CHECK(::read(r.get(), buf, sizeof buf) == 1);
  CHECK(buf[0] == '!');
  const int dup_fd = dup.get();
  dup.reset();
  CHECK(is_closed(dup_fd));
  CHECK(::read(r.get(), buf, sizeof buf) == 0);
}

TEST_CASE("duplicate(ec) succeeds and clears ec") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd r(p.read_fd);
  coropipe::unique_fd w(p.write_fd);
  coropipe::error_code ec = std::make_error_code(std::errc::io_error);
  coropipe::unique_fd dup = r.duplicate(ec);
  CHECK_FALSE(ec);
  REQUIRE(dup.valid());
  CHECK(dup.get() != r.get());
  CHECK((::fcntl(dup.get(), F_GETFD) & FD_CLOEXEC) != 0);
}

TEST_CASE("duplicate() of an empty unique_fd fails with EBADF") {
  const coropipe::unique_fd empty;
  SUBCASE("throwing form") {
    bool thrown = false;
    try {
      (void)empty.duplicate();
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(e.code() == coropipe::error_code(EBADF, coropipe::system_category()));
      CHECK(what.find("fcntl(F_DUPFD_CLOEXEC)") != std::string::npos);
    }
    CHECK(thrown);
  }
  SUBCASE("error_code form") {
    coropipe::error_code ec;
    const coropipe::unique_fd dup = empty.duplicate(ec);
    CHECK(ec == coropipe::error_code(EBADF, coropipe::system_category()));
    CHECK_FALSE(dup.valid());
    CHECK(dup.get() == -1);
  }
}

TEST_CASE("duplicate() under a descriptor limit fails with EMFILE and leaks nothing") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd r(p.read_fd);
  coropipe::unique_fd w(p.write_fd);
  // The lowest free descriptor number: with the limit there, none is left.
  int lowest_free = 0;
  while (is_open(lowest_free)) ++lowest_free;
  coropipe::error_code ec;
  coropipe::unique_fd dup;
  {
    coropipe_test::scoped_rlimit limit(RLIMIT_NOFILE, static_cast<rlim_t>(lowest_free));
    dup = r.duplicate(ec);
  }
  CHECK(ec == std::errc::too_many_files_open);
  CHECK_FALSE(dup.valid());
}

TEST_CASE("swap exchanges the descriptors") {
  const raw_pipe p = make_raw_pipe();
  coropipe::unique_fd a(p.read_fd);
  coropipe::unique_fd b(p.write_fd);
  swap(a, b);
  CHECK(a.get() == p.write_fd);
  CHECK(b.get() == p.read_fd);

  using std::swap;
  coropipe::unique_fd empty;
  swap(a, empty);
  CHECK(a.get() == -1);
  CHECK(empty.get() == p.write_fd);
  CHECK(is_open(p.write_fd));
  CHECK(is_open(p.read_fd));
}
