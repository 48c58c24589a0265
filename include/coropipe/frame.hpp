// SPDX-License-Identifier: BSL-1.0
/// @file
/// The message wire format, compatible with Python's
/// `multiprocessing.connection` (`Connection.send_bytes` / `recv_bytes`).
///
/// ```
///  payload of n <= 0x7fffffff bytes:   [ n : int32 big-endian ][ payload ]
///  payload of n  > 0x7fffffff bytes:   [ -1 : int32 big-endian ][ n : uint64 big-endian ][ payload ]
/// ```
///
/// For example `send_bytes(b"Spam 0")` puts `00 00 00 06 53 70 61 6d 20 30`
/// on the wire. A receiver refuses, before allocating anything, a frame that
/// declares more than its maximum message size (`errc::message_too_large`)
/// and a negative length other than -1 (`errc::malformed_frame`). A stream
/// that ends inside a frame is `errc::truncated_message`; one that ends
/// between frames has simply ended.
///
/// These are the pure parts of the format, with no I/O: framed_stream.hpp
/// runs them over a stream.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <coropipe/error.hpp>

#include <system_error>
#include <vector>

#include <sys/uio.h>

namespace coropipe {

/// The largest payload a receiver accepts unless told otherwise: 64 MiB.
inline constexpr std::size_t default_max_message_size = std::size_t{64} << 20;

/// The longest frame header: 4 bytes of -1, then an 8-byte length.
inline constexpr std::size_t max_frame_header_size = 12;

/// Writes the header of a frame carrying @p payload_size bytes into @p out.
/// @returns the header's length: 4, or 12 above 0x7fffffff bytes.
constexpr std::size_t encode_frame_header(std::uint64_t payload_size,
                                          std::span<std::byte, max_frame_header_size> out) noexcept {
  auto put = [&](std::size_t at, std::uint64_t v, std::size_t bytes) {
    for (std::size_t i = 0; i < bytes; ++i)
      out[at + i] = static_cast<std::byte>((v >> (8 * (bytes - 1 - i))) & 0xff);
  };
  if (payload_size <= 0x7fffffff) {
    put(0, payload_size, 4);
    return 4;
  }
  put(0, 0xffffffffU, 4);
  put(4, payload_size, 8);
  return 12;
}

/// A decoded frame header.
struct frame_header {
  std::size_t header_size;     ///< 4 or 12
  std::uint64_t payload_size;  ///< the payload's length in bytes
};

/// Decodes the header at the start of @p data.
/// @returns the header, or nothing when @p data holds only part of it (and
/// @p ec is clear); on malformed input nothing, with @p ec set to
/// `errc::malformed_frame` or (above @p max_payload) `errc::message_too_large`.
std::optional<frame_header> parse_frame_header(std::span<const std::byte> data, std::uint64_t max_payload,
                                               error_code& ec) noexcept;

/// The receive side's buffer: bytes read from a stream go in, whole frames
/// come out. It reads ahead (many small frames from one read), grows to hold
/// one large frame exactly (never beyond the maximum message size, and only
/// once the header has been checked), and shrinks back afterwards.
///
/// Usage: write at most `prepare().size()` bytes into `prepare()`, `commit()`
/// them, then call `next()` until it returns nothing; at end of stream call
/// `finish()`. A payload returned by next() stays valid until the next call
/// of prepare() or next(). Errors are sticky: once next() has reported one,
/// it reports it again.
class frame_buffer {
public:
  /// @param max_message_size  the largest payload accepted.
  /// @param read_size         how much room each prepare() offers for read-ahead.
  explicit frame_buffer(std::size_t max_message_size = default_max_message_size,
                        std::size_t read_size = std::size_t{64} << 10);

  /// Writable room for the next read: at least what the frame being received
  /// still needs (up to the read size for small ones). Compacts or grows the
  /// buffer as needed; invalidates payloads returned earlier.
  [[nodiscard]] std::span<std::byte> prepare();
  /// Marks @p n bytes of the last prepare() as filled.
  void commit(std::size_t n) noexcept;

  /// The next complete frame's payload, or nothing if none is buffered whole
  /// (or on error, with @p ec set).
  [[nodiscard]] std::optional<std::span<const std::byte>> next(error_code& ec) noexcept;

  /// At end of stream: clear if it fell between frames, otherwise
  /// `errc::truncated_message` (or the sticky error).
  [[nodiscard]] error_code finish() const noexcept;

  /// Bytes buffered and not yet returned by next().
  [[nodiscard]] std::size_t buffered() const noexcept { return end_ - start_; }
  /// The memory held, in bytes.
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

  [[nodiscard]] std::size_t max_message_size() const noexcept { return max_; }
  /// Applies to frames whose header has not been read yet.
  void max_message_size(std::size_t n) noexcept { max_ = n; }

private:
  void reallocate(std::size_t capacity);

  std::unique_ptr<std::byte[]> data_;
  std::size_t capacity_ = 0;
  std::size_t start_ = 0;  // first byte not yet returned
  std::size_t end_ = 0;    // one past the last byte read
  std::size_t max_;
  std::size_t read_size_;
  std::size_t needed_ = 0;  // bytes the frame at start_ needs in all (0: unknown)
  std::size_t header_size_ = 0;  // its header's length, once needed_ is known
  error_code error_;
};

namespace detail {

// The send side's queue of frames (no I/O): frames are appended whole, in
// order; small payloads are copied into an owned batch, large ones are
// referenced ("borrowed") until written. Two batches alternate: one fills
// while the other is being written.
class send_queue {
public:
  using seq_t = std::uint64_t;

  // @p batch_capacity: the bytes each batch reserves on first use, so that
  // steady-state sending never reallocates (the most one batch can hold:
  // the send buffer size plus one copied frame).
  explicit send_queue(std::size_t batch_capacity = 0) noexcept : batch_capacity_(batch_capacity) {}

  // Appends a frame whose payload is copied. Returns its sequence number.
  seq_t push_copy(std::span<const std::byte> payload);
  // Appends a frame whose payload is written from the caller's memory, which
  // must stay valid until written_seq() >= the returned number (or cancel()).
  seq_t push_borrowed(std::span<const std::byte> payload);

  // Fills @p iov with what to write next; returns the count (0: nothing).
  int gather(::iovec* iov, int max);
  // Records that @p n bytes of what gather() offered were written.
  void advance(std::size_t n) noexcept;

  // What happened to a frame whose sender gave up waiting for it.
  enum class cancel_result {
    removed,  // none of it was written: it never will be
    copied,   // part of it was written: the rest is copied and will follow
    done,     // it was written already
  };
  cancel_result cancel(seq_t seq);

  [[nodiscard]] seq_t written_seq() const noexcept { return written_seq_; }
  [[nodiscard]] seq_t last_seq() const noexcept { return next_seq_ - 1; }
  [[nodiscard]] std::size_t pending_bytes() const noexcept { return pending_; }
  [[nodiscard]] bool empty() const noexcept { return pending_ == 0 && written_seq_ == next_seq_ - 1; }
  // Memory held by the batches, in bytes.
  [[nodiscard]] std::size_t capacity() const noexcept;

private:
  struct piece {
    const std::byte* borrowed;  // nullptr: bytes [offset, offset + size) of the batch
    std::size_t offset;
    std::size_t size;
    seq_t seq;
    bool frame_end;  // the last piece of frame seq
    bool skipped;
  };
  // Bytes appended by memcpy, without std::vector's zero-filling or
  // per-insert checks (appending is a tenth of a sender's time per message).
  class byte_buffer {
  public:
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] const std::byte* data() const noexcept { return data_.get(); }
    void clear() noexcept { size_ = 0; }
    // Room for @p n more bytes at the end; returns where they go. The caller
    // writes them, then commits.
    std::byte* extend(std::size_t n) {
      if (capacity_ - size_ < n) grow(size_ + n);
      return data_.get() + size_;
    }
    void commit(std::size_t n) noexcept { size_ += n; }
    void reserve(std::size_t n) {
      if (n > capacity_) grow(n);
    }

  private:
    void grow(std::size_t at_least);
    std::unique_ptr<std::byte[]> data_;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
  };
  struct batch {
    byte_buffer bytes;
    std::vector<piece> pieces;
    std::vector<std::unique_ptr<std::byte[]>> rescued;  // copies made by cancel()
    std::size_t next_piece = 0;                         // writing cursor
    std::size_t piece_offset = 0;
    void clear() noexcept;
  };

  void add_copied(std::span<const std::byte> bytes, seq_t seq, bool frame_end, bool mergeable);
  void finish_pieces() noexcept;
  batch& filling() noexcept { return batches_[filling_]; }
  batch& writing() noexcept { return batches_[1 - filling_]; }

  batch batches_[2];
  int filling_ = 0;
  seq_t next_seq_ = 1;
  seq_t written_seq_ = 0;
  std::size_t pending_ = 0;
  std::size_t batch_capacity_;
  bool last_mergeable_ = false;
};

} // namespace detail

} // namespace coropipe
