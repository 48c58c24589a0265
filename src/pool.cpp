// SPDX-License-Identifier: BSL-1.0
// The non-template parts of pools: the worker side's stdio set-up and its
// hang-up watch, the default number of workers, groups' bookkeeping and
// launched workers' stderr.
#include <coropipe/pool.hpp>

#include "sys.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
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

stderr_capture::stderr_capture(asio::posix::stream_descriptor s)
    : s_(std::move(s)), ended_timer_(s_.get_executor()) {
  ended_timer_.expires_at(std::chrono::steady_clock::time_point::max());
}

void stderr_capture::start() { read(); }

void stderr_capture::read() {
  s_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](error_code ec, std::size_t n) {
    if (n > 0) {
      // Copied to ours, as an inherited stderr would show it.
      const char* p = self->buf_.data();
      std::size_t left = n;
      while (left > 0) {
        const ssize_t w = ::write(2, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        p += w;
        left -= static_cast<std::size_t>(w);
      }
      if (self->text_.size() < keep) self->text_.append(self->buf_.data(), std::min(n, keep - self->text_.size()));
    }
    if (ec) {
      self->ended_ = true;
      self->ended_timer_.cancel();
      return;
    }
    self->read();
  });
}

asio::awaitable<void> stderr_capture::wait(std::chrono::steady_clock::duration limit) {
  if (ended_ || !s_.is_open()) co_return;
  auto self = shared_from_this();
  ended_timer_.expires_after(limit);
  (void)co_await ended_timer_.async_wait(compat::as_tuple(asio::use_awaitable));
}

void stderr_capture::close() noexcept {
  error_code ignored;
  s_.close(ignored);
  ended_timer_.cancel();
}

bool pool_group::budget_allows(unsigned budget, std::chrono::steady_clock::duration period) {
  const auto now = std::chrono::steady_clock::now();
  while (!restarts.empty() && now - restarts.front() > period) restarts.pop_front();
  if (restarts.size() >= budget) return false;
  restarts.push_back(now);
  return true;
}

bool pool_group::failed_start(error_code ec, std::string message, bool serving) {
  last_error = ec;
  last_message = std::move(message);
  ++failed_starts;
  // A host where a worker serves works: its failed starts (sshd refusing
  // connections beyond MaxStartups, say) count against the budget only.
  return max_start_failures != 0 && failed_starts >= max_start_failures && !serving;
}

void pool_group::answer() noexcept {
  failed_starts = 0;
  if (!answered) {
    answered = true;
    ready.cancel();
  }
}

std::string pool_group::removal_message(unsigned budget, std::chrono::steady_clock::duration period) const {
  std::string m = "group '" + name + "' (" + std::to_string(count) + (count == 1 ? " worker" : " workers") + ") removed";
  if (budget_exhausted) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(period).count();
    m += ": its workers keep dying (restart budget of " + std::to_string(budget) + " per " + std::to_string(ms) +
         " ms exhausted)";
  } else if (max_start_failures != 0 && failed_starts >= max_start_failures) {
    m += " after " + std::to_string(failed_starts) + " failed starts in a row";
  }
  if (!last_message.empty()) m += "; last: " + last_message;
  return m;
}

std::string spawn_failure_message(const std::string& group, const std::vector<std::string>& argv, error_code ec) {
  std::string m = group + ": could not start";
  if (!argv.empty()) m += " '" + argv.front() + "'";
  return m + ": " + ec.message();
}

std::string launch_failure_message(const std::string& group, error_code ec, const exit_status& st,
                                   std::string_view stderr_text) {
  std::string m = group + ": " + ec.message();
  const std::string line = launch_failure_line(stderr_text);
  if (!line.empty()) m += ": " + line;
  return m + " (" + st.to_string() + ")";
}

} // namespace coropipe::detail
