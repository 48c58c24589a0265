// SPDX-License-Identifier: BSL-1.0
#include <coropipe/child.hpp>

#include <coropipe/error.hpp>

#include "sys.hpp"

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(system_executor.hpp)

#include <signal.h>
#include <sys/wait.h>

namespace coropipe {

namespace detail {

namespace {

exit_status status_from(const siginfo_t& info) noexcept {
  switch (info.si_code) {
  case CLD_KILLED:
    return exit_status::killed(info.si_status);
  case CLD_DUMPED:
    return exit_status::killed(info.si_status, true);
  default:
    return exit_status::from_code(info.si_status);
  }
}

// waitid() on one pid, retried on EINTR. Returns false with ec set on error;
// info.si_pid stays 0 when WNOHANG found the child still running.
bool wait_pid(pid_t pid, siginfo_t& info, int options, error_code& ec) noexcept {
  info = siginfo_t{};
  while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | options) != 0) {
    if (errno != EINTR) {
      ec = last_error();
      return false;
    }
  }
  return true;
}

} // namespace

child_state::child_state(const asio::any_io_executor& ex, pid_t child_pid, unique_fd fd)
    : pid(child_pid), pidfd(ex) {
  if (fd) {
    error_code ec;
    pidfd.assign(fd.get(), ec);
    if (!ec) (void)fd.release();  // otherwise fd closes it and waits poll
  }
}

std::optional<exit_status> child_state::try_reap(error_code& ec) noexcept {
  ec.clear();
  if (status) return status;
  siginfo_t info;
  if (!wait_pid(pid, info, WNOHANG, ec) || info.si_pid == 0) return std::nullopt;
  status = status_from(info);
  return status;
}

void signal_child(child_state& st, int signo, error_code& ec) noexcept {
  ec.clear();
  if (st.status) return;  // reaped: its pid may belong to someone else now
  const int r = st.pidfd.is_open() ? sys_pidfd_send_signal(st.pidfd.native_handle(), signo)
                                   : ::kill(st.pid, signo);
  if (r != 0) ec = last_error();
}

asio::any_io_executor fallback_executor() { return asio::system_executor(); }

error_code wait_op::make_no_child_error() noexcept { return errc::no_child; }

} // namespace detail

child child::adopt(const executor_type& ex, pid_t pid) {
  error_code ec;
  if (pid <= 0) detail::throw_error(std::make_error_code(std::errc::invalid_argument), "coropipe::child::adopt");
  // It must be our child, and not yet reaped by anyone.
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0)
    detail::throw_error(detail::last_error(), "coropipe::child::adopt", "waitid");
  unique_fd pidfd;
  if (!detail::pidfds_unavailable()) {
    pidfd.reset(detail::sys_pidfd_open(pid, 0));
    if (!pidfd) {
      const int err = errno;
      if (err == ENOSYS || err == EPERM || err == EACCES) {
        detail::remember_pidfds_unavailable();
      } else {
        detail::throw_error(detail::errno_code(err), "coropipe::child::adopt",
                            "pidfd_open");
      }
    }
  }
  return child(std::make_shared<detail::child_state>(ex, pid, std::move(pidfd)));
}

child& child::operator=(child&& other) noexcept {
  if (this != &other) {
    kill_and_reap();
    state_ = std::move(other.state_);
  }
  return *this;
}

child::~child() { kill_and_reap(); }

void child::kill_and_reap() noexcept {
  if (!state_ || state_->status) return;
  error_code ec;
  detail::signal_child(*state_, SIGKILL, ec);
  siginfo_t info;
  if (detail::wait_pid(state_->pid, info, 0, ec)) state_->status = detail::status_from(info);
}

wait_mechanism child::mechanism() const noexcept {
  if (state_) return state_->pidfd.is_open() ? wait_mechanism::pidfd : wait_mechanism::poll;
  return detail::pidfds_unavailable() ? wait_mechanism::poll : wait_mechanism::pidfd;
}

child::executor_type child::get_executor() const {
  return state_ ? state_->pidfd.get_executor() : detail::fallback_executor();
}

exit_status child::wait(error_code& ec) noexcept {
  ec.clear();
  if (!state_) {
    ec = errc::no_child;
    return {};
  }
  if (state_->status) return *state_->status;
  siginfo_t info;
  if (!detail::wait_pid(state_->pid, info, 0, ec)) return {};
  state_->status = detail::status_from(info);
  return *state_->status;
}

exit_status child::wait() {
  error_code ec;
  const exit_status st = wait(ec);
  if (ec) detail::throw_error(ec, "coropipe::child::wait", "waitid");
  return st;
}

std::optional<exit_status> child::try_wait(error_code& ec) noexcept {
  ec.clear();
  if (!state_) {
    ec = errc::no_child;
    return std::nullopt;
  }
  return state_->try_reap(ec);
}

std::optional<exit_status> child::try_wait() {
  error_code ec;
  auto st = try_wait(ec);
  if (ec) detail::throw_error(ec, "coropipe::child::try_wait", "waitid");
  return st;
}

void child::signal(int signo, error_code& ec) noexcept {
  ec.clear();
  if (!state_) {
    ec = errc::no_child;
    return;
  }
  detail::signal_child(*state_, signo, ec);
}

void child::signal(int signo) {
  error_code ec;
  signal(signo, ec);
  if (ec) {
    const bool pidfd = state_ && state_->pidfd.is_open();
    detail::throw_error(ec, "coropipe::child::signal", pidfd ? "pidfd_send_signal" : "kill");
  }
}

void child::detach(error_code& ec) noexcept {
  ec.clear();
  if (!state_) return;
  if (state_->status) {
    state_.reset();
    return;
  }
  // Take the pidfd from Asio (deregistering it, aborting pending waits)
  // before the reaper thread may close it.
  const int pidfd = state_->pidfd.is_open() ? state_->pidfd.release() : -1;
  const char* failed_call = nullptr;
  try {
    detail::reap_in_background(state_->pid, pidfd, ec, failed_call);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  }
  if (ec) {
    // The handle stays as it was (waits fall back to polling if the pidfd
    // cannot be registered again).
    error_code ignored;
    if (pidfd >= 0) state_->pidfd.assign(pidfd, ignored);
    if (ignored) ::close(pidfd);
    return;
  }
  state_.reset();
}

void child::detach() {
  error_code ec;
  detach(ec);
  if (ec) detail::throw_error(ec, "coropipe::child::detach", "starting the reaper");
}

} // namespace coropipe
