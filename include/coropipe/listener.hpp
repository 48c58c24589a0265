// SPDX-License-Identifier: BSL-1.0
/// @file
/// Sockets that Python's `multiprocessing.connection` talks to:
/// coropipe::listener (Python's `Listener`) and coropipe::async_connect()
/// (Python's `Client`), both handing back a coropipe::socket_stream (a
/// framed_stream over a connected socket, and so a `channel<T>`).
///
/// ```
/// coropipe::listener l(io, coropipe::address::parse("/run/app.sock"), {.authkey = key});
/// for (;;) {
///   coropipe::socket_stream s = co_await l.async_accept(asio::use_awaitable);
///   asio::co_spawn(io, serve(std::move(s)), asio::detached);
/// }
/// ```
///
/// ### Authentication
/// With an authkey both sides run Python's challenge–response handshake
/// (handshake.hpp) before any message: the server challenges the client, then
/// the client challenges the server. A wrong key on either side, a malformed or
/// oversized (over 256 bytes) handshake message, or a peer that closes
/// ends that connection with `errc::authentication_failed`; a peer that sends
/// nothing for `handshake_timeout` with `std::errc::timed_out`. The
/// handshake authenticates; it does not encrypt. **Without an authkey, anyone
/// who can connect is accepted**, so a TCP listener on an address other than
/// loopback refuses to start without one unless
/// `listen_options::allow_unauthenticated_remote` is set.
///
/// ### One socket type for every family
/// Unix and TCP connections are both `asio::generic::stream_protocol::socket`,
/// so a server or client handles every address form with the same code.
///
/// ### Many clients
/// The listener accepts and runs handshakes concurrently in the background
/// (at most `max_pending` at once) while you call async_accept(): a client
/// that stalls its handshake never delays the others. Each async_accept()
/// completes with one authenticated connection, or with the error of one
/// connection that failed (log it and accept again); `operation_aborted`
/// means the listener was closed (or the accept cancelled). The backlog is
/// 128 (Python's Listener uses 1).
///
/// Once accepting, an open listener always has work pending on its executor,
/// as an acceptor waiting for a connection does: `io_context::run()` returns
/// only after close().
///
/// A listener and its background work run on its executor, used from one
/// thread at a time: with an io_context run by several threads, give it a
/// strand.
#pragma once

#include <coropipe/address.hpp>
#include <coropipe/error.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/handshake.hpp>

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(generic/stream_protocol.hpp)

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace coropipe {

/// A connected socket of any family (Unix path, abstract, TCP v4 or v6).
using socket_type = asio::generic::stream_protocol::socket;
/// Messages over a connected socket: what listener::async_accept() and
/// async_connect() hand back.
using socket_stream = framed_stream<socket_type>;

/// Who is at the other end of a Unix connection (SO_PEERCRED): the
/// credentials of the process that connected (or listened), as of connect().
struct peer_credentials {
  ::pid_t pid = 0;
  ::uid_t uid = 0;
  ::gid_t gid = 0;
};

/// The peer credentials of the Unix socket @p fd.
/// @throws coropipe::system_error (`ENOTSUP`-like errno for a TCP socket).
[[nodiscard]] peer_credentials get_peer_credentials(int fd);
/// The peer credentials of the Unix socket @p fd, or @p ec set.
[[nodiscard]] peer_credentials get_peer_credentials(int fd, error_code& ec) noexcept;

/// How a listener listens and authenticates.
struct listen_options {
  /// The shared secret of the handshake (bytes, like Python's `authkey`);
  /// nullopt: no handshake, anyone who can connect is accepted. An empty key
  /// is a key: the handshake runs (Python's `authkey=b''` hang, bpo-43952,
  /// becomes a handshake timeout at worst).
  std::optional<std::string> authkey{};
  /// The challenge this side sends (it answers both forms).
  handshake::challenge_form challenge = handshake::challenge_form::modern;
  /// A peer that has not finished the handshake after this long is dropped.
  std::chrono::milliseconds handshake_timeout{5000};
  /// listen(2) backlog.
  int backlog = 128;
  /// Permissions of a Unix socket file.
  ::mode_t socket_mode = 0600;
  /// For Unix addresses: only peers whose uid is listed are accepted (empty:
  /// any). Refused peers are closed before any message (`errc::peer_not_allowed`).
  std::vector<::uid_t> allowed_uids{};
  /// Listen on a non-loopback TCP address without an authkey anyway.
  bool allow_unauthenticated_remote = false;
  /// At most this many connections are being authenticated or wait to be
  /// accepted; beyond that, the kernel's backlog holds them.
  std::size_t max_pending = 64;
  /// The framing of the connections handed out.
  framed_options framing{};
};

/// How async_connect() connects and authenticates.
struct connect_options {
  /// The shared secret (nullopt: no handshake, as Python's `authkey=None`).
  std::optional<std::string> authkey{};
  /// The challenge this side sends (it answers both forms).
  handshake::challenge_form challenge = handshake::challenge_form::modern;
  /// Connecting and authenticating together must take less than this
  /// (`std::errc::timed_out` otherwise).
  std::chrono::milliseconds timeout{5000};
  /// The framing of the connection.
  framed_options framing{};
};

namespace detail {

struct listener_state;
struct stream_result {
  error_code ec;
  std::optional<socket_stream> stream;
};

asio::awaitable<stream_result> accept_one(std::shared_ptr<listener_state> st);
asio::awaitable<stream_result> connect_one(asio::any_io_executor ex, address addr, connect_options opts);
asio::any_io_executor listener_executor(const listener_state& st);

// The error code an exception escaping the operation's coroutine stands for.
error_code exception_code(std::exception_ptr e) noexcept;

// Runs @p aw and completes @p handler with (error_code, socket_stream).
template <typename Handler>
void complete_with_stream(const asio::any_io_executor& default_ex, asio::awaitable<stream_result> aw,
                          Handler handler) {
  auto ex = asio::get_associated_executor(handler, default_ex);
  auto slot = asio::get_associated_cancellation_slot(handler);
  asio::co_spawn(ex, std::move(aw),
                 asio::bind_cancellation_slot(
                     slot, [h = std::move(handler), ex](std::exception_ptr e, stream_result r) mutable {
                       if (e) r = stream_result{exception_code(e), std::nullopt};
                       if (r.stream) {
                         std::move(h)(r.ec, std::move(*r.stream));
                       } else {
                         std::move(h)(r.ec, socket_stream(socket_type(ex)));
                       }
                     }));
}

} // namespace detail

/// A listening socket handing out authenticated connections. See the file's
/// documentation. Closing it (or destroying it) stops accepting, drops the
/// connections not yet accepted, and removes its Unix socket file.
class listener {
public:
  using executor_type = asio::any_io_executor;

  /// Listens on @p where. A Unix socket file is created with
  /// `options.socket_mode`; an existing file there is replaced only when it is
  /// a socket that nobody listens on (`std::errc::address_in_use` otherwise).
  /// @throws coropipe::system_error (`errc::unauthenticated_remote_listener`,
  /// `std::errc::address_in_use`, ...).
  listener(const executor_type& ex, const address& where, const listen_options& options = {});
  /// The same, on @p io's executor.
  listener(asio::io_context& io, const address& where, const listen_options& options = {})
      : listener(io.get_executor(), where, options) {}
  /// The same, reporting failure in @p ec (the listener is then closed).
  listener(const executor_type& ex, const address& where, const listen_options& options, error_code& ec);

  listener(listener&&) noexcept = default;
  listener& operator=(listener&& other) noexcept;
  ~listener();

  [[nodiscard]] executor_type get_executor() const;

  /// Where it listens, with the real port when port 0 was asked for.
  [[nodiscard]] const address& local_address() const noexcept;

  /// Waits for the next connection that passes the checks and the handshake.
  ///
  /// Completion signature: `void(error_code, coropipe::socket_stream)`.
  ///
  /// An error other than `operation_aborted` concerns one connection
  /// (`errc::authentication_failed`, `errc::peer_not_allowed`,
  /// `std::errc::timed_out`, or an accept(2) error such as EMFILE): the
  /// listener keeps serving; accept again. `operation_aborted`: closed or cancelled.
  template <typename AcceptToken = asio::default_completion_token_t<executor_type>>
  auto async_accept(AcceptToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<AcceptToken, void(error_code, socket_stream)>(
        [](auto handler, std::shared_ptr<detail::listener_state> st) {
          auto ex = detail::listener_executor(*st);
          detail::complete_with_stream(ex, detail::accept_one(std::move(st)), std::move(handler));
        },
        token, st_);
  }

  /// Stops listening: pending accepts complete with `operation_aborted`,
  /// connections not yet accepted are closed, the socket file is removed.
  void close() noexcept;
  [[nodiscard]] bool is_open() const noexcept;

private:
  std::shared_ptr<detail::listener_state> st_;
};

/// Connects to @p where and, with an authkey, runs the client side of the
/// handshake (answer the server's challenge, then challenge it).
///
/// Completion signature: `void(error_code, coropipe::socket_stream)`.
///
/// Errors: `std::errc::connection_refused` (nobody listens),
/// `std::errc::no_such_file_or_directory` (no socket file),
/// `errc::authentication_failed`, `std::errc::timed_out` (connecting and
/// authenticating took longer than `options.timeout`), `operation_aborted`
/// when cancelled. A Unix listener whose backlog is full is retried until
/// the timeout.
template <typename ConnectToken = asio::default_completion_token_t<asio::any_io_executor>>
auto async_connect(const asio::any_io_executor& ex, const address& where, const connect_options& options = {},
                   ConnectToken&& token = asio::default_completion_token_t<asio::any_io_executor>()) {
  return asio::async_initiate<ConnectToken, void(error_code, socket_stream)>(
      [](auto handler, asio::any_io_executor e, address a, connect_options o) {
        detail::complete_with_stream(e, detail::connect_one(e, std::move(a), std::move(o)), std::move(handler));
      },
      token, ex, where, options);
}

} // namespace coropipe
