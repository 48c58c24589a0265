// SPDX-License-Identifier: BSL-1.0
// Case 7: memory. The bench replaces the global operator new to count
// allocations; steady-state messaging must make none.
#include "cases.hpp"

#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>

#include <malloc.h>

#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {
std::uint64_t allocation_count() noexcept;  // alloc_counter.cpp
void count_allocations(bool on) noexcept;     // alloc_counter.cpp

namespace {
// Counts allocations while it lives.
struct counting_allocations {
  counting_allocations() {
    count_allocations(true);
    // A zero must mean "nothing allocated", not "nothing counted".
    const std::uint64_t before = allocation_count();
    delete new volatile int(0);
    if (allocation_count() == before) throw std::runtime_error("the allocation counter does not count");
  }
  ~counting_allocations() { count_allocations(false); }
  counting_allocations(const counting_allocations&) = delete;
  counting_allocations& operator=(const counting_allocations&) = delete;
};
} // namespace
} // namespace bench

namespace bench {

namespace {

using asio::awaitable;
using asio::use_awaitable;

void run(asio::io_context& io, awaitable<void> a, awaitable<void> b) {
  std::exception_ptr error;
  auto done = [&](std::exception_ptr e) {
    if (e && !error) error = e;
  };
  asio::co_spawn(io, std::move(a), done);
  asio::co_spawn(io, std::move(b), done);
  io.run();
  if (error) std::rethrow_exception(error);
}

} // namespace

// framed_stream messages of 16 bytes through an in-process pipe, one sender
// and one receiver coroutine; allocations counted after a warm-up.
double allocations_per_message(int count) {
  constexpr int warmup = 20000;
  asio::io_context io(1);
  auto [r, w] = coropipe::pipe();
  coropipe::framed_stream<> tx(coropipe::attach(io, std::move(w)));
  coropipe::framed_stream<> rx(coropipe::attach(io, std::move(r)));
  std::uint64_t start = 0, end = 0;
  auto sender = [&]() -> awaitable<void> {
    static constexpr char payload[16] = {'p', 'a', 'y', 'l', 'o', 'a', 'd', '-', 's', 'i', 'x', 't', 'e', 'e', 'n', '!'};
    for (int i = 0; i < warmup + count; ++i) {
      co_await tx.async_send(asio::buffer(payload), use_awaitable);
      if (i == warmup / 2) co_await tx.async_flush(use_awaitable);  // warm the waiting path too
    }
    co_await tx.async_flush(use_awaitable);
  };
  auto receiver = [&]() -> awaitable<void> {
    for (int i = 0; i < warmup + count; ++i) {
      if (i == warmup) start = allocation_count();
      auto msg = co_await rx.async_receive(use_awaitable);
      if (!msg || msg->size() != 16) throw std::runtime_error("bad message");
    }
    end = allocation_count();
  };
  {
    const counting_allocations on;
    run(io, sender(), receiver());
  }
  return static_cast<double>(end - start) / count;
}

// The same with channel<std::string>, receiving into a reused string.
double channel_allocations_per_message(int count) {
  constexpr int warmup = 20000;
  asio::io_context io(1);
  auto [r, w] = coropipe::pipe();
  coropipe::channel<std::string> tx(coropipe::attach(io, std::move(w)));
  coropipe::channel<std::string> rx(coropipe::attach(io, std::move(r)));
  std::uint64_t start = 0, end = 0;
  const std::string payload = "payload-sixteen!";
  auto sender = [&]() -> awaitable<void> {
    for (int i = 0; i < warmup + count; ++i) {
      co_await tx.async_send(payload, use_awaitable);
      if (i == warmup / 2) co_await tx.async_flush(use_awaitable);  // warm the waiting path too
    }
    co_await tx.async_flush(use_awaitable);
  };
  auto receiver = [&]() -> awaitable<void> {
    std::string msg;
    for (int i = 0; i < warmup + count; ++i) {
      if (i == warmup) start = allocation_count();
      if (!co_await rx.async_receive(msg, use_awaitable) || msg != payload) throw std::runtime_error("bad message");
    }
    end = allocation_count();
  };
  {
    const counting_allocations on;
    run(io, sender(), receiver());
  }
  return static_cast<double>(end - start) / count;
}

// Heap held per open channel end (a framed_stream over a socketpair end),
// once it has sent and received a message, so that its buffers exist.
double heap_per_channel(int pairs) {
  asio::io_context io(1);
  const auto before = ::mallinfo2().uordblks;
  std::vector<coropipe::channel<std::string>> ends;
  ends.reserve(static_cast<std::size_t>(2 * pairs));
  const auto after_reserve = ::mallinfo2().uordblks;
  for (int i = 0; i < pairs; ++i) {
    auto [a, b] = coropipe::duplex_pair();
    ends.emplace_back(coropipe::attach(io, std::move(a)));
    ends.emplace_back(coropipe::attach(io, std::move(b)));
  }
  auto traffic = [&]() -> awaitable<void> {
    for (std::size_t i = 0; i < ends.size(); i += 2) {
      co_await ends[i].async_send("ping", use_awaitable);
      co_await ends[i + 1].async_send("pong", use_awaitable);
      if (!co_await ends[i + 1].async_receive(use_awaitable)) throw std::runtime_error("no ping");
      if (!co_await ends[i].async_receive(use_awaitable)) throw std::runtime_error("no pong");
    }
  };
  asio::co_spawn(io, traffic(), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  io.run();
  const auto after = ::mallinfo2().uordblks;
  (void)before;
  return static_cast<double>(after - after_reserve) / static_cast<double>(ends.size());
}

} // namespace bench
