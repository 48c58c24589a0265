// SPDX-License-Identifier: BSL-1.0
/// @file
/// Handing an owned descriptor to an executor as an
/// `asio::posix::stream_descriptor`, and taking it back.
#pragma once

#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>

#include <system_error>
#include <type_traits>

namespace coropipe {

/// Wraps @p fd in an `asio::posix::stream_descriptor` on @p ex, which then
/// owns it. Works for pipe ends, sockets, terminals and other pollable files.
///
/// The descriptor stays blocking until the first operation that needs it
/// non-blocking (any of coropipe's; Asio's own on its epoll backend) sets
/// O_NONBLOCK, which affects the open file description shared with any other
/// process holding it: never hand an attached end to an exec'd program.
///
/// Also blocks SIGPIPE in the calling thread (see sigpipe.hpp), so writes to a
/// pipe whose reader is gone fail with `asio::error::broken_pipe`.
///
/// @throws system_error naming "attach": EBADF for an empty @p fd or a
/// descriptor number that is not open, or what registering with the reactor
/// reports. @p fd is closed in that case.
[[nodiscard]] asio::posix::stream_descriptor attach(const asio::any_io_executor& ex, unique_fd fd);
/// As attach(), reporting the error in @p ec; the result is then not open.
[[nodiscard]] asio::posix::stream_descriptor attach(const asio::any_io_executor& ex, unique_fd fd,
                                                    error_code& ec);

/// attach() on an execution context's executor (e.g. an `asio::io_context`).
template <typename ExecutionContext>
  requires std::is_convertible_v<ExecutionContext&, asio::execution_context&>
[[nodiscard]] asio::posix::stream_descriptor attach(ExecutionContext& ctx, unique_fd fd) {
  return coropipe::attach(asio::any_io_executor(ctx.get_executor()), std::move(fd));
}

/// attach() on an execution context's executor, reporting errors in @p ec.
template <typename ExecutionContext>
  requires std::is_convertible_v<ExecutionContext&, asio::execution_context&>
[[nodiscard]] asio::posix::stream_descriptor attach(ExecutionContext& ctx, unique_fd fd,
                                                    error_code& ec) {
  return coropipe::attach(asio::any_io_executor(ctx.get_executor()), std::move(fd), ec);
}

/// Takes the descriptor back from @p stream, which is left closed. Pending
/// operations on it complete with `asio::error::operation_aborted`.
/// O_NONBLOCK, if Asio set it, stays set.
[[nodiscard]] unique_fd release(asio::posix::stream_descriptor& stream) noexcept;

} // namespace coropipe
