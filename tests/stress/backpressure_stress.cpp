// SPDX-License-Identifier: BSL-1.0
// Stress: backpressure. A writer pushes G bytes (64 MiB small, 1 GiB large)
// through framed_stream::async_send and through raw coropipe::async_write to a
// forked child that reads slowly (it pauses every 256 KiB). The writer's
// memory must stay bounded: its resident set (/proc/self/statm) is sampled as
// it goes and may not grow by more than 16 MiB, and the framed_stream's queue
// stays within its configured size. The child verifies every byte against the
// expected pattern and reports what it saw through a pipe and its exit code.
#include <coropipe/attach.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/io.hpp>
#include <coropipe/pipe.hpp>

#include <doctest/doctest.h>

#include "stress.hpp"
#include "support.hpp"

#include <coropipe/asio.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::framed_stream;
using coropipe::unique_fd;
using coropipe_stress::fill_pattern;
using coropipe_stress::matches_pattern;
using coropipe_test::run;
using coropipe_test::seconds_since;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);
constexpr std::uint32_t seed = 3;
constexpr std::uint64_t pause_every = 256 << 10;
constexpr std::int64_t growth_bound = 16 << 20;

std::int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

// Peak resident set (VmHWM), in bytes.
std::int64_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

// Resets VmHWM to the current resident set (Linux 4.0+); false if refused.
bool reset_peak_resident() {
  const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

struct reader_report {
  std::uint64_t bytes = 0;
  std::uint64_t messages = 0;
  std::uint64_t pauses = 0;
};

void write_report(int fd, const reader_report& r) {
  char line[128];
  const int n = std::snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", r.bytes, r.messages,
                              r.pauses);
  (void)!::write(fd, line, static_cast<std::size_t>(n));
}

reader_report parse_report(const std::string& s) {
  reader_report r;
  unsigned long long b = 0, m = 0, p = 0;
  if (std::sscanf(s.c_str(), "%llu %llu %llu", &b, &m, &p) == 3) r = {b, m, p};
  return r;
}

// What a slow reader has taken in so far: it verifies each piece as the next
// bytes of the pattern and pauses 1 ms every 256 KiB, so that the writer
// keeps finding the pipe full.
class slow_intake {
public:
  explicit slow_intake(child_context& ctx) : pause_(ctx.get_executor()) {}

  // Takes in one message (or one read's worth of bytes).
  awaitable<void> take(const void* data, std::size_t n) {
    intact_ = intact_ && matches_pattern(data, n, rep_.bytes, seed);
    rep_.bytes += n;
    ++rep_.messages;
    if (rep_.bytes >= next_pause_) {
      next_pause_ += pause_every;
      ++rep_.pauses;
      pause_.expires_after(1ms);
      co_await pause_.async_wait(use_awaitable);
    }
  }

  // Writes the report to @p fd; returns the reader's exit code, 0 when all was intact.
  int finish(int fd) const {
    write_report(fd, rep_);
    return intact_ ? 0 : 3;
  }

private:
  asio::steady_timer pause_;
  reader_report rep_;
  bool intact_ = true;
  std::uint64_t next_pause_ = pause_every;
};

// The slow reader of frames.
awaitable<int> slow_frame_reader(child_context& ctx, unique_fd in, unique_fd report) {
  framed_stream<> r(ctx.attach(std::move(in)));
  slow_intake intake(ctx);
  for (;;) {
    auto m = co_await r.async_receive(use_awaitable);
    if (!m) break;
    co_await intake.take(m->data(), m->size());
  }
  co_return intake.finish(report.get());
}

// The slow reader of raw bytes.
awaitable<int> slow_byte_reader(child_context& ctx, unique_fd in, unique_fd report) {
  auto r = ctx.attach(std::move(in));
  slow_intake intake(ctx);
  std::vector<char> buf(64 << 10);
  for (;;) {
    auto [ec, n] = co_await coropipe::async_read_some(r, asio::buffer(buf), as_tuple);
    if (ec == asio::error::eof) break;
    if (ec) co_return 2;
    co_await intake.take(buf.data(), n);
  }
  co_return intake.finish(report.get());
}

struct memory_watch {
  std::int64_t start = resident_bytes();
  std::int64_t max_growth = 0;
  int samples = 0;
  bool hwm = reset_peak_resident();
  void sample() {
    max_growth = std::max(max_growth, resident_bytes() - start);
    ++samples;
  }
  std::int64_t peak_growth() const { return hwm ? peak_resident_bytes() - start : -1; }
};

// Runs @p writer (given the write end) against @p reader in a forked child;
// returns the child's report after checking its exit status.
template <typename Reader, typename Writer>
reader_report transfer(asio::io_context& io, Reader reader, Writer writer, std::chrono::seconds timeout) {
  auto data = coropipe::pipe();
  auto report = coropipe::pipe();
  coropipe::child c = coropipe::fork_child(io, reader, std::move(data.read_end), std::move(report.write_end));
  run(io, writer(std::move(data.write_end)), timeout);
  coropipe::exit_status st;
  run(io, [&]() -> awaitable<void> { st = co_await c.async_wait(use_awaitable); }(), 30s);
  CHECK(st.success());
  return parse_report(coropipe_test::read_all(report.read_end.get(), 10s));
}

} // namespace

TEST_CASE("backpressure: framed_stream::async_send to a slow reader keeps the writer's memory bounded") {
  const std::uint64_t total = coropipe_stress::size<std::uint64_t>(64 << 20, std::uint64_t{1} << 30);
  asio::io_context io;
  std::vector<char> buf(256 << 10);  // before the first sample
  const coropipe::framed_options opts{};
  const std::size_t queue_bound = opts.send_buffer_size + opts.copy_threshold + coropipe::max_frame_header_size;
  memory_watch mem;
  std::size_t max_pending = 0, max_buffer_memory = 0;
  std::uint64_t sent = 0, messages = 0;
  const auto start = std::chrono::steady_clock::now();
  const reader_report rep = transfer(
      io, slow_frame_reader,
      [&](unique_fd w) -> awaitable<void> {
        framed_stream<> out(coropipe::attach(io, std::move(w)), opts);
        while (sent < total) {
          // Mostly copied payloads (up to 16 KiB), every 32nd one written in place.
          std::size_t n = messages % 32 == 31 ? buf.size() : 1 + (messages * 977) % opts.copy_threshold;
          n = static_cast<std::size_t>(std::min<std::uint64_t>(n, total - sent));
          fill_pattern(buf.data(), n, sent, seed);
          co_await out.async_send(asio::buffer(buf.data(), n), use_awaitable);
          sent += n;
          ++messages;
          max_pending = std::max(max_pending, out.pending_bytes());
          max_buffer_memory = std::max(max_buffer_memory, out.buffer_memory());
          if (messages % 64 == 0) mem.sample();
        }
        co_await out.async_close(use_awaitable);
        mem.sample();
      },
      coropipe_stress::size(60s, 600s));
  const double secs = seconds_since(start);
  CHECK(rep.bytes == total);
  CHECK(rep.messages == messages);
  CHECK(rep.pauses >= total / pause_every - 1);
  CHECK(max_pending <= queue_bound);
  CHECK(max_pending >= opts.send_buffer_size / 2);  // the queue did fill: backpressure happened
  CHECK(max_buffer_memory <= queue_bound + opts.read_size + (64 << 10));
  CHECK(mem.max_growth < growth_bound);
  if (mem.hwm) CHECK(mem.peak_growth() < growth_bound);
  MESSAGE("backpressure framed: " << (total >> 20) << " MiB in " << messages << " messages in " << secs << " s ("
                                  << static_cast<double>(total) / secs / (1 << 20) << " MiB/s), reader paused "
                                  << rep.pauses << " times; writer RSS growth max " << (mem.max_growth >> 10)
                                  << " KiB over " << mem.samples << " samples, VmHWM growth "
                                  << (mem.peak_growth() >> 10) << " KiB; queue max " << (max_pending >> 10)
                                  << " KiB, buffer_memory max " << (max_buffer_memory >> 10) << " KiB");
}

TEST_CASE("backpressure: raw async_write to a slow reader keeps the writer's memory bounded") {
  const std::uint64_t total = coropipe_stress::size<std::uint64_t>(64 << 20, std::uint64_t{1} << 30);
  asio::io_context io;
  std::vector<char> buf(1 << 20);
  memory_watch mem;
  std::uint64_t sent = 0, writes = 0;
  const auto start = std::chrono::steady_clock::now();
  const reader_report rep = transfer(
      io, slow_byte_reader,
      [&](unique_fd w) -> awaitable<void> {
        auto out = coropipe::attach(io, std::move(w));
        while (sent < total) {
          const std::size_t n = static_cast<std::size_t>(
              std::min<std::uint64_t>(1 + (writes * 7919 * 31) % buf.size(), total - sent));
          fill_pattern(buf.data(), n, sent, seed);
          co_await coropipe::async_write(out, asio::buffer(buf.data(), n), use_awaitable);
          sent += n;
          ++writes;
          if (writes % 4 == 0) mem.sample();
        }
        out.close();
        mem.sample();
      },
      coropipe_stress::size(60s, 600s));
  const double secs = seconds_since(start);
  CHECK(rep.bytes == total);
  CHECK(rep.pauses >= total / pause_every - 1);
  CHECK(mem.max_growth < growth_bound);
  if (mem.hwm) CHECK(mem.peak_growth() < growth_bound);
  MESSAGE("backpressure raw: " << (total >> 20) << " MiB in " << writes << " async_writes in " << secs << " s ("
                               << static_cast<double>(total) / secs / (1 << 20) << " MiB/s), reader made "
                               << rep.messages << " reads and paused " << rep.pauses
                               << " times; writer RSS growth max " << (mem.max_growth >> 10) << " KiB over "
                               << mem.samples << " samples, VmHWM growth " << (mem.peak_growth() >> 10) << " KiB");
}
