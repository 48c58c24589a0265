// SPDX-License-Identifier: BSL-1.0
#include <coropipe/frame.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/error.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

using coropipe::errc;
using coropipe::frame_buffer;
using coropipe::detail::send_queue;

namespace {

using bytes = std::vector<std::byte>;

bytes make_bytes(std::initializer_list<unsigned> values) {
  bytes out;
  for (unsigned v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

// A deterministic, non-periodic byte pattern (shifts and truncations show).
bytes pattern(std::size_t n, std::uint32_t seed) {
  bytes out(n);
  std::uint32_t x = seed * 2654435761U + 12345U;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    out[i] = static_cast<std::byte>(x >> 24);
  }
  return out;
}

std::string text(std::span<const std::byte> b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

bytes from_text(const std::string& s) {
  bytes out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

bytes header_of(std::uint64_t n) {
  std::array<std::byte, coropipe::max_frame_header_size> h{};
  const std::size_t len = coropipe::encode_frame_header(n, h);
  return bytes(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(len));
}

bytes frame_of(std::span<const std::byte> payload) {
  bytes out = header_of(payload.size());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void append(bytes& to, std::span<const std::byte> b) { to.insert(to.end(), b.begin(), b.end()); }

// What a frame_buffer makes of a stream fed in chunks of @p chunk bytes.
struct decoded {
  std::vector<bytes> payloads;
  coropipe::error_code error;  // from next()
  coropipe::error_code end;    // from finish()
  std::size_t max_capacity = 0;
};

decoded decode(frame_buffer& fb, std::span<const std::byte> stream, std::size_t chunk) {
  decoded out;
  std::size_t pos = 0;
  for (;;) {
    coropipe::error_code ec;
    while (auto msg = fb.next(ec)) out.payloads.emplace_back(msg->begin(), msg->end());
    if (ec) {
      out.error = ec;
      break;
    }
    if (pos == stream.size()) break;
    const auto room = fb.prepare();
    out.max_capacity = std::max(out.max_capacity, fb.capacity());
    REQUIRE(!room.empty());
    const std::size_t n = std::min({chunk, room.size(), stream.size() - pos});
    std::memcpy(room.data(), stream.data() + pos, n);
    fb.commit(n);
    pos += n;
  }
  out.end = fb.finish();
  return out;
}

std::optional<coropipe::frame_header> parse(const bytes& b, std::uint64_t max, coropipe::error_code& ec) {
  return coropipe::parse_frame_header(b, max, ec);
}

} // namespace

// --- encode_frame_header -----------------------------------------------------

TEST_CASE("encode_frame_header writes the multiprocessing.connection header byte for byte") {
  CHECK(header_of(0) == make_bytes({0, 0, 0, 0}));
  CHECK(header_of(6) == make_bytes({0x00, 0x00, 0x00, 0x06}));
  CHECK(header_of(0x1234) == make_bytes({0x00, 0x00, 0x12, 0x34}));
  CHECK(header_of(0x7fffffff) == make_bytes({0x7f, 0xff, 0xff, 0xff}));
  CHECK(header_of(0x80000000ULL) ==
        make_bytes({0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00}));
  CHECK(header_of(std::uint64_t{1} << 40) ==
        make_bytes({0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00}));
  CHECK(header_of(0x0102030405060708ULL) ==
        make_bytes({0xff, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08}));

  // send_bytes(b"Spam 0") puts 00 00 00 06 53 70 61 6d 20 30 on the wire.
  CHECK(frame_of(from_text("Spam 0")) == make_bytes({0x00, 0x00, 0x00, 0x06, 0x53, 0x70, 0x61, 0x6d, 0x20, 0x30}));
}

TEST_CASE("encode_frame_header returns the header length and writes nothing beyond it") {
  std::array<std::byte, coropipe::max_frame_header_size> h;
  h.fill(std::byte{0xaa});
  CHECK(coropipe::encode_frame_header(6, h) == 4);
  for (std::size_t i = 4; i < h.size(); ++i) CHECK(h[i] == std::byte{0xaa});
  CHECK(coropipe::encode_frame_header(0x7fffffff, h) == 4);
  CHECK(coropipe::encode_frame_header(0x80000000ULL, h) == 12);
  CHECK(coropipe::encode_frame_header(std::numeric_limits<std::uint64_t>::max(), h) == 12);
  CHECK(std::all_of(h.begin(), h.end(), [](std::byte b) { return b == std::byte{0xff}; }));
}

TEST_CASE("encode_frame_header is usable in constant expressions") {
  constexpr auto encoded = [] {
    std::array<std::byte, coropipe::max_frame_header_size> h{};
    const std::size_t n = coropipe::encode_frame_header(6, h);
    return std::pair{n, h};
  }();
  static_assert(encoded.first == 4);
  static_assert(encoded.second[3] == std::byte{6});
  CHECK(encoded.second[0] == std::byte{0});
}

// --- parse_frame_header ------------------------------------------------------

TEST_CASE("parse_frame_header: a partial header is not an error") {
  const bytes full = make_bytes({0x00, 0x00, 0x00, 0x06});
  for (std::size_t n = 0; n < 4; ++n) {
    CAPTURE(n);
    coropipe::error_code ec = errc::malformed_frame;  // cleared by the call
    const bytes part(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    CHECK_FALSE(parse(part, 100, ec).has_value());
    CHECK_FALSE(ec);
  }
  // -1 announces an 8-byte length: fewer than 12 bytes are still partial.
  const bytes big = make_bytes({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0});
  for (std::size_t n = 4; n < 12; ++n) {
    CAPTURE(n);
    coropipe::error_code ec = errc::message_too_large;
    const bytes part(big.begin(), big.begin() + static_cast<std::ptrdiff_t>(n));
    CHECK_FALSE(parse(part, std::uint64_t{1} << 40, ec).has_value());
    CHECK_FALSE(ec);
  }
}

TEST_CASE("parse_frame_header: 4-byte lengths up to the maximum") {
  coropipe::error_code ec = errc::malformed_frame;
  auto h = parse(make_bytes({0, 0, 0, 6, 0x53}), 100, ec);
  REQUIRE(h.has_value());
  CHECK_FALSE(ec);
  CHECK(h->header_size == 4);
  CHECK(h->payload_size == 6);

  h = parse(make_bytes({0, 0, 0, 0}), 0, ec);
  REQUIRE(h.has_value());
  CHECK(h->payload_size == 0);

  h = parse(make_bytes({0, 0, 0, 100}), 100, ec);  // exactly the maximum
  REQUIRE(h.has_value());
  CHECK(h->payload_size == 100);

  h = parse(make_bytes({0, 0, 0, 101}), 100, ec);
  CHECK_FALSE(h.has_value());
  CHECK(ec == errc::message_too_large);
  CHECK(ec.category() == coropipe::category());

  h = parse(make_bytes({0x7f, 0xff, 0xff, 0xff}), coropipe::default_max_message_size, ec);
  CHECK_FALSE(h.has_value());
  CHECK(ec == errc::message_too_large);

  h = parse(make_bytes({0x7f, 0xff, 0xff, 0xff}), 0x7fffffff, ec);
  REQUIRE(h.has_value());
  CHECK_FALSE(ec);
  CHECK(h->payload_size == 0x7fffffff);
}

TEST_CASE("parse_frame_header: a negative length other than -1 is malformed") {
  const std::vector<bytes> headers{
      make_bytes({0x80, 0x00, 0x00, 0x00}), make_bytes({0x80, 0x00, 0x00, 0x01}), make_bytes({0x80, 0xff, 0xff, 0xff}),
      make_bytes({0xfe, 0xff, 0xff, 0xff}), make_bytes({0xff, 0xff, 0xff, 0xfe}), make_bytes({0xff, 0xff, 0xff, 0x00}),
      make_bytes({0xff, 0x00, 0x00, 0x00})};
  for (bytes b : headers) {
    CAPTURE(std::to_integer<unsigned>(b[0]));
    CAPTURE(std::to_integer<unsigned>(b[3]));
    coropipe::error_code ec;
    CHECK_FALSE(parse(b, std::numeric_limits<std::uint64_t>::max(), ec).has_value());
    CHECK(ec == errc::malformed_frame);
    CHECK(ec.category() == coropipe::category());
    // More bytes do not change the verdict.
    b.resize(16, std::byte{0});
    CHECK_FALSE(parse(b, std::numeric_limits<std::uint64_t>::max(), ec).has_value());
    CHECK(ec == errc::malformed_frame);
  }
}

TEST_CASE("parse_frame_header: the 8-byte form") {
  coropipe::error_code ec;
  auto h = parse(make_bytes({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0, 0x42}), std::uint64_t{1} << 40, ec);
  REQUIRE(h.has_value());
  CHECK_FALSE(ec);
  CHECK(h->header_size == 12);
  CHECK(h->payload_size == 0x80000000ULL);

  h = parse(make_bytes({0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0, 0, 0, 0, 0}), std::uint64_t{1} << 40, ec);
  REQUIRE(h.has_value());
  CHECK(h->payload_size == std::uint64_t{1} << 40);

  // Python's recv_bytes accepts the 8-byte form for any length, small ones too.
  h = parse(make_bytes({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 5}), 100, ec);
  REQUIRE(h.has_value());
  CHECK_FALSE(ec);
  CHECK(h->header_size == 12);
  CHECK(h->payload_size == 5);

  h = parse(make_bytes({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 101}), 100, ec);
  CHECK_FALSE(h.has_value());
  CHECK(ec == errc::message_too_large);

  h = parse(make_bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}),
            coropipe::default_max_message_size, ec);
  CHECK_FALSE(h.has_value());
  CHECK(ec == errc::message_too_large);
}

// --- frame_buffer ------------------------------------------------------------

TEST_CASE("frame_buffer: frames fed one byte at a time") {
  const std::vector<std::size_t> sizes{0, 1, 6, 0, 300, 1000, 2};
  bytes stream;
  for (std::size_t i = 0; i < sizes.size(); ++i) append(stream, frame_of(pattern(sizes[i], static_cast<std::uint32_t>(i))));
  frame_buffer fb(coropipe::default_max_message_size, 16);
  CHECK(fb.max_message_size() == coropipe::default_max_message_size);

  // One byte per commit; after every byte, next() gives a frame exactly when
  // its last byte has arrived.
  std::vector<bytes> got;
  std::size_t frame_end = 0, frame_index = 0;
  std::vector<std::size_t> ends;
  for (std::size_t s : sizes) ends.push_back(frame_end += 4 + s);
  for (std::size_t pos = 0; pos < stream.size(); ++pos) {
    const auto room = fb.prepare();
    REQUIRE(!room.empty());
    room[0] = stream[pos];
    fb.commit(1);
    coropipe::error_code ec;
    while (auto msg = fb.next(ec)) {
      got.emplace_back(msg->begin(), msg->end());
      REQUIRE(frame_index < ends.size());
      CHECK(pos + 1 == ends[frame_index]);
      ++frame_index;
    }
    REQUIRE_FALSE(ec);
    const std::size_t boundary = frame_index == 0 ? 0 : ends[frame_index - 1];
    if (pos + 1 == boundary)
      CHECK_FALSE(fb.finish());
    else
      CHECK(fb.finish() == errc::truncated_message);
  }
  REQUIRE(got.size() == sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) CHECK(got[i] == pattern(sizes[i], static_cast<std::uint32_t>(i)));
  CHECK(fb.buffered() == 0);
  CHECK_FALSE(fb.finish());
}

TEST_CASE("frame_buffer: several frames in one commit come out of one read") {
  bytes stream;
  for (std::uint32_t i = 0; i < 100; ++i) append(stream, frame_of(pattern(i, i)));
  REQUIRE(stream.size() < std::size_t{64} << 10);
  frame_buffer fb;
  const auto room = fb.prepare();
  REQUIRE(room.size() >= stream.size());
  std::memcpy(room.data(), stream.data(), stream.size());
  fb.commit(stream.size());
  CHECK(fb.buffered() == stream.size());
  coropipe::error_code ec;
  for (std::uint32_t i = 0; i < 100; ++i) {
    auto msg = fb.next(ec);
    REQUIRE(msg.has_value());
    CHECK(bytes(msg->begin(), msg->end()) == pattern(i, i));
  }
  CHECK_FALSE(fb.next(ec).has_value());
  CHECK_FALSE(ec);
  CHECK(fb.buffered() == 0);
  CHECK_FALSE(fb.finish());
}

TEST_CASE("frame_buffer: a payload returned by next() is not moved by further next() calls") {
  bytes stream;
  append(stream, frame_of(from_text("first")));
  append(stream, frame_of(from_text("second")));
  frame_buffer fb;
  const auto room = fb.prepare();
  std::memcpy(room.data(), stream.data(), stream.size());
  fb.commit(stream.size());
  coropipe::error_code ec;
  auto a = fb.next(ec);
  REQUIRE(a.has_value());
  CHECK(text(*a) == "first");
  auto b = fb.next(ec);
  REQUIRE(b.has_value());
  CHECK(text(*b) == "second");
}

TEST_CASE("frame_buffer: a large frame grows the buffer to fit it, then it shrinks back to the read size") {
  constexpr std::size_t read_size = std::size_t{64} << 10;
  constexpr std::size_t big = std::size_t{5} << 20;
  frame_buffer fb(coropipe::default_max_message_size, read_size);
  bytes stream;
  append(stream, frame_of(from_text("before")));
  append(stream, frame_of(pattern(big, 5)));
  append(stream, frame_of(from_text("after")));

  // Feed like reads of at most 64 KiB.
  std::size_t pos = 0;
  std::vector<bytes> got;
  std::size_t peak = 0;
  std::size_t capacity_after_big = 0;
  while (got.size() < 3) {
    coropipe::error_code ec;
    while (auto msg = fb.next(ec)) {
      got.emplace_back(msg->begin(), msg->end());
      if (got.size() == 2) {
        // The big frame's payload is valid until the next prepare()/next().
        CHECK(got.back() == pattern(big, 5));
      }
    }
    REQUIRE_FALSE(ec);
    if (got.size() >= 2 && capacity_after_big == 0) {
      (void)fb.prepare();
      capacity_after_big = fb.capacity();
    }
    if (pos == stream.size()) break;
    const auto room = fb.prepare();
    peak = std::max(peak, fb.capacity());
    const std::size_t n = std::min({read_size, room.size(), stream.size() - pos});
    std::memcpy(room.data(), stream.data() + pos, n);
    fb.commit(n);
    pos += n;
  }
  REQUIRE(got.size() == 3);
  CHECK(text(got[0]) == "before");
  CHECK(got[1].size() == big);
  CHECK(text(got[2]) == "after");
  // It held the whole frame at once, and not much more than that.
  CHECK(peak >= big + 4);
  CHECK(peak <= big + 4 + 2 * read_size);
  // And it gave the memory back.
  (void)fb.prepare();
  CHECK(fb.capacity() <= 2 * read_size);
  CHECK(capacity_after_big <= 2 * read_size);
  CHECK_FALSE(fb.finish());
}

TEST_CASE("frame_buffer: a frame declaring more than the maximum is refused before any large allocation") {
  constexpr std::size_t read_size = 4096;
  SUBCASE("4-byte length") {
    frame_buffer fb(std::size_t{1} << 20, read_size);
    const bytes stream = make_bytes({0x7f, 0xff, 0xff, 0xff, 1, 2, 3});
    const decoded d = decode(fb, stream, stream.size());
    CHECK(d.payloads.empty());
    CHECK(d.error == errc::message_too_large);
    CHECK(d.max_capacity <= 2 * read_size);
    (void)fb.prepare();
    CHECK(fb.capacity() <= 2 * read_size);
  }
  SUBCASE("one more than the maximum") {
    frame_buffer fb(1000, read_size);
    bytes stream = frame_of(pattern(1000, 1));
    append(stream, frame_of(pattern(1001, 2)));
    const decoded d = decode(fb, stream, 100);
    REQUIRE(d.payloads.size() == 1);
    CHECK(d.payloads[0] == pattern(1000, 1));
    CHECK(d.error == errc::message_too_large);
    CHECK(fb.capacity() <= 2 * read_size);
  }
  SUBCASE("8-byte length") {
    frame_buffer fb(coropipe::default_max_message_size, read_size);
    const bytes stream = make_bytes({0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 7});
    const decoded d = decode(fb, stream, 1);
    CHECK(d.payloads.empty());
    CHECK(d.error == errc::message_too_large);
    (void)fb.prepare();
    CHECK(fb.capacity() <= 2 * read_size);
  }
}

TEST_CASE("frame_buffer: finish() tells a clean end from a truncated one") {
  SUBCASE("nothing at all") {
    frame_buffer fb;
    CHECK_FALSE(fb.finish());
  }
  SUBCASE("whole frames") {
    frame_buffer fb;
    bytes stream = frame_of(from_text("a"));
    append(stream, frame_of({}));
    const decoded d = decode(fb, stream, 3);
    CHECK(d.payloads.size() == 2);
    CHECK_FALSE(d.error);
    CHECK_FALSE(d.end);
  }
  SUBCASE("inside a 4-byte header") {
    for (std::size_t n = 1; n < 4; ++n) {
      CAPTURE(n);
      frame_buffer fb;
      bytes stream = frame_of(from_text("ok"));
      const bytes h = header_of(10);
      stream.insert(stream.end(), h.begin(), h.begin() + static_cast<std::ptrdiff_t>(n));
      const decoded d = decode(fb, stream, 1);
      REQUIRE(d.payloads.size() == 1);
      CHECK_FALSE(d.error);
      CHECK(d.end == errc::truncated_message);
      CHECK(d.end.category() == coropipe::category());
    }
  }
  SUBCASE("inside an 8-byte header") {
    frame_buffer fb;
    const bytes stream = make_bytes({0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0});
    const decoded d = decode(fb, stream, 3);
    CHECK(d.payloads.empty());
    CHECK_FALSE(d.error);
    CHECK(d.end == errc::truncated_message);
  }
  SUBCASE("inside a payload") {
    frame_buffer fb;
    bytes stream = frame_of(pattern(100, 1));
    stream.resize(4 + 50);
    const decoded d = decode(fb, stream, 7);
    CHECK(d.payloads.empty());
    CHECK_FALSE(d.error);
    CHECK(d.end == errc::truncated_message);
  }
  SUBCASE("a header and no payload") {
    frame_buffer fb;
    const decoded d = decode(fb, header_of(1), 4);
    CHECK(d.payloads.empty());
    CHECK(d.end == errc::truncated_message);
  }
}

TEST_CASE("frame_buffer: errors are sticky") {
  frame_buffer fb;
  bytes stream = frame_of(from_text("good"));
  append(stream, make_bytes({0x80, 0x00, 0x00, 0x01}));
  const decoded d = decode(fb, stream, stream.size());
  REQUIRE(d.payloads.size() == 1);
  CHECK(text(d.payloads[0]) == "good");
  CHECK(d.error == errc::malformed_frame);
  CHECK(d.end == errc::malformed_frame);

  // Valid frames after the error do not revive the buffer.
  const bytes more = frame_of(from_text("later"));
  const auto room = fb.prepare();
  REQUIRE(room.size() >= more.size());
  std::memcpy(room.data(), more.data(), more.size());
  fb.commit(more.size());
  for (int i = 0; i < 3; ++i) {
    coropipe::error_code ec;
    CHECK_FALSE(fb.next(ec).has_value());
    CHECK(ec == errc::malformed_frame);
  }
  CHECK(fb.finish() == errc::malformed_frame);
}

TEST_CASE("frame_buffer: the max_message_size setter applies to the frames that follow") {
  frame_buffer fb(10, 64);
  CHECK(fb.max_message_size() == 10);
  SUBCASE("lowered") {
    bytes stream = frame_of(pattern(10, 1));
    fb.max_message_size(5);
    CHECK(fb.max_message_size() == 5);
    append(stream, frame_of(pattern(5, 2)));
    const decoded d = decode(fb, stream, 64);
    CHECK(d.payloads.empty());
    CHECK(d.error == errc::message_too_large);
  }
  SUBCASE("raised") {
    fb.max_message_size(1000);
    CHECK(fb.max_message_size() == 1000);
    bytes stream = frame_of(pattern(1000, 1));
    append(stream, frame_of(pattern(11, 2)));
    const decoded d = decode(fb, stream, 64);
    REQUIRE(d.payloads.size() == 2);
    CHECK(d.payloads[0] == pattern(1000, 1));
    CHECK(d.payloads[1] == pattern(11, 2));
    CHECK_FALSE(d.error);
  }
  SUBCASE("between frames") {
    bytes first = frame_of(pattern(8, 1));
    const decoded d1 = decode(fb, first, 64);
    REQUIRE(d1.payloads.size() == 1);
    fb.max_message_size(4);
    const decoded d2 = decode(fb, frame_of(pattern(8, 2)), 64);
    CHECK(d2.payloads.empty());
    CHECK(d2.error == errc::message_too_large);
  }
}

// The setter's documentation: "Applies to frames whose header has not been
// read yet." A frame whose header was read (and accepted) before the limit was
// lowered must still be delivered.
TEST_CASE("frame_buffer: lowering max_message_size spares the frame whose header was already read") {
  frame_buffer fb(coropipe::default_max_message_size, 64);
  const bytes stream = frame_of(pattern(1000, 3));
  // The header and part of the payload: next() reads the header.
  auto room = fb.prepare();
  std::memcpy(room.data(), stream.data(), 40);
  fb.commit(40);
  coropipe::error_code ec;
  CHECK_FALSE(fb.next(ec).has_value());
  REQUIRE_FALSE(ec);

  fb.max_message_size(100);
  std::size_t pos = 40;
  std::optional<bytes> got;
  while (pos < stream.size() && !ec) {
    room = fb.prepare();
    const std::size_t n = std::min(room.size(), stream.size() - pos);
    std::memcpy(room.data(), stream.data() + pos, n);
    fb.commit(n);
    pos += n;
    if (auto msg = fb.next(ec)) got.emplace(msg->begin(), msg->end());
  }
  CHECK_FALSE(ec);
  REQUIRE(got.has_value());
  CHECK(*got == pattern(1000, 3));
}

// A receiver configured with no limit at all (SIZE_MAX) must not be fooled by
// a header declaring close to 2^64 bytes: header size + payload size must not
// wrap around.
TEST_CASE("frame_buffer: with an unlimited maximum, a header declaring 2^64-1 bytes does not wrap around") {
  frame_buffer fb(std::numeric_limits<std::size_t>::max(), 64);
  const bytes stream =
      make_bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfa, 1, 2, 3, 4, 5, 6, 7, 8});
  const auto room = fb.prepare();
  std::memcpy(room.data(), stream.data(), stream.size());
  fb.commit(stream.size());
  coropipe::error_code ec;
  const auto msg = fb.next(ec);
  // Either still waiting for the payload or refused, but never a payload
  // larger than what was buffered.
  CHECK_FALSE(msg.has_value());
  if (msg) CHECK(msg->size() <= stream.size());
  CHECK(fb.buffered() == stream.size());
}

// --- detail::send_queue -------------------------------------------------------

namespace {

// Writes what a send_queue offers into a byte stream, @p chunk bytes per
// "writev" at most (0: everything offered). Returns the number of gathers.
std::size_t drain(send_queue& q, bytes& out, std::size_t chunk = 0, std::size_t max_rounds = 1000000) {
  std::size_t rounds = 0;
  for (; rounds < max_rounds; ++rounds) {
    ::iovec iov[64];
    const int n = q.gather(iov, 64);
    if (n == 0) break;
    std::size_t budget = chunk == 0 ? std::numeric_limits<std::size_t>::max() : chunk;
    std::size_t written = 0;
    for (int i = 0; i < n && budget > 0; ++i) {
      const std::size_t take = std::min(budget, iov[i].iov_len);
      const auto* p = static_cast<const std::byte*>(iov[i].iov_base);
      out.insert(out.end(), p, p + take);
      written += take;
      budget -= take;
    }
    q.advance(written);
  }
  return rounds;
}

std::vector<bytes> parse_all(const bytes& stream, coropipe::error_code& end) {
  frame_buffer fb;
  decoded d = decode(fb, stream, std::size_t{1} << 20);
  end = d.error ? d.error : d.end;
  return std::move(d.payloads);
}

} // namespace

TEST_CASE("send_queue: frames pushed are gathered whole and in order") {
  send_queue q;
  CHECK(q.empty());
  CHECK(q.pending_bytes() == 0);
  CHECK(q.written_seq() == 0);
  const bytes a = from_text("Spam 0"), b = from_text(""), c = pattern(300, 1);
  const auto s1 = q.push_copy(a);
  const auto s2 = q.push_copy(b);
  const auto s3 = q.push_copy(c);
  CHECK(s1 == 1);
  CHECK(s2 == 2);
  CHECK(s3 == 3);
  CHECK(q.last_seq() == 3);
  CHECK(q.written_seq() == 0);
  CHECK(q.pending_bytes() == 4 + 6 + 4 + 0 + 4 + 300);
  CHECK_FALSE(q.empty());

  ::iovec iov[64];
  const int n = q.gather(iov, 64);
  CHECK(n == 1);  // small copied frames are merged
  std::size_t total = 0;
  for (int i = 0; i < n; ++i) total += iov[i].iov_len;
  CHECK(total == q.pending_bytes());
  bytes stream;
  for (int i = 0; i < n; ++i) {
    const auto* p = static_cast<const std::byte*>(iov[i].iov_base);
    stream.insert(stream.end(), p, p + iov[i].iov_len);
  }
  q.advance(total);
  CHECK(q.written_seq() == 3);
  CHECK(q.pending_bytes() == 0);
  CHECK(q.empty());
  CHECK(q.gather(iov, 64) == 0);

  bytes expected = frame_of(a);
  append(expected, frame_of(b));
  append(expected, frame_of(c));
  CHECK(stream == expected);
}

TEST_CASE("send_queue: many small frames go out in few iovecs") {
  send_queue q;
  std::vector<bytes> sent;
  for (std::uint32_t i = 0; i < 1000; ++i) {
    sent.push_back(pattern(i % 17, i));
    q.push_copy(sent.back());
  }
  ::iovec iov[64];
  const int n = q.gather(iov, 64);
  CHECK(n == 1);
  bytes stream;
  drain(q, stream);
  CHECK(q.empty());
  coropipe::error_code end;
  CHECK(parse_all(stream, end) == sent);
  CHECK_FALSE(end);
}

TEST_CASE("send_queue: borrowed payloads are written from the caller's memory") {
  send_queue q;
  const bytes small1 = from_text("one"), small2 = from_text("two");
  const bytes big = pattern(100000, 9);
  q.push_copy(small1);
  const auto sb = q.push_borrowed(big);
  q.push_copy(small2);
  CHECK(sb == 2);
  CHECK(q.pending_bytes() == 7 + 100004 + 7);

  ::iovec iov[64];
  const int n = q.gather(iov, 64);
  CHECK(n <= 4);
  bool points_into_big = false;
  for (int i = 0; i < n; ++i)
    if (iov[i].iov_base == big.data() && iov[i].iov_len == big.size()) points_into_big = true;
  CHECK(points_into_big);  // not copied

  bytes stream;
  drain(q, stream);
  coropipe::error_code end;
  const auto got = parse_all(stream, end);
  REQUIRE(got.size() == 3);
  CHECK(got[0] == small1);
  CHECK(got[1] == big);
  CHECK(got[2] == small2);
  CHECK(q.written_seq() == 3);
}

TEST_CASE("send_queue: partial writes of odd sizes keep the frames intact and complete them in order") {
  send_queue q;
  std::vector<bytes> sent;
  std::vector<std::size_t> frame_ends;  // byte offset in the stream where each frame ends
  std::vector<bool> borrowed_frames;
  std::size_t stream_size = 0;
  auto push = [&](bytes payload, bool borrowed) {
    sent.push_back(std::move(payload));
    borrowed_frames.push_back(borrowed);
    const auto seq = borrowed ? q.push_borrowed(sent.back()) : q.push_copy(sent.back());
    CHECK(seq == sent.size());
    stream_size += (sent.back().size() > 0x7fffffff ? 12 : 4) + sent.back().size();
    frame_ends.push_back(stream_size);
  };
  sent.reserve(200);  // borrowed payloads must not move
  for (std::uint32_t i = 0; i < 20; ++i) push(pattern(i * 7 % 50, i), i % 5 == 3);

  const std::size_t chunks[] = {1, 3, 7, 13, 2, 31, 101, 5, 997};
  bytes stream;
  std::size_t round = 0;
  std::uint64_t last_written = 0;
  for (;;) {
    ::iovec iov[64];
    const int n = q.gather(iov, 64);
    if (n == 0) break;
    std::size_t budget = chunks[round++ % std::size(chunks)];
    std::size_t written = 0;
    for (int i = 0; i < n && budget > 0; ++i) {
      const std::size_t take = std::min(budget, iov[i].iov_len);
      const auto* p = static_cast<const std::byte*>(iov[i].iov_base);
      stream.insert(stream.end(), p, p + take);
      written += take;
      budget -= take;
    }
    q.advance(written);
    // written_seq() never goes back, never claims a frame that is not out
    // whole, and is exact for borrowed frames (whose memory it releases).
    // Merged copies may be acknowledged a little later, with their batch.
    CHECK(q.written_seq() >= last_written);
    last_written = q.written_seq();
    std::uint64_t complete = 0;
    while (complete < frame_ends.size() && frame_ends[complete] <= stream.size()) ++complete;
    CHECK(q.written_seq() <= complete);
    for (std::uint64_t k = 0; k < complete; ++k)
      if (borrowed_frames[k]) CHECK(q.written_seq() >= k + 1);
    CHECK(q.pending_bytes() == stream_size - stream.size());
    // Frames pushed while a batch is being written join the queue behind it.
    if (round % 4 == 0 && sent.size() < 200)
      push(pattern(round % 23 + (round % 8 == 0 ? 20000 : 0), static_cast<std::uint32_t>(round)), round % 8 == 0);
  }
  CHECK(q.empty());
  CHECK(q.written_seq() == sent.size());
  CHECK(stream.size() == stream_size);
  coropipe::error_code end;
  CHECK(parse_all(stream, end) == sent);
  CHECK_FALSE(end);
}

TEST_CASE("send_queue: cancelling a frame none of which was written removes it") {
  send_queue q;
  const bytes a = pattern(10, 1), c = pattern(20, 3);
  bytes big = pattern(50000, 2);
  const bytes big_copy = big;
  SUBCASE("queued behind a frame being written") {
    q.push_copy(a);
    const auto sb = q.push_borrowed(big);
    q.push_copy(c);
    bytes stream;
    ::iovec iov[64];
    REQUIRE(q.gather(iov, 64) >= 1);
    q.advance(5);  // part of a's frame
    stream.insert(stream.end(), static_cast<const std::byte*>(iov[0].iov_base),
                  static_cast<const std::byte*>(iov[0].iov_base) + 5);
    const std::size_t before = q.pending_bytes();
    CHECK(q.cancel(sb) == send_queue::cancel_result::removed);
    CHECK(q.pending_bytes() == before - (4 + big.size()));
    std::fill(big.begin(), big.end(), std::byte{0xee});  // the caller reuses its buffer
    drain(q, stream, 7);
    CHECK(q.empty());
    coropipe::error_code end;
    const auto got = parse_all(stream, end);
    CHECK_FALSE(end);
    REQUIRE(got.size() == 2);
    CHECK(got[0] == a);
    CHECK(got[1] == c);
    CHECK(q.written_seq() == 3);
  }
  SUBCASE("next in line, with the frame before it fully written") {
    q.push_copy(a);
    const auto sb = q.push_borrowed(big);
    bytes stream;
    ::iovec iov[64];
    REQUIRE(q.gather(iov, 64) >= 1);
    stream.insert(stream.end(), static_cast<const std::byte*>(iov[0].iov_base),
                  static_cast<const std::byte*>(iov[0].iov_base) + 14);
    q.advance(14);  // exactly a's frame
    CHECK(q.written_seq() == 1);
    CHECK(q.cancel(sb) == send_queue::cancel_result::removed);
    CHECK(q.pending_bytes() == 0);
    std::fill(big.begin(), big.end(), std::byte{0xee});
    q.push_copy(c);
    drain(q, stream);
    CHECK(q.empty());
    coropipe::error_code end;
    const auto got = parse_all(stream, end);
    REQUIRE(got.size() == 2);
    CHECK(got[0] == a);
    CHECK(got[1] == c);
  }
  SUBCASE("not yet gathered") {
    const auto sb = q.push_borrowed(big);
    CHECK(q.cancel(sb) == send_queue::cancel_result::removed);
    CHECK(q.pending_bytes() == 0);
    std::fill(big.begin(), big.end(), std::byte{0xee});
    bytes stream;
    drain(q, stream);
    CHECK(stream.empty());
    CHECK(q.empty());
  }
}

TEST_CASE("send_queue: cancelling a partly written frame copies the rest, which still comes out intact") {
  send_queue q;
  bytes big = pattern(100000, 4);
  const bytes original = big;
  const bytes after = from_text("after");
  q.push_copy(from_text("before"));
  std::size_t written_of_big = 0;
  SUBCASE("inside the payload") { written_of_big = 4 + 12345; }
  SUBCASE("inside the header") { written_of_big = 2; }
  SUBCASE("all but the last byte") { written_of_big = 4 + big.size() - 1; }
  CAPTURE(written_of_big);
  const auto sb = q.push_borrowed(big);
  bytes stream;
  // Write "before" and the first bytes of the big frame, in odd pieces.
  const std::size_t target = 10 + written_of_big;
  while (stream.size() < target) {
    ::iovec iov[64];
    const int n = q.gather(iov, 64);
    REQUIRE(n > 0);
    std::size_t budget = std::min<std::size_t>(target - stream.size(), 777);
    std::size_t written = 0;
    for (int i = 0; i < n && budget > 0; ++i) {
      const std::size_t take = std::min(budget, iov[i].iov_len);
      const auto* p = static_cast<const std::byte*>(iov[i].iov_base);
      stream.insert(stream.end(), p, p + take);
      written += take;
      budget -= take;
    }
    q.advance(written);
  }
  REQUIRE(q.written_seq() == 1);
  const std::size_t pending = q.pending_bytes();
  CHECK(q.cancel(sb) == send_queue::cancel_result::copied);
  CHECK(q.pending_bytes() == pending);  // the rest will still be written
  std::fill(big.begin(), big.end(), std::byte{0xee});
  big.clear();
  big.shrink_to_fit();  // the caller's memory is gone
  q.push_copy(after);
  drain(q, stream, 4099);
  CHECK(q.empty());
  coropipe::error_code end;
  const auto got = parse_all(stream, end);
  CHECK_FALSE(end);
  REQUIRE(got.size() == 3);
  CHECK(text(got[0]) == "before");
  CHECK(got[1] == original);
  CHECK(got[2] == after);
}

TEST_CASE("send_queue: cancelling a frame already written is done") {
  send_queue q;
  const bytes big = pattern(30000, 5);
  const auto sb = q.push_borrowed(big);
  bytes stream;
  drain(q, stream);
  CHECK(q.written_seq() == sb);
  CHECK(q.cancel(sb) == send_queue::cancel_result::done);
  CHECK(q.empty());
  coropipe::error_code end;
  const auto got = parse_all(stream, end);
  REQUIRE(got.size() == 1);
  CHECK(got[0] == big);
}

TEST_CASE("send_queue: random pushes, partial writes and cancellations match a model") {
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    CAPTURE(seed);
    send_queue q;
    std::uint32_t rng = seed * 2654435761U;
    auto next = [&](std::uint32_t bound) {
      rng ^= rng << 13;
      rng ^= rng >> 17;
      rng ^= rng << 5;
      return rng % bound;
    };
    // Borrowed payloads live in a deque-like store that never moves them.
    std::vector<std::unique_ptr<bytes>> store;
    struct entry {
      std::uint64_t seq;
      bytes payload;  // the original content
      bytes* borrowed;
      bool cancelled_removed;
    };
    std::vector<entry> model;
    bytes stream;
    for (int step = 0; step < 300; ++step) {
      const auto op = next(10);
      if (op < 4) {
        const bool borrowed = next(3) == 0;
        const std::size_t size = borrowed ? 1000 + next(5000) : next(64);
        bytes payload = pattern(size, seed * 1000 + static_cast<std::uint32_t>(step));
        if (borrowed) {
          store.push_back(std::make_unique<bytes>(payload));
          const auto s = q.push_borrowed(*store.back());
          model.push_back({s, std::move(payload), store.back().get(), false});
        } else {
          const auto s = q.push_copy(payload);
          model.push_back({s, std::move(payload), nullptr, false});
        }
      } else if (op < 8) {
        ::iovec iov[64];
        const int n = q.gather(iov, 1 + static_cast<int>(next(64)));
        std::size_t budget = 1 + next(3000);
        std::size_t written = 0;
        for (int i = 0; i < n && budget > 0; ++i) {
          const std::size_t take = std::min(budget, iov[i].iov_len);
          const auto* p = static_cast<const std::byte*>(iov[i].iov_base);
          stream.insert(stream.end(), p, p + take);
          written += take;
          budget -= take;
        }
        q.advance(written);
      } else {
        // Cancel a borrowed frame not written yet, as a sender giving up.
        std::vector<entry*> candidates;
        for (auto& e : model)
          if (e.borrowed != nullptr && !e.cancelled_removed && e.seq > q.written_seq()) candidates.push_back(&e);
        if (candidates.empty()) continue;
        entry& e = *candidates[next(static_cast<std::uint32_t>(candidates.size()))];
        const auto r = q.cancel(e.seq);
        CHECK(r != send_queue::cancel_result::done);
        if (r == send_queue::cancel_result::removed) e.cancelled_removed = true;
        std::fill(e.borrowed->begin(), e.borrowed->end(), std::byte{0xee});  // the caller moves on
        e.borrowed = nullptr;
      }
    }
    drain(q, stream, 1 + next(5000));
    CHECK(q.empty());
    CHECK(q.pending_bytes() == 0);
    std::vector<bytes> expected;
    for (const auto& e : model)
      if (!e.cancelled_removed) expected.push_back(e.payload);
    coropipe::error_code end;
    const auto got = parse_all(stream, end);
    CHECK_FALSE(end);
    CHECK(got.size() == expected.size());
    CHECK(got == expected);
  }
}

TEST_CASE("send_queue: capacity() reports the batches' memory") {
  send_queue q;
  const std::size_t empty_capacity = q.capacity();
  for (std::uint32_t i = 0; i < 100; ++i) q.push_copy(pattern(1000, i));
  CHECK(q.capacity() >= empty_capacity + 100 * 1004);
  bytes stream;
  drain(q, stream);
  CHECK(stream.size() == 100 * 1004);
}
