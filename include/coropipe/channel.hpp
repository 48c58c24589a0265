// SPDX-License-Identifier: BSL-1.0
/// @file
/// Typed channels: values of a type travel as messages over a framed_stream.
///
/// ```
/// coropipe::channel<std::string> ch(coropipe::attach(io, std::move(fd)));
/// co_await ch.async_send("Spam 0", asio::use_awaitable);
/// while (std::optional<std::string> s = co_await ch.async_receive(asio::use_awaitable)) ...
/// ```
///
/// `channel<Send, Receive>` sends `Send` values and receives `Receive` values
/// (the same type by default). Over a pipe end it is used in one direction;
/// over a socketpair end (coropipe::duplex_pair(), or fork_with_channel()) in
/// both, like Python's `multiprocessing.Pipe(duplex=True)`.
///
/// ### Encodings: `coropipe::codec<T>`
/// A message's payload is the value's encoding; coropipe knows
/// - `std::string`, `std::vector<std::byte>`, `std::vector<char>`,
///   `std::vector<unsigned char>`: the bytes themselves (what Python's
///   `send_bytes` / `recv_bytes` exchange);
/// - trivially copyable types (not pointers), including `std::array`s and
///   structs of them: their object representation, exactly `sizeof(T)`
///   bytes, in the machine's byte order;
/// - `std::vector<T>` of such a type: the elements' bytes, back to back.
///
/// A payload that cannot be a `T` (a wrong size) is `errc::decode_failed`,
/// never undefined behaviour; the channel stays usable after it.
/// Other types plug in by specializing `coropipe::codec`:
/// ```
/// template <> struct coropipe::codec<point> {
///   static void encode(const point& p, std::vector<std::byte>& out);          // append
///   static error_code decode(coropipe::message_view in, point& out);      // errc::decode_failed
/// };
/// ```
#pragma once

#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/pipe.hpp>

#include <coropipe/asio.hpp>

#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropipe {

/// The customization point: how a `T` becomes a message payload and back.
/// See the file's documentation for the built-in specializations.
template <typename T, typename Enable = void>
struct codec;

namespace detail {
template <typename T>
inline constexpr bool is_plain_bytes = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                                       !std::is_member_pointer_v<T> && !std::is_same_v<T, std::nullptr_t>;

template <typename T>
inline constexpr bool is_byte_like = std::is_same_v<T, char> || std::is_same_v<T, unsigned char> ||
                                     std::is_same_v<T, std::byte> || std::is_same_v<T, signed char>;

inline void append_bytes(std::vector<std::byte>& out, const void* data, std::size_t size) {
  const auto* p = static_cast<const std::byte*>(data);
  out.insert(out.end(), p, p + size);
}
} // namespace detail

/// `std::string`: its bytes.
template <>
struct codec<std::string> {
  static void encode(const std::string& s, std::vector<std::byte>& out) {
    detail::append_bytes(out, s.data(), s.size());
  }
  static error_code decode(message_view in, std::string& out) {
    out.assign(reinterpret_cast<const char*>(in.data()), in.size());
    return {};
  }
};

/// A trivially copyable type: its `sizeof(T)` bytes. Only the size can be
/// checked (and, for `bool`, that the byte is 0 or 1): the bytes of a struct
/// are copied as they came, so a type with invalid bit patterns among its
/// members (a `bool`, an enum with a closed set of values) deserves a codec
/// of its own that validates them.
template <typename T>
struct codec<T, std::enable_if_t<detail::is_plain_bytes<T>>> {
  static void encode(const T& v, std::vector<std::byte>& out) { detail::append_bytes(out, &v, sizeof(T)); }
  static error_code decode(message_view in, T& out) {
    if (in.size() != sizeof(T)) return errc::decode_failed;
    if constexpr (std::is_same_v<std::remove_cv_t<T>, bool>) {
      if (std::to_integer<unsigned>(in[0]) > 1) return errc::decode_failed;
    }
    std::memcpy(&out, in.data(), sizeof(T));
    return {};
  }
};

/// A vector of a trivially copyable type (bytes included): its elements' bytes.
/// (Not `std::vector<bool>`, which stores bits: send a vector of bytes.)
template <typename T, typename Allocator>
struct codec<std::vector<T, Allocator>, std::enable_if_t<detail::is_plain_bytes<T> && !std::is_same_v<T, bool>>> {
  static void encode(const std::vector<T, Allocator>& v, std::vector<std::byte>& out) {
    detail::append_bytes(out, v.data(), v.size() * sizeof(T));
  }
  static error_code decode(message_view in, std::vector<T, Allocator>& out) {
    if (in.size() % sizeof(T) != 0) return errc::decode_failed;
    out.resize(in.size() / sizeof(T));
    if (!in.empty()) std::memcpy(out.data(), in.data(), in.size());
    return {};
  }
};

/// A type channels can carry: `codec<T>` has encode() and decode().
template <typename T>
concept codable = std::is_default_constructible_v<T> &&
                  requires(const T& v, T& out, std::vector<std::byte>& buf, message_view in) {
                    codec<T>::encode(v, buf);
                    { codec<T>::decode(in, out) } -> std::same_as<error_code>;
                  };

namespace detail {

// A send whose encoded payload could not be queued at once: the operation
// owns the bytes until the framed send completes.
template <typename Stream>
struct owned_send_op {
  framed_stream<Stream>& fs;
  std::vector<std::byte> bytes;
  bool started = false;

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (!started) {
      started = true;
      fs.async_send(asio::buffer(bytes), std::move(self));
      return;
    }
    self.complete(ec);
  }
};

// Receives a message and decodes it: into *into (completion (ec, bool)), or
// into a fresh value (completion (ec, optional<T>)).
template <typename T, typename Stream, bool Into>
struct typed_receive_op {
  framed_stream<Stream>& fs;
  T* into;
  bool started = false;

  template <typename Self>
  void operator()(Self& self, error_code ec = {}, std::optional<message_view> msg = {}) {
    if (!started) {
      started = true;
      fs.async_receive(std::move(self));
      return;
    }
    if constexpr (Into) {
      const bool got = !ec && msg.has_value();
      if (got) ec = codec<T>::decode(*msg, *into);
      self.complete(ec, got && !ec);
    } else {
      std::optional<T> value;
      if (!ec && msg) {
        value.emplace();
        ec = codec<T>::decode(*msg, *value);
        if (ec) value.reset();
      }
      self.complete(ec, std::move(value));
    }
  }
};

} // namespace detail

/// Sends `Send` values and receives `Receive` values as messages.
template <codable Send, codable Receive = Send, descriptor_stream Stream = asio::posix::stream_descriptor>
class channel {
public:
  using executor_type = typename Stream::executor_type;
  using send_type = Send;
  using receive_type = Receive;

  /// Over @p stream (e.g. from coropipe::attach()).
  explicit channel(Stream stream, const framed_options& options = {}) : fs_(std::move(stream), options) {}
  /// Over an existing framed_stream.
  explicit channel(framed_stream<Stream> fs) : fs_(std::move(fs)) {}

  [[nodiscard]] executor_type get_executor() const { return fs_.get_executor(); }
  /// The message layer underneath.
  [[nodiscard]] framed_stream<Stream>& framed() noexcept { return fs_; }

  /// Sends @p value.
  ///
  /// Completion signature: `void(error_code)`.
  ///
  /// The value is encoded before this returns, so it may change or die at
  /// once; completion means what it means for framed_stream::async_send().
  /// In steady state a small message is encoded into a reused buffer and
  /// queued without allocating.
  template <typename SendToken = asio::default_completion_token_t<executor_type>>
  auto async_send(const Send& value, SendToken&& token = asio::default_completion_token_t<executor_type>()) {
    scratch_.clear();
    codec<Send>::encode(value, scratch_);
    // The encoded bytes go with the operation (several sends may be created
    // before any runs); their memory comes back to scratch_ afterwards.
    if constexpr (detail::is_use_awaitable<SendToken>) {
      return send_coro<true>(std::exchange(scratch_, {}));
    } else if constexpr (detail::is_as_tuple_use_awaitable<SendToken>) {
      return send_coro<false>(std::exchange(scratch_, {}));
    } else {
      return asio::async_compose<SendToken, void(error_code)>(
          detail::owned_send_op<Stream>{fs_, std::exchange(scratch_, {})}, token, fs_.next_layer());
    }
  }

  /// Receives the next value.
  ///
  /// Completion signature: `void(error_code, std::optional<Receive>)`.
  ///
  /// The optional is empty at a clean end of stream. A message that does not
  /// decode as `Receive` completes with `errc::decode_failed`; the next
  /// receive goes on with the following message.
  template <typename ReceiveToken = asio::default_completion_token_t<executor_type>>
  auto async_receive(ReceiveToken&& token = asio::default_completion_token_t<executor_type>()) {
    if constexpr (detail::is_use_awaitable<ReceiveToken>) {
      return receive_coro<true>();
    } else if constexpr (detail::is_as_tuple_use_awaitable<ReceiveToken>) {
      return receive_coro<false>();
    } else {
      return asio::async_compose<ReceiveToken, void(error_code, std::optional<Receive>)>(
          detail::typed_receive_op<Receive, Stream, false>{fs_, nullptr}, token, fs_.next_layer());
    }
  }

  /// Receives the next value into @p out, reusing its memory (no allocation
  /// per message for strings and vectors once they are large enough).
  ///
  /// Completion signature: `void(error_code, bool)`: false at a clean
  /// end of stream (@p out is then unchanged).
  template <typename ReceiveToken = asio::default_completion_token_t<executor_type>>
  auto async_receive(Receive& out, ReceiveToken&& token = asio::default_completion_token_t<executor_type>()) {
    if constexpr (detail::is_use_awaitable<ReceiveToken>) {
      return receive_into_coro<true>(out);
    } else if constexpr (detail::is_as_tuple_use_awaitable<ReceiveToken>) {
      return receive_into_coro<false>(out);
    } else {
      return asio::async_compose<ReceiveToken, void(error_code, bool)>(
          detail::typed_receive_op<Receive, Stream, true>{fs_, &out}, token, fs_.next_layer());
    }
  }

  /// Takes the next value into @p out if that needs no waiting (see
  /// framed_stream::try_receive(): no system call when the message was read
  /// ahead, at most one non-blocking read(2) otherwise, no asynchronous
  /// operation, no allocation beyond what decoding @p out needs).
  ///
  /// @returns true with the value in @p out; false with @p ec clear at a
  /// clean end of stream, `asio::error::would_block` when no whole message
  /// has arrived yet (wait until `framed().next_layer()` is readable, or use
  /// async_receive()), `errc::decode_failed` for a message that is no
  /// `Receive` (the next receive goes on with the following one), or the
  /// other errors of async_receive().
  bool try_receive(Receive& out, error_code& ec) {
    const std::optional<message_view> msg = fs_.try_receive(ec);
    if (!msg) return false;
    ec = codec<Receive>::decode(*msg, out);
    return !ec;
  }

  /// framed_stream::async_flush().
  template <typename FlushToken = asio::default_completion_token_t<executor_type>>
  auto async_flush(FlushToken&& token = asio::default_completion_token_t<executor_type>()) {
    return fs_.async_flush(std::forward<FlushToken>(token));
  }

  /// framed_stream::async_close(): flush, then close.
  template <typename CloseToken = asio::default_completion_token_t<executor_type>>
  auto async_close(CloseToken&& token = asio::default_completion_token_t<executor_type>()) {
    return fs_.async_close(std::forward<CloseToken>(token));
  }

private:
  // The coroutine paths, one frame each: queue at once when possible,
  // otherwise wait; then the bytes' memory goes back to scratch_ for the
  // next send (steady state: no allocation).
  template <bool Throw>
  asio::awaitable<detail::send_result<Throw>> send_coro(std::vector<std::byte> bytes) {
    error_code ec;
    if (detail::should_yield() || !fs_.try_send(asio::buffer(bytes)))
      std::tie(ec) = co_await fs_.async_send(asio::buffer(bytes), compat::as_tuple(asio::use_awaitable));
    if (scratch_.capacity() < bytes.capacity()) scratch_ = std::move(bytes);
    if constexpr (Throw) {
      if (ec) throw system_error(ec, "coropipe::channel::async_send");
    } else {
      co_return std::tuple{ec};
    }
  }

  template <bool Throw>
  using receive_result = std::conditional_t<Throw, std::optional<Receive>,
                                            std::tuple<error_code, std::optional<Receive>>>;

  template <bool Throw>
  asio::awaitable<receive_result<Throw>> receive_coro() {
    auto [ec, msg] = co_await fs_.async_receive(compat::as_tuple(asio::use_awaitable));
    std::optional<Receive> value;
    if (!ec && msg) {
      value.emplace();
      ec = codec<Receive>::decode(*msg, *value);
      if (ec) value.reset();
    }
    if constexpr (Throw) {
      if (ec) throw system_error(ec, "coropipe::channel::async_receive");
      co_return value;
    } else {
      co_return std::tuple{ec, std::move(value)};
    }
  }

  template <bool Throw>
  using receive_into_result = std::conditional_t<Throw, bool, std::tuple<error_code, bool>>;

  template <bool Throw>
  asio::awaitable<receive_into_result<Throw>> receive_into_coro(Receive& out) {
    auto [ec, msg] = co_await fs_.async_receive(compat::as_tuple(asio::use_awaitable));
    const bool got = !ec && msg.has_value();
    if (got) ec = codec<Receive>::decode(*msg, out);
    if constexpr (Throw) {
      if (ec) throw system_error(ec, "coropipe::channel::async_receive");
      co_return got;
    } else {
      co_return std::tuple{ec, got && !ec};
    }
  }

  framed_stream<Stream> fs_;
  std::vector<std::byte> scratch_;
};

/// The channel the child of `fork_with_channel<ToChild, FromChild>()` holds:
/// it receives `ToChild` values and sends `FromChild` values, so it is a
/// `channel<FromChild, ToChild>` (Send first), the mirror of the parent's
/// `channel<ToChild, FromChild>`. Name the child's parameter with it and keep
/// the template arguments in the order of the fork_with_channel() call:
///
/// ```
/// // The child squares the numbers it is sent and answers with strings.
/// asio::awaitable<int> squarer(coropipe::child_context&,
///                              coropipe::child_channel<int, std::string> ch) {
///   while (std::optional<int> n = co_await ch.async_receive(asio::use_awaitable))
///     co_await ch.async_send(std::to_string(*n * *n), asio::use_awaitable);
///   co_return 0;
/// }
/// auto [ch, kid] = coropipe::fork_with_channel<int, std::string>(io, squarer);
/// // ch is the parent's channel<int, std::string>: sends int, receives std::string.
/// ```
template <codable ToChild, codable FromChild = ToChild>
using child_channel = channel<FromChild, ToChild>;

/// A parent's channel to a forked child, and the child's handle.
template <codable ToChild, codable FromChild>
struct child_with_channel {
  coropipe::channel<ToChild, FromChild> channel;
  coropipe::child child;
};

/// Forks a child connected to the parent by a duplex channel (a socketpair):
/// the child runs `f(ctx, child_channel<ToChild, FromChild>, args...)`
/// (returning `awaitable<int>` or `awaitable<void>`; see child_channel), and
/// the parent gets the other end, a `channel<ToChild, FromChild>`.
/// Otherwise as fork_child(), whose options and errors apply.
template <codable ToChild, codable FromChild = ToChild, detail::executor_or_context Where, typename F,
          typename... Args>
child_with_channel<ToChild, FromChild> fork_with_channel(Where&& where, const fork_options& opts, F&& f,
                                                         Args&&... args) {
  auto [parent_end, child_end] = duplex_pair();
  auto body = [fn = std::forward<F>(f)](child_context& ctx, unique_fd end,
                                        std::decay_t<Args>... a) mutable -> asio::awaitable<int> {
    child_channel<ToChild, FromChild> ch(ctx.attach(std::move(end)));
    using R = decltype(fn(ctx, std::move(ch), std::move(a)...));
    if constexpr (std::is_same_v<R, asio::awaitable<void>>) {
      co_await fn(ctx, child_channel<ToChild, FromChild>(std::move(ch)), std::move(a)...);
      co_return 0;
    } else {
      co_return co_await fn(ctx, child_channel<ToChild, FromChild>(std::move(ch)), std::move(a)...);
    }
  };
  coropipe::child c = fork_child(where, opts, std::move(body), std::move(child_end), std::forward<Args>(args)...);
  return {channel<ToChild, FromChild>(attach(detail::executor_of(where), std::move(parent_end))), std::move(c)};
}

/// fork_with_channel() with default fork_options.
template <codable ToChild, codable FromChild = ToChild, detail::executor_or_context Where, typename F,
          typename... Args>
  requires(!std::is_same_v<std::decay_t<F>, fork_options>)
child_with_channel<ToChild, FromChild> fork_with_channel(Where&& where, F&& f, Args&&... args) {
  return fork_with_channel<ToChild, FromChild>(where, fork_options{}, std::forward<F>(f), std::forward<Args>(args)...);
}

} // namespace coropipe
