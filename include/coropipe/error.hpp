// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe's own error conditions.
///
/// System calls that fail report codes of the flavour's system category
/// (`coropipe::system_category()`: std::system_category() or Boost's, holding the errno),
/// and Asio operations report Asio's codes (`asio::error::eof`,
/// `asio::error::broken_pipe`, `asio::error::operation_aborted`, ...).
/// The conditions below are the ones only coropipe can detect. A clean end of
/// stream is never one of them: it is an ordinary outcome.
#pragma once

#include <coropipe/asio.hpp>

#include <string>
#include <system_error>

namespace coropipe {

/// Errors in coropipe's own category (`coropipe::category()`, named "coropipe").
enum class errc {
  /// fork_child() refused: the process runs several threads, so the child
  /// could inherit a lock held by a thread that does not exist in it.
  /// Use spawn() (fork + exec) instead, or set `fork_options::allow_threads`.
  fork_in_threaded_process = 1,
  /// The child handle is empty: moved from, detached, or never started.
  no_child,
  /// A frame declares a payload larger than the receiver accepts.
  message_too_large,
  /// The stream ended inside a frame (after part of its header or payload).
  truncated_message,
  /// A frame header that no sender produces: a negative length other than -1.
  /// (An 8-byte length below 2^31 is accepted, as Python's recv_bytes does.)
  malformed_frame,
  /// A message did not decode as the type the channel carries.
  decode_failed,
  /// An argument that can never be valid (an empty argv, an embedded NUL, ...).
  invalid_argument,
  /// A child of a process scope failed (exited non-zero or was killed) and
  /// the scope was set to fail with it (see scope.hpp, child_failed_error).
  child_failed,
  /// A child was handed to a process scope that has already ended its body.
  scope_closed,
  /// A pool worker died (was killed, exited, closed its pipe or sent a
  /// message that is not a reply) while it held the request (see pool.hpp,
  /// worker_failure()).
  worker_died,
  /// A pool could not keep its workers alive: they kept dying faster than its
  /// restart budget allows.
  pool_restart_budget_exhausted,
  /// The pool is shut down (or shutting down) and takes no more requests.
  pool_closed,
};

/// The category of coropipe's own errors; its name() is "coropipe".
[[nodiscard]] const std::error_category& category() noexcept;

/// Makes an error code of coropipe's category; found by ADL, so
/// `std::error_code ec = coropipe::errc::no_child;` works.
[[nodiscard]] std::error_code make_error_code(errc e) noexcept;

namespace detail {
/// Throws coropipe::system_error(ec) whose what() reads "<function>: <call>: <message>".
[[noreturn]] void throw_error(error_code ec, const char* function, const char* call = nullptr);
} // namespace detail

} // namespace coropipe

template <>
struct std::is_error_code_enum<coropipe::errc> : std::true_type {};
