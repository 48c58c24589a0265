// SPDX-License-Identifier: BSL-1.0
#include <coropipe/frame.hpp>

#include <coropipe/error.hpp>

#include <algorithm>
#include <cstring>
#include <limits>

namespace coropipe {

namespace {

std::uint64_t load_be(const std::byte* p, std::size_t bytes) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

// parse_frame_header's body, inlined into frame_buffer::next(), where it
// runs once per message (a call there cost a tenth of the receive path).
[[gnu::always_inline]] inline std::optional<frame_header> decode_header(std::span<const std::byte> data,
                                                                       std::uint64_t max_payload,
                                                                       error_code& ec) noexcept {
  ec.clear();
  if (data.size() < 4) return std::nullopt;
  const auto first = static_cast<std::uint32_t>(load_be(data.data(), 4));
  frame_header h{4, first};
  if (first & 0x80000000U) {
    if (first != 0xffffffffU) {  // a negative length other than -1
      ec = errc::malformed_frame;
      return std::nullopt;
    }
    if (data.size() < 12) return std::nullopt;
    h = frame_header{12, load_be(data.data() + 4, 8)};
  }
  if (h.payload_size > max_payload) {
    ec = errc::message_too_large;
    return std::nullopt;
  }
  return h;
}

} // namespace

std::optional<frame_header> parse_frame_header(std::span<const std::byte> data, std::uint64_t max_payload,
                                               error_code& ec) noexcept {
  return decode_header(data, max_payload, ec);
}

frame_buffer::frame_buffer(std::size_t max_message_size, std::size_t read_size)
    : max_(max_message_size), read_size_(std::max<std::size_t>(read_size, max_frame_header_size)) {}

void frame_buffer::reallocate(std::size_t capacity) {
  auto fresh = std::make_unique_for_overwrite<std::byte[]>(capacity);
  if (end_ > start_) std::memcpy(fresh.get(), data_.get() + start_, end_ - start_);
  end_ -= start_;
  start_ = 0;
  data_ = std::move(fresh);
  capacity_ = capacity;
}

std::span<std::byte> frame_buffer::prepare() {
  const std::size_t have = buffered();
  const std::size_t frame_rest = needed_ > have ? needed_ - have : 0;
  const std::size_t room = std::max(read_size_, frame_rest);
  const std::size_t target = have + room;
  if (capacity_ > 2 * std::max(target, read_size_) && target <= 2 * read_size_) {
    reallocate(std::max(target, read_size_));  // shrink back after a large frame
  } else if (capacity_ - end_ < room) {
    if (capacity_ - have >= room) {
      if (have != 0) std::memmove(data_.get(), data_.get() + start_, have);
      start_ = 0;
      end_ = have;
    } else {
      reallocate(target);
    }
  }
  return {data_.get() + end_, capacity_ - end_};
}

void frame_buffer::commit(std::size_t n) noexcept { end_ += std::min(n, capacity_ - end_); }

std::optional<std::span<const std::byte>> frame_buffer::next(error_code& ec) noexcept {
  ec = error_;
  if (error_) return std::nullopt;
  if (start_ == end_) {
    start_ = end_ = 0;
    return std::nullopt;
  }
  const std::span<const std::byte> avail(data_.get() + start_, end_ - start_);
  if (needed_ == 0) {
    // A header is checked once, against the limit in force when it arrives.
    auto h = decode_header(avail, max_, ec);
    if (ec) {
      error_ = ec;
      return std::nullopt;
    }
    if (!h) return std::nullopt;
    if (h->payload_size > std::numeric_limits<std::size_t>::max() - h->header_size) {
      error_ = ec = errc::message_too_large;
      return std::nullopt;
    }
    header_size_ = h->header_size;
    needed_ = h->header_size + static_cast<std::size_t>(h->payload_size);
  }
  if (avail.size() < needed_) return std::nullopt;
  const std::span<const std::byte> payload = avail.subspan(header_size_, needed_ - header_size_);
  start_ += needed_;
  needed_ = 0;
  return payload;
}

error_code frame_buffer::finish() const noexcept {
  if (error_) return error_;
  if (start_ != end_) return errc::truncated_message;
  return {};
}

namespace detail {

void send_queue::batch::clear() noexcept {
  bytes.clear();
  pieces.clear();
  rescued.clear();
  next_piece = 0;
  piece_offset = 0;
}

void send_queue::byte_buffer::grow(std::size_t at_least) {
  const std::size_t capacity = std::max(at_least, 2 * capacity_);
  auto fresh = std::make_unique_for_overwrite<std::byte[]>(capacity);
  if (size_ != 0) std::memcpy(fresh.get(), data_.get(), size_);
  data_ = std::move(fresh);
  capacity_ = capacity;
}

void send_queue::add_copied(std::span<const std::byte> data, seq_t seq, bool frame_end, bool mergeable) {
  batch& b = filling();
  const std::size_t offset = b.bytes.size();
  if (!data.empty()) std::memcpy(b.bytes.extend(data.size()), data.data(), data.size());
  b.bytes.commit(data.size());
  if (mergeable && last_mergeable_ && !b.pieces.empty()) {
    piece& last = b.pieces.back();
    if (last.borrowed == nullptr && !last.skipped && last.offset + last.size == offset) {
      last.size += data.size();
      last.seq = seq;
      last.frame_end = frame_end;
      return;
    }
  }
  b.pieces.push_back(piece{nullptr, offset, data.size(), seq, frame_end, false});
  last_mergeable_ = mergeable;
}

send_queue::seq_t send_queue::push_copy(std::span<const std::byte> payload) {
  const seq_t seq = next_seq_++;
  batch& b = filling();
  if (b.bytes.capacity() == 0) b.bytes.reserve(batch_capacity_);
  const std::size_t offset = b.bytes.size();
  std::byte* out = b.bytes.extend(max_frame_header_size + payload.size());
  const std::size_t hlen = encode_frame_header(payload.size(), std::span<std::byte, max_frame_header_size>(out, max_frame_header_size));
  if (!payload.empty()) std::memcpy(out + hlen, payload.data(), payload.size());
  const std::size_t size = hlen + payload.size();
  b.bytes.commit(size);
  pending_ += size;
  if (last_mergeable_ && !b.pieces.empty()) {
    piece& last = b.pieces.back();
    if (last.borrowed == nullptr && !last.skipped && last.offset + last.size == offset) {
      last.size += size;
      last.seq = seq;
      last.frame_end = true;
      return seq;
    }
  }
  b.pieces.push_back(piece{nullptr, offset, size, seq, true, false});
  last_mergeable_ = true;
  return seq;
}

send_queue::seq_t send_queue::push_borrowed(std::span<const std::byte> payload) {
  const seq_t seq = next_seq_++;
  std::array<std::byte, max_frame_header_size> header;
  const std::size_t hlen = encode_frame_header(payload.size(), header);
  if (filling().bytes.capacity() == 0) filling().bytes.reserve(batch_capacity_);
  last_mergeable_ = false;
  add_copied({header.data(), hlen}, seq, false, false);
  filling().pieces.push_back(piece{payload.data(), 0, payload.size(), seq, true, false});
  last_mergeable_ = false;
  pending_ += hlen + payload.size();
  return seq;
}

void send_queue::finish_pieces() noexcept {
  batch& w = writing();
  while (w.next_piece < w.pieces.size()) {
    const piece& p = w.pieces[w.next_piece];
    if (!p.skipped && w.piece_offset < p.size) break;
    if (p.frame_end) written_seq_ = std::max(written_seq_, p.seq);
    ++w.next_piece;
    w.piece_offset = 0;
  }
}

int send_queue::gather(::iovec* iov, int max) {
  finish_pieces();
  if (writing().next_piece == writing().pieces.size()) {
    writing().clear();
    if (filling().pieces.empty()) return 0;
    filling_ = 1 - filling_;
    last_mergeable_ = false;
    finish_pieces();
  }
  batch& w = writing();
  int n = 0;
  std::size_t offset = w.piece_offset;
  for (std::size_t i = w.next_piece; i < w.pieces.size() && n < max; ++i) {
    const piece& p = w.pieces[i];
    if (p.skipped) break;
    const std::byte* base = p.borrowed != nullptr ? p.borrowed : w.bytes.data() + p.offset;
    iov[n].iov_base = const_cast<std::byte*>(base + offset);
    iov[n].iov_len = p.size - offset;
    offset = 0;
    if (iov[n].iov_len != 0) ++n;
  }
  return n;
}

void send_queue::advance(std::size_t n) noexcept {
  pending_ -= std::min(n, pending_);
  batch& w = writing();
  while (n > 0 && w.next_piece < w.pieces.size()) {
    const piece& p = w.pieces[w.next_piece];
    const std::size_t take = std::min(n, p.size - w.piece_offset);
    w.piece_offset += take;
    n -= take;
    if (w.piece_offset == p.size) {
      if (p.frame_end) written_seq_ = std::max(written_seq_, p.seq);
      ++w.next_piece;
      w.piece_offset = 0;
    }
  }
  finish_pieces();
}

send_queue::cancel_result send_queue::cancel(seq_t seq) {
  if (seq <= written_seq_) return cancel_result::done;
  for (batch* b : {&filling(), &writing()}) {
    const bool being_written = b == &writing();
    bool found = false, started = false;
    for (std::size_t i = 0; i < b->pieces.size(); ++i) {
      piece& p = b->pieces[i];
      if (p.seq != seq) continue;
      if (!found && being_written)
        started = i < b->next_piece || (i == b->next_piece && b->piece_offset > 0);
      found = true;
    }
    if (!found) continue;
    for (std::size_t i = 0; i < b->pieces.size(); ++i) {
      piece& p = b->pieces[i];
      if (p.seq != seq) continue;
      if (!started) {
        if (!p.skipped) {
          const std::size_t unwritten = (being_written && i == b->next_piece) ? p.size - b->piece_offset : p.size;
          pending_ -= std::min(unwritten, pending_);
          p.skipped = true;
        }
      } else if (p.borrowed != nullptr) {
        auto copy = std::make_unique_for_overwrite<std::byte[]>(p.size);
        std::memcpy(copy.get(), p.borrowed, p.size);
        p.borrowed = copy.get();
        b->rescued.push_back(std::move(copy));
      }
    }
    if (being_written) finish_pieces();
    return started ? cancel_result::copied : cancel_result::removed;
  }
  return cancel_result::done;
}

std::size_t send_queue::capacity() const noexcept {
  return batches_[0].bytes.capacity() + batches_[1].bytes.capacity() +
         (batches_[0].pieces.capacity() + batches_[1].pieces.capacity()) * sizeof(piece);
}

} // namespace detail

} // namespace coropipe
