// SPDX-License-Identifier: BSL-1.0
#include <coropipe/unique_fd.hpp>

#include <coropipe/error.hpp>

#include "sys.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace coropipe {

void unique_fd::reset(int fd) noexcept {
  if (fd == fd_) return;
  if (fd_ >= 0) {
    // On Linux close() releases the descriptor even when it fails (EINTR
    // included), so it must never be retried.
    ::close(fd_);
  }
  fd_ = fd;
}

void unique_fd::close(error_code& ec) noexcept {
  ec.clear();
  if (fd_ < 0) {
    ec = detail::errno_code(EBADF);
    return;
  }
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0 && errno != EINTR) ec = detail::last_error();
}

void unique_fd::close() {
  error_code ec;
  close(ec);
  if (ec) detail::throw_error(ec, "coropipe::unique_fd::close", "close");
}

unique_fd unique_fd::duplicate(error_code& ec) const noexcept {
  ec.clear();
  const int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    ec = detail::last_error();
    return unique_fd();
  }
  return unique_fd(fd);
}

unique_fd unique_fd::duplicate() const {
  error_code ec;
  unique_fd fd = duplicate(ec);
  if (ec) detail::throw_error(ec, "coropipe::unique_fd::duplicate", "fcntl(F_DUPFD_CLOEXEC)");
  return fd;
}

} // namespace coropipe
