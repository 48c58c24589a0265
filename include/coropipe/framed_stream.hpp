// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe::framed_stream: messages over any descriptor-based Asio stream
/// (a pipe end, a socketpair end, a TCP socket), in the wire format of
/// Python's `multiprocessing.connection` (see frame.hpp).
///
/// ### Sending
/// async_send() appends the whole frame to a send queue, so frames from
/// several coroutines never interleave, and a background flush writes the
/// queue with as few writev(2) calls as possible: many small messages go out
/// in one system call. A payload of up to `copy_threshold` bytes (16 KiB) is
/// copied into the queue and its send **completes as soon as it is queued**,
/// while the queue holds less than `send_buffer_size` bytes (64 KiB) — like a
/// write into the pipe's own kernel buffer, which the queue extends. Beyond
/// that, senders wait for room: backpressure, with bounded memory. A larger
/// payload is written from your memory (not copied) and its send completes
/// once it has been written.
///
/// Request and reply: the first small send after a receive had to wait, with
/// nothing else queued, is written at once by the send itself (one
/// non-blocking write(2), no trip through the event loop or the queue), and
/// the receive that follows it waits for the reply without first trying a
/// read(2) that could only find nothing. What that write cannot take (a full
/// socket or pipe buffer, a partial write) is queued and the background
/// flush finishes it; a write error it meets is reported by that same send.
/// A round trip then costs a write, an epoll_wait, an epoll_ctl and a read on
/// each side: Asio's async_wait re-arms the descriptor with epoll_ctl every
/// time. On a socket whose io_context is configured (Asio 1.36 and later)
/// with `reactor.reset_edge_on_partial_read=1`, for example
/// `asio::io_context io{asio::config_from_string{"reactor.reset_edge_on_partial_read=1"}}`,
/// a coroutine receive waits with an Asio read instead, which after a short
/// read needs no epoll_ctl: a write, an epoll_wait and a read on each side
/// (docs/tutorial/05-sockets.md, "Performance").
///
/// Data queued when the framed_stream is destroyed is still written: the
/// stream lingers in the background until its queue is empty (as long as its
/// executor runs), and only then closes the descriptor. async_flush() waits
/// until everything queued is written; async_close() flushes, then closes.
/// A write error (`asio::error::broken_pipe` when the reader is gone) is
/// reported by the send that meets it and by every later send or flush; frames
/// queued at that moment are lost, as bytes in a pipe's buffer are lost when
/// its reader exits.
///
/// ### Receiving
/// async_receive() completes with the next message's payload, or with an
/// empty optional at a clean end of stream (between frames). The payload is a
/// view into the stream's read-ahead buffer, valid until the next receive.
/// One read(2) can bring many frames, and later receives take them without a
/// system call. Malformed input gives `errc::malformed_frame`,
/// `errc::message_too_large` (checked before any allocation), or
/// `errc::truncated_message` when the stream ends inside a frame; such errors
/// are sticky. One receive at a time (a second concurrent one completes with
/// `asio::error::already_started`).
///
/// ### Cancellation
/// Both operations support per-operation cancellation (terminal), so
/// `co_await (fs.async_receive(use_awaitable) || timer.async_wait(use_awaitable))`
/// is a receive with a timeout.
/// - A cancelled receive completes with `asio::error::operation_aborted` and
///   loses nothing: bytes already read stay buffered and the next receive
///   continues with the same message.
/// - A send cancelled while it waits for room has queued nothing: it completes
///   with `operation_aborted` and the peer never sees the message. A large
///   send cancelled while its frame is queued: if none of the frame was
///   written yet, it is removed (`operation_aborted`, never seen by the peer);
///   if part of it was written, the rest is copied and still written (frames
///   are never torn) and the send completes without error. Either way your
///   buffer may be released as soon as the send completes.
///
/// A framed_stream is used from one thread at a time (or a strand), like
/// Asio's I/O objects. As with Asio's own operations, an awaitable returned
/// by async_send() or async_receive() refers to the framed_stream: co_await
/// it while the framed_stream lives (once started, an operation that has to
/// wait keeps what it needs alive by itself).
#pragma once

#include <coropipe/error.hpp>
#include <coropipe/frame.hpp>
#include <coropipe/io.hpp>

#include <coropipe/asio.hpp>

#include <array>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <system_error>

namespace coropipe {

/// Tuning of a framed_stream; the defaults suit most uses.
struct framed_options {
  /// The largest payload accepted from the peer.
  std::size_t max_message_size = default_max_message_size;
  /// Read-ahead: the room offered to each read(2).
  std::size_t read_size = std::size_t{64} << 10;
  /// Sends complete while fewer bytes than this wait to be written.
  std::size_t send_buffer_size = std::size_t{64} << 10;
  /// Payloads up to this size are copied into the send queue; larger ones
  /// are written from the caller's memory.
  std::size_t copy_threshold = std::size_t{16} << 10;
};

/// A received message: a view of its payload, valid until the next receive.
using message_view = std::span<const std::byte>;

namespace detail {

// True when @p s is a socket whose io_context's epoll reactor treats a short
// read as consuming the readiness edge (Asio 1.36 and later, io_context
// configuration "reactor" / "reset_edge_on_partial_read"). A receive that
// has to wait then waits with an Asio read (async_read_some): after a short
// read the reactor queues it without a speculative read(2), where
// async_wait always re-arms the descriptor with epoll_ctl(EPOLL_CTL_MOD):
// one system call less per wait (a request-reply round trip: write,
// epoll_wait, read on each side).
template <typename Stream>
bool reads_consume_edge([[maybe_unused]] Stream& s) {
  if constexpr (COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ &&
                requires {
                  typename Stream::protocol_type;
                  asio::query(s.get_executor(), asio::execution::context);
                }) {
    return compat::resets_edge_on_partial_read(asio::query(s.get_executor(), asio::execution::context));
  }
  return false;
}

template <typename Stream>
struct framed_state : std::enable_shared_from_this<framed_state<Stream>> {
  framed_state(Stream s, const framed_options& o)
      : stream(std::move(s)), opts(o), rbuf(o.max_message_size, o.read_size),
        queue(o.send_buffer_size + o.copy_threshold + max_frame_header_size),
        progress(stream.get_executor(), asio::steady_timer::time_point::max()) {}

  Stream stream;
  framed_options opts;

  // Receiving.
  frame_buffer rbuf;
  bool receiving = false;
  bool eof = false;
  error_code read_error;
  // The last read(2) returned less than the room it was offered: the
  // descriptor had nothing more at that moment.
  bool drained = false;
  // Our own frame was just written at once after the descriptor was
  // drained, or the owner said so (wait_before_next_read()): a reply cannot
  // be there yet, so the next receive waits for readiness without trying a
  // read(2) first (request-reply).
  bool skip_read = false;
  // A receive waited since the last send: the next small send is written
  // at once (see queue_small), not batched by a posted flush.
  bool send_direct = false;
  // A coroutine receive waits with an Asio read instead of async_wait (see
  // reads_consume_edge()).
  const bool read_waits = reads_consume_edge(stream);

  // Sending.
  send_queue queue;
  bool flushing = false;
  error_code write_error;
  // Senders and flushers wait on this timer; the flush cancels it whenever
  // it makes progress (or fails), which wakes them all to look again.
  asio::steady_timer progress;

  bool has_room() const noexcept { return queue.pending_bytes() < opts.send_buffer_size; }
  // A payload of @p size can be sent by queue_small() now: no write error,
  // room in the queue, and small enough to be copied.
  bool takes_small(std::size_t size) const noexcept {
    return !write_error && has_room() && size <= opts.copy_threshold;
  }

  void notify() {
    error_code ignored;
    progress.cancel();
  }

  // Starts the background flush if it is not running.
  void kick() {
    if (flushing || write_error || queue.pending_bytes() == 0) return;
    flushing = true;
    asio::post(stream.get_executor(), [self = this->shared_from_this()] { self->flush(); });
  }

  void flush() {
    ensure_sigpipe_blocked();
    prepare(stream);
    bool progressed = false;
    for (;;) {
      ::iovec iov[max_iovecs];
      const int n = queue.gather(iov, max_iovecs);
      if (n == 0) break;
      error_code ec;
      const std::size_t written = try_writev(stream.native_handle(), iov, n, ec);
      if (ec == asio::error::would_block) {
        if (progressed) notify();
        stream.async_wait(Stream::wait_write, [self = this->shared_from_this()](error_code wait_ec) {
          // Cancelled by a stream.cancel() (our destructor stopping a
          // receive): keep flushing while the descriptor is open.
          if (wait_ec && (wait_ec != asio::error::operation_aborted || !self->stream.is_open())) {
            self->fail(wait_ec);
            return;
          }
          self->flush();
        });
        return;
      }
      if (ec) {
        fail(ec);
        return;
      }
      queue.advance(written);
      progressed = true;
    }
    flushing = false;
    notify();
  }

  void fail(error_code ec) {
    write_error = ec;
    flushing = false;
    notify();
  }

  // Sends a small frame (the caller checked has_room and the size). The
  // first send after a receive waited, with nothing else queued, is written
  // at once by one non-blocking write(2) from the stack (no post, no
  // scheduler round, no trip through the queue: request-reply latency); what
  // it could not write (EAGAIN, a partial write) is queued for the
  // background flush. Other sends are queued (copied) and batched by the
  // posted flush; @p now writes at once whenever nothing is queued
  // (framed_stream::try_send_now()). Returns the error that direct write met
  // (then also the stream's sticky write_error).
  error_code queue_small(message_view payload, bool now = false) {
    const bool direct = (send_direct || now) && !flushing && queue.empty();
    send_direct = false;
    if (!direct) {
      queue.push_copy(payload);
      kick();
      return {};
    }
    ensure_sigpipe_blocked();
    prepare(stream);
    // Header and payload in one buffer up to this size, else two iovecs.
    constexpr std::size_t stack_frame = 256;
    std::array<std::byte, stack_frame> frame;
    const std::size_t hlen =
        encode_frame_header(payload.size(), std::span<std::byte, max_frame_header_size>(frame.data(), max_frame_header_size));
    const std::size_t total = hlen + payload.size();
    ::iovec iov[2];
    int n = 1;
    iov[0].iov_base = frame.data();
    iov[0].iov_len = hlen;
    if (total <= stack_frame) {
      if (!payload.empty()) std::memcpy(frame.data() + hlen, payload.data(), payload.size());
      iov[0].iov_len = total;
    } else {
      iov[1].iov_base = const_cast<std::byte*>(payload.data());
      iov[1].iov_len = payload.size();
      n = 2;
    }
    error_code ec;
    const std::size_t written = try_writev(stream.native_handle(), iov, n, ec);
    if (ec && ec != asio::error::would_block) {
      fail(ec);
      return ec;
    }
    if (written < total) {
      // The rest goes through the queue: the whole frame, the written part
      // marked done.
      queue.push_copy(payload);
      ::iovec ignored[1];
      queue.gather(ignored, 1);
      queue.advance(written);
      kick();
    } else if (drained && rbuf.buffered() == 0) {
      skip_read = true;
    }
    return {};
  }

  // Takes the next buffered frame, reading (without blocking) if needed.
  // Returns true when the receive is over: with a message, an end of
  // stream (nothing, no error), or an error; false when it must wait.
  bool try_receive(std::optional<message_view>& msg, error_code& ec) {
    for (;;) {
      if (read_error) {
        ec = read_error;
        return true;
      }
      msg = rbuf.next(ec);
      if (ec) {
        read_error = ec;
        return true;
      }
      if (msg) return true;
      if (eof) {
        ec = rbuf.finish();
        if (ec) read_error = ec;
        return true;
      }
      if (skip_read) {
        skip_read = false;
        return false;
      }
      prepare(stream);
      const auto room = rbuf.prepare();
      error_code rec;
      const std::size_t n = try_read(stream.native_handle(), room.data(), room.size(), rec);
      if (rec == asio::error::would_block) {
        drained = true;
        return false;
      }
      record_read(rec, n, room.size());  // the loop's start reports an error or the end
    }
  }

  // Records what a read of up to @p room bytes into rbuf.prepare() gave:
  // @p n bytes, the end of stream, or an error (sticky: read_error).
  void record_read(const error_code& rec, std::size_t n, std::size_t room) {
    drained = n < room;
    if (rec == asio::error::eof) {
      eof = true;
    } else if (rec) {
      read_error = rec;
    } else {
      rbuf.commit(n);
    }
  }
};

template <typename Stream>
class receive_op {
public:
  explicit receive_op(std::shared_ptr<framed_state<Stream>> st) : st_(std::move(st)) {}

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (phase_ == phase::completing) return done(self, ec_);
    if (phase_ == phase::starting) {
      if (st_->receiving) {
        ec_ = asio::error::already_started;
        phase_ = phase::completing;
        asio::post(std::move(self));
        return;
      }
      st_->receiving = true;
      if (st_->try_receive(msg_, ec_)) {
        phase_ = phase::completing;
        asio::post(std::move(self));
        return;
      }
      phase_ = phase::waiting;
    } else if (ec) {
      return done(self, ec);  // cancelled (or the descriptor failed): nothing lost
    } else if (st_->try_receive(msg_, ec_)) {
      return done(self, ec_);
    }
    note_wait();
    st_->send_direct = true;
    wait(self);
  }

private:
  enum class phase : unsigned char { starting, waiting, completing };

  // Waits for readiness; then try_receive() reads. (Waiting with a read
  // operation instead saves nothing: Asio's epoll reactor then tries a
  // speculative read(2) where its async_wait calls epoll_ctl.)
  template <typename Self>
  void wait(Self& self) {
    st_->stream.async_wait(Stream::wait_read, std::move(self));
  }

  template <typename Self>
  void done(Self& self, error_code ec) {
    if (ec != asio::error::already_started) st_->receiving = false;
    auto st = std::move(st_);
    self.complete(ec, ec ? std::nullopt : msg_);
  }

  std::shared_ptr<framed_state<Stream>> st_;
  std::optional<message_view> msg_;
  error_code ec_;
  phase phase_ = phase::starting;
};

template <typename Stream>
class send_op {
public:
  send_op(std::shared_ptr<framed_state<Stream>> st, message_view payload, bool flush_only, bool close_after)
      : st_(std::move(st)), payload_(payload), flush_only_(flush_only), close_after_(close_after) {}

  template <typename Self>
  void operator()(Self& self, error_code ec = {}) {
    if (phase_ == phase::completing) return done(self, ec_);
    if (phase_ != phase::starting && ec && ec != asio::error::operation_aborted) return done(self, ec);
    const bool cancelled = phase_ != phase::starting && ec == asio::error::operation_aborted &&
                           self.get_cancellation_state().cancelled() != asio::cancellation_type::none;
    auto& st = *st_;
    for (;;) {
      if (st.write_error) return finish(self, st.write_error);
      switch (phase_) {
      case phase::starting:
        phase_ = flush_only_ ? phase::flushing : phase::room;
        continue;
      case phase::room:
        if (cancelled) return finish(self, asio::error::operation_aborted);
        if (!st.has_room()) return wait(self);
        if (payload_.size() <= st.opts.copy_threshold) return finish(self, st.queue_small(payload_));
        seq_ = st.queue.push_borrowed(payload_);
        st.kick();
        phase_ = phase::written;
        continue;
      case phase::written:
        if (st.queue.written_seq() >= seq_) return finish(self, {});
        if (cancelled) {
          const auto r = st.queue.cancel(seq_);
          st.kick();
          return finish(self, r == send_queue::cancel_result::removed ? error_code(asio::error::operation_aborted)
                                                                      : error_code());
        }
        return wait(self);
      case phase::flushing:
        if (st.queue.empty()) {
          if (close_after_) {
            error_code ignored;
            st.stream.close(ignored);
          }
          return finish(self, {});
        }
        if (cancelled) return finish(self, asio::error::operation_aborted);
        st.kick();
        return wait(self);
      case phase::completing:
        return;
      }
    }
  }

private:
  enum class phase : unsigned char { starting, room, written, flushing, completing };

  template <typename Self>
  void wait(Self& self) {
    started_async_ = true;
    note_wait();
    st_->progress.async_wait(std::move(self));
  }

  // Completes, through a post when nothing asynchronous happened yet.
  template <typename Self>
  void finish(Self& self, error_code ec) {
    if (started_async_) return done(self, ec);
    ec_ = ec;
    phase_ = phase::completing;
    asio::post(std::move(self));
  }

  template <typename Self>
  void done(Self& self, error_code ec) {
    auto st = std::move(st_);
    self.complete(ec);
  }

  std::shared_ptr<framed_state<Stream>> st_;
  message_view payload_;
  send_queue::seq_t seq_ = 0;
  error_code ec_;
  phase phase_ = phase::starting;
  bool flush_only_;
  bool close_after_;
  bool started_async_ = false;
};

// The coroutine fast paths, one frame each: complete without suspending
// when possible, otherwise run the composed operation. They take the state by
// pointer (no reference count traffic per message: 15% of the message rate)
// and share ownership only when they have to wait.
template <bool Throw>
using send_result = std::conditional_t<Throw, void, std::tuple<error_code>>;

template <bool Throw, typename Stream>
asio::awaitable<send_result<Throw>> send_coro(framed_state<Stream>* st, message_view payload) {
  error_code ec;
  if (st->takes_small(payload.size()) && !should_yield()) {
    ec = st->queue_small(payload);
  } else {
    std::tie(ec) = co_await asio::async_compose<const compat::as_tuple_t<asio::use_awaitable_t<>>&,
                                                void(error_code)>(
        send_op<Stream>(st->shared_from_this(), payload, false, false), compat::as_tuple(asio::use_awaitable),
        st->stream);
  }
  if constexpr (Throw) {
    if (ec) throw system_error(ec, "coropipe::framed_stream::async_send");
  } else {
    co_return std::tuple{ec};
  }
}

template <bool Throw>
using receive_result = std::conditional_t<Throw, std::optional<message_view>,
                                          std::tuple<error_code, std::optional<message_view>>>;

// Clears `receiving` when the waiting coroutine ends, however it ends.
template <typename Stream>
struct receiving_guard {
  std::shared_ptr<framed_state<Stream>> st;
  explicit receiving_guard(framed_state<Stream>* s) : st(s->shared_from_this()) { st->receiving = true; }
  receiving_guard(const receiving_guard&) = delete;
  receiving_guard& operator=(const receiving_guard&) = delete;
  ~receiving_guard() { st->receiving = false; }
};

template <bool Throw, typename Stream>
asio::awaitable<receive_result<Throw>> receive_coro(framed_state<Stream>* st) {
  std::optional<message_view> msg;
  error_code ec;
  // A receive already in progress, or a yield that is due, goes through the
  // composed operation from its start; one that found nothing waits.
  if (st->receiving || should_yield()) {
    std::tie(ec, msg) = co_await asio::async_compose<const compat::as_tuple_t<asio::use_awaitable_t<>>&,
                                                     void(error_code, std::optional<message_view>)>(
        receive_op<Stream>(st->shared_from_this()), compat::as_tuple(asio::use_awaitable), st->stream);
  } else if (!st->try_receive(msg, ec)) {
    // Found nothing: wait for readiness here, with a plain async_wait (no
    // composed operation, work guard or handler chain around it: less
    // user-space work per request-reply round trip), then read.
    const receiving_guard<Stream> guard(st);  // shared ownership while waiting
    for (;;) {
      note_wait();
      st->send_direct = true;
      if (st->read_waits) {
        // Wait by reading (see reads_consume_edge()). A cancelled read has
        // read nothing; its other outcomes are recorded as try_receive()'s
        // own read's are.
        const auto room = st->rbuf.prepare();
        std::size_t n = 0;
        std::tie(ec, n) = co_await st->stream.async_read_some(asio::buffer(room.data(), room.size()),
                                                              compat::as_tuple(asio::use_awaitable));
        if (ec == asio::error::operation_aborted) break;
        st->record_read(ec, n, room.size());
      } else {
        std::tie(ec) = co_await st->stream.async_wait(Stream::wait_read, compat::as_tuple(asio::use_awaitable));
        if (ec) break;  // cancelled (or the descriptor failed): nothing lost
      }
      if (st->try_receive(msg, ec)) break;
      // Spurious readiness. A cancellation that came as the wait completed
      // ends the receive here, as it would have ended the wait.
      const asio::cancellation_state cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) {
        ec = asio::error::operation_aborted;
        break;
      }
    }
  }
  if (ec) msg.reset();
  if constexpr (Throw) {
    if (ec) throw system_error(ec, "coropipe::framed_stream::async_receive");
    co_return msg;
  } else {
    co_return std::tuple{ec, msg};
  }
}

} // namespace detail

/// Length-prefixed messages over a descriptor-based stream. See the file's
/// documentation for the semantics of sending, receiving and cancellation.
template <descriptor_stream Stream = asio::posix::stream_descriptor>
class framed_stream {
public:
  using executor_type = typename Stream::executor_type;
  using stream_type = Stream;

  /// Takes @p stream (e.g. from coropipe::attach()).
  explicit framed_stream(Stream stream, const framed_options& options = {})
      : st_(std::make_shared<detail::framed_state<Stream>>(std::move(stream), options)) {}

  framed_stream(framed_stream&&) noexcept = default;
  /// The stream assigned over lingers as the destructor describes.
  framed_stream& operator=(framed_stream&& other) noexcept {
    if (this != &other) {
      release();
      st_ = std::move(other.st_);
    }
    return *this;
  }

  /// Pending receives complete with operation_aborted; queued frames are
  /// still written in the background, then the descriptor is closed.
  ~framed_stream() { release(); }

  [[nodiscard]] executor_type get_executor() const { return st_->stream.get_executor(); }

  /// The underlying stream. Reading or writing it directly breaks the framing.
  [[nodiscard]] Stream& next_layer() noexcept { return st_->stream; }

  [[nodiscard]] const framed_options& options() const noexcept { return st_->opts; }

  /// Changes the largest payload accepted (for frames not yet begun).
  void max_message_size(std::size_t n) noexcept {
    st_->opts.max_message_size = n;
    st_->rbuf.max_message_size(n);
  }

  /// Sends one message whose payload is @p payload.
  ///
  /// Completion signature: `void(error_code)`.
  ///
  /// Small payloads are copied and the send completes once queued; larger
  /// ones must stay valid until the send completes.
  template <typename SendToken = asio::default_completion_token_t<executor_type>>
  auto async_send(asio::const_buffer payload, SendToken&& token = asio::default_completion_token_t<executor_type>()) {
    const message_view view(static_cast<const std::byte*>(payload.data()), payload.size());
    if constexpr (detail::is_use_awaitable<SendToken>) {
      return detail::send_coro<true>(st_.get(), view);
    } else if constexpr (detail::is_as_tuple_use_awaitable<SendToken>) {
      return detail::send_coro<false>(st_.get(), view);
    } else {
      return asio::async_compose<SendToken, void(error_code)>(
          detail::send_op<Stream>(st_, view, false, false), token, st_->stream);
    }
  }

  /// Queues a copy of one message if that can be done at once: the payload
  /// is at most `copy_threshold` bytes, the queue has room, and no write
  /// error happened. Never waits, never allocates once the queue is warm.
  /// @returns true when queued (the send is then as good as complete), false
  /// when nothing was queued (use async_send()).
  bool try_send(asio::const_buffer payload) {
    auto& st = *st_;
    if (!st.takes_small(payload.size())) return false;
    st.queue.push_copy({static_cast<const std::byte*>(payload.data()), payload.size()});
    st.kick();
    return true;
  }

  /// Like try_send(), but when nothing is queued or being written the frame
  /// is written at once, by one non-blocking write(2) (writev(2) for a frame
  /// above 256 bytes), instead of by the background flush (which a later
  /// scheduler round runs, batching what was queued meanwhile); what the
  /// write could not take stays queued for the flush. For a message a peer
  /// is waiting for with no other following it at once (a request to an
  /// idle worker, the reply to the last request read): it saves the
  /// scheduler round. A write error is sticky, as for try_send(), and
  /// reported by the next send or flush.
  /// @returns as try_send().
  bool try_send_now(asio::const_buffer payload) {
    auto& st = *st_;
    if (!st.takes_small(payload.size())) return false;
    (void)st.queue_small({static_cast<const std::byte*>(payload.data()), payload.size()}, true);
    return true;
  }

  /// Bytes read ahead and not yet taken by a receive (a frame's beginning
  /// included): 0 when the next receive starts with a read(2).
  [[nodiscard]] std::size_t buffered_bytes() const noexcept { return st_->rbuf.buffered(); }

  /// The next receive (or try_receive()) that finds no whole message read
  /// ahead waits for readiness (try_receive(): returns `would_block`)
  /// without first trying a read(2) that would find the descriptor empty;
  /// the one after it reads as usual. For a caller that knows its peer has
  /// nothing to send yet (it owes no reply). Waiting is always correct: a
  /// message that did arrive is found once the wait reports readiness. (A
  /// small send written at once after a receive waited does this by
  /// itself.)
  void wait_before_next_read() noexcept { st_->skip_read = true; }

  /// Receives the next message.
  ///
  /// Completion signature:
  /// `void(error_code, std::optional<coropipe::message_view>)`.
  ///
  /// The optional is empty at a clean end of stream; the view is valid until
  /// the next receive.
  template <typename ReceiveToken = asio::default_completion_token_t<executor_type>>
  auto async_receive(ReceiveToken&& token = asio::default_completion_token_t<executor_type>()) {
    if constexpr (detail::is_use_awaitable<ReceiveToken>) {
      return detail::receive_coro<true>(st_.get());
    } else if constexpr (detail::is_as_tuple_use_awaitable<ReceiveToken>) {
      return detail::receive_coro<false>(st_.get());
    } else {
      return asio::async_compose<ReceiveToken, void(error_code, std::optional<message_view>)>(
          detail::receive_op<Stream>(st_), token, st_->stream);
    }
  }

  /// Takes the next message if that needs no waiting: one already read
  /// ahead, or one that a non-blocking read(2) brings. Never waits, never
  /// allocates, starts no asynchronous operation (a loop of these costs no
  /// coroutine frame per message, where async_receive() may cost two).
  ///
  /// @returns the message, a view valid until the next receive; or an empty
  /// optional with @p ec telling why:
  /// - clear: a clean end of stream;
  /// - `asio::error::would_block`: no whole message yet; wait until the
  ///   descriptor is readable (`next_layer().async_wait(Stream::wait_read,
  ///   ...)`) and try again, or call async_receive();
  /// - `asio::error::already_started`: an async_receive() is pending;
  /// - otherwise the errors of async_receive(), sticky as there.
  std::optional<message_view> try_receive(error_code& ec) {
    ec = {};
    auto& st = *st_;
    if (st.receiving) {
      ec = asio::error::already_started;
      return std::nullopt;
    }
    std::optional<message_view> msg;
    if (!st.try_receive(msg, ec)) {
      // The caller waits now: as after a receive that had to wait, the next
      // small send is written at once.
      ec = asio::error::would_block;
      st.send_direct = true;
      detail::note_wait();
      return std::nullopt;
    }
    if (ec) msg.reset();
    return msg;
  }

  /// Waits until every message queued so far has been written.
  ///
  /// Completion signature: `void(error_code)`.
  template <typename FlushToken = asio::default_completion_token_t<executor_type>>
  auto async_flush(FlushToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_compose<FlushToken, void(error_code)>(
        detail::send_op<Stream>(st_, {}, true, false), token, st_->stream);
  }

  /// Flushes, then closes the descriptor (the peer then reads end of stream).
  ///
  /// Completion signature: `void(error_code)`.
  template <typename CloseToken = asio::default_completion_token_t<executor_type>>
  auto async_close(CloseToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_compose<CloseToken, void(error_code)>(
        detail::send_op<Stream>(st_, {}, true, true), token, st_->stream);
  }

  /// Bytes queued and not yet written.
  [[nodiscard]] std::size_t pending_bytes() const noexcept { return st_->queue.pending_bytes(); }

  /// Heap memory held for buffering, in bytes (read-ahead and send queue).
  [[nodiscard]] std::size_t buffer_memory() const noexcept {
    return st_->rbuf.capacity() + st_->queue.capacity();
  }

private:
  void release() noexcept {
    if (!st_) return;
    if (st_->receiving) {
      error_code ignored;
      st_->stream.cancel(ignored);
    }
    st_.reset();
  }

  std::shared_ptr<detail::framed_state<Stream>> st_;
};

} // namespace coropipe
