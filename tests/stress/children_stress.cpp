// Stress: many children at once. Forked children stream pseudo-random bytes
// or framed messages to the parent, and spawned `cat`s round-trip bytes, all
// concurrently on one io_context; every byte, message and exit status is
// checked.
#include <coropipe/attach.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/io.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/spawn.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include "stress.hpp"
#include "stress_streams.hpp"

#include <asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::exit_status;
using coropipe::unique_fd;
using coropipe_stress::size;
using coropipe_stress::within;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

TEST_CASE("many forked children stream pseudo-random bytes to the parent at once") {
  const std::size_t children = size<std::size_t>(24, 200);
  const std::size_t bytes = size<std::size_t>(std::size_t{1} << 20, std::size_t{16} << 20);
  const std::uint64_t run_seed = coropipe_stress::seed();
  INFO("seed " << run_seed);
  const auto fds_before = coropipe_test::open_fds();
  const auto t0 = std::chrono::steady_clock::now();
  {
    asio::io_context io;
    auto streams = coropipe_stress::fork_byte_writers(io, children, run_seed, bytes);
    auto& kids = streams.kids;
    auto& ins = streams.ins;
    std::vector<coropipe_stress::bytes_seen> seen(children);
    std::vector<exit_status> status(children, exit_status::exited(255));
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < children; ++i) {
      work.push_back(within(
          size(60s, 600s),
          [](asio::posix::stream_descriptor& in, coropipe::child& c, std::uint64_t seed, coropipe_stress::bytes_seen& s,
             exit_status& st) -> awaitable<void> {
            co_await coropipe_stress::check_bytes(in, seed, s);
            st = co_await c.async_wait(use_awaitable);
          }(ins[i], kids[i], coropipe_stress::child_seed(run_seed, i), seen[i], status[i]),
          "child " + std::to_string(i)));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    std::size_t total = 0;
    for (std::size_t i = 0; i < children; ++i) {
      CAPTURE(i);
      CHECK_FALSE(seen[i].mismatch_at.has_value());
      CHECK(seen[i].bytes == bytes);
      CHECK(seen[i].eof);
      CHECK_FALSE(seen[i].error);
      CHECK(status[i] == exit_status::exited(0));
      total += seen[i].bytes;
    }
    MESSAGE("bytes: " << children << " forked children x " << bytes << " bytes = " << total << " bytes checked in "
                      << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("many forked children send framed messages to the parent at once") {
  const std::size_t children = size<std::size_t>(24, 200);
  const std::uint64_t count = size<std::uint64_t>(5000, 100000);
  const std::uint64_t run_seed = coropipe_stress::seed();
  INFO("seed " << run_seed);
  const auto fds_before = coropipe_test::open_fds();
  const auto t0 = std::chrono::steady_clock::now();
  {
    asio::io_context io;
    auto streams = coropipe_stress::fork_message_senders(io, children, run_seed, count);
    auto& kids = streams.kids;
    auto& ins = streams.ins;
    std::vector<coropipe_stress::messages_seen> seen(children);
    std::vector<exit_status> status(children, exit_status::exited(255));
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < children; ++i) {
      work.push_back(within(
          size(60s, 600s),
          [](coropipe::framed_stream<>& fs, coropipe::child& c, std::uint64_t seed, std::uint32_t id,
             coropipe_stress::messages_seen& s, exit_status& st) -> awaitable<void> {
            co_await coropipe_stress::check_messages(fs, seed, id, s);
            st = co_await c.async_wait(use_awaitable);
          }(ins[i], kids[i], coropipe_stress::child_seed(run_seed, i), static_cast<std::uint32_t>(i), seen[i],
            status[i]),
          "child " + std::to_string(i)));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < children; ++i) {
      CAPTURE(i);
      CHECK(seen[i].bad.value_or("") == "");
      CHECK(seen[i].messages == count);
      CHECK(seen[i].clean_end);
      CHECK_FALSE(seen[i].error);
      CHECK(status[i] == exit_status::exited(0));
      total += seen[i].messages;
    }
    MESSAGE("messages: " << children << " forked children x " << count << " framed messages = " << total
                         << " messages checked in " << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("many spawned cats round-trip pseudo-random bytes at once") {
  const std::size_t cats = size<std::size_t>(16, 100);
  const std::size_t bytes = size<std::size_t>(std::size_t{1} << 20, std::size_t{16} << 20);
  const std::uint64_t run_seed = coropipe_stress::seed();
  INFO("seed " << run_seed);
  const auto fds_before = coropipe_test::open_fds();
  const auto t0 = std::chrono::steady_clock::now();
  {
    asio::io_context io;
    std::vector<coropipe::process> procs;
    for (std::size_t i = 0; i < cats; ++i) {
      procs.push_back(coropipe::spawn(
          io, {.argv = {"cat"}, .in = coropipe::stdio::pipe(), .out = coropipe::stdio::pipe()}));
    }
    std::vector<coropipe_stress::bytes_seen> seen(cats);
    std::vector<exit_status> status(cats, exit_status::exited(255));
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < cats; ++i) {
      const std::uint64_t seed = coropipe_stress::child_seed(run_seed, i);
      // The writer, which closes cat's stdin when done...
      work.push_back(within(
          size(60s, 600s),
          [](coropipe::process& p, std::uint64_t s, std::size_t total) -> awaitable<void> {
            co_await coropipe_stress::write_bytes(p.stdin_pipe(), s, total);
            p.stdin_pipe().close();
          }(procs[i], seed, bytes),
          "writing to cat " + std::to_string(i)));
      // ... and the reader, concurrently.
      work.push_back(within(
          size(60s, 600s),
          [](coropipe::process& p, std::uint64_t s, coropipe_stress::bytes_seen& sn,
             exit_status& st) -> awaitable<void> {
            co_await coropipe_stress::check_bytes(p.stdout_pipe(), s, sn);
            st = co_await p.async_wait(use_awaitable);
          }(procs[i], seed, seen[i], status[i]),
          "reading from cat " + std::to_string(i)));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    std::size_t total = 0;
    for (std::size_t i = 0; i < cats; ++i) {
      CAPTURE(i);
      CHECK_FALSE(seen[i].mismatch_at.has_value());
      CHECK(seen[i].bytes == bytes);
      CHECK(seen[i].eof);
      CHECK_FALSE(seen[i].error);
      CHECK(status[i] == exit_status::exited(0));
      total += seen[i].bytes;
    }
    MESSAGE("cat: " << cats << " spawned cats x " << bytes << " bytes = " << total
                    << " bytes written, read back and checked in " << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}
