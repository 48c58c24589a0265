// SPDX-License-Identifier: BSL-1.0
// Differential fuzz target for the receive side's frame decoder.
//
// Input layout: byte 0 picks the maximum message size, byte 1 seeds the
// chunking (how many bytes each read "returns"), the rest is the stream.
// coropipe::frame_buffer, fed in those chunks, must produce exactly what a
// deliberately naive reference decoder produces from the whole input at
// once: the same payloads in the same order, then the same error or end.
#include <coropipe/frame.hpp>

#include <coropipe/error.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

namespace {

struct outcome {
  std::vector<std::string> payloads;
  coropipe::error_code error;  // clear: ended between frames
};

// The wire format, written as plainly as possible.
outcome reference(const std::uint8_t* data, std::size_t size, std::uint64_t max) {
  outcome out;
  std::size_t pos = 0;
  while (pos < size) {
    if (size - pos < 4) {
      out.error = coropipe::errc::truncated_message;
      return out;
    }
    const std::int32_t n = static_cast<std::int32_t>(
        (std::uint32_t{data[pos]} << 24) | (std::uint32_t{data[pos + 1]} << 16) |
        (std::uint32_t{data[pos + 2]} << 8) | std::uint32_t{data[pos + 3]});
    std::uint64_t len = 0;
    std::size_t header = 4;
    if (n == -1) {
      if (size - pos < 12) {
        out.error = coropipe::errc::truncated_message;
        return out;
      }
      for (int i = 0; i < 8; ++i) len = (len << 8) | data[pos + 4 + static_cast<std::size_t>(i)];
      header = 12;
    } else if (n < 0) {
      out.error = coropipe::errc::malformed_frame;
      return out;
    } else {
      len = static_cast<std::uint64_t>(n);
    }
    if (len > max) {
      out.error = coropipe::errc::message_too_large;
      return out;
    }
    if (size - pos - header < len) {
      out.error = coropipe::errc::truncated_message;
      return out;
    }
    out.payloads.emplace_back(reinterpret_cast<const char*>(data + pos + header), static_cast<std::size_t>(len));
    pos += header + static_cast<std::size_t>(len);
  }
  return out;
}

outcome decode_in_chunks(const std::uint8_t* data, std::size_t size, std::uint64_t max, std::uint8_t seed) {
  outcome out;
  coropipe::frame_buffer buf(static_cast<std::size_t>(max), 16U + seed % 64U);
  std::uint32_t rng = seed * 2654435761U + 1;
  std::size_t pos = 0;
  for (;;) {
    coropipe::error_code ec;
    while (auto msg = buf.next(ec)) {
      if (msg->size() > max) std::abort();
      out.payloads.emplace_back(reinterpret_cast<const char*>(msg->data()), msg->size());
    }
    if (ec) {
      out.error = ec;
      coropipe::error_code again;  // errors are sticky
      if (buf.next(again) || again != ec || buf.finish() != ec) std::abort();
      return out;
    }
    if (pos == size) {
      out.error = buf.finish();
      return out;
    }
    const auto room = buf.prepare();
    if (room.empty()) std::abort();  // prepare() always offers room
    rng = rng * 1103515245U + 12345U;
    const std::size_t chunk = std::min({room.size(), size - pos, std::size_t{1} + (rng >> 16) % 40});
    std::memcpy(room.data(), data + pos, chunk);
    buf.commit(chunk);
    pos += chunk;
    // Never hold much more than the frame in progress plus the read-ahead.
    if (buf.capacity() > max + coropipe::max_frame_header_size + 2U * (16U + seed % 64U) + 64U) std::abort();
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::uint64_t max = std::uint64_t{data[0]} * 97;  // 0 .. 24735 bytes
  const std::uint8_t seed = data[1];
  const outcome expected = reference(data + 2, size - 2, max);
  const outcome got = decode_in_chunks(data + 2, size - 2, max, seed);
  if (got.payloads != expected.payloads || got.error != expected.error) {
    std::fprintf(stderr, "mismatch: %zu vs %zu payloads, error '%s' vs '%s'\n", got.payloads.size(),
                 expected.payloads.size(), got.error.message().c_str(), expected.error.message().c_str());
    std::abort();
  }
  return 0;
}

#include "replay_main.hpp"  // main() of the replay build (COROPIPE_FUZZ_REPLAY)
