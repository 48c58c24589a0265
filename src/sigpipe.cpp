// SPDX-License-Identifier: BSL-1.0
#include <coropipe/sigpipe.hpp>

#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <ctime>

namespace coropipe {

namespace {

sigset_t sigpipe_set() noexcept {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  return set;
}
} // namespace

void block_sigpipe_in_this_thread() noexcept {
  // Not cached: the application may have unblocked it since the last call.
  const sigset_t set = sigpipe_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void ignore_sigpipe() noexcept {
  struct sigaction sa {};
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGPIPE, &sa, nullptr);
}

bool sigpipe_is_harmless_in_this_thread() noexcept {
  sigset_t mask;
  if (pthread_sigmask(SIG_BLOCK, nullptr, &mask) == 0 && sigismember(&mask, SIGPIPE) == 1)
    return true;
  // Ignored, or caught by a handler: either way the write returns EPIPE.
  struct sigaction sa {};
  return ::sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler != SIG_DFL;
}

void discard_pending_sigpipe() noexcept {
  sigset_t pending;
  if (sigpending(&pending) != 0 || sigismember(&pending, SIGPIPE) != 1) return;
  // Only a blocked signal can be pending; take it without waiting. One may
  // be pending on the thread and another on the process: take both.
  const sigset_t set = sigpipe_set();
  const timespec zero{0, 0};
  for (;;) {
    if (sigtimedwait(&set, nullptr, &zero) == SIGPIPE) continue;
    if (errno != EINTR) break;
  }
}

} // namespace coropipe
