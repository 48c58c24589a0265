// SPDX-License-Identifier: BSL-1.0
// Shared by the "many children", "random kills", "parent death" and "holders"
// scenarios: seeds, a reproducible byte stream, deadlines for awaitables, and
// the streaming halves: what a forked child writes (raw bytes or framed
// messages) and how the parent checks it, incrementally, without holding a
// stream in memory.
#pragma once

#include "stress.hpp"

#include <coropipe/attach.hpp>
#include <coropipe/child.hpp>
#include <coropipe/error.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/io.hpp>
#include <coropipe/pipe.hpp>

#include <coropipe/asio.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

namespace coropipe_stress {

/// The seed of a randomised scenario: COROPIPE_STRESS_SEED if set (to replay
/// a run), otherwise a fresh one. Scenarios print it.
inline std::uint64_t seed() {
  if (const char* v = std::getenv("COROPIPE_STRESS_SEED")) return std::strtoull(v, nullptr, 0);
  std::random_device rd;
  return (std::uint64_t{rd()} << 32) ^ rd();
}

/// splitmix64: one 64-bit step.
inline std::uint64_t splitmix64(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// A reproducible stream of pseudo-random bytes: the writer and the checker
/// each run one with the same seed, so no stream is ever held in memory.
class byte_stream {
public:
  explicit byte_stream(std::uint64_t seed) noexcept : state_(seed) {}

  /// The next @p n bytes of the stream.
  void fill(unsigned char* p, std::size_t n) noexcept {
    while (n > 0 && left_ > 0) take_one(p, n);
    while (n >= 8) {
      const std::uint64_t w = splitmix64(state_);
      std::memcpy(p, &w, 8);
      p += 8;
      n -= 8;
    }
    while (n > 0) {
      if (left_ == 0) {
        word_ = splitmix64(state_);
        left_ = 8;
      }
      take_one(p, n);
    }
  }

private:
  void take_one(unsigned char*& p, std::size_t& n) noexcept {
    *p++ = static_cast<unsigned char>(word_ & 0xff);
    word_ >>= 8;
    --left_;
    --n;
  }

  std::uint64_t state_;
  std::uint64_t word_ = 0;
  int left_ = 0;
};

/// FNV-1a, 64 bits: the per-message checksum.
inline std::uint64_t checksum64(const unsigned char* p, std::size_t n, std::uint64_t h = 0xcbf29ce484222325ULL) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// Thrown when an operation misses its deadline: a hang becomes a failure.
struct deadline_missed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Runs @p op, cancelling it and throwing deadline_missed if it has not
/// completed after @p limit.
template <typename T>
asio::awaitable<T> within(std::chrono::steady_clock::duration limit, asio::awaitable<T> op, std::string what) {
  using namespace coropipe::compat::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor, limit);
  auto r = co_await (std::move(op) || timer.async_wait(asio::use_awaitable));
  if (r.index() != 0) throw deadline_missed("deadline missed: " + what);
  if constexpr (std::is_void_v<T>) {
    co_return;
  } else {
    co_return std::get<0>(std::move(r));
  }
}

inline constexpr auto as_tuple = coropipe::compat::as_tuple(asio::use_awaitable);


inline constexpr std::size_t chunk_size = std::size_t{64} << 10;

/// The seed of child @p i's stream in a run seeded with @p run_seed.
inline std::uint64_t child_seed(std::uint64_t run_seed, std::size_t i) noexcept {
  std::uint64_t s = run_seed ^ (0x5851f42d4c957f2dULL * (i + 1));
  return splitmix64(s);
}

// --- Raw bytes -------------------------------------------------------------

/// In a forked child: writes @p total bytes of byte_stream(@p seed) to @p out.
inline asio::awaitable<int> write_bytes(asio::posix::stream_descriptor& out, std::uint64_t seed, std::size_t total) {
  byte_stream gen(seed);
  std::vector<unsigned char> buf(chunk_size);
  for (std::size_t done = 0; done < total;) {
    const std::size_t n = std::min(buf.size(), total - done);
    gen.fill(buf.data(), n);
    co_await coropipe::async_write(out, asio::buffer(buf.data(), n), asio::use_awaitable);
    done += n;
  }
  co_return 0;
}

/// What the parent saw of one byte stream.
struct bytes_seen {
  std::size_t bytes = 0;                   // bytes read that matched the expected stream
  std::optional<std::size_t> mismatch_at;  // offset of the first wrong byte
  bool eof = false;                        // a clean end of stream was read
  coropipe::error_code error;                   // a read error other than eof
};

/// Reads @p in to its end, checking every byte against byte_stream(@p seed).
inline asio::awaitable<void> check_bytes(asio::posix::stream_descriptor& in, std::uint64_t seed, bytes_seen& seen) {
  byte_stream gen(seed);
  std::vector<unsigned char> buf(chunk_size), expected(chunk_size);
  for (;;) {
    auto [ec, n] = co_await coropipe::async_read_some(in, asio::buffer(buf), as_tuple);
    if (n > 0) {
      gen.fill(expected.data(), n);
      if (std::memcmp(buf.data(), expected.data(), n) != 0) {
        std::size_t i = 0;
        while (buf[i] == expected[i]) ++i;
        seen.mismatch_at = seen.bytes + i;
        co_return;
      }
      seen.bytes += n;
    }
    if (ec == asio::error::eof) {
      seen.eof = true;
      co_return;
    }
    if (ec) {
      seen.error = ec;
      co_return;
    }
  }
}

// --- Framed messages ---------------------------------------------------------
//
// Message seq of a child: [u64 seq][u32 child][u32 body length][body][u64
// checksum64 of all before]; the body is the next bytes of the child's
// byte_stream, its length (seq * 37 + child) % 61.

inline std::size_t body_length(std::uint64_t seq, std::uint32_t child) noexcept {
  return static_cast<std::size_t>((seq * 37 + child) % 61);
}

inline constexpr std::size_t message_overhead = 8 + 4 + 4 + 8;

/// Encodes message @p seq of child @p child into @p out.
inline void make_message(std::vector<unsigned char>& out, byte_stream& gen, std::uint64_t seq, std::uint32_t child) {
  const std::uint32_t len = static_cast<std::uint32_t>(body_length(seq, child));
  out.resize(message_overhead + len);
  std::memcpy(out.data(), &seq, 8);
  std::memcpy(out.data() + 8, &child, 4);
  std::memcpy(out.data() + 12, &len, 4);
  gen.fill(out.data() + 16, len);
  const std::uint64_t sum = checksum64(out.data(), 16 + len);
  std::memcpy(out.data() + 16 + len, &sum, 8);
}

/// In a forked child: sends @p count messages over @p fs, then closes it.
template <typename Stream>
asio::awaitable<int> send_messages(coropipe::framed_stream<Stream>& fs, std::uint64_t seed, std::uint32_t child,
                                   std::uint64_t count) {
  byte_stream gen(seed);
  std::vector<unsigned char> msg;
  for (std::uint64_t seq = 0; seq < count; ++seq) {
    make_message(msg, gen, seq, child);
    co_await fs.async_send(asio::buffer(msg), asio::use_awaitable);
  }
  co_await fs.async_close(asio::use_awaitable);
  co_return 0;
}

/// What the parent saw of one message stream.
struct messages_seen {
  std::uint64_t messages = 0;             // messages received in order and intact
  std::optional<std::string> bad;         // what was wrong with the first bad message
  bool clean_end = false;                 // the stream ended between frames
  coropipe::error_code error;                  // the receive error that ended it, if any
};

/// Receives messages from @p fs to the end, checking each one: sequence
/// number, sender, length, checksum and body.
template <typename Stream>
asio::awaitable<void> check_messages(coropipe::framed_stream<Stream>& fs, std::uint64_t seed, std::uint32_t child,
                                     messages_seen& seen) {
  byte_stream gen(seed);
  std::vector<unsigned char> expected;
  for (;;) {
    auto [ec, msg] = co_await fs.async_receive(as_tuple);
    if (ec) {
      seen.error = ec;
      co_return;
    }
    if (!msg) {
      seen.clean_end = true;
      co_return;
    }
    make_message(expected, gen, seen.messages, child);
    if (msg->size() != expected.size() || std::memcmp(msg->data(), expected.data(), expected.size()) != 0) {
      std::uint64_t seq = 0;
      if (msg->size() >= 8) std::memcpy(&seq, msg->data(), 8);
      bool sum_ok = false;
      if (msg->size() >= message_overhead) {
        std::uint64_t sum = 0;
        std::memcpy(&sum, msg->data() + msg->size() - 8, 8);
        sum_ok = sum == checksum64(reinterpret_cast<const unsigned char*>(msg->data()), msg->size() - 8);
      }
      seen.bad = "message " + std::to_string(seen.messages) + ": got seq " + std::to_string(seq) + ", " +
                 std::to_string(msg->size()) + " bytes (expected " + std::to_string(expected.size()) +
                 "), checksum " + (sum_ok ? "consistent" : "wrong");
      co_return;
    }
    ++seen.messages;
  }
}

/// Forked children streaming to the parent, each through its own pipe:
/// their handles and the parent's ends, in the same order.
template <typename In>
struct streaming_children {
  std::vector<coropipe::child> kids;
  std::vector<In> ins;
};

/// @p children forked children; child i writes @p bytes of the byte stream
/// child_seed(run_seed, i) (write_bytes()), checked by check_bytes().
inline streaming_children<asio::posix::stream_descriptor> fork_byte_writers(asio::io_context& io, std::size_t children,
                                                                            std::uint64_t run_seed, std::size_t bytes) {
  streaming_children<asio::posix::stream_descriptor> c;
  for (std::size_t i = 0; i < children; ++i) {
    auto [r, w] = coropipe::pipe();
    c.kids.push_back(coropipe::fork_child(
        io,
        [](coropipe::child_context& ctx, coropipe::unique_fd out, std::uint64_t seed,
           std::size_t total) -> asio::awaitable<int> {
          auto s = ctx.attach(std::move(out));
          co_return co_await write_bytes(s, seed, total);
        },
        std::move(w), child_seed(run_seed, i), bytes));
    c.ins.push_back(coropipe::attach(io, std::move(r)));
  }
  return c;
}

/// @p children forked children; child i sends @p count framed messages
/// (send_messages(), seeded with child_seed(run_seed, i), id i), checked by
/// check_messages().
inline streaming_children<coropipe::framed_stream<>> fork_message_senders(asio::io_context& io, std::size_t children,
                                                                          std::uint64_t run_seed, std::uint64_t count) {
  streaming_children<coropipe::framed_stream<>> c;
  for (std::size_t i = 0; i < children; ++i) {
    auto [r, w] = coropipe::pipe();
    c.kids.push_back(coropipe::fork_child(
        io,
        [](coropipe::child_context& ctx, coropipe::unique_fd out, std::uint64_t seed, std::uint32_t id,
           std::uint64_t n) -> asio::awaitable<int> {
          coropipe::framed_stream<> fs(ctx.attach(std::move(out)));
          co_return co_await send_messages(fs, seed, id, n);
        },
        std::move(w), child_seed(run_seed, i), static_cast<std::uint32_t>(i), count));
    c.ins.emplace_back(coropipe::attach(io, std::move(r)));
  }
  return c;
}

} // namespace coropipe_stress
