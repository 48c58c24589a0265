// SPDX-License-Identifier: BSL-1.0
#include <coropipe/framed_stream.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/sigpipe.hpp>

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(ip/tcp.hpp)

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::errc;
using coropipe::exit_status;
using coropipe::framed_options;
using coropipe::framed_stream;
using coropipe::message_view;
using coropipe::unique_fd;
using coropipe_test::run;
using coropipe_test::run_all;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

// A deterministic byte pattern, easy to compute in Python too:
// byte i of pattern(n, seed) is (i * 31 + seed * 7 + (i >> 8)) & 0xff.
std::string pattern(std::size_t n, std::uint32_t seed) {
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<char>((i * 31 + seed * 7 + (i >> 8)) & 0xff);
  return out;
}

std::string str(message_view v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size()); }

bool same(const std::string& a, const std::string& b) { return a == b; }  // no 16 MiB in a failure report

// The bytes of one frame, as Python's send_bytes writes them.
std::string frame_bytes(std::string_view payload) {
  std::array<std::byte, coropipe::max_frame_header_size> h{};
  const std::size_t n = coropipe::encode_frame_header(payload.size(), h);
  return std::string(reinterpret_cast<const char*>(h.data()), n) + std::string(payload);
}

std::size_t readable(int fd) {
  int n = 0;
  REQUIRE(::ioctl(fd, FIONREAD, &n) == 0);
  return static_cast<std::size_t>(n);
}

void write_raw(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    REQUIRE(n > 0);
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

bool sigpipe_pending() {
  sigset_t set;
  sigemptyset(&set);
  ::sigpending(&set);
  return sigismember(&set, SIGPIPE) == 1;
}

// Fills a pipe with whole frames of PIPE_BUF bytes (each write all or nothing).
std::size_t fill_with_frames(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  REQUIRE(::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
  const std::string f = frame_bytes(std::string(PIPE_BUF - 4, 'f'));
  REQUIRE(f.size() == PIPE_BUF);
  std::size_t frames = 0;
  while (::write(fd, f.data(), f.size()) == static_cast<ssize_t>(f.size())) ++frames;
  return frames;
}

// Both ends of a pipe as framed streams, and their descriptor numbers.
struct framed_pipe {
  framed_stream<> tx;
  framed_stream<> rx;
  int wfd;
  int rfd;
};

framed_pipe make_framed_pipe(asio::io_context& io, const framed_options& opts = {}) {
  auto p = coropipe::pipe();
  const int w = p.write_end.get(), r = p.read_end.get();
  return {framed_stream<>(coropipe::attach(io, std::move(p.write_end)), opts),
          framed_stream<>(coropipe::attach(io, std::move(p.read_end)), opts), w, r};
}

// The read end of a pipe as a framed stream, and its raw write end.
struct raw_writer_pipe {
  framed_stream<> rx;
  unique_fd w;
  int rfd;
};

raw_writer_pipe make_raw_writer_pipe(asio::io_context& io, const framed_options& opts = {}) {
  auto p = coropipe::pipe();
  const int r = p.read_end.get();
  return {framed_stream<>(coropipe::attach(io, std::move(p.read_end)), opts), std::move(p.write_end), r};
}

template <typename Stream>
awaitable<std::string> receive_string(framed_stream<Stream>& fs) {
  auto msg = co_await fs.async_receive(use_awaitable);
  if (!msg) throw std::runtime_error("unexpected end of stream");
  co_return str(*msg);
}

const std::vector<std::size_t> round_trip_sizes{0,
                                                1,
                                                PIPE_BUF,
                                                std::size_t{64} << 10,
                                                std::size_t{1} << 20,
                                                std::size_t{16} << 20};

std::uint32_t seed_for(std::size_t size) { return static_cast<std::uint32_t>(size % 1000003); }

// A forked child's echo loop: checks each message it gets (sent by
// round_trip()), sends it back; its exit code is the number echoed, or 100+
// the index of a message that was wrong.
template <typename Stream>
awaitable<int> checked_echo(framed_stream<Stream>& in, framed_stream<Stream>& out) {
  int count = 0;
  while (auto msg = co_await in.async_receive(use_awaitable)) {
    if (str(*msg) != pattern(msg->size(), seed_for(msg->size()))) co_return 100 + count;
    co_await out.async_send(asio::buffer(msg->data(), msg->size()), use_awaitable);
    ++count;
  }
  co_await out.async_close(use_awaitable);
  co_return count;
}

template <typename Stream>
awaitable<void> round_trip(framed_stream<Stream>& tx, framed_stream<Stream>& rx, coropipe::child& c,
                           bool half_close = false) {
  for (std::size_t size : round_trip_sizes) {
    CAPTURE(size);
    const std::string payload = pattern(size, seed_for(size));
    co_await tx.async_send(asio::buffer(payload), use_awaitable);
    auto msg = co_await rx.async_receive(use_awaitable);
    REQUIRE(msg.has_value());
    CHECK(msg->size() == size);
    CHECK(same(str(*msg), payload));
  }
  if (half_close) {
    co_await tx.async_flush(use_awaitable);
    REQUIRE(::shutdown(tx.next_layer().native_handle(), SHUT_WR) == 0);
  } else {
    co_await tx.async_close(use_awaitable);
  }
  auto end = co_await rx.async_receive(use_awaitable);
  CHECK_FALSE(end.has_value());
  const exit_status st = co_await c.async_wait(use_awaitable);
  CHECK(st == exit_status::from_code(static_cast<int>(round_trip_sizes.size())));
}

} // namespace

// --- round trips ---------------------------------------------------------------------

TEST_CASE("round trips of 0, 1, PIPE_BUF, 64 KiB, 1 MiB and 16 MiB through pipes, across a fork") {
  asio::io_context io;
  auto to_child = coropipe::pipe();
  auto from_child = coropipe::pipe();
  auto c = coropipe::fork_child(
      io,
      [](child_context& ctx, unique_fd in, unique_fd out) -> awaitable<int> {
        framed_stream<> rx(ctx.attach(std::move(in)));
        framed_stream<> tx(ctx.attach(std::move(out)));
        co_return co_await checked_echo(rx, tx);
      },
      std::move(to_child.read_end), std::move(from_child.write_end));
  framed_stream<> tx(coropipe::attach(io, std::move(to_child.write_end)));
  framed_stream<> rx(coropipe::attach(io, std::move(from_child.read_end)));
  run(io, round_trip(tx, rx, c), 120s);
}

TEST_CASE("round trips of 0, 1, PIPE_BUF, 64 KiB, 1 MiB and 16 MiB through a duplex_pair, across a fork") {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  auto c = coropipe::fork_child(
      io,
      [](child_context& ctx, unique_fd end) -> awaitable<int> {
        framed_stream<> fs(ctx.attach(std::move(end)));
        co_return co_await checked_echo(fs, fs);
      },
      std::move(d.second));
  framed_stream<> fs(coropipe::attach(io, std::move(d.first)));
  // One socket both ways: round_trip() would close it whole, so end only our
  // sending direction (shutdown) and keep receiving the child's replies.
  run(io, round_trip(fs, fs, c, /*half_close=*/true), 120s);
}

TEST_CASE("many small messages queued together come out of one read (read-ahead)") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  for (int i = 0; i < 100; ++i) REQUIRE(fp.tx.try_send(asio::buffer(std::to_string(i))));
  run(io, fp.tx.async_flush(use_awaitable));
  CHECK(readable(fp.rfd) == 100 * 4 + 190);
  run(io, [&]() -> awaitable<void> {
    CHECK(co_await receive_string(fp.rx) == "0");
    CHECK(readable(fp.rfd) == 0);  // all taken by one read(2)
    for (int i = 1; i < 100; ++i) CHECK(co_await receive_string(fp.rx) == std::to_string(i));
  }());
}

// --- many senders ------------------------------------------------------------------------

TEST_CASE("many concurrent senders: frames never interleave, every message arrives checked and in order") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  constexpr std::uint32_t senders = 8, per_sender = 2000;
  const std::size_t copy_threshold = fp.tx.options().copy_threshold;
  auto size_of = [&](std::uint32_t s, std::uint32_t i) -> std::size_t {
    if (i % 97 == 5) return copy_threshold + 1 + (i * 37 + s * 101) % 20000;  // written from the sender's memory
    return 8 + (i * 13 + s * 7) % 300;
  };
  auto message = [&](std::uint32_t s, std::uint32_t i) {
    std::string m = pattern(size_of(s, i), s * 100000 + i);
    std::memcpy(m.data(), &s, 4);
    std::memcpy(m.data() + 4, &i, 4);
    return m;
  };
  auto sender = [&](std::uint32_t s) -> awaitable<void> {
    for (std::uint32_t i = 0; i < per_sender; ++i) {
      const std::string m = message(s, i);
      if (s % 2 == 0) {
        co_await fp.tx.async_send(asio::buffer(m), use_awaitable);
      } else {
        auto [ec] = co_await fp.tx.async_send(asio::buffer(m), as_tuple);
        REQUIRE_FALSE(ec);
      }
    }
  };
  std::array<std::uint32_t, senders> next{};
  std::size_t received = 0, large = 0, bad = 0;
  auto receiver = [&]() -> awaitable<void> {
    while (received < senders * per_sender) {
      auto msg = co_await fp.rx.async_receive(use_awaitable);
      REQUIRE(msg.has_value());
      REQUIRE(msg->size() >= 8);
      std::uint32_t s, i;
      std::memcpy(&s, msg->data(), 4);
      std::memcpy(&i, msg->data() + 4, 4);
      REQUIRE(s < senders);
      REQUIRE(i == next[s]);  // in order per sender, none lost, none twice
      ++next[s];
      if (str(*msg) != message(s, i)) ++bad;
      if (msg->size() > copy_threshold) ++large;
      ++received;
    }
  };
  std::vector<awaitable<void>> all;
  for (std::uint32_t s = 0; s < senders; ++s) all.push_back(sender(s));
  all.push_back(receiver());
  run_all(io, std::move(all), 120s);
  CHECK(received == senders * per_sender);
  CHECK(bad == 0);
  CHECK(large > 100);
  for (std::uint32_t s = 0; s < senders; ++s) CHECK(next[s] == per_sender);

  run(io, fp.tx.async_close(use_awaitable));
  CHECK_FALSE(run(io, fp.rx.async_receive(use_awaitable)).has_value());
}

// --- malformed input ---------------------------------------------------------------------

TEST_CASE("malformed input gives its coropipe error, sticky, and the process carries on") {
  asio::io_context io;
  auto p = make_raw_writer_pipe(io);
  write_raw(p.w.get(), frame_bytes("ok"));
  coropipe::error_code expected;
  SUBCASE("a negative length") {
    write_raw(p.w.get(), std::string("\x80\x00\x00\x05hello", 9));
    expected = errc::malformed_frame;
  }
  SUBCASE("-2") {
    write_raw(p.w.get(), std::string("\xff\xff\xff\xfe", 4));
    expected = errc::malformed_frame;
  }
  SUBCASE("a huge length") {
    write_raw(p.w.get(), std::string("\x7f\xff\xff\xff" "abc", 7));
    expected = errc::message_too_large;
  }
  SUBCASE("-1 with a huge 8-byte length") {
    write_raw(p.w.get(), std::string("\xff\xff\xff\xff\x00\x00\x01\x00\x00\x00\x00\x00xyz", 15));
    expected = errc::message_too_large;
  }
  SUBCASE("-1 with an 8-byte length of 2^64-1") {
    write_raw(p.w.get(), std::string(12, '\xff'));
    expected = errc::message_too_large;
  }
  SUBCASE("a truncated header") {
    write_raw(p.w.get(), std::string("\x00\x00", 2));
    p.w.reset();
    expected = errc::truncated_message;
  }
  SUBCASE("a truncated 8-byte header") {
    write_raw(p.w.get(), std::string("\xff\xff\xff\xff\x00\x00", 6));
    p.w.reset();
    expected = errc::truncated_message;
  }
  SUBCASE("a truncated payload") {
    write_raw(p.w.get(), std::string("\x00\x00\x00\x0a" "abc", 7));
    p.w.reset();
    expected = errc::truncated_message;
  }
  CAPTURE(expected.message());
  run(io, [&]() -> awaitable<void> {
    CHECK(co_await receive_string(p.rx) == "ok");
    auto [ec, msg] = co_await p.rx.async_receive(as_tuple);
    CHECK(ec == expected);
    CHECK(ec.category() == coropipe::category());
    CHECK_FALSE(msg.has_value());
    // Sticky: the same error again, also after more (valid) input.
    if (p.w) write_raw(p.w.get(), frame_bytes("later"));
    auto [ec2, msg2] = co_await p.rx.async_receive(as_tuple);
    CHECK(ec2 == expected);
    CHECK_FALSE(msg2.has_value());
    coropipe::error_code thrown;
    try {
      (void)co_await p.rx.async_receive(use_awaitable);
    } catch (const coropipe::system_error& e) {
      thrown = e.code();
    }
    CHECK(thrown == expected);
  }());
  // Refused before any large allocation.
  CHECK(p.rx.buffer_memory() < std::size_t{1} << 20);
}

TEST_CASE("max_message_size: the setter applies to the frames that follow") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  CHECK(fp.rx.options().max_message_size == coropipe::default_max_message_size);
  fp.rx.max_message_size(10);
  CHECK(fp.rx.options().max_message_size == 10);
  run(io, [&]() -> awaitable<void> {
    co_await fp.tx.async_send(asio::buffer(std::string(10, 'a')), use_awaitable);
    co_await fp.tx.async_send(asio::buffer(std::string(11, 'b')), use_awaitable);
    CHECK(co_await receive_string(fp.rx) == std::string(10, 'a'));
    auto [ec, msg] = co_await fp.rx.async_receive(as_tuple);
    CHECK(ec == errc::message_too_large);
  }());

  // Through framed_options, too.
  framed_options opts;
  opts.max_message_size = 3;
  auto fp2 = make_framed_pipe(io, opts);
  CHECK(fp2.rx.options().max_message_size == 3);
  run(io, [&]() -> awaitable<void> {
    co_await fp2.tx.async_send(asio::buffer(std::string_view("four")), use_awaitable);
    auto [ec, msg] = co_await fp2.rx.async_receive(as_tuple);
    CHECK(ec == errc::message_too_large);
  }());
}

// --- end of stream --------------------------------------------------------------------------

TEST_CASE("a clean end of stream between frames is an empty optional, again and again") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  run(io, [&]() -> awaitable<void> {
    co_await fp.tx.async_send(asio::buffer(std::string_view("a")), use_awaitable);
    co_await fp.tx.async_send(asio::buffer(std::string_view("")), use_awaitable);
    co_await fp.tx.async_close(use_awaitable);
    CHECK(co_await receive_string(fp.rx) == "a");
    CHECK(co_await receive_string(fp.rx) == "");
    CHECK_FALSE((co_await fp.rx.async_receive(use_awaitable)).has_value());
    CHECK_FALSE((co_await fp.rx.async_receive(use_awaitable)).has_value());
    auto [ec, msg] = co_await fp.rx.async_receive(as_tuple);
    CHECK_FALSE(ec);
    CHECK_FALSE(msg.has_value());
  }());
  bool called = false;
  fp.rx.async_receive([&](coropipe::error_code ec, std::optional<message_view> msg) {
    called = true;
    CHECK_FALSE(ec);
    CHECK_FALSE(msg.has_value());
  });
  io.restart();
  io.run();
  CHECK(called);
}

// --- cancellation of receives -------------------------------------------------------------

TEST_CASE("a cancelled receive loses nothing: the next receive gets the message that arrives later") {
  asio::io_context io;
  auto p = make_raw_writer_pipe(io);
  const std::string payload = pattern(100000, 1);
  const std::string frame = frame_bytes(payload);
  std::size_t already = 0;  // bytes of the frame written before the receive
  // The test writes the rest of the frame with blocking writes from this
  // thread: the pipe must hold it all.
  REQUIRE(coropipe::set_pipe_capacity(p.w.get(), std::size_t{1} << 20) >= frame.size() + 64);

  SUBCASE("nothing read yet, use_awaitable || timer") { already = 0; }
  SUBCASE("half a header read") { already = 2; }
  SUBCASE("the header read") { already = 4; }
  SUBCASE("half the payload read") { already = 4 + 30000; }
  CAPTURE(already);
  write_raw(p.w.get(), std::string_view(frame).substr(0, already));

  run(io, [&]() -> awaitable<void> {
    asio::steady_timer t(io, 20ms);
    auto r = co_await (p.rx.async_receive(use_awaitable) || t.async_wait(use_awaitable));
    CHECK(r.index() == 1);
  }());
  CHECK(readable(p.rfd) == 0);  // what was there is in the stream's buffer now

  // Again, with as_tuple and a cancellation slot of our own.
  asio::cancellation_signal sig;
  coropipe::error_code ec;
  bool done = false;
  p.rx.async_receive(asio::bind_cancellation_slot(sig.slot(), [&](coropipe::error_code e, std::optional<message_view> m) {
    ec = e;
    done = true;
    CHECK_FALSE(m.has_value());
  }));
  io.restart();
  io.poll();
  CHECK_FALSE(done);
  sig.emit(asio::cancellation_type::terminal);
  io.run();
  CHECK(done);
  CHECK(ec == asio::error::operation_aborted);

  // The rest arrives while a new receive waits.
  std::string got;
  run_all(io, [&]() -> awaitable<void> { got = co_await receive_string(p.rx); }(),
          [&]() -> awaitable<void> {
            asio::steady_timer t(io, 10ms);
            co_await t.async_wait(use_awaitable);
            write_raw(p.w.get(), std::string_view(frame).substr(already));
            write_raw(p.w.get(), frame_bytes("next"));
          }());
  CHECK(got.size() == payload.size());
  CHECK(same(got, payload));
  CHECK(run(io, receive_string(p.rx)) == "next");
}

TEST_CASE("a second concurrent receive completes with already_started; the first is unaffected") {
  asio::io_context io;
  auto p = make_raw_writer_pipe(io);
  std::optional<std::string> first;
  coropipe::error_code first_ec;
  p.rx.async_receive([&](coropipe::error_code ec, std::optional<message_view> msg) {
    first_ec = ec;
    if (msg) first = str(*msg);
  });
  io.poll();
  run(io, [&]() -> awaitable<void> {
    auto [ec, msg] = co_await p.rx.async_receive(as_tuple);
    CHECK(ec == asio::error::already_started);
    CHECK_FALSE(msg.has_value());
    bool called = false;
    coropipe::error_code cb_ec;
    p.rx.async_receive([&](coropipe::error_code e, std::optional<message_view>) {
      called = true;
      cb_ec = e;
    });
    CHECK_FALSE(called);
    asio::steady_timer t(io, 1ms);
    co_await t.async_wait(use_awaitable);
    CHECK(called);
    CHECK(cb_ec == asio::error::already_started);
    write_raw(p.w.get(), frame_bytes("one"));
    write_raw(p.w.get(), frame_bytes("two"));
  }());
  io.restart();
  io.run_for(100ms);  // the first receive's completion, if still pending
  CHECK_FALSE(first_ec);
  REQUIRE(first.has_value());
  CHECK(*first == "one");
  // And receiving carries on normally.
  CHECK(run(io, receive_string(p.rx)) == "two");
}

// --- sending -------------------------------------------------------------------------------

TEST_CASE("a small send completes once queued, even when nobody reads and the pipe is full") {
  asio::io_context io;
  auto p = coropipe::pipe();
  const int rfd = p.read_end.get();
  const std::size_t filled = fill_with_frames(p.write_end.get());
  REQUIRE(filled > 0);
  framed_stream<> tx(coropipe::attach(io, std::move(p.write_end)));
  framed_stream<> rx(coropipe::attach(io, std::move(p.read_end)));
  bool done = false;
  coropipe::error_code ec = asio::error::eof;
  const std::string small(100, 's');
  tx.async_send(asio::buffer(small), [&](coropipe::error_code e) {
    done = true;
    ec = e;
  });
  CHECK_FALSE(done);
  io.poll();
  CHECK(done);
  CHECK_FALSE(ec);
  CHECK(tx.pending_bytes() == 104);
  CHECK(readable(rfd) == filled * PIPE_BUF);

  run(io, [&]() -> awaitable<void> {
    for (std::size_t i = 0; i < filled; ++i) CHECK((co_await receive_string(rx)).size() == PIPE_BUF - 4);
    CHECK(co_await receive_string(rx) == small);
  }());
  CHECK(tx.pending_bytes() == 0);
}

TEST_CASE("backpressure: sends wait for room while the reader is slow, and memory stays bounded") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  const framed_options& o = fp.tx.options();
  constexpr std::uint32_t count = 3000;
  std::size_t max_pending = 0, max_memory = 0, max_rx_memory = 0;
  SUBCASE("small copied messages") {
    run_all(io,
            [&]() -> awaitable<void> {
              for (std::uint32_t i = 0; i < count; ++i) {
                const std::string m = pattern(1000, i);
                co_await fp.tx.async_send(asio::buffer(m), use_awaitable);
                max_pending = std::max(max_pending, fp.tx.pending_bytes());
                max_memory = std::max(max_memory, fp.tx.buffer_memory());
              }
            }(),
            [&]() -> awaitable<void> {
              asio::steady_timer t(io);
              for (std::uint32_t i = 0; i < count; ++i) {
                if (i % 100 == 0) {
                  t.expires_after(1ms);
                  co_await t.async_wait(use_awaitable);
                }
                const std::string m = co_await receive_string(fp.rx);
                REQUIRE(same(m, pattern(1000, i)));
                max_rx_memory = std::max(max_rx_memory, fp.rx.buffer_memory());
              }
            }());
    INFO("max pending " << max_pending << ", max memory " << max_memory);
    // The queue did fill up (the sender had to wait)...
    CHECK(max_pending + 1004 >= o.send_buffer_size);
    // ...and never beyond its limit plus one message.
    CHECK(max_pending <= o.send_buffer_size + o.copy_threshold + 4);
    CHECK(max_memory <= std::size_t{1} << 20);
    CHECK(max_rx_memory <= 2 * o.read_size);
  }
  SUBCASE("large messages written from the sender's memory") {
    run_all(io,
            [&]() -> awaitable<void> {
              for (std::uint32_t i = 0; i < count / 10; ++i) {
                const std::string m = pattern(40000, i);
                co_await fp.tx.async_send(asio::buffer(m), use_awaitable);
                max_pending = std::max(max_pending, fp.tx.pending_bytes());
                max_memory = std::max(max_memory, fp.tx.buffer_memory());
              }
            }(),
            [&]() -> awaitable<void> {
              asio::steady_timer t(io);
              for (std::uint32_t i = 0; i < count / 10; ++i) {
                if (i % 10 == 0) {
                  t.expires_after(1ms);
                  co_await t.async_wait(use_awaitable);
                }
                const std::string m = co_await receive_string(fp.rx);
                REQUIRE(same(m, pattern(40000, i)));
              }
            }());
    INFO("max pending " << max_pending << ", max memory " << max_memory);
    CHECK(max_pending <= o.send_buffer_size + 40004);
    CHECK(max_memory <= std::size_t{1} << 20);
  }
}

TEST_CASE("a send waiting for room that is cancelled completes with operation_aborted and never arrives") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  const std::string m(1000, 'q');
  std::size_t queued = 0;
  while (fp.tx.try_send(asio::buffer(m))) ++queued;
  io.poll();  // the pipe fills up
  while (fp.tx.try_send(asio::buffer(m))) ++queued;
  REQUIRE(fp.tx.pending_bytes() >= fp.tx.options().send_buffer_size);

  // With a callback and a cancellation slot.
  asio::cancellation_signal sig;
  bool done = false;
  coropipe::error_code ec;
  const std::string marker1 = "marker 1";
  fp.tx.async_send(asio::buffer(marker1), asio::bind_cancellation_slot(sig.slot(), [&](coropipe::error_code e) {
                     done = true;
                     ec = e;
                   }));
  io.restart();
  io.poll();
  CHECK_FALSE(done);
  sig.emit(asio::cancellation_type::terminal);
  io.poll();
  CHECK(done);
  CHECK(ec == asio::error::operation_aborted);

  // With a timeout.
  run(io, [&]() -> awaitable<void> {
    const std::string marker2 = "marker 2";
    asio::steady_timer t(io, 20ms);
    auto r = co_await (fp.tx.async_send(asio::buffer(marker2), use_awaitable) || t.async_wait(use_awaitable));
    CHECK(r.index() == 1);
  }());

  // The reader gets exactly the messages queued, then the end.
  std::size_t got = 0;
  run_all(io,
          [&]() -> awaitable<void> {
            while (auto msg = co_await fp.rx.async_receive(use_awaitable)) {
              CHECK(str(*msg) == m);
              ++got;
            }
          }(),
          [&]() -> awaitable<void> { co_await fp.tx.async_close(use_awaitable); }());
  CHECK(got == queued);
}

TEST_CASE("a large send cancelled before any of it was written is removed: it never arrives") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  const std::string small(1000, 's');
  // More small frames than the pipe holds, fewer than the queue's limit.
  const std::size_t n_small = coropipe::pipe_capacity(fp.wfd) / 1004 + 8;
  for (std::size_t i = 0; i < n_small; ++i) {
    if (!fp.tx.try_send(asio::buffer(small))) {
      io.poll();  // the queue is at its limit: let the flush move it into the pipe
      REQUIRE(fp.tx.try_send(asio::buffer(small)));
    }
  }
  io.poll();
  REQUIRE(fp.tx.pending_bytes() > 0);  // the pipe is full, small frames wait
  REQUIRE(fp.tx.pending_bytes() < fp.tx.options().send_buffer_size);

  std::string big = pattern(100000, 1);
  REQUIRE(big.size() > fp.tx.options().copy_threshold);
  asio::cancellation_signal sig;
  bool done = false;
  coropipe::error_code ec;
  fp.tx.async_send(asio::buffer(big), asio::bind_cancellation_slot(sig.slot(), [&](coropipe::error_code e) {
                     done = true;
                     ec = e;
                   }));
  io.restart();
  io.poll();
  CHECK_FALSE(done);
  const std::size_t pending_with_big = fp.tx.pending_bytes();
  sig.emit(asio::cancellation_type::terminal);
  io.poll();
  CHECK(done);
  CHECK(ec == asio::error::operation_aborted);
  CHECK(fp.tx.pending_bytes() == pending_with_big - (big.size() + 4));
  big.assign(big.size(), 'X');  // the caller may reuse its buffer at once

  std::vector<std::string> got;
  run_all(io,
          [&]() -> awaitable<void> {
            while (auto msg = co_await fp.rx.async_receive(use_awaitable)) got.push_back(str(*msg));
          }(),
          [&]() -> awaitable<void> {
            co_await fp.tx.async_send(asio::buffer(std::string_view("after")), use_awaitable);
            co_await fp.tx.async_close(use_awaitable);
          }());
  REQUIRE(got.size() == n_small + 1);
  for (std::size_t i = 0; i < n_small; ++i) CHECK(got[i] == small);
  CHECK(got.back() == "after");
}

TEST_CASE("a large send cancelled after part of it was written still arrives intact, and completes without error") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  const std::string original = pattern(std::size_t{1} << 20, 2);
  auto big = std::make_unique<std::string>(original);

  SUBCASE("callback with a cancellation slot") {
    asio::cancellation_signal sig;
    bool done = false;
    coropipe::error_code ec = asio::error::eof;
    fp.tx.async_send(asio::buffer(*big), asio::bind_cancellation_slot(sig.slot(), [&](coropipe::error_code e) {
                       done = true;
                       ec = e;
                     }));
    io.poll();
    CHECK_FALSE(done);
    CHECK(fp.tx.pending_bytes() > 0);
    CHECK(fp.tx.pending_bytes() < original.size() + 4);  // partly written
    sig.emit(asio::cancellation_type::terminal);
    io.poll();
    CHECK(done);
    CHECK_FALSE(ec);
  }
  SUBCASE("use_awaitable || timer") {
    run(io, [&]() -> awaitable<void> {
      asio::steady_timer t(io, 20ms);
      auto r = co_await (fp.tx.async_send(asio::buffer(*big), use_awaitable) || t.async_wait(use_awaitable));
      CHECK(r.index() == 1);
    }());
  }
  // The caller's buffer is gone.
  big->assign(big->size(), 'X');
  big.reset();

  std::optional<std::string> got;
  run(io, [&]() -> awaitable<void> {
    got = co_await receive_string(fp.rx);
    co_await fp.tx.async_close(use_awaitable);
    CHECK_FALSE((co_await fp.rx.async_receive(use_awaitable)).has_value());
  }());
  REQUIRE(got.has_value());
  CHECK(got->size() == original.size());
  CHECK(same(*got, original));
}

TEST_CASE("writing to a pipe whose reader is gone: broken_pipe from send or flush, and the process lives") {
  asio::io_context io;
  auto p = coropipe::pipe();
  framed_stream<> tx(coropipe::attach(io, std::move(p.write_end)));
  p.read_end.reset();
  const std::string small = "small", big = pattern(100000, 3);
  run(io, [&]() -> awaitable<void> {
    // Queued: that send succeeds; the write fails behind it.
    auto [ec1] = co_await tx.async_send(asio::buffer(small), as_tuple);
    CHECK_FALSE(ec1);
    auto [ec2] = co_await tx.async_flush(as_tuple);
    CHECK(ec2 == asio::error::broken_pipe);
    // Every later send or flush reports it.
    auto [ec3] = co_await tx.async_send(asio::buffer(small), as_tuple);
    CHECK(ec3 == asio::error::broken_pipe);
    auto [ec4] = co_await tx.async_send(asio::buffer(big), as_tuple);
    CHECK(ec4 == asio::error::broken_pipe);
    auto [ec5] = co_await tx.async_flush(as_tuple);
    CHECK(ec5 == asio::error::broken_pipe);
    CHECK_FALSE(tx.try_send(asio::buffer(small)));
    coropipe::error_code thrown;
    try {
      co_await tx.async_send(asio::buffer(small), use_awaitable);
    } catch (const coropipe::system_error& e) {
      thrown = e.code();
    }
    CHECK(thrown == asio::error::broken_pipe);
  }());
  CHECK_FALSE(sigpipe_pending());

  // A large send meets the error itself.
  auto p2 = coropipe::pipe();
  framed_stream<> tx2(coropipe::attach(io, std::move(p2.write_end)));
  p2.read_end.reset();
  auto [ec] = run(io, tx2.async_send(asio::buffer(big), as_tuple));
  CHECK(ec == asio::error::broken_pipe);
}

TEST_CASE("async_flush completes when everything queued has been written") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  std::size_t total = 0;
  run(io, [&]() -> awaitable<void> {
    for (std::uint32_t i = 0; i < 100; ++i) {
      const std::string m = pattern(100 + i, i);
      co_await fp.tx.async_send(asio::buffer(m), use_awaitable);
      total += 4 + m.size();
    }
    co_await fp.tx.async_flush(use_awaitable);
    CHECK(fp.tx.pending_bytes() == 0);
    CHECK(readable(fp.rfd) == total);
    // Nothing queued: completes at once.
    co_await fp.tx.async_flush(use_awaitable);
  }());
  CHECK(readable(fp.rfd) == total);
}

TEST_CASE("async_close flushes, closes, and the peer reads a clean end of stream") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  run(io, [&]() -> awaitable<void> {
    const std::string big = pattern(200000, 4);
    auto sender = [&]() -> awaitable<void> {
      co_await fp.tx.async_send(asio::buffer(std::string_view("one")), use_awaitable);
      co_await fp.tx.async_send(asio::buffer(big), use_awaitable);
      co_await fp.tx.async_send(asio::buffer(std::string_view("three")), use_awaitable);
      co_await fp.tx.async_close(use_awaitable);
      CHECK_FALSE(fp.tx.next_layer().is_open());
    };
    auto receiver = [&]() -> awaitable<void> {
      CHECK(co_await receive_string(fp.rx) == "one");
      CHECK(same(co_await receive_string(fp.rx), big));
      CHECK(co_await receive_string(fp.rx) == "three");
      CHECK_FALSE((co_await fp.rx.async_receive(use_awaitable)).has_value());
    };
    co_await (sender() && receiver());
  }());
}

TEST_CASE("destroying a framed_stream with queued data still delivers it all, then the peer sees the end") {
  asio::io_context io;
  auto p = coropipe::pipe();
  const int wfd = p.write_end.get();
  framed_stream<> rx(coropipe::attach(io, std::move(p.read_end)));
  std::uint32_t queued = 0;
  {
    framed_stream<> tx(coropipe::attach(io, std::move(p.write_end)));
    while (tx.try_send(asio::buffer(pattern(1000, queued)))) ++queued;
    io.poll();  // the pipe is full now
    while (tx.try_send(asio::buffer(pattern(1000, queued)))) ++queued;
    REQUIRE(tx.pending_bytes() >= tx.options().send_buffer_size);
  }
  // The descriptor stays open while the queue drains.
  CHECK(::fcntl(wfd, F_GETFD) >= 0);
  std::uint32_t got = 0;
  bool ended = false;
  run(io, [&]() -> awaitable<void> {
    while (auto msg = co_await rx.async_receive(use_awaitable)) {
      CHECK(same(str(*msg), pattern(1000, got)));
      ++got;
    }
    ended = true;
  }());
  CHECK(got == queued);
  CHECK(ended);
}

TEST_CASE("destroying a framed_stream during a pending receive aborts that receive and closes the descriptor") {
  asio::io_context io;
  auto p = coropipe::pipe();
  auto rx = std::make_unique<framed_stream<>>(coropipe::attach(io, std::move(p.read_end)));
  bool done = false;
  coropipe::error_code ec;
  rx->async_receive([&](coropipe::error_code e, std::optional<message_view> msg) {
    done = true;
    ec = e;
    CHECK_FALSE(msg.has_value());
  });
  io.poll();
  CHECK_FALSE(done);
  rx.reset();
  io.restart();
  io.run();
  CHECK(done);
  CHECK(ec == asio::error::operation_aborted);
  // The read end is closed: writing now fails with EPIPE.
  coropipe::block_sigpipe_in_this_thread();
  errno = 0;
  const ssize_t n = ::write(p.write_end.get(), "x", 1);
  const int err = errno;
  coropipe::discard_pending_sigpipe();
  CHECK(n == -1);
  CHECK(err == EPIPE);
}

TEST_CASE("try_send queues a small message at once, and refuses what it cannot") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  const std::size_t threshold = fp.tx.options().copy_threshold;
  CHECK(fp.tx.try_send(asio::buffer(std::string_view("hi"))));
  CHECK(fp.tx.pending_bytes() == 6);
  CHECK(fp.tx.try_send(asio::buffer(std::string(threshold, 'e'))));  // exactly the threshold: copied
  CHECK_FALSE(fp.tx.try_send(asio::buffer(std::string(threshold + 1, 'l'))));
  CHECK(fp.tx.pending_bytes() == 6 + threshold + 4);
  run(io, [&]() -> awaitable<void> {
    CHECK(co_await receive_string(fp.rx) == "hi");
    CHECK(co_await receive_string(fp.rx) == std::string(threshold, 'e'));
  }());

  // No room: refused, nothing queued.
  while (fp.tx.try_send(asio::buffer(std::string(1000, 'r')))) {
  }
  const std::size_t pending = fp.tx.pending_bytes();
  CHECK(pending >= fp.tx.options().send_buffer_size);
  CHECK_FALSE(fp.tx.try_send(asio::buffer(std::string_view("x"))));
  CHECK(fp.tx.pending_bytes() == pending);

  // After a write error: refused.
  auto p = coropipe::pipe();
  framed_stream<> tx(coropipe::attach(io, std::move(p.write_end)));
  p.read_end.reset();
  CHECK(tx.try_send(asio::buffer(std::string_view("lost"))));
  auto [ec] = run(io, tx.async_flush(as_tuple));
  CHECK(ec == asio::error::broken_pipe);
  CHECK_FALSE(tx.try_send(asio::buffer(std::string_view("x"))));
}

TEST_CASE("try_send_now writes at once when nothing is queued, queues behind what is, refuses what try_send refuses") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  // Nothing queued: in the pipe before the io_context ever runs.
  CHECK(fp.tx.try_send_now(asio::buffer(std::string_view("now"))));
  CHECK(fp.tx.pending_bytes() == 0);
  CHECK(readable(fp.rfd) == 7);
  // Behind a queued frame: queued too, in order, written by the flush.
  CHECK(fp.tx.try_send(asio::buffer(std::string_view("queued"))));
  CHECK(fp.tx.try_send_now(asio::buffer(std::string_view("after"))));
  CHECK(fp.tx.pending_bytes() == 10 + 9);
  CHECK(readable(fp.rfd) == 7);
  run(io, [&]() -> awaitable<void> {
    CHECK(co_await receive_string(fp.rx) == "now");
    CHECK(co_await receive_string(fp.rx) == "queued");
    CHECK(co_await receive_string(fp.rx) == "after");
  }());
  // Above the copy threshold, or no room: refused, nothing written or queued.
  const std::size_t threshold = fp.tx.options().copy_threshold;
  CHECK_FALSE(fp.tx.try_send_now(asio::buffer(std::string(threshold + 1, 'l'))));
  CHECK(readable(fp.rfd) == 0);
  while (fp.tx.try_send(asio::buffer(std::string(1000, 'r')))) {
  }
  const std::size_t pending = fp.tx.pending_bytes();
  CHECK_FALSE(fp.tx.try_send_now(asio::buffer(std::string_view("x"))));
  CHECK(fp.tx.pending_bytes() == pending);

  // A full pipe: what the write cannot take stays queued and is flushed later.
  auto q = make_framed_pipe(io);
  const std::size_t filled = fill_with_frames(q.wfd);
  REQUIRE(filled > 0);
  CHECK(q.tx.try_send_now(asio::buffer(std::string_view("late"))));
  CHECK(q.tx.pending_bytes() == 8);
  run(io, [&]() -> awaitable<void> {
    for (std::size_t i = 0; i < filled; ++i) CHECK((co_await receive_string(q.rx)).size() == PIPE_BUF - 4);
    CHECK(co_await receive_string(q.rx) == "late");
  }());

  // A reader that is gone: accepted (the frame was queued), then the error
  // is sticky: the next try_send_now refuses and a flush reports it.
  auto p = coropipe::pipe();
  framed_stream<> tx(coropipe::attach(io, std::move(p.write_end)));
  p.read_end.reset();
  CHECK(tx.try_send_now(asio::buffer(std::string_view("lost"))));
  CHECK_FALSE(tx.try_send_now(asio::buffer(std::string_view("x"))));
  auto [ec] = run(io, tx.async_flush(as_tuple));
  CHECK(ec == asio::error::broken_pipe);
  CHECK_FALSE(sigpipe_pending());
}

TEST_CASE("buffered_bytes counts what one read brought and no receive has taken, a partial frame included") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  CHECK(fp.rx.buffered_bytes() == 0);
  std::string bytes = frame_bytes("one") + frame_bytes("two");
  bytes += std::string("\0\0\0\x05thr", 7);  // a frame's beginning
  write_raw(fp.wfd, bytes);
  coropipe::error_code ec;
  auto m = fp.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(fp.rx.buffered_bytes() == 7 + 7);
  m = fp.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(fp.rx.buffered_bytes() == 7);
  CHECK_FALSE(fp.rx.try_receive(ec));
  CHECK(ec == asio::error::would_block);
  CHECK(fp.rx.buffered_bytes() == 7);
  write_raw(fp.wfd, "ee");
  m = fp.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(std::string_view(reinterpret_cast<const char*>(m->data()), m->size()) == "three");
  CHECK(fp.rx.buffered_bytes() == 0);
}

TEST_CASE("wait_before_next_read: the next receive waits instead of reading, finds what came, and later ones read") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  write_raw(fp.wfd, frame_bytes("there"));
  fp.rx.wait_before_next_read();
  coropipe::error_code ec;
  CHECK_FALSE(fp.rx.try_receive(ec));
  CHECK(ec == asio::error::would_block);
  CHECK(readable(fp.rfd) == 9);  // no read(2) was tried
  auto m = fp.rx.try_receive(ec);  // the next one reads
  REQUIRE(m);
  CHECK(std::string_view(reinterpret_cast<const char*>(m->data()), m->size()) == "there");

  // A message already read ahead is taken first; the receive after it waits,
  // and the wait finds the message that is in the pipe.
  write_raw(fp.wfd, frame_bytes("one") + frame_bytes("two"));
  m = fp.rx.try_receive(ec);
  REQUIRE(m);
  fp.rx.wait_before_next_read();
  m = fp.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(std::string_view(reinterpret_cast<const char*>(m->data()), m->size()) == "two");
  write_raw(fp.wfd, frame_bytes("three"));
  CHECK_FALSE(fp.rx.try_receive(ec));
  CHECK(ec == asio::error::would_block);
  run(io, [&]() -> awaitable<void> { CHECK(co_await receive_string(fp.rx) == "three"); }());
  CHECK(readable(fp.rfd) == 0);
}

// --- request and reply: the send written at once ------------------------------------------

namespace {

// Both ends of a socketpair as framed streams, and their descriptor numbers.
struct framed_duplex {
  framed_stream<> a;
  framed_stream<> b;
  int afd;
  int bfd;
};

framed_duplex make_framed_duplex(asio::io_context& io, const framed_options& a_opts = {}) {
  auto d = coropipe::duplex_pair();
  const int a = d.first.get(), b = d.second.get();
  return {framed_stream<>(coropipe::attach(io, std::move(d.first)), a_opts),
          framed_stream<>(coropipe::attach(io, std::move(d.second))), a, b};
}

// a's receive waits until b's message arrives: a's next small send is then
// written by the send itself.
awaitable<void> wait_for_one(framed_duplex& d, std::string_view text) {
  auto waiter = [&]() -> awaitable<void> { CHECK(co_await receive_string(d.a) == text); };
  auto sender = [&]() -> awaitable<void> {
    co_await asio::post(co_await asio::this_coro::executor, use_awaitable);
    co_await d.b.async_send(asio::buffer(text), use_awaitable);
  };
  co_await (waiter() && sender());
}

} // namespace

TEST_CASE("request-reply: the first small send after a receive waited is written by the send itself") {
  asio::io_context io;
  auto d = make_framed_duplex(io);
  run(io, [&]() -> awaitable<void> {
    for (int round = 0; round < 3; ++round) {
      const std::string request = "request " + std::to_string(round);
      co_await wait_for_one(d, request);
      co_await d.a.async_send(asio::buffer(std::string_view("reply")), use_awaitable);
      // Written before the send completed: nothing queued, the bytes are in the socket.
      CHECK(d.a.pending_bytes() == 0);
      CHECK(readable(d.bfd) == 9);
      // The next send is batched again (queued, flushed in the background).
      coropipe::detail::note_wait();  // no yield due: the flush must not run before the check
      co_await d.a.async_send(asio::buffer(std::string_view("more")), use_awaitable);
      CHECK(d.a.pending_bytes() == 8);
      CHECK(co_await receive_string(d.b) == "reply");
      CHECK(co_await receive_string(d.b) == "more");
    }
    // The receive right after a direct write waits for the reply without a
    // read first, and gets it.
    co_await wait_for_one(d, "ping");
    co_await d.a.async_send(asio::buffer(std::string_view("pong")), use_awaitable);
    auto replier = [&]() -> awaitable<void> {
      CHECK(co_await receive_string(d.b) == "pong");
      co_await d.b.async_send(asio::buffer(std::string_view("ack")), use_awaitable);
    };
    auto receiver = [&]() -> awaitable<void> { CHECK(co_await receive_string(d.a) == "ack"); };
    co_await (receiver() && replier());
    // A reply already there when the receive skips its read is still found.
    co_await wait_for_one(d, "ping 2");
    co_await d.a.async_send(asio::buffer(std::string_view("pong 2")), use_awaitable);
    write_raw(d.bfd, frame_bytes("early"));
    CHECK(co_await receive_string(d.a) == "early");
  }());
}

TEST_CASE("request-reply: a direct send that meets a full socket (EAGAIN or a partial write) is finished by the flush") {
  asio::io_context io;
  // Payloads of up to 256 KiB copied, so that a large one is written directly.
  framed_options opts;
  opts.copy_threshold = std::size_t{256} << 10;
  opts.send_buffer_size = std::size_t{1} << 20;
  auto d = make_framed_duplex(io, opts);
  const std::size_t threshold = d.a.options().copy_threshold;
  run(io, [&]() -> awaitable<void> {
    co_await wait_for_one(d, "go");
    // Fill a's sending direction with whole frames, behind the framed_stream's back.
    const std::size_t filled = fill_with_frames(d.afd);
    REQUIRE(filled > 0);
    // Full: the direct write takes nothing (EAGAIN); the send completes, queued.
    const std::string big = pattern(threshold, 5);
    co_await d.a.async_send(asio::buffer(big), use_awaitable);
    CHECK(d.a.pending_bytes() == big.size() + 4);
    for (std::size_t i = 0; i < filled; ++i) CHECK((co_await receive_string(d.b)).size() == PIPE_BUF - 4);
    CHECK(same(co_await receive_string(d.b), big));

    // Room for part of the frame only: what the direct write leaves is queued.
    // A tiny send buffer makes a Unix socket take a large write in part.
    co_await wait_for_one(d, "again");
    const int small_buffer = 4096;
    REQUIRE(::setsockopt(d.afd, SOL_SOCKET, SO_SNDBUF, &small_buffer, sizeof small_buffer) == 0);
    co_await d.a.async_send(asio::buffer(big), use_awaitable);
    const std::size_t left = d.a.pending_bytes();
    CHECK(left > 0);
    CHECK(left < big.size());
    co_await d.a.async_send(asio::buffer(std::string_view("after")), use_awaitable);
    CHECK(same(co_await receive_string(d.b), big));
    CHECK(co_await receive_string(d.b) == "after");
    co_await d.a.async_flush(use_awaitable);
    CHECK(d.a.pending_bytes() == 0);
  }());
}

TEST_CASE("request-reply: a direct send to a closed peer reports the error itself, and every later send") {
  asio::io_context io;
  auto d = make_framed_duplex(io);
  run(io, [&]() -> awaitable<void> {
    co_await wait_for_one(d, "last words");
    d.b = framed_stream<>(coropipe::attach(io, coropipe::duplex_pair().first));  // closes b's end
    auto [ec1] = co_await d.a.async_send(asio::buffer(std::string_view("reply")), as_tuple);
    CHECK(ec1 == asio::error::broken_pipe);
    auto [ec2] = co_await d.a.async_send(asio::buffer(std::string_view("again")), as_tuple);
    CHECK(ec2 == asio::error::broken_pipe);
    auto [ec3] = co_await d.a.async_flush(as_tuple);
    CHECK(ec3 == asio::error::broken_pipe);
    auto [ec4, end] = co_await d.a.async_receive(as_tuple);
    CHECK_FALSE(ec4);
    CHECK_FALSE(end.has_value());
  }());
  CHECK_FALSE(sigpipe_pending());
}

TEST_CASE("request-reply: large messages after a wait take the queued path, in order with the small ones") {
  asio::io_context io;
  auto d = make_framed_duplex(io);
  const std::string big = pattern(std::size_t{1} << 20, 9);
  run(io, [&]() -> awaitable<void> {
    for (int round = 0; round < 2; ++round) {
      co_await wait_for_one(d, "request");
      auto sender = [&]() -> awaitable<void> {
        co_await d.a.async_send(asio::buffer(big), use_awaitable);  // larger than copy_threshold
        co_await d.a.async_send(asio::buffer(std::string_view("tail")), use_awaitable);
      };
      auto receiver = [&]() -> awaitable<void> {
        CHECK(same(co_await receive_string(d.b), big));
        CHECK(co_await receive_string(d.b) == "tail");
      };
      co_await (sender() && receiver());
    }
    // A small direct send, then a large one behind it.
    co_await wait_for_one(d, "request");
    co_await d.a.async_send(asio::buffer(std::string_view("head")), use_awaitable);
    auto sender = [&]() -> awaitable<void> { co_await d.a.async_send(asio::buffer(big), use_awaitable); };
    auto receiver = [&]() -> awaitable<void> {
      CHECK(co_await receive_string(d.b) == "head");
      CHECK(same(co_await receive_string(d.b), big));
    };
    co_await (sender() && receiver());
  }());
}

// --- completion tokens -------------------------------------------------------------------

TEST_CASE("callbacks: send, receive and flush never complete inside the initiating call") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  int sent = 0, flushed = 0;
  std::optional<std::string> received;
  fp.tx.async_send(asio::buffer(std::string_view("cb")), [&](coropipe::error_code ec) {
    CHECK_FALSE(ec);
    ++sent;
  });
  CHECK(sent == 0);
  fp.tx.async_flush([&](coropipe::error_code ec) {
    CHECK_FALSE(ec);
    ++flushed;
  });
  CHECK(flushed == 0);
  io.run();
  CHECK(sent == 1);
  CHECK(flushed == 1);
  // The frame is in the pipe: the receive could complete at once.
  fp.rx.async_receive([&](coropipe::error_code ec, std::optional<message_view> msg) {
    CHECK_FALSE(ec);
    REQUIRE(msg.has_value());
    received = str(*msg);
  });
  CHECK_FALSE(received.has_value());
  io.restart();
  io.run();
  REQUIRE(received.has_value());
  CHECK(*received == "cb");

  // A large send with a callback completes once written.
  const std::string big = pattern(300000, 5);
  bool big_sent = false;
  fp.tx.async_send(asio::buffer(big), [&](coropipe::error_code ec) {
    CHECK_FALSE(ec);
    big_sent = true;
  });
  CHECK_FALSE(big_sent);
  std::string got;
  run(io, [&]() -> awaitable<void> { got = co_await receive_string(fp.rx); }());
  io.restart();
  io.run();
  CHECK(big_sent);
  CHECK(same(got, big));
}

TEST_CASE("deferred: send, receive and flush start when launched") {
  asio::io_context io;
  auto fp = make_framed_pipe(io);
  auto send = fp.tx.async_send(asio::buffer(std::string_view("deferred")), coropipe::compat::deferred);
  auto flush = fp.tx.async_flush(coropipe::compat::deferred);
  auto receive = fp.rx.async_receive(coropipe::compat::deferred);
  io.poll();
  CHECK(fp.tx.pending_bytes() == 0);
  CHECK(readable(fp.rfd) == 0);
  run(io, [&]() -> awaitable<void> {
    co_await std::move(send)(use_awaitable);
    co_await std::move(flush)(use_awaitable);
    CHECK(readable(fp.rfd) == 12);
    auto msg = co_await std::move(receive)(use_awaitable);
    REQUIRE(msg.has_value());
    CHECK(str(*msg) == "deferred");
  }());
}

TEST_CASE("as_tuple and redirect_error: errors as values") {
  asio::io_context io;
  auto p = make_raw_writer_pipe(io);
  write_raw(p.w.get(), frame_bytes("fine"));
  write_raw(p.w.get(), std::string("\x80\x00\x00\x00", 4));
  run(io, [&]() -> awaitable<void> {
    auto [ec, msg] = co_await p.rx.async_receive(as_tuple);
    CHECK_FALSE(ec);
    REQUIRE(msg.has_value());
    CHECK(str(*msg) == "fine");
    coropipe::error_code rec;
    auto bad = co_await p.rx.async_receive(asio::redirect_error(use_awaitable, rec));
    CHECK(rec == errc::malformed_frame);
    CHECK_FALSE(bad.has_value());
  }());
  // And on the sending side.
  auto fp = make_framed_pipe(io);
  run(io, [&]() -> awaitable<void> {
    coropipe::error_code sec = asio::error::eof;
    co_await fp.tx.async_send(asio::buffer(std::string_view("x")), asio::redirect_error(use_awaitable, sec));
    CHECK_FALSE(sec);
    auto [fec] = co_await fp.tx.async_flush(as_tuple);
    CHECK_FALSE(fec);
    CHECK(co_await receive_string(fp.rx) == "x");
  }());
}

// --- other streams ---------------------------------------------------------------------------

namespace {

using tcp_framed = framed_stream<asio::ip::tcp::socket>;

// Over a TCP loopback connection on @p io: messages of 0 B to 1 MiB both ways
// at once, request-reply rounds (each receive waits), a receive cancelled
// while it waits, then the end of the stream. @p read_waits: whether the
// receives are expected to wait with an Asio read (reads_consume_edge()).
void tcp_exchange(asio::io_context& io, bool read_waits) {
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  asio::ip::tcp::socket a(io), b(io);
  run(io, [&]() -> awaitable<void> {
    co_await (acceptor.async_accept(b, use_awaitable) && a.async_connect(acceptor.local_endpoint(), use_awaitable));
  }());
  acceptor.close();
  tcp_framed fa(std::move(a)), fb(std::move(b));
  CHECK(coropipe::detail::reads_consume_edge(fa.next_layer()) == read_waits);
  const std::vector<std::size_t> sizes{0, 1, PIPE_BUF, std::size_t{64} << 10, std::size_t{1} << 20};
  run(io, [&]() -> awaitable<void> {
    auto one_way = [&](tcp_framed& from, tcp_framed& to, std::uint32_t seed) -> awaitable<void> {
      auto sender = [&]() -> awaitable<void> {
        for (std::size_t s : sizes) {
          const std::string m = pattern(s, seed + static_cast<std::uint32_t>(s));
          co_await from.async_send(asio::buffer(m), use_awaitable);
        }
      };
      auto receiver = [&]() -> awaitable<void> {
        for (std::size_t s : sizes) {
          const std::string m = co_await receive_string(to);
          CHECK(m.size() == s);
          CHECK(same(m, pattern(s, seed + static_cast<std::uint32_t>(s))));
        }
      };
      co_await (sender() && receiver());
    };
    co_await (one_way(fa, fb, 1) && one_way(fb, fa, 2));

    // Request-reply: every receive finds nothing and waits; large replies
    // arrive in several reads.
    const std::vector<std::size_t> reply_sizes{16, 0, 16, PIPE_BUF, 16, std::size_t{1} << 20, 16};
    auto requester = [&]() -> awaitable<void> {
      for (int round = 0; round < 3; ++round) {
        for (std::size_t s : reply_sizes) {
          const std::string request = std::to_string(s);
          co_await fa.async_send(asio::buffer(request), use_awaitable);
          CHECK(same(co_await receive_string(fa), pattern(s, static_cast<std::uint32_t>(s))));
        }
      }
    };
    auto replier = [&]() -> awaitable<void> {
      for (int round = 0; round < 3; ++round) {
        for (std::size_t i = 0; i < reply_sizes.size(); ++i) {
          const std::string request = co_await receive_string(fb);
          const std::size_t s = std::stoul(request);
          const std::string reply = pattern(s, static_cast<std::uint32_t>(s));
          co_await fb.async_send(asio::buffer(reply), use_awaitable);
        }
      }
    };
    co_await (requester() && replier());

    // A receive cancelled while it waits loses nothing.
    asio::steady_timer timer(io, 20ms);
    auto first = co_await (fa.async_receive(use_awaitable) || timer.async_wait(use_awaitable));
    CHECK(first.index() == 1);
    co_await fb.async_send(asio::buffer(std::string_view("after the cancel")), use_awaitable);
    CHECK(co_await receive_string(fa) == "after the cancel");

    co_await fa.async_close(use_awaitable);
    CHECK_FALSE((co_await fb.async_receive(use_awaitable)).has_value());
  }());
}

} // namespace

TEST_CASE("framed messages over a TCP loopback socket") {
  asio::io_context io;
  tcp_exchange(io, false);
}

#if COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ
TEST_CASE("over TCP, with an io_context whose reactor resets the edge on a partial read, receives wait by reading") {
  asio::io_context io{coropipe::compat::config_from_string{"reactor.reset_edge_on_partial_read=1"}};
  tcp_exchange(io, true);
}
#endif

// --- Python interop ---------------------------------------------------------------------------

namespace {

// The Python peer's descriptors, closed and reaped on the way out.
struct python_peer {
  coropipe_test::piped_program prog;
  unique_fd err;
  explicit python_peer(const std::string& python, const std::string& script)
      : prog(coropipe_test::start_piped_program({python, "-c", script})), err(prog.err) {}
  ~python_peer() {
    if (prog.pid > 0 && !coropipe_test::wait_for_pid(prog.pid, 0ms)) {
      ::kill(prog.pid, SIGKILL);
      ::waitpid(prog.pid, nullptr, 0);
    }
  }
  python_peer(const python_peer&) = delete;
  python_peer& operator=(const python_peer&) = delete;

  // Reads its stderr to the end, then reaps it; returns (stderr, wait status).
  std::pair<std::string, int> finish() {
    std::string text = coropipe_test::read_all(err.get(), 60s);
    err.reset();
    auto status = coropipe_test::wait_for_pid(prog.pid, 60s);
    prog.pid = -1;
    REQUIRE(status.has_value());
    return {text, *status};
  }
};

std::optional<std::string> python3() {
  auto p = coropipe_test::find_in_path("python3");
  if (!p) MESSAGE("python3 not found in PATH: skipping the Python interop test");
  return p;
}

} // namespace

TEST_CASE("Python interop: a python3 multiprocessing.connection echo peer returns coropipe's frames") {
  const auto python = python3();
  if (!python) return;
  const std::string script = R"(
import sys
from multiprocessing.connection import Connection
inp = Connection(0, writable=False)
out = Connection(1, readable=False)
n = 0
while True:
    try:
        m = inp.recv_bytes()
    except EOFError:
        break
    out.send_bytes(m)
    n += 1
out.close()
sys.stderr.write("echoed %d\n" % n)
)";
  asio::io_context io;
  python_peer peer(*python, script);
  framed_stream<> tx(coropipe::attach(io, unique_fd(peer.prog.in)));
  framed_stream<> rx(coropipe::attach(io, unique_fd(peer.prog.out)));
  const std::vector<std::size_t> sizes{0, 1, 4096, std::size_t{1} << 20};
  run(io, [&]() -> awaitable<void> {
    for (std::size_t s : sizes) {
      CAPTURE(s);
      const std::string m = pattern(s, static_cast<std::uint32_t>(s));
      co_await tx.async_send(asio::buffer(m), use_awaitable);
      const std::string back = co_await receive_string(rx);
      CHECK(back.size() == s);
      CHECK(same(back, m));
    }
    co_await tx.async_close(use_awaitable);
    CHECK_FALSE((co_await rx.async_receive(use_awaitable)).has_value());
  }());
  const auto [text, status] = peer.finish();
  CHECK(text == "echoed 4\n");
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("Python interop: frames python3 sends with send_bytes, and frames it checks with recv_bytes") {
  const auto python = python3();
  if (!python) return;
  const std::string script = R"(
import sys
from multiprocessing.connection import Connection
def pattern(n, seed):
    return bytes(((i * 31 + seed * 7 + (i >> 8)) & 0xff) for i in range(n))
out = Connection(1, readable=False)
inp = Connection(0, writable=False)
for k, n in enumerate([0, 1, 5, 4096, 16384, 16385, 70000, 1048576]):
    out.send_bytes(pattern(n, k))
out.send_bytes(b"Spam 0")
out.close()
count = bad = 0
while True:
    try:
        m = inp.recv_bytes()
    except EOFError:
        break
    if m != pattern(len(m), 100 + count):
        bad += 1
        sys.stderr.write("message %d (%d bytes) differs\n" % (count, len(m)))
    count += 1
sys.stderr.write("received %d, bad %d\n" % (count, bad))
sys.exit(0 if bad == 0 else 3)
)";
  asio::io_context io;
  python_peer peer(*python, script);
  framed_stream<> tx(coropipe::attach(io, unique_fd(peer.prog.in)));
  framed_stream<> rx(coropipe::attach(io, unique_fd(peer.prog.out)));
  const std::vector<std::size_t> from_python{0, 1, 5, 4096, 16384, 16385, 70000, 1048576};
  const std::vector<std::size_t> to_python{0, 1, 7, 4096, 16384, 16385, 100000, std::size_t{1} << 20, 3};
  run(io, [&]() -> awaitable<void> {
    for (std::size_t k = 0; k < from_python.size(); ++k) {
      CAPTURE(k);
      const std::string m = co_await receive_string(rx);
      CHECK(m.size() == from_python[k]);
      CHECK(same(m, pattern(from_python[k], static_cast<std::uint32_t>(k))));
    }
    CHECK(co_await receive_string(rx) == "Spam 0");
    CHECK_FALSE((co_await rx.async_receive(use_awaitable)).has_value());
    for (std::size_t k = 0; k < to_python.size(); ++k) {
      const std::string m = pattern(to_python[k], static_cast<std::uint32_t>(100 + k));
      co_await tx.async_send(asio::buffer(m), use_awaitable);
    }
    co_await tx.async_close(use_awaitable);
  }());
  const auto [text, status] = peer.finish();
  CHECK(text == "received 9, bad 0\n");
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

// --- try_receive ---------------------------------------------------------------------------

TEST_CASE("try_receive: would_block until a whole frame is there, then the messages in order, then the end") {
  asio::io_context io;
  auto p = make_raw_writer_pipe(io);
  coropipe::error_code ec;
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(ec == asio::error::would_block);
  const std::string f = frame_bytes("spam");
  write_raw(p.w.get(), std::string_view(f).substr(0, 3));  // half a header
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(ec == asio::error::would_block);
  write_raw(p.w.get(), f.substr(3) + frame_bytes("") + frame_bytes("eggs"));
  auto m = p.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(!ec);
  CHECK(str(*m) == "spam");
  CHECK(readable(p.rfd) == 0);  // the rest was read ahead
  m = p.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(m->empty());
  m = p.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(str(*m) == "eggs");
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(ec == asio::error::would_block);
  // Waiting for readability, then trying again, is a receive.
  write_raw(p.w.get(), frame_bytes("ham"));
  run(io, [&]() -> awaitable<void> {
    auto [wec] = co_await p.rx.next_layer().async_wait(asio::posix::stream_descriptor::wait_read, as_tuple);
    CHECK(!wec);
  }());
  m = p.rx.try_receive(ec);
  REQUIRE(m);
  CHECK(str(*m) == "ham");
  p.w.reset();
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(!ec);  // a clean end of stream
}

TEST_CASE("try_receive: malformed input is a sticky error; a pending async_receive is already_started") {
  asio::io_context io;
  auto p = make_raw_writer_pipe(io, framed_options{.max_message_size = 16});
  std::string got;
  p.rx.async_receive([&](coropipe::error_code rec, std::optional<message_view> msg) {
    CHECK(!rec);
    if (msg) got = str(*msg);
  });
  coropipe::error_code ec;
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(ec == asio::error::already_started);
  write_raw(p.w.get(), frame_bytes("first"));
  io.run_for(10s);
  CHECK(got == "first");
  write_raw(p.w.get(), frame_bytes(std::string(17, 'x')));
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(ec == errc::message_too_large);
  CHECK_FALSE(p.rx.try_receive(ec));
  CHECK(ec == errc::message_too_large);
}
