// SPDX-License-Identifier: BSL-1.0
#include <coropipe/sigpipe.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

// Every test that needs a fresh signal state runs in a raw fork()ed child,
// which reports the first failed step as its exit code (0: all passed) and
// _exits. The parent only waits for it and checks the status. The child calls
// only async-signal-safe functions and coropipe's (which make system calls).
//
// Nothing in this file calls block_sigpipe_in_this_thread() (or attach()) in
// the test process itself: that function remembers, in a thread_local that a
// forked child inherits, that it already blocked SIGPIPE, and would then do
// nothing in a child that has just unblocked it.

namespace {

// Forks, runs @p body in the child and _exits with its result; returns the
// child's wait status.
template <typename Body>
int wait_status_of_child(Body body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) ::_exit(body());
  int status = 0;
  pid_t r = -1;
  do {
    r = ::waitpid(pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  REQUIRE(r == pid);
  return status;
}

// The exit code of a child that must have exited (-1 if it did not).
template <typename Body>
int exit_code_of_child(Body body) {
  const int status = wait_status_of_child(body);
  if (WIFSIGNALED(status)) {
    const int signo = WTERMSIG(status);
    FAIL_CHECK("the child was killed by signal " << signo);
    return -1;
  }
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

// SIGPIPE unblocked in this thread and default disposition: the state a
// program starts in (a forked child starts with no signal pending). Returns
// false if a call failed.
bool reset_sigpipe_state() {
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGPIPE, &sa, nullptr) != 0) return false;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  return ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr) == 0;
}

bool sigpipe_blocked() {
  sigset_t mask;
  sigemptyset(&mask);
  return ::pthread_sigmask(SIG_BLOCK, nullptr, &mask) == 0 && sigismember(&mask, SIGPIPE) == 1;
}

bool pending(int signo) {
  sigset_t set;
  sigemptyset(&set);
  return ::sigpending(&set) == 0 && sigismember(&set, signo) == 1;
}

bool sigpipe_disposition_is(void (*handler)(int)) {
  struct sigaction sa {};
  return ::sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler == handler;
}

// Writes one byte to a pipe whose read end is closed. Returns the errno of the
// failed write, or 0 if it (impossibly) succeeded, or -1 if setting up failed.
int write_to_broken_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
  ::close(fds[0]);
  errno = 0;
  const ssize_t n = ::write(fds[1], "x", 1);
  const int err = n < 0 ? errno : 0;
  ::close(fds[1]);
  return err;
}

} // namespace

TEST_CASE("control: without protection, a write to a broken pipe kills the writer with SIGPIPE") {
  const int status = wait_status_of_child([] {
    if (!reset_sigpipe_state()) return 90;
    (void)write_to_broken_pipe();
    return 0;  // not reached: SIGPIPE's default action terminates the child
  });
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGPIPE);
}

TEST_CASE("control: sigpipe_is_harmless_in_this_thread() is false in the default state") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          if (coropipe::sigpipe_is_harmless_in_this_thread()) return 1;
          return 0;
        }) == 0);
}

TEST_CASE("block_sigpipe_in_this_thread() turns SIGPIPE into EPIPE and leaves it pending") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          if (sigpipe_blocked()) return 1;
          coropipe::block_sigpipe_in_this_thread();
          if (!sigpipe_blocked()) return 2;
          if (!coropipe::sigpipe_is_harmless_in_this_thread()) return 3;
          // The disposition is untouched.
          if (!sigpipe_disposition_is(SIG_DFL)) return 4;
          // Calling it again is harmless.
          coropipe::block_sigpipe_in_this_thread();
          if (!sigpipe_blocked()) return 5;

          if (pending(SIGPIPE)) return 6;
          if (write_to_broken_pipe() != EPIPE) return 7;  // and we are still alive
          if (!pending(SIGPIPE)) return 8;
          coropipe::discard_pending_sigpipe();
          if (pending(SIGPIPE)) return 9;

          // Nothing stale left: unblocking SIGPIPE now does not kill us.
          sigset_t set;
          sigemptyset(&set);
          sigaddset(&set, SIGPIPE);
          if (::pthread_sigmask(SIG_UNBLOCK, &set, nullptr) != 0) return 91;
          return 0;
        }) == 0);
}

TEST_CASE("without discard_pending_sigpipe(), unblocking delivers the stale SIGPIPE") {
  // The control for the last step of the test above.
  const int status = wait_status_of_child([] {
    if (!reset_sigpipe_state()) return 90;
    coropipe::block_sigpipe_in_this_thread();
    if (write_to_broken_pipe() != EPIPE) return 1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    return 0;  // not reached
  });
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGPIPE);
}

TEST_CASE("discard_pending_sigpipe() with nothing pending is a no-op") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          // Unblocked: nothing can be pending; it must return without waiting.
          coropipe::discard_pending_sigpipe();
          if (sigpipe_blocked()) return 1;
          if (!sigpipe_disposition_is(SIG_DFL)) return 2;

          // Blocked, nothing pending.
          coropipe::block_sigpipe_in_this_thread();
          coropipe::discard_pending_sigpipe();
          if (pending(SIGPIPE)) return 3;
          if (!sigpipe_blocked()) return 4;
          return 0;
        }) == 0);
}

TEST_CASE("discard_pending_sigpipe() leaves other pending signals alone") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          sigset_t usr1;
          sigemptyset(&usr1);
          sigaddset(&usr1, SIGUSR1);
          if (::pthread_sigmask(SIG_BLOCK, &usr1, nullptr) != 0) return 91;
          coropipe::block_sigpipe_in_this_thread();

          if (::raise(SIGUSR1) != 0) return 92;
          coropipe::discard_pending_sigpipe();  // no SIGPIPE pending yet
          if (!pending(SIGUSR1)) return 1;

          if (write_to_broken_pipe() != EPIPE) return 2;
          if (!pending(SIGPIPE)) return 3;
          coropipe::discard_pending_sigpipe();
          if (pending(SIGPIPE)) return 4;
          if (!pending(SIGUSR1)) return 5;

          // Drop SIGUSR1 before exiting (its default action would kill us).
          struct sigaction ign {};
          ign.sa_handler = SIG_IGN;
          sigemptyset(&ign.sa_mask);
          ::sigaction(SIGUSR1, &ign, nullptr);
          return 0;
        }) == 0);
}

TEST_CASE("discard_pending_sigpipe() also removes a SIGPIPE sent to the process with kill()") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          coropipe::block_sigpipe_in_this_thread();
          if (::kill(::getpid(), SIGPIPE) != 0) return 91;
          if (!pending(SIGPIPE)) return 1;
          coropipe::discard_pending_sigpipe();
          if (pending(SIGPIPE)) return 2;
          return 0;
        }) == 0);
}

TEST_CASE("ignore_sigpipe() sets SIG_IGN process-wide and writes give EPIPE") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          if (!sigpipe_disposition_is(SIG_DFL)) return 1;
          coropipe::ignore_sigpipe();
          if (!sigpipe_disposition_is(SIG_IGN)) return 2;
          // The mask is left alone: SIGPIPE is not blocked, only ignored.
          if (sigpipe_blocked()) return 3;
          if (!coropipe::sigpipe_is_harmless_in_this_thread()) return 4;
          if (write_to_broken_pipe() != EPIPE) return 5;  // and we are still alive
          // An ignored signal is discarded, never left pending.
          if (pending(SIGPIPE)) return 6;
          // Calling it twice is harmless.
          coropipe::ignore_sigpipe();
          if (!sigpipe_disposition_is(SIG_IGN)) return 7;
          return 0;
        }) == 0);
}

TEST_CASE("ignore_sigpipe() applies to threads that never blocked SIGPIPE") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          coropipe::ignore_sigpipe();
          int result = 99;
          pthread_t thread;
          auto body = [](void* out) -> void* {
            int* r = static_cast<int*>(out);
            if (!coropipe::sigpipe_is_harmless_in_this_thread()) {
              *r = 1;
            } else {
              *r = write_to_broken_pipe() == EPIPE ? 0 : 2;
            }
            return nullptr;
          };
          if (::pthread_create(&thread, nullptr, body, &result) != 0) return 91;
          if (::pthread_join(thread, nullptr) != 0) return 92;
          return result;
        }) == 0);
}

TEST_CASE("block_sigpipe_in_this_thread() affects the calling thread only") {
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          // A thread started before the main thread blocks SIGPIPE keeps its mask.
          int fds[2];
          if (::pipe2(fds, O_CLOEXEC) != 0) return 91;
          struct shared {
            int go_fd;
            int result;
          } s{fds[0], 99};
          pthread_t thread;
          auto body = [](void* arg) -> void* {
            auto* sh = static_cast<shared*>(arg);
            char c;
            while (::read(sh->go_fd, &c, 1) < 0 && errno == EINTR) {
            }
            sh->result = coropipe::sigpipe_is_harmless_in_this_thread() ? 1 : 0;
            return nullptr;
          };
          if (::pthread_create(&thread, nullptr, body, &s) != 0) return 92;
          coropipe::block_sigpipe_in_this_thread();
          const bool main_harmless = coropipe::sigpipe_is_harmless_in_this_thread();
          if (::write(fds[1], "g", 1) != 1) return 93;
          if (::pthread_join(thread, nullptr) != 0) return 94;
          if (!main_harmless) return 2;
          return s.result;  // 1: the other thread's mask was changed too
        }) == 0);
}

TEST_CASE("a SIGPIPE handler still runs for kill() while SIGPIPE is blocked and then unblocked") {
  // Blocking defers, never drops, signals sent on purpose.
  CHECK(exit_code_of_child([] {
          if (!reset_sigpipe_state()) return 90;
          static volatile sig_atomic_t caught = 0;
          struct sigaction sa {};
          sa.sa_handler = [](int) { caught = 1; };
          sigemptyset(&sa.sa_mask);
          if (::sigaction(SIGPIPE, &sa, nullptr) != 0) return 91;
          coropipe::block_sigpipe_in_this_thread();
          if (!sigpipe_disposition_is(sa.sa_handler)) return 1;
          if (::raise(SIGPIPE) != 0) return 92;
          if (caught != 0) return 2;
          sigset_t set;
          sigemptyset(&set);
          sigaddset(&set, SIGPIPE);
          if (::pthread_sigmask(SIG_UNBLOCK, &set, nullptr) != 0) return 93;
          return caught == 1 ? 0 : 3;
        }) == 0);
}
