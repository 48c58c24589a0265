// SPDX-License-Identifier: BSL-1.0
#include <coropipe/channel.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/frame.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/pipe.hpp>

#include <coropipe/asio.hpp>

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::errc;
using coropipe::exit_status;
using coropipe::message_view;
using coropipe::unique_fd;
using coropipe_test::run;
using coropipe_test::run_all;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

// --- Types the tests carry -------------------------------------------------------------

// Trivially copyable: sent as its object representation.
struct point {
  std::int32_t x;
  std::int32_t y;
  double weight;
  friend bool operator==(const point&, const point&) = default;
};
static_assert(std::is_trivially_copyable_v<point> && sizeof(point) == 16);

// One message of the concurrent-senders test: who sent it, its number, and a
// body computed from both.
struct record {
  std::uint32_t sender;
  std::uint32_t seq;
  std::array<std::uint32_t, 14> body;
  friend bool operator==(const record&, const record&) = default;
};

record make_record(std::uint32_t sender, std::uint32_t seq) {
  record r{sender, seq, {}};
  for (std::uint32_t k = 0; k < r.body.size(); ++k) r.body[k] = sender * 1000003u + seq * 31u + k;
  return r;
}

// 1000 bytes: the backpressure test's message.
struct blob {
  std::uint32_t seq;
  std::array<std::uint8_t, 996> fill;
};
static_assert(sizeof(blob) == 1000);

blob make_blob(std::uint32_t seq) {
  blob b{seq, {}};
  for (std::size_t i = 0; i < b.fill.size(); ++i) b.fill[i] = static_cast<std::uint8_t>((seq * 7 + i) & 0xff);
  return b;
}

bool blob_ok(const blob& b, std::uint32_t seq) {
  const blob expected = make_blob(seq);
  return b.seq == seq && b.fill == expected.fill;
}

// A user type, not trivially copyable: needs a codec of its own.
struct person {
  std::string name;
  std::vector<std::int32_t> scores;
  friend bool operator==(const person&, const person&) = default;
};

// Trivially copyable, but with a codec of its own (decimal text), which wins
// over the built-in object-representation encoding.
struct celsius {
  std::int32_t milli;
  friend bool operator==(const celsius&, const celsius&) = default;
};

void append(std::vector<std::byte>& out, const void* data, std::size_t size) {
  const auto* p = static_cast<const std::byte*>(data);
  out.insert(out.end(), p, p + size);
}

} // namespace

// Wire format of person: name length (uint32, native order), name, scores.
template <>
struct coropipe::codec<person> {
  static void encode(const person& p, std::vector<std::byte>& out) {
    const auto n = static_cast<std::uint32_t>(p.name.size());
    append(out, &n, sizeof n);
    append(out, p.name.data(), p.name.size());
    append(out, p.scores.data(), p.scores.size() * sizeof(std::int32_t));
  }
  static coropipe::error_code decode(coropipe::message_view in, person& out) {
    std::uint32_t n = 0;
    if (in.size() < sizeof n) return coropipe::errc::decode_failed;
    std::memcpy(&n, in.data(), sizeof n);
    in = in.subspan(sizeof n);
    if (n > in.size() || (in.size() - n) % sizeof(std::int32_t) != 0) return coropipe::errc::decode_failed;
    out.name.assign(reinterpret_cast<const char*>(in.data()), n);
    in = in.subspan(n);
    out.scores.resize(in.size() / sizeof(std::int32_t));
    if (!in.empty()) std::memcpy(out.scores.data(), in.data(), in.size());
    return {};
  }
};

template <>
struct coropipe::codec<celsius> {
  static void encode(const celsius& c, std::vector<std::byte>& out) {
    const std::string s = std::to_string(c.milli);
    append(out, s.data(), s.size());
  }
  static coropipe::error_code decode(coropipe::message_view in, celsius& out) {
    const char* first = reinterpret_cast<const char*>(in.data());
    const char* last = first + in.size();
    std::int32_t v = 0;
    const auto [end, ec] = std::from_chars(first, last, v);
    if (ec != std::errc() || end != last || in.empty()) return coropipe::errc::decode_failed;
    out.milli = v;
    return {};
  }
};

namespace {

// --- Helpers ---------------------------------------------------------------------------

std::string pattern(std::size_t n, std::uint32_t seed) {
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<char>((i * 31 + seed * 7 + (i >> 8)) & 0xff);
  return out;
}

std::string bytes_of(const void* data, std::size_t n) { return std::string(static_cast<const char*>(data), n); }

// The bytes of one frame, as Python's send_bytes writes them.
std::string frame_bytes(std::string_view payload) {
  std::array<std::byte, coropipe::max_frame_header_size> h{};
  const std::size_t n = coropipe::encode_frame_header(payload.size(), h);
  return bytes_of(h.data(), n) + std::string(payload);
}

void write_raw(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    REQUIRE(n > 0);
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

std::size_t readable(int fd) {
  int n = 0;
  REQUIRE(::ioctl(fd, FIONREAD, &n) == 0);
  return static_cast<std::size_t>(n);
}

// Both ends of a pipe as channels (of possibly different types: what the
// writer sends and what the reader expects), and their descriptor numbers.
template <typename Send, typename Receive = Send>
struct channel_pipe {
  coropipe::channel<Send> tx;
  coropipe::channel<Receive> rx;
  int wfd;
  int rfd;
};

template <typename Send, typename Receive = Send>
channel_pipe<Send, Receive> make_channel_pipe(asio::io_context& io, const coropipe::framed_options& opts = {}) {
  auto p = coropipe::pipe();
  const int w = p.write_end.get(), r = p.read_end.get();
  return {coropipe::channel<Send>(coropipe::attach(io, std::move(p.write_end)), opts),
          coropipe::channel<Receive>(coropipe::attach(io, std::move(p.read_end)), opts), w, r};
}

template <typename Channel>
awaitable<void> send_all(Channel& tx, const std::vector<typename Channel::send_type>& values) {
  for (const auto& v : values) co_await tx.async_send(v, use_awaitable);
}

template <typename Channel>
awaitable<void> receive_all(Channel& rx, const std::vector<typename Channel::receive_type>& expected) {
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(i);
    std::optional<typename Channel::receive_type> got = co_await rx.async_receive(use_awaitable);
    REQUIRE(got.has_value());
    CHECK((*got == expected[i]));  // not decomposed: no megabytes in a failure report
  }
}

template <typename Channel>
awaitable<void> expect_end(Channel& rx) {
  auto end = co_await rx.async_receive(use_awaitable);
  CHECK_FALSE(end.has_value());
}

// Sends @p values through a pipe, in order, while receiving them; then the
// writer closes and the reader sees a clean end of stream.
template <typename T>
void pipe_round_trip(const std::vector<T>& values) {
  asio::io_context io;
  auto cp = make_channel_pipe<T>(io);
  run_all(
      io,
      [&]() -> awaitable<void> {
        co_await send_all(cp.tx, values);
        co_await cp.tx.async_close(use_awaitable);
      }(),
      [&]() -> awaitable<void> {
        co_await receive_all(cp.rx, values);
        co_await expect_end(cp.rx);
        co_await expect_end(cp.rx);
      }());
}

// Both ends of a duplex_pair as channels of T: @p values go one way, and
// reversed the other way, at the same time; then one end half-closes, the
// other still answers, and closes.
template <typename T>
void duplex_round_trip(const std::vector<T>& values) {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  coropipe::channel<T> a(coropipe::attach(io, std::move(d.first)));
  coropipe::channel<T> b(coropipe::attach(io, std::move(d.second)));
  const std::vector<T> reversed(values.rbegin(), values.rend());
  run_all(io, send_all(a, values), receive_all(b, values), send_all(b, reversed), receive_all(a, reversed));
  REQUIRE_FALSE(values.empty());
  run(io, [&]() -> awaitable<void> {
    // a stops sending (but keeps receiving): b reads the end of a's direction.
    co_await a.async_flush(use_awaitable);
    REQUIRE(::shutdown(a.framed().next_layer().native_handle(), SHUT_WR) == 0);
    co_await expect_end(b);
    // b's direction still works.
    co_await b.async_send(values.front(), use_awaitable);
    const std::vector<T> last{values.front()};
    co_await receive_all(a, last);
    co_await b.async_close(use_awaitable);
    co_await expect_end(a);
  }());
}

template <typename T>
void round_trips(const std::vector<T>& values) {
  SUBCASE("through a pipe") { pipe_round_trip(values); }
  SUBCASE("through a duplex_pair, both directions") { duplex_round_trip(values); }
}

// What a receiver of Receive makes of each of @p values sent as Send, in
// order, until the clean end of stream: (error, value) per message.
template <typename Send, typename Receive>
std::vector<std::pair<coropipe::error_code, std::optional<Receive>>> send_as_receive_as(const std::vector<Send>& values) {
  asio::io_context io;
  auto cp = make_channel_pipe<Send, Receive>(io);
  std::vector<std::pair<coropipe::error_code, std::optional<Receive>>> results;
  run_all(
      io,
      [&]() -> awaitable<void> {
        co_await send_all(cp.tx, values);
        co_await cp.tx.async_close(use_awaitable);
      }(),
      [&]() -> awaitable<void> {
        for (;;) {
          auto [ec, value] = co_await cp.rx.async_receive(as_tuple);
          if (!ec && !value) co_return;  // the end
          results.emplace_back(ec, std::move(value));
          REQUIRE(results.size() <= values.size());
        }
      }());
  return results;
}

template <typename T>
void check_fails(const std::pair<coropipe::error_code, std::optional<T>>& r) {
  CHECK(r.first == errc::decode_failed);
  CHECK_FALSE(r.second.has_value());
}

template <typename T>
void check_decodes(const std::pair<coropipe::error_code, std::optional<T>>& r, const T& expected) {
  CHECK_FALSE(r.first);
  REQUIRE(r.second.has_value());
  CHECK((*r.second == expected));
}

std::vector<std::byte> byte_vector(std::string_view s) {
  std::vector<std::byte> v(s.size());
  if (!s.empty()) std::memcpy(v.data(), s.data(), s.size());
  return v;
}

} // namespace

// --- What channels can carry -------------------------------------------------------------

static_assert(coropipe::codable<std::string>);
static_assert(coropipe::codable<std::vector<std::byte>>);
static_assert(coropipe::codable<std::vector<char>>);
static_assert(coropipe::codable<std::vector<unsigned char>>);
static_assert(coropipe::codable<std::int64_t>);
static_assert(coropipe::codable<point>);
static_assert(coropipe::codable<std::array<std::uint16_t, 5>>);
static_assert(coropipe::codable<std::vector<point>>);
static_assert(coropipe::codable<person>);
static_assert(!coropipe::codable<int*>);
static_assert(!coropipe::codable<std::vector<bool>>);  // bits, not bytes: no data()
static_assert(!coropipe::codable<const char*>);
static_assert(!coropipe::codable<std::vector<int*>>);
static_assert(!coropipe::codable<std::vector<std::string>>);
static_assert(std::is_same_v<coropipe::channel<std::string, point>::send_type, std::string>);
static_assert(std::is_same_v<coropipe::channel<std::string, point>::receive_type, point>);
static_assert(std::is_same_v<coropipe::channel<point>::receive_type, point>);

TEST_CASE("codable: the built-in encodings, and what is refused") {
  CHECK(coropipe::codable<std::string>);
  CHECK(coropipe::codable<std::vector<std::byte>>);
  CHECK(coropipe::codable<std::array<char, 3>>);
  CHECK(coropipe::codable<std::vector<double>>);
  CHECK(coropipe::codable<celsius>);
  CHECK_FALSE(coropipe::codable<int*>);
  CHECK_FALSE(coropipe::codable<std::nullptr_t>);
  CHECK_FALSE(coropipe::codable<int point::*>);
  CHECK_FALSE(coropipe::codable<std::vector<std::string>>);
}

// --- Round trips of every built-in encoding -------------------------------------------

TEST_CASE("round trips: std::string, including empty, embedded NULs, every byte value, and 1 MiB") {
  std::string every_byte;
  for (int i = 0; i < 256; ++i) every_byte += static_cast<char>(i);
  round_trips<std::string>({"Spam 0", "", std::string("a\0b\0\0c", 6), std::string(3, '\0'), every_byte, "",
                            pattern(std::size_t{1} << 20, 1), "last"});
}

TEST_CASE("round trips: std::vector<std::byte>, std::vector<char>, std::vector<unsigned char>") {
  const std::string big = pattern(100000, 2);
  SUBCASE("std::vector<std::byte>") {
    round_trips<std::vector<std::byte>>(
        {byte_vector("bytes"), {}, byte_vector(std::string_view("\0\xff\0", 3)), byte_vector(big), {std::byte{0}}});
  }
  SUBCASE("std::vector<char>") {
    round_trips<std::vector<char>>({{'c', 'h', '\0', 'r'}, {}, std::vector<char>(big.begin(), big.end()), {'\xff'}});
  }
  SUBCASE("std::vector<unsigned char>") {
    std::vector<unsigned char> all;
    for (int i = 0; i < 256; ++i) all.push_back(static_cast<unsigned char>(i));
    round_trips<std::vector<unsigned char>>({all, {}, std::vector<unsigned char>(big.begin(), big.end()), {0}});
  }
}

TEST_CASE("round trips: trivially copyable scalars, structs and std::arrays") {
  SUBCASE("std::int64_t") {
    round_trips<std::int64_t>({0, 1, -1, std::numeric_limits<std::int64_t>::min(),
                               std::numeric_limits<std::int64_t>::max(), 0x0102030405060708});
  }
  SUBCASE("double") { round_trips<double>({0.0, -0.5, 1e300, std::numeric_limits<double>::denorm_min()}); }
  SUBCASE("char") { round_trips<char>({'a', '\0', '\xff'}); }
  SUBCASE("a struct") { round_trips<point>({{1, 2, 0.5}, {0, 0, 0.0}, {-7, 1 << 30, -1e-9}}); }
  SUBCASE("std::array<std::uint16_t, 5>") {
    round_trips<std::array<std::uint16_t, 5>>({{1, 2, 3, 4, 5}, {}, {65535, 0, 65535, 0, 1}});
  }
  SUBCASE("std::array of structs") {
    using pair_of_points = std::array<point, 2>;
    round_trips<pair_of_points>({{{{1, 2, 3.0}, {4, 5, 6.0}}}, {}});
  }
  SUBCASE("a 40000-byte std::array (written from the sender's memory)") {
    using big_array = std::array<std::uint32_t, 10000>;
    big_array a{}, b{};
    for (std::uint32_t i = 0; i < a.size(); ++i) {
      a[i] = i * 2654435761u;
      b[i] = ~i;
    }
    round_trips<big_array>({a, b, a});
  }
}

TEST_CASE("round trips: std::vector of trivially copyable types, including empty vectors") {
  SUBCASE("std::vector<std::int32_t>") {
    std::vector<std::int32_t> big(300000);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::int32_t>(i * 7919 % 2000000) - 1000000;
    round_trips<std::vector<std::int32_t>>({{1, -2, 3}, {}, big, {std::numeric_limits<std::int32_t>::min()}, {}});
  }
  SUBCASE("std::vector<double>") { round_trips<std::vector<double>>({{}, {0.25, -8.0}, std::vector<double>(5000, 3.5)}); }
  SUBCASE("std::vector<point>") {
    round_trips<std::vector<point>>({{{1, 2, 0.5}, {3, 4, 1.5}}, {}, std::vector<point>(2000, point{9, 8, 7.0})});
  }
  SUBCASE("std::vector<std::array<char, 3>>") {
    round_trips<std::vector<std::array<char, 3>>>({{{'a', 'b', 'c'}, {'\0', 'x', '\0'}}, {}});
  }
}

TEST_CASE("round trips through a duplex_pair with different types each way") {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  coropipe::channel<std::string, std::vector<point>> a(coropipe::attach(io, std::move(d.first)));
  coropipe::channel<std::vector<point>, std::string> b(coropipe::attach(io, std::move(d.second)));
  // b answers every string with that many points; a checks.
  run_all(
      io,
      [&]() -> awaitable<void> {
        while (std::optional<std::string> s = co_await b.async_receive(use_awaitable)) {
          std::vector<point> answer;
          for (std::size_t i = 0; i < s->size(); ++i) answer.push_back({static_cast<std::int32_t>(i), 0, 1.0});
          co_await b.async_send(answer, use_awaitable);
        }
        co_await b.async_close(use_awaitable);
      }(),
      [&]() -> awaitable<void> {
        const std::array<std::size_t, 4> sizes{3, 0, 5000, 1};
        for (std::size_t n : sizes) {
          CAPTURE(n);
          co_await a.async_send(std::string(n, 'x'), use_awaitable);
          std::optional<std::vector<point>> got = co_await a.async_receive(use_awaitable);
          REQUIRE(got.has_value());
          REQUIRE(got->size() == n);
          for (std::size_t i = 0; i < n; ++i) CHECK((*got)[i].x == static_cast<std::int32_t>(i));
        }
        co_await a.async_flush(use_awaitable);
        REQUIRE(::shutdown(a.framed().next_layer().native_handle(), SHUT_WR) == 0);
        co_await expect_end(a);
      }());
}

TEST_CASE("the wire: a value's payload is its bytes, in multiprocessing.connection frames") {
  asio::io_context io;
  auto p = coropipe::pipe();
  unique_fd r = std::move(p.read_end);
  const point pt{1, -2, 0.75};
  const std::vector<std::int16_t> shorts{1, 2, 3};
  {
    coropipe::channel<std::string> text(coropipe::attach(io, std::move(p.write_end)));
    run(io, text.async_send("Spam 0", use_awaitable));
    run(io, text.async_close(use_awaitable));
  }
  CHECK(coropipe_test::read_all(r.get()) == std::string("\0\0\0\x06Spam 0", 10));

  // One stream, two channel types in turn (a channel is a view of types over
  // a framed_stream, which can be moved on).
  auto p2 = coropipe::pipe();
  r = std::move(p2.read_end);
  {
    coropipe::channel<point> points(coropipe::attach(io, std::move(p2.write_end)));
    run(io, points.async_send(pt, use_awaitable));
    coropipe::channel<std::vector<std::int16_t>, std::string> vectors(std::move(points.framed()));
    run(io, vectors.async_send(shorts, use_awaitable));
    run(io, vectors.async_close(use_awaitable));
  }
  CHECK(coropipe_test::read_all(r.get()) == frame_bytes(bytes_of(&pt, sizeof pt)) +
                                                  frame_bytes(bytes_of(shorts.data(), shorts.size() * 2)));
}

// --- User types --------------------------------------------------------------------------

TEST_CASE("a user type through its codec specialization, including a payload it cannot decode") {
  const std::vector<person> people{{"Brian", {1, 2, 3}}, {"", {}}, {"Eric", {}}, {"", {-1}},
                                   {pattern(20000, 3), std::vector<std::int32_t>(5000, 42)}};
  SUBCASE("round trips") { round_trips(people); }
  SUBCASE("a payload the codec refuses is decode_failed, and the next one decodes") {
    asio::io_context io;
    auto cp = make_channel_pipe<std::string, person>(io);
    std::string good;
    {
      std::vector<std::byte> encoded;
      coropipe::codec<person>::encode(people[0], encoded);
      good = bytes_of(encoded.data(), encoded.size());
    }
    std::string bad_length = good;
    bad_length[0] = '\x7f';  // a name longer than the payload
    run(io, [&]() -> awaitable<void> {
      const std::vector<std::string> payloads{"ab", good, bad_length, good, good + "x", good};
      for (const std::string& s : payloads) co_await cp.tx.async_send(s, use_awaitable);
      co_await cp.tx.async_close(use_awaitable);
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        auto [ec, value] = co_await cp.rx.async_receive(as_tuple);
        CHECK(ec == errc::decode_failed);
        CHECK_FALSE(value.has_value());
        std::optional<person> next = co_await cp.rx.async_receive(use_awaitable);
        REQUIRE(next.has_value());
        CHECK(*next == people[0]);
      }
      co_await expect_end(cp.rx);
    }());
  }
}

TEST_CASE("a codec specialization overrides the built-in encoding of a trivially copyable type") {
  asio::io_context io;
  auto cp = make_channel_pipe<celsius>(io);
  auto raw = make_channel_pipe<celsius, std::string>(io);
  coropipe::channel<celsius>& degrees_out = raw.tx;
  coropipe::channel<std::string>& text_in = raw.rx;
  run(io, [&]() -> awaitable<void> {
    // The user's encoding goes on the wire...
    co_await degrees_out.async_send(celsius{-1500}, use_awaitable);
    CHECK(co_await text_in.async_receive(use_awaitable) == std::optional<std::string>("-1500"));
    // ...and comes back through the user's decode.
    co_await cp.tx.async_send(celsius{21750}, use_awaitable);
    co_await cp.tx.async_send(celsius{0}, use_awaitable);
    CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<celsius>(celsius{21750}));
    CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<celsius>(celsius{0}));
  }());
  // Its failures are the user's: text that is not a number (even of the right size).
  auto bad = make_channel_pipe<std::string, celsius>(io);
  run(io, [&]() -> awaitable<void> {
    const std::vector<std::string> texts{"12x", "", "abcd", "-7"};
    for (const std::string& s : texts) co_await bad.tx.async_send(s, use_awaitable);
    for (int i = 0; i < 3; ++i) {
      auto [ec, value] = co_await bad.rx.async_receive(as_tuple);
      CHECK(ec == errc::decode_failed);
      CHECK_FALSE(value.has_value());
    }
    CHECK(co_await bad.rx.async_receive(use_awaitable) == std::optional<celsius>(celsius{-7}));
  }());
}

// --- Decode failures --------------------------------------------------------------------------

TEST_CASE("decode failures of built-in encodings: errc::decode_failed, and the channel stays usable") {
  asio::io_context io;
  const point pt{5, 6, 7.0};
  const std::string good = bytes_of(&pt, sizeof pt);
  SUBCASE("a trivially copyable type: a payload of the wrong size, in every completion style") {
    auto cp = make_channel_pipe<std::string, point>(io);
    // bad, good, bad, good, ...: each receive style meets one of each. The
    // last bad one is larger than the pipe: the sender runs alongside.
    bool sender_done = false;
    std::exception_ptr sender_error;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
          const std::array<std::size_t, 6> bad_sizes{sizeof(point) - 1, sizeof(point) + 1, 0, 1, 2 * sizeof(point),
                                                     100000};
          for (std::size_t bad_size : bad_sizes) {
            co_await cp.tx.async_send(std::string(bad_size, 'b'), use_awaitable);
            co_await cp.tx.async_send(good, use_awaitable);
          }
        },
        [&](std::exception_ptr e) {
          sender_error = e;
          sender_done = true;
        });
    run(io, [&]() -> awaitable<void> {
      // as_tuple: the error as a value, with the category's details.
      {
        auto [ec, value] = co_await cp.rx.async_receive(as_tuple);
        CHECK(ec == errc::decode_failed);
        CHECK(ec == coropipe::error_code(errc::decode_failed));
        CHECK(ec.category() == coropipe::category());
        CHECK(std::string_view(ec.category().name()) == "coropipe");
        CHECK(ec.message().find("decode") != std::string::npos);
        CHECK_FALSE(value.has_value());
        CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<point>(pt));
      }
      // use_awaitable: thrown as coropipe::system_error.
      {
        coropipe::error_code thrown;
        std::string what;
        try {
          (void)co_await cp.rx.async_receive(use_awaitable);
        } catch (const coropipe::system_error& e) {
          thrown = e.code();
          what = e.what();
        }
        CHECK(thrown == errc::decode_failed);
        CHECK(what.find("coropipe::channel::async_receive") != std::string::npos);
        CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<point>(pt));
      }
      // redirect_error.
      {
        coropipe::error_code ec;
        std::optional<point> value = co_await cp.rx.async_receive(asio::redirect_error(use_awaitable, ec));
        CHECK(ec == errc::decode_failed);
        CHECK_FALSE(value.has_value());
        value = co_await cp.rx.async_receive(asio::redirect_error(use_awaitable, ec));
        CHECK_FALSE(ec);
        CHECK(value == std::optional<point>(pt));
      }
      // Into an object: (decode_failed, false), and as_tuple of that.
      {
        point out{};
        auto [ec, got] = co_await cp.rx.async_receive(out, as_tuple);
        CHECK(ec == errc::decode_failed);
        CHECK_FALSE(got);
        CHECK(co_await cp.rx.async_receive(out, use_awaitable));
        CHECK(out == pt);
        coropipe::error_code thrown;
        try {
          (void)co_await cp.rx.async_receive(out, use_awaitable);
        } catch (const coropipe::system_error& e) {
          thrown = e.code();
        }
        CHECK(thrown == errc::decode_failed);
        std::tie(ec, got) = co_await cp.rx.async_receive(out, as_tuple);
        CHECK_FALSE(ec);
        CHECK(got);
        CHECK(out == pt);
      }
    }());
    // Callbacks.
    coropipe::error_code cb_ec;
    std::optional<point> cb_value;
    int calls = 0;
    cp.rx.async_receive([&](coropipe::error_code e, std::optional<point> v) {
      ++calls;
      cb_ec = e;
      cb_value = v;
    });
    io.restart();
    io.run();  // until the sender is done too
    CHECK(sender_done);
    CHECK_FALSE(sender_error);
    CHECK(calls == 1);
    CHECK(cb_ec == errc::decode_failed);
    CHECK_FALSE(cb_value.has_value());
    cp.rx.async_receive([&](coropipe::error_code e, std::optional<point> v) {
      ++calls;
      cb_ec = e;
      cb_value = v;
    });
    io.restart();
    io.run();
    CHECK(calls == 2);
    CHECK_FALSE(cb_ec);
    CHECK(cb_value == std::optional<point>(pt));
  }
  SUBCASE("a vector: a payload whose size is not a multiple of the element's") {
    auto results = send_as_receive_as<std::string, std::vector<std::int32_t>>(
        {std::string(7, 'x'), std::string(8, '\0'), "", "abcde", std::string(4, '\x01'), std::string(40001, 'l')});
    REQUIRE(results.size() == 6);
    check_fails(results[0]);
    check_decodes(results[1], std::vector<std::int32_t>{0, 0});
    check_decodes(results[2], std::vector<std::int32_t>{});
    check_fails(results[3]);
    check_decodes(results[4], std::vector<std::int32_t>{0x01010101});
    check_fails(results[5]);
    CHECK(results[0].first.category() == coropipe::category());
  }
}

TEST_CASE("a channel of one type read as another: decode_failed where the sizes cannot match, never UB") {
  SUBCASE("std::string read as std::int64_t") {
    std::int64_t v = 0x1122334455667788;
    auto results = send_as_receive_as<std::string, std::int64_t>(
        {"hello", "", "123456789", std::string(7, '\0'), bytes_of(&v, sizeof v), "after"});
    REQUIRE(results.size() == 6);
    check_fails(results[0]);
    check_fails(results[1]);
    check_fails(results[2]);
    check_fails(results[3]);
    check_decodes(results[4], v);  // exactly 8 bytes: an int64 (only the size can be checked)
    check_fails(results[5]);
  }
  SUBCASE("std::int64_t read as std::int32_t, and back") {
    auto wide = send_as_receive_as<std::int64_t, std::int32_t>({1, 2});
    REQUIRE(wide.size() == 2);
    check_fails(wide[0]);
    check_fails(wide[1]);
    auto narrow = send_as_receive_as<std::int32_t, std::int64_t>({1, 2, 3});
    REQUIRE(narrow.size() == 3);
    for (const auto& r : narrow) check_fails(r);
  }
  SUBCASE("a struct read as a vector of something that does not divide it, or as a shorter array") {
    auto as_vector = send_as_receive_as<std::array<char, 3>, std::vector<std::int32_t>>({{'a', 'b', 'c'}});
    REQUIRE(as_vector.size() == 1);
    check_fails(as_vector[0]);
    auto as_array = send_as_receive_as<point, std::array<std::byte, 15>>({{1, 2, 3.0}});
    REQUIRE(as_array.size() == 1);
    check_fails(as_array[0]);
    auto as_wide_vector = send_as_receive_as<std::vector<std::int32_t>, std::vector<std::int64_t>>({{1, 2, 3}, {1, 2}});
    REQUIRE(as_wide_vector.size() == 2);
    check_fails(as_wide_vector[0]);
    CHECK_FALSE(as_wide_vector[1].first);  // 8 bytes: one int64
  }
  SUBCASE("anything read as bytes is its bytes") {
    const point pt{1, 2, 3.0};
    auto as_string = send_as_receive_as<point, std::string>({pt});
    REQUIRE(as_string.size() == 1);
    check_decodes(as_string[0], bytes_of(&pt, sizeof pt));
  }
}

// --- End of stream, completion tokens ------------------------------------------------------

TEST_CASE("end of stream: an empty optional again and again, in every completion style") {
  asio::io_context io;
  auto cp = make_channel_pipe<point>(io);
  const point pt{3, 4, 5.0};
  // Sending with a callback.
  int sent = 0;
  cp.tx.async_send(pt, [&](coropipe::error_code e) {
    CHECK_FALSE(e);
    ++sent;
  });
  CHECK(sent == 0);  // never inside the initiating call
  bool closed = false;
  cp.tx.async_close([&](coropipe::error_code e) {
    CHECK_FALSE(e);
    closed = true;
  });
  io.run();
  CHECK(sent == 1);
  CHECK(closed);

  run(io, [&]() -> awaitable<void> {
    CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<point>(pt));
    for (int i = 0; i < 3; ++i) CHECK_FALSE((co_await cp.rx.async_receive(use_awaitable)).has_value());
    auto [ec, value] = co_await cp.rx.async_receive(as_tuple);
    CHECK_FALSE(ec);
    CHECK_FALSE(value.has_value());
    coropipe::error_code rec = asio::error::eof;
    auto redirected = co_await cp.rx.async_receive(asio::redirect_error(use_awaitable, rec));
    CHECK_FALSE(rec);
    CHECK_FALSE(redirected.has_value());
    // Into an object: false, and the object unchanged.
    point out{7, 7, 7.0};
    CHECK_FALSE(co_await cp.rx.async_receive(out, use_awaitable));
    CHECK(out == point{7, 7, 7.0});
    auto [ec2, got] = co_await cp.rx.async_receive(out, as_tuple);
    CHECK_FALSE(ec2);
    CHECK_FALSE(got);
    CHECK(out == point{7, 7, 7.0});
  }());

  // Callbacks.
  int calls = 0;
  point out{8, 8, 8.0};
  cp.rx.async_receive([&](coropipe::error_code e, std::optional<point> v) {
    ++calls;
    CHECK_FALSE(e);
    CHECK_FALSE(v.has_value());
    cp.rx.async_receive(out, [&](coropipe::error_code e2, bool got) {  // one receive at a time
      ++calls;
      CHECK_FALSE(e2);
      CHECK_FALSE(got);
    });
  });
  CHECK(calls == 0);
  io.restart();
  io.run();
  CHECK(calls == 2);
  CHECK(out == point{8, 8, 8.0});
}

TEST_CASE("errors as values: as_tuple and redirect_error for framing errors and broken pipes") {
  asio::io_context io;
  SUBCASE("a frame cut short by the end of the stream: truncated_message") {
    auto p = coropipe::pipe();
    coropipe::channel<std::string> rx(coropipe::attach(io, std::move(p.read_end)));
    write_raw(p.write_end.get(), frame_bytes("whole"));
    write_raw(p.write_end.get(), frame_bytes("cut short").substr(0, 7));
    p.write_end.reset();
    run(io, [&]() -> awaitable<void> {
      auto [ec, value] = co_await rx.async_receive(as_tuple);
      CHECK_FALSE(ec);
      CHECK(value == std::optional<std::string>("whole"));
      std::tie(ec, value) = co_await rx.async_receive(as_tuple);
      CHECK(ec == errc::truncated_message);
      CHECK_FALSE(value.has_value());
      coropipe::error_code rec;
      std::string out = "unchanged";
      const bool got = co_await rx.async_receive(out, asio::redirect_error(use_awaitable, rec));
      CHECK(rec == errc::truncated_message);
      CHECK_FALSE(got);
    }());
  }
  SUBCASE("a larger frame than the receiver accepts: message_too_large") {
    coropipe::framed_options opts;
    opts.max_message_size = 8;
    auto cp = make_channel_pipe<std::vector<std::int32_t>>(io, opts);
    run(io, [&]() -> awaitable<void> {
      const std::vector<std::int32_t> fits{1, 2}, too_large{1, 2, 3};
      co_await cp.tx.async_send(fits, use_awaitable);
      co_await cp.tx.async_send(too_large, use_awaitable);
      CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<std::vector<std::int32_t>>(fits));
      auto [ec, value] = co_await cp.rx.async_receive(as_tuple);
      CHECK(ec == errc::message_too_large);
      CHECK_FALSE(value.has_value());
    }());
  }
  SUBCASE("sending to a pipe whose reader is gone: broken_pipe") {
    auto p = coropipe::pipe();
    coropipe::channel<std::string> tx(coropipe::attach(io, std::move(p.write_end)));
    p.read_end.reset();
    run(io, [&]() -> awaitable<void> {
      auto [ec] = co_await tx.async_send("queued", as_tuple);  // queued; the write fails behind it
      CHECK_FALSE(ec);
      std::tie(ec) = co_await tx.async_flush(as_tuple);
      CHECK(ec == asio::error::broken_pipe);
      std::tie(ec) = co_await tx.async_send("again", as_tuple);
      CHECK(ec == asio::error::broken_pipe);
      coropipe::error_code rec;
      co_await tx.async_send(pattern(100000, 1), asio::redirect_error(use_awaitable, rec));
      CHECK(rec == asio::error::broken_pipe);
      coropipe::error_code thrown;
      try {
        co_await tx.async_send("thrown", use_awaitable);
      } catch (const coropipe::system_error& e) {
        thrown = e.code();
      }
      CHECK(thrown == asio::error::broken_pipe);
    }());
    coropipe::error_code cb_ec;
    tx.async_send("callback", [&](coropipe::error_code e) { cb_ec = e; });
    io.restart();
    io.run();
    CHECK(cb_ec == asio::error::broken_pipe);
  }
}

TEST_CASE("a channel over an existing framed_stream, and its accessors") {
  asio::io_context io;
  auto p = coropipe::pipe();
  coropipe::framed_options opts;
  opts.send_buffer_size = 4096;
  coropipe::framed_stream<> fs(coropipe::attach(io, std::move(p.write_end)), opts);
  coropipe::channel<std::string> tx(std::move(fs));
  coropipe::channel<std::string> rx(coropipe::attach(io, std::move(p.read_end)));
  CHECK(tx.framed().options().send_buffer_size == 4096);
  CHECK(tx.get_executor() == asio::any_io_executor(io.get_executor()));
  run(io, [&]() -> awaitable<void> {
    co_await tx.async_send("via framed_stream", use_awaitable);
    // The message layer underneath is shared: a raw frame in between.
    co_await tx.framed().async_send(asio::buffer(std::string_view("raw")), use_awaitable);
    co_await tx.async_flush(use_awaitable);
    CHECK(tx.framed().pending_bytes() == 0);
    CHECK(co_await rx.async_receive(use_awaitable) == std::optional<std::string>("via framed_stream"));
    auto raw = co_await rx.framed().async_receive(use_awaitable);
    REQUIRE(raw.has_value());
    CHECK(bytes_of(raw->data(), raw->size()) == "raw");
  }());
}

// --- Receiving into an object ----------------------------------------------------------------

TEST_CASE("async_receive(out&) reuses the same object and keeps its capacity") {
  asio::io_context io;
  SUBCASE("std::string") {
    auto cp = make_channel_pipe<std::string>(io);
    const std::vector<std::string> msgs{pattern(1000, 1), pattern(500, 2), pattern(1000, 3), "", "x",
                                        pattern(999, 4)};
    run(io, [&]() -> awaitable<void> {
      for (const auto& m : msgs) co_await cp.tx.async_send(m, use_awaitable);
      co_await cp.tx.async_close(use_awaitable);
      std::string out;
      REQUIRE(co_await cp.rx.async_receive(out, use_awaitable));
      CHECK(out == msgs[0]);
      const char* data = out.data();
      const std::size_t capacity = out.capacity();
      for (std::size_t i = 1; i < msgs.size(); ++i) {
        CAPTURE(i);
        REQUIRE(co_await cp.rx.async_receive(out, use_awaitable));
        CHECK(out == msgs[i]);
        CHECK(out.data() == data);  // no reallocation
        CHECK(out.capacity() == capacity);
      }
      CHECK_FALSE(co_await cp.rx.async_receive(out, use_awaitable));
      CHECK(out == msgs.back());  // unchanged at the end
      CHECK(out.data() == data);
    }());
  }
  SUBCASE("std::vector<std::int32_t>, std::vector<std::byte>, as_tuple and callbacks") {
    auto ints = make_channel_pipe<std::vector<std::int32_t>>(io);
    auto bytes = make_channel_pipe<std::vector<std::byte>>(io);
    std::vector<std::int32_t> big(4000);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::int32_t>(i);
    const std::vector<std::vector<std::int32_t>> int_msgs{big, {1, 2, 3}, {}, std::vector<std::int32_t>(4000, -1)};
    run(io, [&]() -> awaitable<void> {
      for (const auto& m : int_msgs) co_await ints.tx.async_send(m, use_awaitable);
      std::vector<std::int32_t> out;
      REQUIRE(co_await ints.rx.async_receive(out, use_awaitable));
      const auto* data = out.data();
      const std::size_t capacity = out.capacity();
      CHECK(capacity >= 4000);
      for (std::size_t i = 0; i < int_msgs.size(); ++i) {
        CAPTURE(i);
        if (i > 0) {
          auto [ec, got] = co_await ints.rx.async_receive(out, as_tuple);
          CHECK_FALSE(ec);
          REQUIRE(got);
        }
        CHECK((out == int_msgs[i]));
        CHECK(out.data() == data);
        CHECK(out.capacity() == capacity);
      }
    }());

    std::vector<std::byte> out;
    const std::vector<std::byte> first = byte_vector(pattern(3000, 5)), second = byte_vector("short");
    run(io, [&]() -> awaitable<void> {
      co_await bytes.tx.async_send(first, use_awaitable);
      co_await bytes.tx.async_send(second, use_awaitable);
      co_await bytes.tx.async_close(use_awaitable);
    }());
    int calls = 0;
    const std::byte* data = nullptr;
    bytes.rx.async_receive(out, [&](coropipe::error_code e, bool got) {
      ++calls;
      CHECK_FALSE(e);
      CHECK(got);
      CHECK((out == first));
      data = out.data();
      bytes.rx.async_receive(out, [&](coropipe::error_code e2, bool got2) {
        ++calls;
        CHECK_FALSE(e2);
        CHECK(got2);
        CHECK((out == second));
        CHECK(out.data() == data);
        bytes.rx.async_receive(out, [&](coropipe::error_code e3, bool got3) {
          ++calls;
          CHECK_FALSE(e3);
          CHECK_FALSE(got3);
          CHECK((out == second));
        });
      });
    });
    io.restart();
    io.run();
    CHECK(calls == 3);
  }
  SUBCASE("a user type") {
    auto cp = make_channel_pipe<person>(io);
    const std::vector<person> msgs{{pattern(100, 1), std::vector<std::int32_t>(100, 1)}, {"ab", {2}}, {"", {}}};
    run(io, [&]() -> awaitable<void> {
      for (const auto& m : msgs) co_await cp.tx.async_send(m, use_awaitable);
      person out;
      REQUIRE(co_await cp.rx.async_receive(out, use_awaitable));
      const char* name = out.name.data();
      const auto* scores = out.scores.data();
      for (std::size_t i = 1; i < msgs.size(); ++i) {
        REQUIRE(co_await cp.rx.async_receive(out, use_awaitable));
        CHECK(out == msgs[i]);
        CHECK(out.name.data() == name);
        CHECK(out.scores.data() == scores);
      }
    }());
  }
}

// --- Cancellation ------------------------------------------------------------------------------

TEST_CASE("a receive with a timeout gives the timer, and the message that arrives later is received whole") {
  asio::io_context io;
  auto p = coropipe::pipe();
  const int rfd = p.read_end.get();
  unique_fd w = std::move(p.write_end);
  coropipe::channel<std::vector<std::int32_t>> rx(coropipe::attach(io, std::move(p.read_end)));
  std::vector<std::int32_t> value(10000);  // 40000 bytes: the frame fits in the pipe
  for (std::size_t i = 0; i < value.size(); ++i) value[i] = static_cast<std::int32_t>(i * 3 + 1);
  const std::string frame = frame_bytes(bytes_of(value.data(), value.size() * sizeof(std::int32_t)));
  const std::vector<std::int32_t> next{7, 8, 9};
  const std::string next_frame = frame_bytes(bytes_of(next.data(), next.size() * sizeof(std::int32_t)));

  std::size_t already = 0;  // bytes of the frame there before the timeouts
  SUBCASE("nothing there yet") { already = 0; }
  SUBCASE("half a header there") { already = 2; }
  SUBCASE("the header there") { already = 4; }
  SUBCASE("half the payload there") { already = 4 + 20000; }
  CAPTURE(already);
  write_raw(w.get(), std::string_view(frame).substr(0, already));

  run(io, [&]() -> awaitable<void> {
    asio::steady_timer t(io);
    // Several timeouts in a row, in both forms of receive.
    for (int i = 0; i < 3; ++i) {
      t.expires_after(10ms);
      auto r = co_await (rx.async_receive(use_awaitable) || t.async_wait(use_awaitable));
      CHECK(r.index() == 1);
    }
    std::vector<std::int32_t> out{1};
    t.expires_after(10ms);
    auto r = co_await (rx.async_receive(out, use_awaitable) || t.async_wait(use_awaitable));
    CHECK(r.index() == 1);
    CHECK(out == std::vector<std::int32_t>{1});
    t.expires_after(10ms);
    auto r2 = co_await (rx.async_receive(as_tuple) || t.async_wait(use_awaitable));
    CHECK(r2.index() == 1);
  }());
  CHECK(readable(rfd) == 0);  // what was there has been read into the channel's buffer

  // The rest arrives while a new receive waits: the value comes whole.
  std::optional<std::vector<std::int32_t>> got;
  run_all(io, [&]() -> awaitable<void> { got = co_await rx.async_receive(use_awaitable); }(),
          [&]() -> awaitable<void> {
            co_await asio::post(io, use_awaitable);  // the receive is waiting now
            write_raw(w.get(), std::string_view(frame).substr(already));
            write_raw(w.get(), next_frame);
          }());
  REQUIRE(got.has_value());
  CHECK(got->size() == value.size());
  CHECK((*got == value));
  CHECK(run(io, rx.async_receive(use_awaitable)) == std::optional<std::vector<std::int32_t>>(next));
  w.reset();
  CHECK_FALSE(run(io, rx.async_receive(use_awaitable)).has_value());
}

TEST_CASE("a timed-out receive between two channels: the value sent after the timeout arrives") {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  coropipe::channel<record> a(coropipe::attach(io, std::move(d.first)));
  coropipe::channel<record> b(coropipe::attach(io, std::move(d.second)));
  run(io, [&]() -> awaitable<void> {
    asio::steady_timer t(io);
    for (std::uint32_t i = 0; i < 5; ++i) {
      t.expires_after(5ms);
      auto r = co_await (b.async_receive(use_awaitable) || t.async_wait(use_awaitable));
      CHECK(r.index() == 1);
      co_await a.async_send(make_record(1, i), use_awaitable);
      t.expires_after(10s);
      auto r2 = co_await (b.async_receive(use_awaitable) || t.async_wait(use_awaitable));
      REQUIRE(r2.index() == 0);
      CHECK(std::get<0>(r2) == std::optional<record>(make_record(1, i)));
    }
  }());
}

// --- fork_with_channel ----------------------------------------------------------------------------

// child_channel<ToChild, FromChild> is the child's end of fork_with_channel<ToChild, FromChild>:
// it sends FromChild and receives ToChild.
static_assert(std::is_same_v<coropipe::child_channel<int, std::string>, coropipe::channel<std::string, int>>);
static_assert(std::is_same_v<coropipe::child_channel<std::string>, coropipe::channel<std::string>>);

TEST_CASE("fork_with_channel: the child's child_channel<ToChild, FromChild> receives ToChild and sends FromChild") {
  asio::io_context io;
  // Not a structured binding: clang 14 cannot capture those in the lambda below.
  auto made = coropipe::fork_with_channel<std::int32_t, std::string>(
      io, [](child_context&, coropipe::child_channel<std::int32_t, std::string> to_parent) -> awaitable<int> {
        while (std::optional<std::int32_t> n = co_await to_parent.async_receive(use_awaitable))
          co_await to_parent.async_send(std::to_string(*n * *n), use_awaitable);
        co_return 0;
      });
  auto& ch = made.channel;
  auto& kid = made.child;
  static_assert(std::is_same_v<decltype(made.channel), coropipe::channel<std::int32_t, std::string>>);  // the parent's
  run(io, [&]() -> awaitable<void> {
    const std::array<std::int32_t, 3> numbers{3, 12, -7};
    for (std::int32_t n : numbers) {
      co_await ch.async_send(n, use_awaitable);
      CHECK(co_await ch.async_receive(use_awaitable) == std::optional<std::string>(std::to_string(n * n)));
    }
    co_await ch.async_close(use_awaitable);
    CHECK(co_await kid.async_wait(use_awaitable) == exit_status::from_code(0));
  }());
}

TEST_CASE("fork_with_channel: the child transforms what it receives, and the parent sees end of stream after it exits") {
  asio::io_context io;
  auto cc = coropipe::fork_with_channel<std::string>(
      io, [](child_context&, coropipe::child_channel<std::string> ch) -> awaitable<int> {
        int n = 0;
        while (std::optional<std::string> s = co_await ch.async_receive(use_awaitable)) {
          for (char& c : *s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
          co_await ch.async_send(*s, use_awaitable);
          ++n;
        }
        co_return n;  // the parent stopped sending
      });
  REQUIRE(cc.child.valid());
  CHECK(cc.child.pid() > 0);
  run(io, [&]() -> awaitable<void> {
    // One at a time...
    for (int i = 0; i < 20; ++i) {
      co_await cc.channel.async_send("spam " + std::to_string(i), use_awaitable);
      CHECK(co_await cc.channel.async_receive(use_awaitable) == std::optional<std::string>("SPAM " + std::to_string(i)));
    }
    // ...and many in flight, one of them large.
    // (No ?: creating temporaries in a coroutine's statements: GCC 12 miscompiles it.)
    const std::string big(200000, 'q'), big_upper(200000, 'Q'), eggs = "eggs", eggs_upper = "EGGS";
    for (int i = 0; i < 20; ++i) {
      const std::string& m = i == 10 ? big : eggs;
      co_await cc.channel.async_send(m, use_awaitable);
    }
    for (int i = 0; i < 20; ++i) {
      auto s = co_await cc.channel.async_receive(use_awaitable);
      REQUIRE(s.has_value());
      const std::string& expected = i == 10 ? big_upper : eggs_upper;
      CHECK((*s == expected));
    }
    // The parent stops sending: the child's loop ends and it exits.
    co_await cc.channel.async_flush(use_awaitable);
    REQUIRE(::shutdown(cc.channel.framed().next_layer().native_handle(), SHUT_WR) == 0);
    const exit_status st = co_await cc.child.async_wait(use_awaitable);
    CHECK(st == exit_status::from_code(40));
    // It has exited: its end is closed.
    CHECK_FALSE((co_await cc.channel.async_receive(use_awaitable)).has_value());
    CHECK_FALSE((co_await cc.channel.async_receive(use_awaitable)).has_value());
  }());
}

namespace {
struct job {
  std::int64_t first;
  std::int32_t count;  // < 0: stop
};
} // namespace

TEST_CASE("fork_with_channel: different types each way, arguments, fork_options, awaitable<void>") {
  asio::io_context io;
  auto cc = coropipe::fork_with_channel<job, std::vector<std::int64_t>>(
      io, coropipe::fork_options{},
      [](child_context&, coropipe::child_channel<job, std::vector<std::int64_t>> ch, std::int64_t factor,
         std::string greeting) -> awaitable<void> {
        co_await ch.async_send(std::vector<std::int64_t>(greeting.begin(), greeting.end()), use_awaitable);
        while (std::optional<job> j = co_await ch.async_receive(use_awaitable)) {
          if (j->count < 0) co_return;
          std::vector<std::int64_t> v;
          for (std::int32_t k = 0; k < j->count; ++k) v.push_back((j->first + k) * factor);
          co_await ch.async_send(v, use_awaitable);
        }
      },
      std::int64_t{3}, std::string("hi"));
  run(io, [&]() -> awaitable<void> {
    const std::vector<std::int64_t> greeting{'h', 'i'};
    CHECK(co_await cc.channel.async_receive(use_awaitable) == std::optional<std::vector<std::int64_t>>(greeting));
    const std::array<std::int32_t, 4> counts{5, 0, 100000, 1};
    for (std::int32_t count : counts) {
      CAPTURE(count);
      co_await cc.channel.async_send(job{10, count}, use_awaitable);
      auto v = co_await cc.channel.async_receive(use_awaitable);
      REQUIRE(v.has_value());
      REQUIRE(v->size() == static_cast<std::size_t>(count));
      bool all_right = true;
      for (std::size_t k = 0; k < v->size(); ++k) all_right = all_right && (*v)[k] == (10 + static_cast<std::int64_t>(k)) * 3;
      CHECK(all_right);
    }
    co_await cc.channel.async_send(job{0, -1}, use_awaitable);
    // The child returns by itself: end of stream, exit code 0.
    auto end = co_await cc.channel.async_receive(use_awaitable);
    CHECK_FALSE(end.has_value());
    const exit_status st = co_await cc.child.async_wait(use_awaitable);
    CHECK(st == exit_status::from_code(0));
  }());
}


TEST_CASE("fork_with_channel: the parent's channel destroyed with values queued: the child gets them all, then the end") {
  asio::io_context io;
  constexpr std::uint32_t count = 2000;
  auto cc = coropipe::fork_with_channel<record, std::int32_t>(
      io, [](child_context&, coropipe::child_channel<record, std::int32_t> ch) -> awaitable<int> {
        std::uint32_t expected = 0;
        while (std::optional<record> r = co_await ch.async_receive(use_awaitable)) {
          if (*r != make_record(2, expected)) co_return 1;  // wrong or out of order
          ++expected;
        }
        co_return static_cast<int>(expected / 10);  // 200: all of them
      });
  {
    coropipe::channel<record, std::int32_t> ch = std::move(cc.channel);
    run(io, [&]() -> awaitable<void> {
      for (std::uint32_t i = 0; i < count; ++i) co_await ch.async_send(make_record(2, i), use_awaitable);
    }());
  }  // destroyed: what is still queued is written in the background, then the end
  const exit_status st = run(io, cc.child.async_wait(use_awaitable));
  CHECK(st == exit_status::from_code(static_cast<int>(count / 10)));
}

// --- Many senders --------------------------------------------------------------------------------

TEST_CASE("many concurrent senders on one channel: every struct arrives, none interleaved, in order per sender") {
  asio::io_context io;
  auto cp = make_channel_pipe<record>(io);
  constexpr std::uint32_t senders = 8, per_sender = 1000;
  auto sender = [&](std::uint32_t s) -> awaitable<void> {
    for (std::uint32_t i = 0; i < per_sender; ++i) {
      const record r = make_record(s, i);
      switch (s % 3) {
      case 0:
        co_await cp.tx.async_send(r, use_awaitable);
        break;
      case 1: {
        auto [ec] = co_await cp.tx.async_send(r, as_tuple);
        REQUIRE_FALSE(ec);
        break;
      }
      default: {  // the generic (composed operation) path
        coropipe::error_code ec;
        co_await cp.tx.async_send(r, asio::redirect_error(use_awaitable, ec));
        REQUIRE_FALSE(ec);
        break;
      }
      }
    }
  };
  std::array<std::uint32_t, senders> next{};
  std::uint32_t received = 0, bad = 0;
  auto receiver = [&]() -> awaitable<void> {
    record r{};
    while (received < senders * per_sender) {
      // Alternate the two forms of receive.
      if (received % 2 == 0) {
        REQUIRE(co_await cp.rx.async_receive(r, use_awaitable));
      } else {
        std::optional<record> v = co_await cp.rx.async_receive(use_awaitable);
        REQUIRE(v.has_value());
        r = *v;
      }
      REQUIRE(r.sender < senders);
      REQUIRE(r.seq == next[r.sender]);  // in order per sender, none lost, none twice
      if (r != make_record(r.sender, r.seq)) ++bad;
      ++next[r.sender];
      ++received;
    }
  };
  std::vector<awaitable<void>> all;
  for (std::uint32_t s = 0; s < senders; ++s) all.push_back(sender(s));
  all.push_back(receiver());
  run_all(io, std::move(all), 120s);
  CHECK(received == senders * per_sender);
  CHECK(bad == 0);
  for (std::uint32_t s = 0; s < senders; ++s) CHECK(next[s] == per_sender);
  run(io, cp.tx.async_close(use_awaitable));
  CHECK_FALSE(run(io, cp.rx.async_receive(use_awaitable)).has_value());
}

TEST_CASE("many concurrent senders of vectors, some larger than copy_threshold: none interleaved") {
  asio::io_context io;
  auto cp = make_channel_pipe<std::vector<std::uint32_t>>(io);
  constexpr std::uint32_t senders = 8, per_sender = 300;
  const std::size_t threshold_elements = cp.tx.framed().options().copy_threshold / sizeof(std::uint32_t);
  auto message = [&](std::uint32_t s, std::uint32_t i) {
    const std::size_t n = i % 25 == 3 ? threshold_elements + 1 + (i * 37 + s * 101) % 8000 : 2 + (i * 13 + s) % 200;
    std::vector<std::uint32_t> m(n);
    m[0] = s;
    m[1] = i;
    for (std::size_t k = 2; k < n; ++k) m[k] = s * 7919u + i * 31u + static_cast<std::uint32_t>(k);
    return m;
  };
  auto sender = [&](std::uint32_t s) -> awaitable<void> {
    for (std::uint32_t i = 0; i < per_sender; ++i) {
      if (s % 2 == 0) {
        co_await cp.tx.async_send(message(s, i), use_awaitable);
      } else {
        coropipe::error_code ec;
        co_await cp.tx.async_send(message(s, i), asio::redirect_error(use_awaitable, ec));
        REQUIRE_FALSE(ec);
      }
    }
  };
  std::array<std::uint32_t, senders> next{};
  std::uint32_t received = 0, bad = 0, large = 0;
  auto receiver = [&]() -> awaitable<void> {
    std::vector<std::uint32_t> m;
    while (received < senders * per_sender) {
      REQUIRE(co_await cp.rx.async_receive(m, use_awaitable));
      REQUIRE(m.size() >= 2);
      REQUIRE(m[0] < senders);
      REQUIRE(m[1] == next[m[0]]);
      if (m != message(m[0], m[1])) ++bad;
      if (m.size() > threshold_elements) ++large;
      ++next[m[0]];
      ++received;
    }
  };
  std::vector<awaitable<void>> all;
  for (std::uint32_t s = 0; s < senders; ++s) all.push_back(sender(s));
  all.push_back(receiver());
  run_all(io, std::move(all), 120s);
  CHECK(received == senders * per_sender);
  CHECK(bad == 0);
  CHECK(large == senders * (per_sender / 25));
}

// --- Backpressure ------------------------------------------------------------------------------

TEST_CASE("backpressure: a sender to a reader that does not read waits with bounded memory, and all arrive later") {
  asio::io_context io;
  auto cp = make_channel_pipe<blob>(io);
  const coropipe::framed_options& o = cp.tx.framed().options();
  constexpr std::uint32_t count = 2000;  // 2 MB: far more than the pipe and the queue hold
  constexpr std::size_t frame_size = sizeof(blob) + 4;
  std::uint32_t sent = 0;
  std::size_t max_pending = 0, max_memory = 0;
  bool sender_done = false;
  std::exception_ptr sender_error;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        for (std::uint32_t i = 0; i < count; ++i) {
          co_await cp.tx.async_send(make_blob(i), use_awaitable);
          ++sent;
          max_pending = std::max(max_pending, cp.tx.framed().pending_bytes());
          max_memory = std::max(max_memory, cp.tx.framed().buffer_memory());
        }
      },
      [&](std::exception_ptr e) {
        sender_error = e;
        sender_done = true;
      });
  // Run everything that can run: the pipe fills, the queue fills, and the
  // sender waits for room. Nothing reads.
  while (io.poll() != 0) {
  }
  const std::size_t pipe_bytes = readable(cp.rfd);
  INFO("sent " << sent << ", pending " << cp.tx.framed().pending_bytes() << ", in the pipe " << pipe_bytes);
  CHECK_FALSE(sender_done);
  CHECK(sent > 0);
  CHECK(sent < count);
  CHECK(pipe_bytes > 0);
  CHECK(pipe_bytes <= coropipe::pipe_capacity(cp.wfd));
  // The queue stopped at its limit (plus at most one message)...
  CHECK(cp.tx.framed().pending_bytes() >= o.send_buffer_size);
  CHECK(max_pending <= o.send_buffer_size + frame_size);
  // ...so what was sent is what the pipe and the queue hold: nothing more.
  CHECK(std::size_t{sent} * frame_size == pipe_bytes + cp.tx.framed().pending_bytes());
  CHECK(max_memory <= std::size_t{1} << 20);
  // Still waiting, not spinning: nothing more happens.
  const std::uint32_t sent_before = sent;
  CHECK(io.poll() == 0);
  CHECK(sent == sent_before);

  // Now read: everything arrives, in order, and the sender finishes.
  run(io, [&]() -> awaitable<void> {
    blob b{};
    for (std::uint32_t i = 0; i < count; ++i) {
      REQUIRE(co_await cp.rx.async_receive(b, use_awaitable));
      REQUIRE(blob_ok(b, i));
    }
  }());
  coropipe_test::run_until(io, sender_done, 10s);
  CHECK(sender_done);
  CHECK_FALSE(sender_error);
  CHECK(sent == count);
  CHECK(max_pending <= o.send_buffer_size + frame_size);
  run(io, cp.tx.async_close(use_awaitable));
  CHECK_FALSE(run(io, cp.rx.async_receive(use_awaitable)).has_value());
}

// --- Sends started ahead of time -------------------------------------------------------------

TEST_CASE("deferred sends created ahead of time each carry their own value") {
  asio::io_context io;
  auto cp = make_channel_pipe<std::string>(io);
  auto first = cp.tx.async_send("first", coropipe::compat::deferred);
  auto second = cp.tx.async_send("second", coropipe::compat::deferred);
  run(io, [&]() -> awaitable<void> {
    co_await std::move(first)(use_awaitable);
    co_await std::move(second)(use_awaitable);
    CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<std::string>("first"));
    CHECK(co_await cp.rx.async_receive(use_awaitable) == std::optional<std::string>("second"));
  }());
}

// BUG (include/coropipe/channel.hpp, channel::async_send, lines 199-204 and
// send_coro, lines 262-270): for use_awaitable and as_tuple(use_awaitable),
// Regression: async_send() once encoded into the channel's one scratch_
// buffer and returned a lazy awaitable that read scratch_ only when resumed,
// so a send created in between overwrote it. The bytes now go with each
// operation.
TEST_CASE("two use_awaitable sends created before either is awaited each send their own value") {
  asio::io_context io;
  auto cp = make_channel_pipe<std::string>(io);
  SUBCASE("awaited in turn") {
    run(io, [&]() -> awaitable<void> {
      auto first = cp.tx.async_send("first", use_awaitable);
      auto second = cp.tx.async_send("second", as_tuple);
      co_await std::move(first);
      co_await std::move(second);
      auto one = co_await cp.rx.async_receive(use_awaitable);
      auto two = co_await cp.rx.async_receive(use_awaitable);
      REQUIRE(one.has_value());
      REQUIRE(two.has_value());
      CHECK(*one == "first");
      CHECK(*two == "second");
    }());
  }
  SUBCASE("awaited together with &&") {
    run(io, [&]() -> awaitable<void> {
      co_await (cp.tx.async_send("first", use_awaitable) && cp.tx.async_send("second", use_awaitable));
      std::vector<std::string> got;
      for (int i = 0; i < 2; ++i) {
        auto s = co_await cp.rx.async_receive(use_awaitable);
        REQUIRE(s.has_value());
        got.push_back(*s);
      }
      std::sort(got.begin(), got.end());
      CHECK(got[0] == "first");
      CHECK(got[1] == "second");
    }());
  }
  SUBCASE("a co_spawn()ed send, then a send with a callback") {
    bool spawned_done = false;
    asio::co_spawn(io, cp.tx.async_send("spawned", use_awaitable), [&](std::exception_ptr e) {
      CHECK_FALSE(e);
      spawned_done = true;
    });
    bool callback_done = false;
    cp.tx.async_send("callback", [&](coropipe::error_code e) {
      CHECK_FALSE(e);
      callback_done = true;
    });
    run(io, [&]() -> awaitable<void> {
      std::vector<std::string> got;
      for (int i = 0; i < 2; ++i) {
        auto s = co_await cp.rx.async_receive(use_awaitable);
        REQUIRE(s.has_value());
        got.push_back(*s);
      }
      std::sort(got.begin(), got.end());
      CHECK(got[0] == "callback");
      CHECK(got[1] == "spawned");
    }());
    CHECK(spawned_done);
    CHECK(callback_done);
  }
}

TEST_CASE("a bool is decoded only from the bytes 0 and 1") {
  asio::io_context io;
  auto cp = make_channel_pipe<std::uint8_t, bool>(io);
  run(io, [&]() -> awaitable<void> {
    for (std::uint8_t b : {std::uint8_t{1}, std::uint8_t{2}, std::uint8_t{0}, std::uint8_t{255}})
      co_await cp.tx.async_send(b, use_awaitable);
    auto [ec1, v1] = co_await cp.rx.async_receive(as_tuple);
    CHECK_FALSE(ec1);
    CHECK(v1 == std::optional<bool>(true));
    auto [ec2, v2] = co_await cp.rx.async_receive(as_tuple);
    CHECK(ec2 == errc::decode_failed);
    CHECK_FALSE(v2.has_value());
    auto [ec3, v3] = co_await cp.rx.async_receive(as_tuple);
    CHECK_FALSE(ec3);
    CHECK(v3 == std::optional<bool>(false));
    auto [ec4, v4] = co_await cp.rx.async_receive(as_tuple);
    CHECK(ec4 == errc::decode_failed);
  }());
}

TEST_CASE("try_receive: values that have arrived, would_block, decode_failed and going on, the end") {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  coropipe::channel<std::string, std::int32_t> a(coropipe::attach(io, std::move(d.first)));
  coropipe::channel<std::int32_t, std::string> b(coropipe::attach(io, std::move(d.second)));
  std::int32_t v = 0;
  coropipe::error_code ec;
  CHECK_FALSE(a.try_receive(v, ec));
  CHECK(ec == asio::error::would_block);
  run(io, [&]() -> awaitable<void> {
    co_await b.async_send(41, use_awaitable);
    co_await b.framed().async_send(asio::buffer("xy", 2), use_awaitable);  // no int32
    co_await b.async_send(42, use_awaitable);
    co_await b.async_close(use_awaitable);
  }());
  REQUIRE(a.try_receive(v, ec));
  CHECK(v == 41);
  CHECK_FALSE(a.try_receive(v, ec));
  CHECK(ec == errc::decode_failed);
  REQUIRE(a.try_receive(v, ec));
  CHECK(v == 42);
  CHECK_FALSE(a.try_receive(v, ec));
  CHECK(!ec);  // end of stream
}
