// SPDX-License-Identifier: BSL-1.0
// The non-template parts of pools: the worker side's stdio set-up and its
// hang-up watch, and the default number of workers.
#include <coropipe/pool.hpp>

#include "sys.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <thread>

namespace coropipe::detail {

std::size_t default_worker_count() noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<std::size_t>(n);
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : n;
}

stdio_channels take_stdio(error_code& ec) {
  ec.clear();
  stdio_channels ch;
  ch.in.reset(::fcntl(0, F_DUPFD_CLOEXEC, 3));
  ch.out.reset(::fcntl(1, F_DUPFD_CLOEXEC, 3));
  if (!ch.in || !ch.out) {
    ec = last_error();
    return {};
  }
  // Stray writes to stdout go to stderr; stray reads of stdin find nothing.
  if (::dup2(2, 1) < 0) {
    ec = last_error();
    return {};
  }
  const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, 0);
    ::close(null);
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  return ch;
}

void watch_hangup(int fd, const std::atomic<std::size_t>* busy) {
  try {
    std::thread([fd, busy] {
      sigset_t all;
      ::sigfillset(&all);
      ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
      for (;;) {
        pollfd p{fd, 0, 0};  // POLLHUP and POLLERR are always reported
        const int r = ::poll(&p, 1, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) break;
      }
      // The writer is gone. Work received but not answered has no reader:
      // stop now rather than finish it. (An idle worker reads the end of
      // input and exits on its own.)
      for (;;) {
        if (busy->load() != 0) ::_exit(0);
        ::usleep(10000);
      }
    }).detach();
  } catch (...) {
    // No thread: the end of input is still noticed between requests.
  }
}

} // namespace coropipe::detail
