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
  /// The authentication handshake failed: a wrong authkey on either side
  /// (`#FAILURE#`), or a handshake message that is no valid challenge or
  /// answer, or the peer closed the connection during the handshake.
  authentication_failed,
  /// A connection refused before any message: its peer's credentials
  /// (SO_PEERCRED uid) are not among those the listener allows.
  peer_not_allowed,
  /// Descriptors passed over a Unix socket did not arrive as sent: truncated
  /// control data (MSG_CTRUNC), a count other than announced, or more than
  /// the kernel passes in one message (253). Those that arrived were closed.
  descriptor_passing_failed,
  /// A TCP listener on a non-loopback address without an authkey: anyone who
  /// can reach it would be accepted. Set an authkey, or opt out explicitly
  /// (listen_options::allow_unauthenticated_remote).
  unauthenticated_remote_listener,
  /// A structured message (a pickle) nests containers deeper than the
  /// decoder's limit (coropipe::pickle_options::max_depth).
  nesting_too_deep,
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
  /// A launched (remote) worker could not reach its host: the connection was
  /// refused, timed out, found no route, or was closed before login (ssh's
  /// exit status 255; see launcher.hpp).
  remote_connection_failed,
  /// A launched worker's host name does not resolve.
  remote_host_unknown,
  /// A launched worker's host refused the login (no accepted key; with
  /// BatchMode ssh never asks for a password).
  remote_authentication_failed,
  /// A launched worker's host key was refused: unknown with strict checking,
  /// or changed since it was recorded in known_hosts.
  remote_host_key_rejected,
  /// A launched worker's program is missing (or not executable) on the far
  /// side: exit status 127 or 126 from the remote shell.
  remote_program_missing,
  /// A launched worker ended before its first reply for another reason (see
  /// pool::groups() for the host's message).
  remote_start_failed,
  /// A pool worker's first output is not a message frame: a banner or
  /// greeting printed by the program or by the remote shell's start-up files.
  worker_protocol_error,
};

/// The base of error categories in the flavour's error-code system:
/// std::error_category, or boost::system::error_category with Boost.Asio.
#if COROPIPE_ASIO_BOOST
using error_category = ::boost::system::error_category;
#else
using error_category = std::error_category;
#endif

/// The category of coropipe's own errors; its name() is "coropipe". It is a
/// category of the flavour's error-code system (std:: or boost::system::), so
/// that `ec.value()` and `ec.category()` of a coropipe error are its own.
[[nodiscard]] const error_category& category() noexcept;

/// Makes an error code of coropipe's category; found by ADL, so
/// `coropipe::error_code ec = coropipe::errc::no_child;` works.
[[nodiscard]] error_code make_error_code(errc e) noexcept;

namespace detail {
/// Throws coropipe::system_error(ec) whose what() reads "<function>: <call>: <message>".
[[noreturn]] void throw_error(error_code ec, const char* function, const char* call = nullptr);
} // namespace detail

} // namespace coropipe

#if COROPIPE_ASIO_BOOST
template <>
struct boost::system::is_error_code_enum<coropipe::errc> : std::true_type {};
#else
template <>
struct std::is_error_code_enum<coropipe::errc> : std::true_type {};
#endif
