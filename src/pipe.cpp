// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pipe.hpp>

#include <coropipe/error.hpp>

#include "sys.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <limits>

namespace coropipe {

pipe_ends pipe(error_code& ec) noexcept {
  ec.clear();
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    ec = detail::last_error();
    return {};
  }
  return {unique_fd(fds[0]), unique_fd(fds[1])};
}

pipe_ends pipe() {
  error_code ec;
  pipe_ends ends = pipe(ec);
  if (ec) detail::throw_error(ec, "coropipe::pipe", "pipe2");
  return ends;
}

duplex_ends duplex_pair(error_code& ec) noexcept {
  ec.clear();
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    ec = detail::last_error();
    return {};
  }
  return {unique_fd(fds[0]), unique_fd(fds[1])};
}

duplex_ends duplex_pair() {
  error_code ec;
  duplex_ends ends = duplex_pair(ec);
  if (ec) detail::throw_error(ec, "coropipe::duplex_pair", "socketpair");
  return ends;
}

std::size_t pipe_capacity(int fd, error_code& ec) noexcept {
  ec.clear();
  const int size = ::fcntl(fd, F_GETPIPE_SZ);
  if (size < 0) {
    ec = detail::last_error();
    return 0;
  }
  return static_cast<std::size_t>(size);
}

std::size_t pipe_capacity(int fd) {
  error_code ec;
  const std::size_t size = pipe_capacity(fd, ec);
  if (ec) detail::throw_error(ec, "coropipe::pipe_capacity", "fcntl(F_GETPIPE_SZ)");
  return size;
}

std::size_t set_pipe_capacity(int fd, std::size_t bytes, error_code& ec) noexcept {
  ec.clear();
  if (bytes > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    ec = detail::errno_code(EINVAL);
    return 0;
  }
  const int size = ::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(bytes));
  if (size < 0) {
    ec = detail::last_error();
    return 0;
  }
  return static_cast<std::size_t>(size);
}

std::size_t set_pipe_capacity(int fd, std::size_t bytes) {
  error_code ec;
  const std::size_t size = set_pipe_capacity(fd, bytes, ec);
  if (ec) detail::throw_error(ec, "coropipe::set_pipe_capacity", "fcntl(F_SETPIPE_SZ)");
  return size;
}

} // namespace coropipe
