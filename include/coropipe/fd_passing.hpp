// SPDX-License-Identifier: BSL-1.0
/// @file
/// Passing open descriptors between processes over a Unix stream socket
/// (`SCM_RIGHTS`), in the format of Python's
/// `multiprocessing.reduction.send_handle` / `recv_handle` (`sendfds` /
/// `recvfds`): one data byte holding the count modulo 256 travels with the
/// control message, outside the 4-byte message framing.
///
/// ```
/// co_await coropipe::async_send_fds(sock, std::array{pipe_read_end}, asio::use_awaitable);
/// std::vector<coropipe::unique_fd> fds = co_await coropipe::async_receive_fds(sock, 1, asio::use_awaitable);
/// ```
///
/// Received descriptors arrive with close-on-exec set (`MSG_CMSG_CLOEXEC`), as
/// coropipe::unique_fd. Every control header is walked (an `SCM_CREDENTIALS`
/// header may come first when `SO_PASSCRED` is on). Truncated control data
/// (`MSG_CTRUNC`), a count other than asked for, a data byte that does not
/// match, or more than 253 descriptors (the kernel's `SCM_MAX_FD`) give
/// `errc::descriptor_passing_failed`, and every descriptor that did arrive
/// is closed. The peer closing first gives `asio::error::eof`.
///
/// **Read-ahead.** A framed_stream reads ahead, and a plain read(2) that
/// meets the byte carrying descriptors silently discards them. So receive
/// descriptors on a socket whose framed_stream has no receive in progress and
/// nothing buffered (`socket_stream::next_layer()` after a request–reply
/// exchange, where the peer sends nothing between its reply and the
/// descriptors), or on a connection kept for the purpose, as Python's
/// `multiprocessing` does.
#pragma once

#include <coropipe/error.hpp>
#include <coropipe/io.hpp>
#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace coropipe {

/// The most descriptors one message carries (Linux's `SCM_MAX_FD`).
inline constexpr std::size_t max_fds_per_message = 253;

namespace detail {

// One sendmsg(2): true when sent, false when it would block; ec on error.
bool try_send_fds(int sock, std::span<const int> fds, error_code& ec) noexcept;
// One recvmsg(2): true when done (fds filled, or ec set), false when it would block.
bool try_receive_fds(int sock, std::size_t count, std::vector<unique_fd>& fds, error_code& ec);

// Both operations: try the system call; wait for readiness when it would
// block; an immediate outcome completes through a post (never inside the
// initiating function).
template <typename Stream>
class send_fds_op {
public:
  send_fds_op(Stream& s, std::vector<int> fds) : s_(s), fds_(std::move(fds)) {}

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (phase_ == phase::completing) return self.complete(ec_);
    if (phase_ == phase::waiting && ec) return self.complete(ec);
    const bool first = phase_ == phase::starting;
    phase_ = phase::waiting;
    error_code sec;
    bool done = true;
    if (fds_.size() > max_fds_per_message) {
      sec = make_error_code(errc::descriptor_passing_failed);
    } else {
      ensure_sigpipe_blocked();
      done = try_send_fds(s_.native_handle(), fds_, sec) || sec;
    }
    if (!done) return s_.async_wait(Stream::wait_write, std::move(self));
    if (!first) return self.complete(sec);
    ec_ = sec;
    phase_ = phase::completing;
    asio::post(std::move(self));
  }

private:
  enum class phase : unsigned char { starting, waiting, completing };
  Stream& s_;
  std::vector<int> fds_;
  error_code ec_;
  phase phase_ = phase::starting;
};

template <typename Stream>
class receive_fds_op {
public:
  receive_fds_op(Stream& s, std::size_t count) : s_(s), count_(count) {}

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (phase_ == phase::completing) return self.complete(ec_, std::move(fds_));
    if (phase_ == phase::waiting && ec) return self.complete(ec, std::vector<unique_fd>());
    const bool first = phase_ == phase::starting;
    phase_ = phase::waiting;
    if (!try_receive_fds(s_.native_handle(), count_, fds_, ec_))
      return s_.async_wait(Stream::wait_read, std::move(self));
    if (!first) return self.complete(ec_, std::move(fds_));
    phase_ = phase::completing;
    asio::post(std::move(self));
  }

private:
  enum class phase : unsigned char { starting, waiting, completing };
  Stream& s_;
  std::size_t count_;
  std::vector<unique_fd> fds_;
  error_code ec_;
  phase phase_ = phase::starting;
};

} // namespace detail

/// Sends @p fds (at most 253; they stay open here) over the connected Unix
/// stream socket @p s, with the data byte `fds.size() % 256`.
///
/// Completion signature: `void(error_code)`.
///
/// @param s  a socket (e.g. `socket_stream::next_layer()`), not being written
///           by anything else at the same time.
template <descriptor_stream Stream, typename SendToken>
auto async_send_fds(Stream& s, std::span<const int> fds, SendToken&& token) {
  return asio::async_compose<SendToken, void(error_code)>(
      detail::send_fds_op<Stream>(s, std::vector<int>(fds.begin(), fds.end())), token, s);
}

/// Receives exactly @p count descriptors (at most 253) sent by
/// async_send_fds() or Python's `send_handle` (count 1) / `sendfds`.
///
/// Completion signature: `void(error_code, std::vector<coropipe::unique_fd>)`.
///
/// Errors: `errc::descriptor_passing_failed` (see the file's documentation;
/// nothing is leaked), `asio::error::eof`, `operation_aborted` when cancelled.
template <descriptor_stream Stream, typename ReceiveToken>
auto async_receive_fds(Stream& s, std::size_t count, ReceiveToken&& token) {
  return asio::async_compose<ReceiveToken, void(error_code, std::vector<unique_fd>)>(
      detail::receive_fds_op<Stream>(s, count), token, s);
}

} // namespace coropipe
