// SPDX-License-Identifier: BSL-1.0
#include <coropipe/exit_status.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <type_traits>

using coropipe::exit_status;

// exit_status is usable in constant expressions.
static_assert(exit_status::from_code(3).exit_code() == 3);
static_assert(exit_status().success());
static_assert(exit_status() == exit_status::from_code(0));
static_assert(exit_status::from_code(256 + 3).exit_code() == 3);
static_assert(exit_status::killed(SIGKILL).signaled());
static_assert(exit_status::killed(SIGKILL).term_signal() == SIGKILL);
static_assert(exit_status::killed(SIGKILL).shell_code() == 137);
static_assert(exit_status::killed(SIGSEGV, true).core_dumped());
static_assert(exit_status::from_code(9) != exit_status::killed(9));
static_assert(exit_status::from_code(9).exited());  // the factory, and the question
static_assert(std::is_trivially_copyable_v<exit_status>);
static_assert(std::is_nothrow_default_constructible_v<exit_status>);

// The old name of the factory still works for one release, deprecated.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
static_assert(exit_status::exited(9) == exit_status::from_code(9));
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace {

// Forks; the child runs @p body (which must not return normally into the
// test), the parent optionally acts on the child's pid, then reaps it.
template <typename Child, typename Parent>
int wait_status_of_child(Child child, Parent parent) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    child();
    ::_exit(120);  // not reached in these tests
  }
  parent(pid);
  int status = 0;
  pid_t r = -1;
  do {
    r = ::waitpid(pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  REQUIRE(r == pid);
  return status;
}

template <typename Child>
int wait_status_of_child(Child child) {
  return wait_status_of_child(child, [](pid_t) {});
}

// A status word as waitpid() would make it (Linux layout).
constexpr int exited_word(int code) { return (code & 0xff) << 8; }
constexpr int signaled_word(int signo, bool core) { return signo | (core ? 0x80 : 0); }

} // namespace

TEST_CASE("a default exit_status is from_code(0) and success") {
  const exit_status s;
  CHECK(s == exit_status::from_code(0));
  CHECK(s.success());
  CHECK(s.exited());
  CHECK_FALSE(s.signaled());
  CHECK_FALSE(s.core_dumped());
  CHECK(s.exit_code() == 0);
  CHECK(s.term_signal() == 0);
  CHECK(s.shell_code() == 0);
  CHECK(s.to_string() == "exited with 0");
}

TEST_CASE("from_code(9) exited with 9") {
  const exit_status s = exit_status::from_code(9);
  CHECK(s.exited());
  CHECK_FALSE(s.signaled());
  CHECK_FALSE(s.core_dumped());
  CHECK_FALSE(s.success());
  CHECK(s.exit_code() == 9);
  CHECK(s.term_signal() == 0);
  CHECK(s.shell_code() == 9);
  CHECK(s.to_string() == "exited with 9");
}

TEST_CASE("exit codes are kept modulo 256, as the kernel does") {
  CHECK(exit_status::from_code(256 + 3).exit_code() == 3);
  CHECK(exit_status::from_code(256 + 3) == exit_status::from_code(3));
  CHECK(exit_status::from_code(256).success());
  CHECK(exit_status::from_code(255).exit_code() == 255);
  CHECK(exit_status::from_code(-1).exit_code() == 255);
  CHECK(exit_status::from_code(-1).to_string() == "exited with 255");
}

TEST_CASE("killed(SIGKILL)") {
  const exit_status s = exit_status::killed(SIGKILL);
  CHECK(s.signaled());
  CHECK_FALSE(s.exited());
  CHECK_FALSE(s.core_dumped());
  CHECK_FALSE(s.success());
  CHECK(s.exit_code() == -1);
  CHECK(s.term_signal() == 9);
  CHECK(s.shell_code() == 137);
  CHECK(s.to_string() == "killed by SIGKILL");
}

TEST_CASE("killed(SIGSEGV, true) dumped core") {
  const exit_status s = exit_status::killed(SIGSEGV, true);
  CHECK(s.signaled());
  CHECK(s.core_dumped());
  CHECK_FALSE(s.exited());
  CHECK(s.term_signal() == SIGSEGV);
  CHECK(s.exit_code() == -1);
  CHECK(s.shell_code() == 128 + SIGSEGV);
  CHECK(s.to_string() == "killed by SIGSEGV (core dumped)");

  CHECK(exit_status::killed(SIGSEGV).to_string() == "killed by SIGSEGV");
  CHECK_FALSE(exit_status::killed(SIGSEGV).core_dumped());
  CHECK(exit_status::killed(SIGSEGV, false) == exit_status::killed(SIGSEGV));
}

TEST_CASE("equality tells exits, kills and core dumps apart") {
  CHECK(exit_status::from_code(9) != exit_status::killed(9));
  CHECK(exit_status::killed(SIGSEGV) != exit_status::killed(SIGSEGV, true));
  CHECK(exit_status::killed(SIGTERM) != exit_status::killed(SIGKILL));
  CHECK(exit_status::from_code(1) != exit_status::from_code(2));
  CHECK(exit_status::from_code(1) == exit_status::from_code(1));
  CHECK(exit_status::killed(SIGTERM) == exit_status::killed(SIGTERM));
  // A shell would show both as 137; they are still different.
  CHECK(exit_status::from_code(137).shell_code() == exit_status::killed(SIGKILL).shell_code());
  CHECK(exit_status::from_code(137) != exit_status::killed(SIGKILL));
}

TEST_CASE("to_string names common signals and falls back to the number") {
  CHECK(exit_status::killed(SIGTERM).to_string() == "killed by SIGTERM");
  CHECK(exit_status::killed(SIGPIPE).to_string() == "killed by SIGPIPE");
  CHECK(exit_status::killed(SIGABRT, true).to_string() == "killed by SIGABRT (core dumped)");

  const std::string unknown = exit_status::killed(200).to_string();
  CAPTURE(unknown);
  CHECK(unknown.find("signal 200") != std::string::npos);
  CHECK(unknown.rfind("killed by ", 0) == 0);
  CHECK(exit_status::killed(200).term_signal() == 200);
  CHECK(exit_status::killed(200).shell_code() == 328);

  const std::string unknown_core = exit_status::killed(200, true).to_string();
  CAPTURE(unknown_core);
  CHECK(unknown_core.find("signal 200") != std::string::npos);
  CHECK(unknown_core.find("(core dumped)") != std::string::npos);
}

TEST_CASE("from_wait_status decodes synthetic status words") {
  CHECK(exit_status::from_wait_status(exited_word(0)) == exit_status::from_code(0));
  CHECK(exit_status::from_wait_status(exited_word(9)) == exit_status::from_code(9));
  CHECK(exit_status::from_wait_status(exited_word(255)) == exit_status::from_code(255));
  CHECK(exit_status::from_wait_status(signaled_word(SIGKILL, false)) ==
        exit_status::killed(SIGKILL));
  CHECK(exit_status::from_wait_status(signaled_word(SIGSEGV, true)) ==
        exit_status::killed(SIGSEGV, true));
  CHECK(exit_status::from_wait_status(signaled_word(SIGSEGV, true)).to_string() ==
        "killed by SIGSEGV (core dumped)");
}

TEST_CASE("from_wait_status of a child that _exit(9)s is from_code(9)") {
  const int status = wait_status_of_child([] { ::_exit(9); });
  REQUIRE(WIFEXITED(status));
  const exit_status s = exit_status::from_wait_status(status);
  CHECK(s == exit_status::from_code(9));
  CHECK(s.exit_code() == 9);
  CHECK(s.to_string() == "exited with 9");
}

TEST_CASE("from_wait_status of a child that exits with 0 is success") {
  const int status = wait_status_of_child([] { ::_exit(0); });
  CHECK(exit_status::from_wait_status(status).success());
  CHECK(exit_status::from_wait_status(status) == exit_status());
}

TEST_CASE("from_wait_status of a child that raises SIGKILL is killed(SIGKILL)") {
  const int status = wait_status_of_child([] { ::raise(SIGKILL); });
  REQUIRE(WIFSIGNALED(status));
  const exit_status s = exit_status::from_wait_status(status);
  CHECK(s == exit_status::killed(SIGKILL));
  CHECK(s.term_signal() == SIGKILL);
  CHECK(s.shell_code() == 137);
  CHECK(s.to_string() == "killed by SIGKILL");
}

TEST_CASE("from_wait_status of a child killed with SIGTERM by the parent is killed(SIGTERM)") {
  int ready[2];
  REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  const int status = wait_status_of_child(
      [&] {
        // Start from SIGTERM's default action, whatever the test runner set.
        struct sigaction sa {};
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGTERM, &sa, nullptr);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
        ::close(ready[0]);
        (void)::write(ready[1], "r", 1);
        for (;;) ::pause();
      },
      [&](pid_t pid) {
        ::close(ready[1]);
        char c = 0;
        ssize_t n = -1;
        do {
          n = ::read(ready[0], &c, 1);
        } while (n < 0 && errno == EINTR);
        ::close(ready[0]);
        CHECK(n == 1);
        CHECK(::kill(pid, SIGTERM) == 0);
      });
  REQUIRE(WIFSIGNALED(status));
  const exit_status s = exit_status::from_wait_status(status);
  CHECK(s == exit_status::killed(SIGTERM));
  CHECK_FALSE(s.core_dumped());
  CHECK(s.shell_code() == 128 + SIGTERM);
  CHECK(s.to_string() == "killed by SIGTERM");
}
