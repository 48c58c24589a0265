// SPDX-License-Identifier: BSL-1.0
// Stress: random kills. While many forked children stream bytes or framed
// messages to the parent, a random fifth of them get SIGKILL at random
// moments. Exactly those may end early, and then only cleanly: a prefix of
// their stream and end of stream (or a frame cut short), and exit status
// killed(SIGKILL); every other stream is intact and exits 0. A kill that lands
// after its child finished is a legitimate race: the wait then reports
// exited(0), and the stream must be complete.
#include <coropipe/attach.hpp>
#include <coropipe/error.hpp>
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

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::exit_status;
using coropipe_stress::size;
using coropipe_stress::within;
using coropipe_test::seconds_since;
using coropipe_test::then_wait;

namespace {

// Which children get SIGKILL, and when.
struct kill_plan {
  std::vector<bool> doomed;
  std::vector<std::chrono::microseconds> delay;
  std::size_t count = 0;
};

kill_plan plan_kills(std::uint64_t run_seed, std::size_t children, std::chrono::microseconds max_delay) {
  std::mt19937_64 rng(run_seed);
  std::vector<std::size_t> order(children);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::shuffle(order.begin(), order.end(), rng);
  kill_plan plan;
  plan.count = std::max<std::size_t>(1, children / 5);
  plan.doomed.assign(children, false);
  plan.delay.assign(children, 0us);
  std::uniform_int_distribution<std::int64_t> d(0, max_delay.count());
  for (std::size_t k = 0; k < plan.count; ++k) {
    plan.doomed[order[k]] = true;
    plan.delay[order[k]] = std::chrono::microseconds(d(rng));
  }
  return plan;
}

// Sends SIGKILL to @p c after @p delay; @p ec: what signal() reported.
awaitable<void> kill_later(coropipe::child& c, std::chrono::microseconds delay, coropipe::error_code& ec) {
  asio::steady_timer t(co_await asio::this_coro::executor, delay);
  co_await t.async_wait(use_awaitable);
  c.signal(SIGKILL, ec);
}

} // namespace

TEST_CASE("random SIGKILLs among forked children streaming bytes: exactly the killed streams end early, cleanly") {
  const std::size_t children = size<std::size_t>(24, 200);
  const std::size_t bytes = size<std::size_t>(std::size_t{8} << 20, std::size_t{16} << 20);
  const auto max_delay = size<std::chrono::microseconds>(60ms, 3s);
  const std::uint64_t run_seed = coropipe_stress::seed();
  MESSAGE("seed " << run_seed << " (COROPIPE_STRESS_SEED to replay)");
  INFO("seed " << run_seed);
  const kill_plan plan = plan_kills(run_seed, children, max_delay);
  const auto fds_before = coropipe_test::open_fds();
  const auto t0 = std::chrono::steady_clock::now();
  {
    asio::io_context io;
    auto streams = coropipe_stress::fork_byte_writers(io, children, run_seed, bytes);
    auto& kids = streams.kids;
    auto& ins = streams.ins;
    std::vector<coropipe_stress::bytes_seen> seen(children);
    std::vector<exit_status> status(children, exit_status::from_code(255));
    std::vector<coropipe::error_code> kill_ec(children);
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < children; ++i) {
      const std::uint64_t seed = coropipe_stress::child_seed(run_seed, i);
      work.push_back(within(size(60s, 600s),
                            then_wait(coropipe_stress::check_bytes(ins[i], seed, seen[i]), kids[i], status[i]),
                            "child " + std::to_string(i)));
      if (plan.doomed[i])
        work.push_back(within(size(60s, 600s), kill_later(kids[i], plan.delay[i], kill_ec[i]), "kill"));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    std::size_t landed = 0, raced = 0, total = 0;
    for (std::size_t i = 0; i < children; ++i) {
      CAPTURE(i);
      CAPTURE(plan.doomed[i]);
      CAPTURE(status[i].to_string());
      CHECK_FALSE(kill_ec[i]);
      CHECK_FALSE(seen[i].mismatch_at.has_value());  // never a wrong byte
      CHECK_FALSE(seen[i].error);
      CHECK(seen[i].eof);  // always a clean end of stream
      total += seen[i].bytes;
      if (plan.doomed[i] && status[i] == exit_status::killed(SIGKILL)) {
        ++landed;
        CHECK(seen[i].bytes <= bytes);  // a prefix
      } else {
        // Not killed, or killed too late to matter: complete.
        if (plan.doomed[i]) ++raced;
        CHECK(status[i] == exit_status::from_code(0));
        CHECK(seen[i].bytes == bytes);
      }
    }
    CHECK(landed + raced == plan.count);
    MESSAGE("kills/bytes: seed " << run_seed << ", " << children << " forked children x " << bytes << " bytes, " << plan.count
                            << " SIGKILLs within " << max_delay.count() / 1000 << " ms (" << landed
                            << " landed mid-stream, " << raced << " after the child finished), " << total
                            << " bytes checked in " << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("random SIGKILLs among forked children sending framed messages: exactly the killed streams end early, cleanly") {
  const std::size_t children = size<std::size_t>(24, 200);
  const std::uint64_t count = size<std::uint64_t>(20000, 100000);
  const auto max_delay = size<std::chrono::microseconds>(300ms, 5s);
  const std::uint64_t run_seed = coropipe_stress::seed();
  MESSAGE("seed " << run_seed << " (COROPIPE_STRESS_SEED to replay)");
  INFO("seed " << run_seed);
  const kill_plan plan = plan_kills(run_seed, children, max_delay);
  const auto fds_before = coropipe_test::open_fds();
  const auto t0 = std::chrono::steady_clock::now();
  {
    asio::io_context io;
    auto streams = coropipe_stress::fork_message_senders(io, children, run_seed, count);
    auto& kids = streams.kids;
    auto& ins = streams.ins;
    std::vector<coropipe_stress::messages_seen> seen(children);
    std::vector<exit_status> status(children, exit_status::from_code(255));
    std::vector<coropipe::error_code> kill_ec(children);
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < children; ++i) {
      const std::uint64_t seed = coropipe_stress::child_seed(run_seed, i);
      const auto id = static_cast<std::uint32_t>(i);
      work.push_back(within(size(60s, 600s),
                            then_wait(coropipe_stress::check_messages(ins[i], seed, id, seen[i]), kids[i], status[i]),
                            "child " + std::to_string(i)));
      if (plan.doomed[i])
        work.push_back(within(size(60s, 600s), kill_later(kids[i], plan.delay[i], kill_ec[i]), "kill"));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    std::size_t landed = 0, raced = 0, truncated = 0;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < children; ++i) {
      CAPTURE(i);
      CAPTURE(plan.doomed[i]);
      CAPTURE(status[i].to_string());
      CAPTURE(seen[i].error.message());
      CHECK_FALSE(kill_ec[i]);
      CHECK(seen[i].bad.value_or("") == "");  // never a wrong, lost or reordered message
      total += seen[i].messages;
      if (plan.doomed[i] && status[i] == exit_status::killed(SIGKILL)) {
        ++landed;
        CHECK(seen[i].messages <= count);  // a prefix...
        // ... then a clean end, or the end inside a frame the kill cut short.
        const bool truncated_frame = seen[i].error == coropipe::errc::truncated_message;
        CHECK((seen[i].clean_end || truncated_frame));
        if (truncated_frame) ++truncated;
        else CHECK_FALSE(seen[i].error);
      } else {
        if (plan.doomed[i]) ++raced;
        CHECK(status[i] == exit_status::from_code(0));
        CHECK(seen[i].messages == count);
        CHECK(seen[i].clean_end);
        CHECK_FALSE(seen[i].error);
      }
    }
    CHECK(landed + raced == plan.count);
    MESSAGE("kills/messages: seed " << run_seed << ", " << children << " forked children x " << count << " framed messages, " << plan.count
                               << " SIGKILLs within " << max_delay.count() / 1000 << " ms (" << landed
                               << " landed mid-stream, " << truncated << " of them inside a frame; " << raced
                               << " after the child finished), " << total << " messages checked in "
                               << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("random SIGKILLs among spawned cats being written to and read from: the parent's writes fail cleanly") {
  const std::size_t cats = size<std::size_t>(16, 100);
  const std::size_t bytes = size<std::size_t>(std::size_t{4} << 20, std::size_t{16} << 20);
  const auto max_delay = size<std::chrono::microseconds>(100ms, 3s);
  const std::uint64_t run_seed = coropipe_stress::seed();
  MESSAGE("seed " << run_seed << " (COROPIPE_STRESS_SEED to replay)");
  INFO("seed " << run_seed);
  const kill_plan plan = plan_kills(run_seed, cats, max_delay);
  const auto fds_before = coropipe_test::open_fds();
  const auto t0 = std::chrono::steady_clock::now();
  {
    asio::io_context io;
    std::vector<coropipe::process> procs;
    for (std::size_t i = 0; i < cats; ++i) {
      procs.push_back(coropipe::spawn(
          io, {.argv = {"cat"}, .in = coropipe::stdio::pipe(), .out = coropipe::stdio::pipe()}));
    }
    std::vector<std::size_t> written(cats, 0);
    std::vector<coropipe::error_code> write_ec(cats);
    std::vector<coropipe_stress::bytes_seen> seen(cats);
    std::vector<exit_status> status(cats, exit_status::from_code(255));
    std::vector<coropipe::error_code> kill_ec(cats);
    std::vector<awaitable<void>> work;
    for (std::size_t i = 0; i < cats; ++i) {
      const std::uint64_t seed = coropipe_stress::child_seed(run_seed, i);
      work.push_back(within(
          size(60s, 600s),
          [](coropipe::process& p, std::uint64_t s, std::size_t total, std::size_t& done,
             coropipe::error_code& ec) -> awaitable<void> {
            coropipe_stress::byte_stream gen(s);
            std::vector<unsigned char> buf(coropipe_stress::chunk_size);
            while (done < total) {
              const std::size_t n = std::min(buf.size(), total - done);
              gen.fill(buf.data(), n);
              auto [wec, w] = co_await coropipe::async_write(p.stdin_pipe(), asio::buffer(buf.data(), n),
                                                             coropipe_stress::as_tuple);
              done += w;
              if (wec) {
                ec = wec;
                break;
              }
            }
            p.stdin_pipe().close();
          }(procs[i], seed, bytes, written[i], write_ec[i]),
          "writing to cat " + std::to_string(i)));
      work.push_back(within(size(60s, 600s),
                            then_wait(coropipe_stress::check_bytes(procs[i].stdout_pipe(), seed, seen[i]), procs[i],
                                      status[i]),
                            "reading from cat " + std::to_string(i)));
      if (plan.doomed[i])
        work.push_back(within(size(60s, 600s), kill_later(procs[i], plan.delay[i], kill_ec[i]), "kill"));
    }
    coropipe_test::run_all(io, std::move(work), size(90s, 900s));
    std::size_t landed = 0, raced = 0, broken = 0, total = 0;
    for (std::size_t i = 0; i < cats; ++i) {
      CAPTURE(i);
      CAPTURE(plan.doomed[i]);
      CAPTURE(status[i].to_string());
      CAPTURE(write_ec[i].message());
      CHECK_FALSE(kill_ec[i]);
      CHECK_FALSE(seen[i].mismatch_at.has_value());
      CHECK_FALSE(seen[i].error);
      CHECK(seen[i].eof);
      CHECK(seen[i].bytes <= written[i]);
      total += seen[i].bytes;
      if (plan.doomed[i] && status[i] == exit_status::killed(SIGKILL)) {
        ++landed;
        // The writes stop with broken_pipe once cat is gone (never SIGPIPE),
        // unless they were all done before.
        CHECK((!write_ec[i] || write_ec[i] == asio::error::broken_pipe));
        CHECK((write_ec[i] || written[i] == bytes));
        if (write_ec[i]) ++broken;
      } else {
        if (plan.doomed[i]) ++raced;
        CHECK(status[i] == exit_status::from_code(0));
        CHECK_FALSE(write_ec[i]);
        CHECK(written[i] == bytes);
        CHECK(seen[i].bytes == bytes);
      }
    }
    CHECK(landed + raced == plan.count);
    MESSAGE("kills/cats: seed " << run_seed << ", " << cats << " spawned cats x " << bytes << " bytes, " << plan.count << " SIGKILLs within "
                           << max_delay.count() / 1000 << " ms (" << landed << " landed mid-stream, " << broken
                           << " of them failing the parent's write with broken_pipe; " << raced
                           << " after cat finished), " << total << " bytes read back and checked in "
                           << seconds_since(t0) << " s");
  }
  CHECK(coropipe_test::open_fds() == fds_before);
  CHECK_FALSE(coropipe_test::has_children());
}
