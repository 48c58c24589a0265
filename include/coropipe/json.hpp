// SPDX-License-Identifier: BSL-1.0
/// @file
/// JSON messages through nlohmann-json (header only: only applications that
/// include this header need nlohmann-json; the coropipe library does not).
///
/// ```
/// coropipe::channel<nlohmann::json> ch(coropipe::attach(io, std::move(fd)));
/// co_await ch.async_send({{"id", 7}, {"tags", {"a", "b"}}}, asio::use_awaitable);
/// std::optional<nlohmann::json> j = co_await ch.async_receive(asio::use_awaitable);
/// ```
///
/// A message is the JSON text, UTF-8, without a trailing newline: what
/// Python's `conn.send_bytes(json.dumps(obj).encode())` sends, and
/// `json.loads(conn.recv_bytes())` reads.
///
/// Your own types travel as JSON in two ways:
/// - a class type with `to_json`/`from_json` found by argument-dependent
///   lookup (nlohmann's convention) that is not trivially copyable:
///   `channel<my_type>` directly;
/// - any type nlohmann converts (trivially copyable structs included, which
///   would otherwise travel as their bytes): `channel<as_json<T>>`.
///
/// Text that is not JSON, or JSON that does not convert to the type, is
/// `errc::decode_failed` with the library's message in
/// coropipe::last_decode_error(); arrays and objects nested deeper than
/// 1000 levels are `errc::nesting_too_deep`.
#pragma once

#include <coropipe/channel.hpp>
#include <coropipe/decode_error.hpp>
#include <coropipe/error.hpp>
#include <coropipe/framed_stream.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropipe {

/// The deepest nesting of arrays and objects a JSON message may have.
inline constexpr std::size_t json_max_depth = 1000;

namespace detail {

// Whether the text nests deeper than json_max_depth (nlohmann's own
// functions recurse on nesting, so a message must not reach them deeper).
inline bool json_too_deep(message_view in) noexcept {
  std::size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (std::byte b : in) {
    const auto c = static_cast<char>(b);
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > json_max_depth) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

inline error_code json_parse(message_view in, nlohmann::json& out) {
  if (json_too_deep(in))
    return set_decode_error(errc::nesting_too_deep,
                            "json: arrays/objects nested deeper than " + std::to_string(json_max_depth) + " levels");
  try {
    const auto* p = reinterpret_cast<const char*>(in.data());
    out = nlohmann::json::parse(p, p + in.size());
    return {};
  } catch (const nlohmann::json::exception& e) {
    return set_decode_error(errc::decode_failed, std::string("json: ") + e.what());
  }
}

inline void json_append(const nlohmann::json& j, std::vector<std::byte>& out) {
  const std::string text = j.dump();
  append_bytes(out, text.data(), text.size());
}

template <typename T>
error_code json_decode_as(message_view in, T& out) {
  nlohmann::json j;
  if (error_code ec = json_parse(in, j)) return ec;
  try {
    j.get_to(out);
    return {};
  } catch (const nlohmann::json::exception& e) {
    return set_decode_error(errc::decode_failed, std::string("json: ") + e.what());
  }
}

template <typename T>
concept json_adl_type = std::is_class_v<T> && !is_plain_bytes<T> && !std::is_same_v<T, nlohmann::json> &&
                        requires(nlohmann::json& j, const nlohmann::json& cj, const T& v, T& out) {
                          to_json(j, v);
                          from_json(cj, out);
                        };

} // namespace detail

/// A `T` that travels as JSON: `channel<as_json<T>>` for any type
/// nlohmann-json converts.
template <typename T>
struct as_json {
  T value{};

  as_json() = default;
  /// Wraps @p v (implicitly, so `ch.async_send(my_value, ...)` works).
  as_json(T v) : value(std::move(v)) {}
  // User-provided copies keep this type out of the byte-copying codec.
  as_json(const as_json& o) : value(o.value) {}
  as_json(as_json&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : value(std::move(o.value)) {}
  as_json& operator=(const as_json& o) {
    value = o.value;
    return *this;
  }
  as_json& operator=(as_json&& o) noexcept(std::is_nothrow_move_assignable_v<T>) {
    value = std::move(o.value);
    return *this;
  }
  ~as_json() = default;

  T& operator*() noexcept { return value; }
  const T& operator*() const noexcept { return value; }
  T* operator->() noexcept { return &value; }
  const T* operator->() const noexcept { return &value; }
  friend bool operator==(const as_json& a, const as_json& b) { return a.value == b.value; }
};

/// nlohmann::json: its text each way.
template <>
struct codec<nlohmann::json> {
  /// @throws nlohmann::json::type_error if a string is not valid UTF-8.
  static void encode(const nlohmann::json& j, std::vector<std::byte>& out) { detail::json_append(j, out); }
  static error_code decode(message_view in, nlohmann::json& out) { return detail::json_parse(in, out); }
};

/// as_json<T>: T's JSON text.
template <typename T>
struct codec<as_json<T>> {
  static void encode(const as_json<T>& v, std::vector<std::byte>& out) {
    detail::json_append(nlohmann::json(v.value), out);
  }
  static error_code decode(message_view in, as_json<T>& out) { return detail::json_decode_as(in, out.value); }
};

/// A class type with to_json/from_json (by argument-dependent lookup), not
/// trivially copyable: its JSON text.
template <typename T>
struct codec<T, std::enable_if_t<detail::json_adl_type<T>>> {
  static void encode(const T& v, std::vector<std::byte>& out) { detail::json_append(nlohmann::json(v), out); }
  static error_code decode(message_view in, T& out) { return detail::json_decode_as(in, out); }
};

} // namespace coropipe
