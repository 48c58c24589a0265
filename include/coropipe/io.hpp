// SPDX-License-Identifier: BSL-1.0
/// @file
/// Fast byte-stream operations for descriptor-based Asio streams (pipe ends,
/// socketpairs, TCP sockets): coropipe::async_read_some, async_write_some and
/// async_write.
///
/// They try the system call first and wait for readiness only when it would
/// block, where Asio's own operations queue every completion through the
/// scheduler (an extra `epoll_wait` each). With `asio::use_awaitable` or
/// `compat::as_tuple(asio::use_awaitable)` an operation that can
/// complete at once does so without suspending the coroutine at all; with any
/// other completion token it behaves like an ordinary Asio operation (never
/// completing inside the initiating function).
///
/// A coroutine that never meets EAGAIN would keep its thread forever, so after
/// 256 consecutive immediate completions on a thread the next one yields
/// (posts itself to the executor) to let other work run. Each yield costs a
/// pass through the scheduler (and its non-blocking epoll_wait); for a
/// framed_stream it is also when the batched writes go out, so the period
/// sets the batch size of a sender that never waits (256 was worth 13 to 20%
/// of the message rate over 64; docs/performance.md).
///
/// Errors are Asio's: `asio::error::eof`, `asio::error::broken_pipe`,
/// `asio::error::operation_aborted` on per-operation cancellation (honoured
/// while waiting for readiness), other errno values in Asio's system category.
/// SIGPIPE is blocked in the writing thread and a pending one discarded after
/// EPIPE (see sigpipe.hpp). The stream is put in non-blocking mode
/// (`native_non_blocking(true)`) on first use.
#pragma once

#include <coropipe/asio.hpp>

#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <concepts>
#include <cstddef>
#include <system_error>
#include <tuple>
#include <type_traits>

namespace coropipe {

/// A stream coropipe's fast operations work on: it has a native descriptor,
/// can wait for readiness, and can be switched to non-blocking mode.
template <typename Stream>
concept descriptor_stream = requires(Stream& s, const Stream& cs) {
  { s.native_handle() } -> std::convertible_to<int>;
  s.native_non_blocking(true);
  { cs.native_non_blocking() } -> std::convertible_to<bool>;
  typename Stream::executor_type;
  Stream::wait_read;
  Stream::wait_write;
};

namespace detail {

// One read(2) on a non-blocking descriptor: bytes read, or ec set
// (would_block, eof, or the errno in Asio's system category). EINTR retried.
std::size_t try_read(int fd, void* data, std::size_t size, error_code& ec) noexcept;

// One writev(2); EPIPE also discards the SIGPIPE it raised.
std::size_t try_writev(int fd, const ::iovec* iov, int count, error_code& ec) noexcept;

// Makes sure SIGPIPE is blocked in the calling thread (cached per thread).
void ensure_sigpipe_blocked() noexcept;

// How many consecutive immediate completions on a thread go by before the
// next one yields (posts its completion).
inline constexpr unsigned yield_period = 256;
// Consecutive immediate completions on this thread. Inline, with the two
// functions below: they run on every operation.
inline thread_local unsigned immediate_completions = 0;
// Counts one more immediate completion; true when the caller should yield
// before completing.
inline bool should_yield() noexcept {
  if (++immediate_completions < yield_period) [[likely]] return false;
  immediate_completions = 0;
  return true;
}
// Resets the count: the thread is about to wait.
inline void note_wait() noexcept { immediate_completions = 0; }

// What a read(2) that returned @p r (with errno @p err when r < 0) means:
// bytes read, or ec set to eof, would_block or the errno.
std::size_t read_outcome(::ssize_t r, int err, error_code& ec) noexcept;

// One read(2) into @p b; @p err is its errno when it fails, else 0.
inline ::ssize_t read_into(int fd, const asio::mutable_buffer& b, int& err) noexcept {
  const ::ssize_t r = ::read(fd, b.data(), b.size());
  err = r < 0 ? errno : 0;
  return r;
}

template <typename Stream>
void prepare(Stream& s) {
  if (!s.native_non_blocking()) {
    error_code ec;
    s.native_non_blocking(true, ec);
  }
}

// Fills an iovec array from a buffer sequence, skipping @p skip bytes.
// Returns the number of entries (at most max).
template <typename ConstBufferSequence>
int to_iovecs(const ConstBufferSequence& buffers, std::size_t skip, ::iovec* iov, int max) {
  int n = 0;
  for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers) && n < max; ++it) {
    asio::const_buffer b(*it);
    if (skip >= b.size()) {
      skip -= b.size();
      continue;
    }
    b += skip;
    skip = 0;
    if (b.size() == 0) continue;
    iov[n].iov_base = const_cast<void*>(b.data());
    iov[n].iov_len = b.size();
    ++n;
  }
  return n;
}

inline constexpr int max_iovecs = 64;

template <typename Token>
inline constexpr bool is_use_awaitable =
    std::is_same_v<std::decay_t<Token>, asio::use_awaitable_t<asio::any_io_executor>>;

template <typename Token>
inline constexpr bool is_as_tuple_use_awaitable =
    std::is_same_v<std::decay_t<Token>,
                   compat::as_tuple_t<asio::use_awaitable_t<asio::any_io_executor>>>;

// --- read_some -------------------------------------------------------------

// One coroutine frame per operation: Throw selects the error convention
// (exception, or a tuple with the error code).
template <bool Throw>
using read_some_result = std::conditional_t<Throw, std::size_t, std::tuple<error_code, std::size_t>>;

template <bool Throw>
read_some_result<Throw> read_some_value(error_code ec, std::size_t n) {
  if constexpr (Throw) {
    if (ec) throw system_error(ec, "coropipe::async_read_some");
    return n;
  } else {
    return {ec, n};
  }
}

// The rest of a read whose first read(2) returned @p r (errno @p err):
// waits for data (again and again: readiness can be spurious) or yields.
template <bool Throw, typename Stream>
asio::awaitable<read_some_result<Throw>> read_some_rest(Stream& s, asio::mutable_buffer b, ::ssize_t r, int err) {
  error_code ec;
  std::size_t n = 0;
  for (;;) {
    if (r < 0 && err == EINTR) {
      r = read_into(s.native_handle(), b, err);
      continue;
    }
    n = read_outcome(r, err, ec);
    if (ec != asio::error::would_block) break;
    note_wait();
    std::tie(ec) = co_await s.async_wait(Stream::wait_read, compat::as_tuple(asio::use_awaitable));
    if (ec) break;
    r = read_into(s.native_handle(), b, err);
    if (r > 0 && !should_yield()) co_return read_some_value<Throw>(ec, static_cast<std::size_t>(r));
  }
  if (!ec) co_await asio::post(s.get_executor(), asio::use_awaitable);  // the yield that was due
  co_return read_some_value<Throw>(ec, n);
}

// The usual case, data at hand, costs one read(2) and this frame; anything
// else continues in read_some_rest.
template <bool Throw, typename Stream>
asio::awaitable<read_some_result<Throw>> read_some_coro(Stream& s, asio::mutable_buffer b) {
  if (b.size() == 0) co_return read_some_value<Throw>(error_code(), 0);
  prepare(s);
  int err = 0;
  const ::ssize_t r = read_into(s.native_handle(), b, err);
  if (r > 0 && !should_yield()) [[likely]] {
    // No error_code on this path: making one calls into libstdc++.
    if constexpr (Throw) co_return static_cast<std::size_t>(r);
    else co_return read_some_result<false>{error_code(), static_cast<std::size_t>(r)};
  }
  co_return co_await read_some_rest<Throw>(s, b, r, err);
}

template <typename Stream>
struct read_some_op {
  Stream& s;
  asio::mutable_buffer b;
  error_code result_ec{};
  std::size_t result_n = 0;
  bool posted = false;

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (posted) return self.complete(result_ec, result_n);
    if (ec) return self.complete(ec, std::size_t{0});
    prepare(s);
    if (b.size() != 0) {
      error_code rec;
      const std::size_t n = try_read(s.native_handle(), b.data(), b.size(), rec);
      if (rec == asio::error::would_block) {
        note_wait();
        s.async_wait(Stream::wait_read, std::move(self));
        return;
      }
      result_ec = rec;
      result_n = n;
    }
    posted = true;
    asio::post(std::move(self));
  }
};

// --- write -----------------------------------------------------------------

template <typename Stream, typename ConstBufferSequence>
std::tuple<error_code, std::size_t> write_now(Stream& s, const ConstBufferSequence& buffers, std::size_t skip) {
  ::iovec iov[max_iovecs];
  const int n = to_iovecs(buffers, skip, iov, max_iovecs);
  if (n == 0) return {error_code(), 0};
  error_code ec;
  const std::size_t written = try_writev(s.native_handle(), iov, n, ec);
  return {ec, written};
}

// Writes all of @p buffers (all = true) or at least one byte (all = false).
template <bool Throw, typename Stream, typename ConstBufferSequence>
asio::awaitable<read_some_result<Throw>> write_coro(Stream& s, ConstBufferSequence buffers, bool all) {
  ensure_sigpipe_blocked();
  prepare(s);
  const std::size_t total = asio::buffer_size(buffers);
  std::size_t done = 0;
  error_code ec;
  while (done < total) {
    auto [wec, n] = write_now(s, buffers, done);
    if (wec == asio::error::would_block) {
      note_wait();
      std::tie(ec) = co_await s.async_wait(Stream::wait_write, compat::as_tuple(asio::use_awaitable));
      if (ec) break;
      continue;
    }
    done += n;
    ec = wec;
    if (ec || !all) break;
  }
  if (!ec && should_yield()) co_await asio::post(s.get_executor(), asio::use_awaitable);
  if constexpr (Throw) {
    if (ec) throw system_error(ec, all ? "coropipe::async_write" : "coropipe::async_write_some");
    co_return done;
  } else {
    co_return std::tuple{ec, done};
  }
}

template <typename Stream, typename ConstBufferSequence>
struct write_op {
  Stream& s;
  ConstBufferSequence buffers;
  bool all;
  std::size_t done = 0;
  error_code result_ec{};
  bool posted = false;
  bool waited = false;

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (posted) return self.complete(result_ec, done);
    if (ec) return self.complete(ec, done);
    if (!waited) {
      ensure_sigpipe_blocked();
      prepare(s);
    }
    const std::size_t total = asio::buffer_size(buffers);
    while (done < total) {
      auto [wec, n] = write_now(s, buffers, done);
      if (wec == asio::error::would_block) {
        note_wait();
        waited = true;
        s.async_wait(Stream::wait_write, std::move(self));
        return;
      }
      done += n;
      if (wec) {
        result_ec = wec;
        break;
      }
      if (!all) break;
    }
    if (waited) return self.complete(result_ec, done);
    posted = true;
    asio::post(std::move(self));
  }
};

} // namespace detail

/// Reads some bytes from @p s into @p buffer: at least one, unless the buffer
/// is empty; at most what one read(2) returns.
///
/// Completion signature: `void(error_code, std::size_t)`.
///
/// At the end of the stream completes with `asio::error::eof` (and 0), as
/// Asio's own async_read_some does. Cancellation (per-operation, terminal)
/// applies while waiting for data; no bytes are lost by a cancelled read.
template <descriptor_stream Stream, typename ReadToken>
auto async_read_some(Stream& s, const asio::mutable_buffer& buffer, ReadToken&& token) {
  if constexpr (detail::is_use_awaitable<ReadToken>) {
    return detail::read_some_coro<true>(s, buffer);
  } else if constexpr (detail::is_as_tuple_use_awaitable<ReadToken>) {
    return detail::read_some_coro<false>(s, buffer);
  } else {
    return asio::async_compose<ReadToken, void(error_code, std::size_t)>(
        detail::read_some_op<Stream>{s, buffer}, token, s);
  }
}

/// Writes all of @p buffers to @p s, with writev(2) for several buffers.
///
/// Completion signature: `void(error_code, std::size_t)` (bytes written).
///
/// A reader that is gone gives `asio::error::broken_pipe`, never SIGPIPE.
/// Cancellation applies while waiting for room; the bytes written so far are
/// reported and the rest is not written (the stream's position is then
/// between frames only if you made it so).
template <descriptor_stream Stream, typename ConstBufferSequence, typename WriteToken>
  requires asio::is_const_buffer_sequence<ConstBufferSequence>::value
auto async_write(Stream& s, const ConstBufferSequence& buffers, WriteToken&& token) {
  if constexpr (detail::is_use_awaitable<WriteToken>) {
    return detail::write_coro<true>(s, buffers, true);
  } else if constexpr (detail::is_as_tuple_use_awaitable<WriteToken>) {
    return detail::write_coro<false>(s, buffers, true);
  } else {
    return asio::async_compose<WriteToken, void(error_code, std::size_t)>(
        detail::write_op<Stream, ConstBufferSequence>{s, buffers, true}, token, s);
  }
}

/// Writes some of @p buffers to @p s: at least one byte unless they are empty,
/// at most what one writev(2) takes.
///
/// Completion signature: `void(error_code, std::size_t)`.
template <descriptor_stream Stream, typename ConstBufferSequence, typename WriteToken>
  requires asio::is_const_buffer_sequence<ConstBufferSequence>::value
auto async_write_some(Stream& s, const ConstBufferSequence& buffers, WriteToken&& token) {
  if constexpr (detail::is_use_awaitable<WriteToken>) {
    return detail::write_coro<true>(s, buffers, false);
  } else if constexpr (detail::is_as_tuple_use_awaitable<WriteToken>) {
    return detail::write_coro<false>(s, buffers, false);
  } else {
    return asio::async_compose<WriteToken, void(error_code, std::size_t)>(
        detail::write_op<Stream, ConstBufferSequence>{s, buffers, false}, token, s);
  }
}

} // namespace coropipe
