// SPDX-License-Identifier: BSL-1.0
#include <coropipe/attach.hpp>

#include <coropipe/error.hpp>
#include <coropipe/sigpipe.hpp>

#include <fcntl.h>

namespace coropipe {

asio::posix::stream_descriptor attach(const asio::any_io_executor& ex, unique_fd fd,
                                      error_code& ec) {
  ec.clear();
  asio::posix::stream_descriptor stream(ex);
  if (!fd) {
    ec = detail::errno_code(EBADF);
    return stream;
  }
#if defined(ASIO_HAS_IO_URING_AS_DEFAULT)
  // Asio's epoll reactor registers the descriptor here, and so refuses one
  // that is not open (EBADF); its io_uring backend does not look at it until
  // the first operation. Checked here, so that a stale number is reported,
  // not owned (and later closed, perhaps after being reused).
  if (::fcntl(fd.get(), F_GETFD) < 0) {
    ec = detail::errno_code(errno);
    return stream;
  }
#endif
  // Ownership passes only once the reactor has accepted the descriptor; on
  // failure fd still owns it and closes it.
  stream.assign(fd.get(), ec);
  if (ec) {
    // Asio reports errno values in its own "asio.system" category; coropipe's
    // synchronous calls report them in coropipe::system_category(), like errno.
    ec = detail::errno_code(ec.value());
    return stream;
  }
  (void)fd.release();
  block_sigpipe_in_this_thread();
  return stream;
}

asio::posix::stream_descriptor attach(const asio::any_io_executor& ex, unique_fd fd) {
  error_code ec;
  auto stream = attach(ex, std::move(fd), ec);
  if (ec) detail::throw_error(ec, "coropipe::attach");
  return stream;
}

unique_fd release(asio::posix::stream_descriptor& stream) noexcept {
  if (!stream.is_open()) return unique_fd();
  return unique_fd(stream.release());
}

} // namespace coropipe
