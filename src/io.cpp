// SPDX-License-Identifier: BSL-1.0
#include <coropipe/io.hpp>

#include <coropipe/sigpipe.hpp>

#include <coropipe/asio.hpp>

#include <cerrno>
#include <unistd.h>

namespace coropipe::detail {

namespace {

thread_local bool sigpipe_checked = false;

error_code io_errno_code(int err) noexcept {
  if (err == EAGAIN || err == EWOULDBLOCK) return asio::error::would_block;
  return error_code(err, asio::error::get_system_category());
}

} // namespace

std::size_t read_outcome(::ssize_t r, int err, error_code& ec) noexcept {
  ec.clear();
  if (r > 0) return static_cast<std::size_t>(r);
  if (r == 0) ec = asio::error::eof;
  else ec = io_errno_code(err);
  return 0;
}

std::size_t try_read(int fd, void* data, std::size_t size, error_code& ec) noexcept {
  for (;;) {
    int err = 0;
    const ssize_t n = read_into(fd, asio::mutable_buffer(data, size), err);
    if (err != EINTR) return read_outcome(n, err, ec);
  }
}

std::size_t try_writev(int fd, const ::iovec* iov, int count, error_code& ec) noexcept {
  ec.clear();
  for (;;) {
    const ssize_t n = count == 1 ? ::write(fd, iov[0].iov_base, iov[0].iov_len) : ::writev(fd, iov, count);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    const int err = errno;
    if (err == EPIPE) discard_pending_sigpipe();
    ec = io_errno_code(err);
    return 0;
  }
}

void ensure_sigpipe_blocked() noexcept {
  if (sigpipe_checked) return;
  block_sigpipe_in_this_thread();
  sigpipe_checked = true;
}

} // namespace coropipe::detail
