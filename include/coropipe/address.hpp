// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe::address: where a listener listens and a client connects, in the
/// forms Python's `multiprocessing.connection` uses.
///
/// | form                 | written as                          | printed as       |
/// |----------------------|-------------------------------------|------------------|
/// | Unix socket file     | a path: `/run/app.sock`, `./s`      | the path         |
/// | Linux abstract name  | `@name`, or Python's `"\0name"`     | `@name`          |
/// | TCP over IPv4        | `127.0.0.1:8000`, `localhost:8000`  | `127.0.0.1:8000` |
/// | TCP over IPv6        | `[::1]:8000`                        | `[::1]:8000`     |
///
/// Parsing rules, in order: a string starting with `@` or a NUL character is
/// an abstract name; one starting with `[` is IPv6 `[host]:port`; one that
/// ends in `:digits` and contains no `/` is IPv4 `host:port` (a numeric
/// address, or `localhost` for 127.0.0.1: host names are not resolved);
/// anything else is a path. Port 0 asks the listener for a free port;
/// listener::local_address() then tells which.
#pragma once

#include <coropipe/asio.hpp>

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace coropipe {

/// A Unix socket path, a Linux abstract Unix name, or a TCP host and port.
class address {
public:
  /// Which family an address belongs to.
  enum class kind : unsigned char {
    unix_path,  ///< a socket file in the file system
    abstract,   ///< a Linux abstract name (no file; gone with its last socket)
    tcp_v4,     ///< IPv4 host and port
    tcp_v6,     ///< IPv6 host and port
  };

  /// An empty Unix path (not usable until assigned).
  address() = default;

  /// Parses @p text by the rules of this file's documentation.
  /// @throws coropipe::system_error with `errc::invalid_argument` on a malformed address.
  static address parse(std::string_view text);
  /// Parses @p text; on failure returns an empty address and sets @p ec.
  static address parse(std::string_view text, error_code& ec);

  /// A Unix socket file at @p path.
  static address unix_path(std::string path);
  /// A Linux abstract name (without the leading NUL or `@`).
  static address abstract(std::string name);
  /// TCP @p host (numeric IPv4 or IPv6, or `localhost`) and @p port.
  /// @throws coropipe::system_error with `errc::invalid_argument` on a malformed host.
  static address tcp(std::string_view host, std::uint16_t port);

  [[nodiscard]] kind family() const noexcept { return kind_; }
  [[nodiscard]] bool is_unix() const noexcept { return kind_ == kind::unix_path || kind_ == kind::abstract; }
  [[nodiscard]] bool is_tcp() const noexcept { return !is_unix(); }
  /// The path, the abstract name (without prefix), or the numeric host.
  [[nodiscard]] const std::string& host_or_path() const noexcept { return text_; }
  /// The TCP port (0 for Unix addresses).
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  /// True for TCP addresses on 127.0.0.0/8 or ::1, and for Unix addresses.
  [[nodiscard]] bool is_local() const noexcept;

  /// The printed form (see the table in this file's documentation).
  [[nodiscard]] std::string to_string() const;
  /// The form Python's `Listener`/`Client` take, as Python source text:
  /// `'/path'`, `'\0name'`, `('127.0.0.1', 8000)`.
  [[nodiscard]] std::string python_literal() const;

  friend bool operator==(const address&, const address&) = default;

  /// Fills @p storage with the socket address; returns its length, or 0 with
  /// @p ec set (a path too long for `sockaddr_un`).
  ::socklen_t to_sockaddr(::sockaddr_storage& storage, error_code& ec) const;
  /// The address of a socket address returned by the kernel (getsockname).
  static address from_sockaddr(const ::sockaddr_storage& storage, ::socklen_t length);

private:
  kind kind_ = kind::unix_path;
  std::string text_;
  std::uint16_t port_ = 0;
};

} // namespace coropipe
