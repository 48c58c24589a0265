// SPDX-License-Identifier: BSL-1.0
#include <coropipe/address.hpp>

#include <coropipe/error.hpp>

#include "parse.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>

namespace coropipe {

namespace {

bool parse_port(std::string_view s, std::uint16_t& port) {
  unsigned long value = 0;
  if (!detail::parse_decimal(s, 5, 0, 65535, value)) return false;
  port = static_cast<std::uint16_t>(value);
  return true;
}

// Numeric host of the given family (localhost stands for 127.0.0.1).
bool normalize_host(std::string_view host, int family, std::string& out) {
  std::string h(host);
  if (family == AF_INET && h == "localhost") h = "127.0.0.1";
  unsigned char buf[sizeof(::in6_addr)];
  if (h.find('\0') != std::string::npos || ::inet_pton(family, h.c_str(), buf) != 1) return false;
  char text[INET6_ADDRSTRLEN];
  if (::inet_ntop(family, buf, text, sizeof text) == nullptr) return false;
  out = text;
  return true;
}

} // namespace

address address::parse(std::string_view text, error_code& ec) {
  ec = {};
  address a;
  const auto fail = [&] {
    ec = make_error_code(errc::invalid_argument);
    return address();
  };
  if (text.empty()) return fail();
  if (text.front() == '@' || text.front() == '\0') {
    if (text.size() == 1) return fail();
    a.kind_ = kind::abstract;
    a.text_ = std::string(text.substr(1));
    return a;
  }
  if (text.front() == '[') {
    const auto close = text.find("]:");
    std::uint16_t port = 0;
    if (close == std::string_view::npos || !parse_port(text.substr(close + 2), port)) return fail();
    if (!normalize_host(text.substr(1, close - 1), AF_INET6, a.text_)) return fail();
    a.kind_ = kind::tcp_v6;
    a.port_ = port;
    return a;
  }
  const auto colon = text.rfind(':');
  std::uint16_t port = 0;
  const auto digits = colon == std::string_view::npos ? std::string_view() : text.substr(colon + 1);
  if (!digits.empty() && text.find('/') == std::string_view::npos &&
      digits.find_first_not_of("0123456789") == std::string_view::npos) {
    if (!parse_port(digits, port) || !normalize_host(text.substr(0, colon), AF_INET, a.text_)) return fail();
    a.kind_ = kind::tcp_v4;
    a.port_ = port;
    return a;
  }
  if (text.find('\0') != std::string_view::npos) return fail();
  a.kind_ = kind::unix_path;
  a.text_ = std::string(text);
  return a;
}

address address::parse(std::string_view text) {
  error_code ec;
  address a = parse(text, ec);
  if (ec) throw system_error(ec, "coropipe::address::parse: " + std::string(text.substr(0, 200)));
  return a;
}

address address::unix_path(std::string path) {
  address a;
  a.kind_ = kind::unix_path;
  a.text_ = std::move(path);
  return a;
}

address address::abstract(std::string name) {
  address a;
  a.kind_ = kind::abstract;
  a.text_ = std::move(name);
  return a;
}

address address::tcp(std::string_view host, std::uint16_t port) {
  address a;
  a.port_ = port;
  if (normalize_host(host, AF_INET, a.text_)) {
    a.kind_ = kind::tcp_v4;
  } else if (normalize_host(host, AF_INET6, a.text_)) {
    a.kind_ = kind::tcp_v6;
  } else {
    throw system_error(make_error_code(errc::invalid_argument), "coropipe::address::tcp: " + std::string(host));
  }
  return a;
}

bool address::is_local() const noexcept {
  switch (kind_) {
  case kind::unix_path:
  case kind::abstract:
    return true;
  case kind::tcp_v4:
    return text_.rfind("127.", 0) == 0;
  case kind::tcp_v6:
    return text_ == "::1";
  }
  return false;
}

std::string address::to_string() const {
  switch (kind_) {
  case kind::unix_path:
    return text_;
  case kind::abstract:
    return std::string(1, '@').append(text_);
  case kind::tcp_v4:
    return text_ + ":" + std::to_string(port_);
  case kind::tcp_v6:
    return std::string(1, '[').append(text_).append("]:").append(std::to_string(port_));
  }
  return {};
}

std::string address::python_literal() const {
  const auto quote = [](std::string_view s, bool nul) {
    std::string out = "'";
    if (nul) out += "\\0";
    for (char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (c == '\\' || c == '\'') {
        out += '\\';
        out += c;
      } else if (u < 0x20 || u >= 0x7f) {
        static const char hex[] = "0123456789abcdef";
        out += "\\x";
        out += hex[u >> 4];
        out += hex[u & 15];
      } else {
        out += c;
      }
    }
    return out + "'";
  };
  switch (kind_) {
  case kind::unix_path:
    return quote(text_, false);
  case kind::abstract:
    return quote(text_, true);
  case kind::tcp_v4:
  case kind::tcp_v6:
  {
    std::string out(1, '(');
    out += quote(text_, false);
    out += ", ";
    out += std::to_string(port_);
    out += ')';
    return out;
  }
  }
  return {};
}

::socklen_t address::to_sockaddr(::sockaddr_storage& storage, error_code& ec) const {
  ec = {};
  std::memset(&storage, 0, sizeof storage);
  switch (kind_) {
  case kind::unix_path:
  case kind::abstract: {
    auto* un = reinterpret_cast<::sockaddr_un*>(&storage);
    un->sun_family = AF_UNIX;
    const bool abs = kind_ == kind::abstract;
    const std::size_t room = sizeof un->sun_path - (abs ? 0 : 1);  // a path needs its NUL
    if (text_.size() + (abs ? 1 : 0) > room || (!abs && text_.empty())) {
      ec = text_.empty() ? error_code(make_error_code(errc::invalid_argument)) : detail::errno_code(ENAMETOOLONG);
      return 0;
    }
    std::memcpy(un->sun_path + (abs ? 1 : 0), text_.data(), text_.size());
    return static_cast<::socklen_t>(offsetof(::sockaddr_un, sun_path) + text_.size() + 1);
  }
  case kind::tcp_v4: {
    auto* in = reinterpret_cast<::sockaddr_in*>(&storage);
    in->sin_family = AF_INET;
    in->sin_port = htons(port_);
    ::inet_pton(AF_INET, text_.c_str(), &in->sin_addr);
    return sizeof(::sockaddr_in);
  }
  case kind::tcp_v6: {
    auto* in6 = reinterpret_cast<::sockaddr_in6*>(&storage);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port_);
    ::inet_pton(AF_INET6, text_.c_str(), &in6->sin6_addr);
    return sizeof(::sockaddr_in6);
  }
  }
  ec = make_error_code(errc::invalid_argument);
  return 0;
}

address address::from_sockaddr(const ::sockaddr_storage& storage, ::socklen_t length) {
  address a;
  char text[INET6_ADDRSTRLEN] = {};
  switch (storage.ss_family) {
  case AF_UNIX: {
    const auto* un = reinterpret_cast<const ::sockaddr_un*>(&storage);
    const auto base = offsetof(::sockaddr_un, sun_path);
    const std::size_t n = length > base ? static_cast<std::size_t>(length) - base : 0;
    if (n > 0 && un->sun_path[0] == '\0') {
      a.kind_ = kind::abstract;
      a.text_.assign(un->sun_path + 1, n - 1);
    } else {
      a.kind_ = kind::unix_path;
      a.text_.assign(un->sun_path, ::strnlen(un->sun_path, n));
    }
    break;
  }
  case AF_INET: {
    const auto* in = reinterpret_cast<const ::sockaddr_in*>(&storage);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    a.kind_ = kind::tcp_v4;
    a.text_ = text;
    a.port_ = ntohs(in->sin_port);
    break;
  }
  case AF_INET6: {
    const auto* in6 = reinterpret_cast<const ::sockaddr_in6*>(&storage);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    a.kind_ = kind::tcp_v6;
    a.text_ = text;
    a.port_ = ntohs(in6->sin6_port);
    break;
  }
  default:
    break;
  }
  return a;
}

} // namespace coropipe
