// SPDX-License-Identifier: BSL-1.0
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

#include <coropipe/asio.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using coropipe::exit_status;
using coropipe_stress::size;
using coropipe_stress::within;
using coropipe_test::seconds_since;
using coropipe_test::then_wait;

namespace {

// Checks that every byte stream arrived whole, and that each writer (forked
// child or cat) exited 0; returns the bytes checked.
std::size_t check_all_bytes(const std::vector<coropipe_stress::bytes_seen>& seen,
                            const std::vector<exit_status>& status, std::size_t bytes) {
  std::size_t total = 0;
  for (std::size_t i = 0; i < seen.size(); ++i) {
    CAPTURE(i);
    CHECK_FALSE(seen[i].mismatch_at.has_value());
    CHECK(seen[i].bytes == bytes);
    CHECK(seen[i].eof);
    CHECK_FALSE(seen[i].error);
    CHECK(status[i] == exit_status::from_code(0));
    total += seen[i].bytes;
  }
  return total;
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
    std::vector<exit_status> status(children, exit_status::from_code(255));
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < children; ++i) {
      const std::uint64_t seed = coropipe_stress::child_seed(run_seed, i);
      work.push_back(within(size(60s, 600s),
                            then_wait(coropipe_stress::check_bytes(ins[i], seed, seen[i]), kids[i], status[i]),
                            "child " + std::to_string(i)));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    const std::size_t total = check_all_bytes(seen, status, bytes);
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
    std::vector<exit_status> status(children, exit_status::from_code(255));
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < children; ++i) {
      const std::uint64_t seed = coropipe_stress::child_seed(run_seed, i);
      const auto id = static_cast<std::uint32_t>(i);
      work.push_back(within(size(60s, 600s),
                            then_wait(coropipe_stress::check_messages(ins[i], seed, id, seen[i]), kids[i], status[i]),
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
      CHECK(status[i] == exit_status::from_code(0));
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
    std::vector<exit_status> status(cats, exit_status::from_code(255));
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
      work.push_back(within(size(60s, 600s),
                            then_wait(coropipe_stress::check_bytes(procs[i].stdout_pipe(), seed, seen[i]), procs[i],
                                      status[i]),
                            "reading from cat " + std::to_string(i)));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    const std::size_t total = check_all_bytes(seen, status, bytes);
    MESSAGE("cat: " << cats << " spawned cats x " << bytes << " bytes = " << total
                    << " bytes written, read back and checked in " << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}
