// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe::line_reader: read a stream line by line, each line as soon as it
/// has arrived (`tail -f` style), with a bound on the length of a line.
///
/// ```
/// coropipe::line_reader lines(p.stdout_pipe());   // refers to the stream
/// while (auto line = co_await lines.async_read_line(asio::use_awaitable))
///   std::printf("got: %s\n", line->c_str());       // nullopt: end of stream
/// ```
#pragma once

#include <coropipe/error.hpp>

#include <coropipe/asio.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace coropipe {

template <typename AsyncReadStream>
class line_reader;

namespace detail {

template <typename Reader>
class read_line_op {
public:
  explicit read_line_op(Reader& r) noexcept : r_(&r) {}

  template <typename Self>
  void operator()(Self& self, error_code ec = {}, std::size_t n = 0) {
    switch (phase_) {
    case phase::starting:
      if (r_->take(ec_, line_)) {
        // Already there: complete through the handler's executor, never from
        // inside the initiating function.
        phase_ = phase::completing;
        asio::post(std::move(self));
        return;
      }
      phase_ = phase::reading;
      read_more(self);
      return;
    case phase::reading:
      r_->buf_.resize(r_->filled_ + n);
      r_->filled_ += n;
      if (ec == asio::error::eof) {
        r_->eof_ = true;
      } else if (ec) {
        self.complete(ec, std::nullopt);  // what was buffered stays for the next call
        return;
      }
      if (r_->take(ec_, line_)) {
        self.complete(ec_, std::move(line_));
        return;
      }
      // A cancellation emitted while this read's completion was queued
      // reached no operation; the state remembers it.
      if (self.get_cancellation_state().cancelled() != asio::cancellation_type::none) {
        self.complete(asio::error::operation_aborted, std::nullopt);
        return;
      }
      read_more(self);
      return;
    case phase::completing:
      self.complete(ec_, std::move(line_));
      return;
    }
  }

private:
  enum class phase : unsigned char { starting, reading, completing };

  template <typename Self>
  void read_more(Self& self) {
    r_->buf_.resize(r_->filled_ + Reader::read_size);
    r_->stream_.async_read_some(asio::buffer(r_->buf_.data() + r_->filled_, Reader::read_size),
                                std::move(self));
  }

  Reader* r_;
  error_code ec_;
  std::optional<std::string> line_;
  phase phase_ = phase::starting;
};

} // namespace detail

/// Reads lines from an asynchronous stream (an `asio::posix::stream_descriptor`,
/// a socket, ...): each async_read_line() completes as soon as a whole line
/// has arrived.
///
/// @tparam AsyncReadStream  the stream type, owned by the reader; or a
///   reference type, the reader then refers to a stream that must outlive it.
///   Deduced: `line_reader r(p.stdout_pipe())` refers,
///   `line_reader r(std::move(stream))` owns.
///
/// Lines end with `\n`, which is not part of the line returned (a `\r`
/// before it is kept). A last line without `\n` is returned at the end of the
/// stream; then the end is reported as `std::nullopt`, again on every call.
/// Bytes after the line are kept in the reader for the next call: read the
/// stream only through the reader. One read at a time; the reader must not be
/// moved while one is pending.
template <typename AsyncReadStream>
class line_reader {
public:
  /// The stream's type, without reference.
  using stream_type = std::remove_reference_t<AsyncReadStream>;
  /// The stream's executor type.
  using executor_type = typename stream_type::executor_type;

  /// The default bound on a line's length: 1 MiB.
  static constexpr std::size_t default_max_line = std::size_t{1} << 20;

  /// A reader of @p stream whose lines may have up to @p max_line bytes
  /// (the `\n` not counted).
  explicit line_reader(AsyncReadStream stream, std::size_t max_line = default_max_line)
      : stream_(std::forward<AsyncReadStream>(stream)), max_(max_line) {}

  /// The stream.
  [[nodiscard]] stream_type& stream() noexcept { return stream_; }
  /// The stream's executor.
  [[nodiscard]] executor_type get_executor() noexcept { return stream_.get_executor(); }
  /// The longest line accepted.
  [[nodiscard]] std::size_t max_line() const noexcept { return max_; }

  /// Reads the next line.
  ///
  /// Completion signature: `void(error_code, std::optional<std::string>)`.
  ///
  /// Completes with the line, or with `std::nullopt` and no error at the end
  /// of the stream (an ordinary outcome). A line longer than max_line() gives
  /// `coropipe::errc::message_too_large` as soon as that many bytes are
  /// buffered without a newline; that line is skipped (the rest of it is read
  /// and dropped) and the next call returns the line after it. Read errors
  /// are reported as they come, with the bytes buffered so far kept.
  /// Supports per-operation cancellation (that of the stream's read): a
  /// cancelled read completes with `asio::error::operation_aborted`, nothing
  /// is lost, and reading can go on.
  template <typename ReadToken = asio::default_completion_token_t<executor_type>>
  auto async_read_line(ReadToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_compose<ReadToken, void(error_code, std::optional<std::string>)>(
        detail::read_line_op<line_reader>(*this), token, stream_);
  }

private:
  template <typename>
  friend class detail::read_line_op;
  static constexpr std::size_t read_size = 16384;

  // Produces what the buffered bytes give: a line, the end, or an error.
  // False when more bytes are needed.
  bool take(error_code& ec, std::optional<std::string>& line) {
    ec.clear();
    line.reset();
    if (skipping_) {
      const auto nl = buf_.find('\n', start_);
      if (nl == std::string::npos || nl >= filled_) {
        drop(filled_);
        if (!eof_) return false;
        return true;  // the stream ended inside the long line
      }
      drop(nl + 1);
      skipping_ = false;
    }
    const auto nl = buf_.find('\n', start_ + scanned_);
    if (nl != std::string::npos && nl < filled_) {
      if (nl - start_ > max_) {
        drop(nl + 1);
        ec = errc::message_too_large;
        return true;
      }
      line.emplace(buf_, start_, nl - start_);
      drop(nl + 1);
      return true;
    }
    scanned_ = filled_ - start_;
    if (filled_ - start_ > max_) {
      drop(filled_);
      skipping_ = !eof_;
      ec = errc::message_too_large;
      return true;
    }
    if (!eof_) return false;
    if (filled_ > start_) line.emplace(buf_, start_, filled_ - start_);
    drop(filled_);
    return true;
  }

  // Consumes the buffered bytes up to @p end.
  void drop(std::size_t end) {
    start_ = end;
    scanned_ = 0;
    if (start_ == filled_) {
      buf_.clear();
      start_ = filled_ = 0;
    } else if (start_ > filled_ / 2) {
      buf_.erase(0, start_);
      filled_ -= start_;
      start_ = 0;
    }
  }

  AsyncReadStream stream_;
  std::size_t max_;
  std::string buf_;           // bytes [start_, filled_) are unread; the rest is room
  std::size_t start_ = 0;
  std::size_t filled_ = 0;
  std::size_t scanned_ = 0;   // bytes from start_ known to hold no newline
  bool eof_ = false;
  bool skipping_ = false;     // inside a line that was too long
};

/// `line_reader r(stream)` refers to an lvalue stream; `line_reader
/// r(std::move(stream))` owns it.
template <typename S>
line_reader(S&&) -> line_reader<S>;
/// As above, with a maximum line length.
template <typename S>
line_reader(S&&, std::size_t) -> line_reader<S>;

} // namespace coropipe
