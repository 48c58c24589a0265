// SPDX-License-Identifier: BSL-1.0
#include <coropipe/batch.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/error.hpp>
#include <coropipe/pool.hpp>

#include <coropipe/asio.hpp>

#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

using asio::awaitable;
using asio::use_awaitable;
using coropipe::batch;
using coropipe_test::run;
using int_batches = coropipe::batch_pool<int, int>;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);
const std::string worker_program = COROPIPE_POOL_WORKER;

// x + 1; x == -1 aborts the worker.
awaitable<int> inc(int x) {
  if (x == -1) std::abort();
  co_return x + 1;
}

std::string shout(std::string s) { return s + "!"; }

template <typename T>
std::vector<std::byte> encode(const T& v) {
  std::vector<std::byte> out;
  coropipe::codec<T>::encode(v, out);
  return out;
}

std::vector<std::byte> bytes(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

std::vector<int> iota_vector(int n, int from = 0) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

bool all_incremented(const std::vector<int>& in, const std::vector<int>& out) {
  if (in.size() != out.size()) return false;
  for (std::size_t i = 0; i < in.size(); ++i)
    if (out[i] != in[i] + 1) return false;
  return true;
}

} // namespace

TEST_CASE("a batch of a trivially copyable type travels as the items' bytes") {
  const batch<int> b{{1, 2, 3}};
  const auto wire = encode(b);
  CHECK(wire == encode(std::vector<int>{1, 2, 3}));
  batch<int> back;
  CHECK(!coropipe::codec<batch<int>>::decode(wire, back));
  CHECK(back == b);
  CHECK(!coropipe::codec<batch<int>>::decode({}, back));
  CHECK(back.items.empty());
  CHECK(coropipe::codec<batch<int>>::decode(bytes({1, 0, 0, 0, 2}), back) == coropipe::errc::decode_failed);
}

TEST_CASE("a batch of another codable type: each item length-prefixed, malformed payloads refused") {
  const batch<std::string> b{{"Spam 0", "", std::string(300, 'x')}};
  const auto wire = encode(b);
  CHECK(wire.size() == 3 * 4 + 6 + 0 + 300);
  CHECK(wire[0] == std::byte{0});
  CHECK(wire[3] == std::byte{6});  // big-endian length of "Spam 0"
  batch<std::string> back;
  CHECK(!coropipe::codec<batch<std::string>>::decode(wire, back));
  CHECK(back == b);
  // A length that runs past the end, and a truncated length.
  CHECK(coropipe::codec<batch<std::string>>::decode(bytes({0, 0, 0, 9, 'a', 'b'}), back) ==
        coropipe::errc::decode_failed);
  CHECK(coropipe::codec<batch<std::string>>::decode(bytes({0, 0, 0, 1, 'a', 0, 0}), back) ==
        coropipe::errc::decode_failed);
  // An item its own codec refuses (a batch of batches of int: 3 bytes).
  batch<batch<int>> nested;
  CHECK(coropipe::codec<batch<batch<int>>>::decode(bytes({0, 0, 0, 3, 1, 2, 3}), nested) == coropipe::errc::decode_failed);
}

TEST_CASE("batched(): coroutine and plain per-item functions, in order") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    auto a = coropipe::batched(inc);
    batch<int> in{iota_vector(3, 1)};
    batch<int> r = co_await a(std::move(in));
    CHECK(r.items == std::vector<int>{2, 3, 4});
    auto b = coropipe::batched(shout);
    batch<std::string> words{{std::string("a"), std::string("b")}};
    batch<std::string> s = co_await b(std::move(words));
    CHECK(s.items == std::vector<std::string>{"a!", "b!"});
    auto c = coropipe::batched<int>([](auto x) { return static_cast<double>(x) / 2; });
    batch<int> halves;
    halves.items = {1, 4};
    batch<double> d = co_await c(std::move(halves));
    CHECK(d.items == std::vector<double>{0.5, 2.0});
    batch<int> empty = co_await a(batch<int>{});
    CHECK(empty.items.empty());
  }());
}

TEST_CASE("async_batch_map keeps the order over any chunk size, and an empty range is no work") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_batches p(io.get_executor(), int_batches::workers_type::forked(coropipe::batched(inc)), {.workers = 2});
    const std::vector<int> in = iota_vector(10007);
    for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, std::size_t{20000}}) {
      CAPTURE(chunk);
      const std::vector<int> slice(in.begin(), in.begin() + (chunk == 1 ? 300 : 10007));
      std::vector<int> out = co_await coropipe::async_batch_map(p, slice, {.chunk_size = chunk}, use_awaitable);
      CHECK(all_incremented(slice, out));
    }
    const std::vector<int> none;
    std::vector<int> nothing = co_await coropipe::async_batch_map(p, none, {}, use_awaitable);
    CHECK(nothing.empty());
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}

TEST_CASE("async_batch_map: a worker that dies fails its batch with worker_died; the pool goes on") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_batches p(io.get_executor(), int_batches::workers_type::forked(coropipe::batched(inc)),
                  {.workers = 2, .restart_backoff = std::chrono::milliseconds(1)});
    std::vector<int> in = iota_vector(1000);
    in[500] = -1;  // this item kills the worker that gets its batch
    auto r = co_await coropipe::async_batch_map(p, in, {.chunk_size = 100}, as_tuple);
    CHECK(std::get<0>(r) == coropipe::errc::worker_died);
    const std::vector<int>& partial = std::get<1>(r);
    REQUIRE(partial.size() == in.size());
    CHECK(partial[0] == 1);  // the first batch was answered before the death
    // The pool goes on.
    in[500] = 500;
    std::vector<int> again = co_await coropipe::async_batch_map(p, in, {.chunk_size = 100}, use_awaitable);
    CHECK(all_incremented(in, again));
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("async_batch_map: a worker answering a batch with the wrong number of items is decode_failed") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    auto short_by_one = [](batch<int> b) -> awaitable<batch<int>> {
      if (!b.items.empty()) b.items.pop_back();
      co_return b;
    };
    int_batches p(io.get_executor(), int_batches::workers_type::forked(short_by_one), {.workers = 1});
    auto r = co_await coropipe::async_batch_map(p, iota_vector(10), {.chunk_size = 5}, as_tuple);
    CHECK(std::get<0>(r) == coropipe::errc::decode_failed);
    co_await p.async_shutdown(use_awaitable);
  }());
}

TEST_CASE("spawned serve_stdio batch workers (pool_worker batch-inc)") {
  asio::io_context io;
  run(io, [&]() -> awaitable<void> {
    int_batches p(io.get_executor(), int_batches::workers_type::spawned({worker_program, "batch-inc"}), {.workers = 2});
    const std::vector<int> in = iota_vector(50000);
    std::vector<int> out = co_await coropipe::async_batch_map(p, in, {}, use_awaitable);
    CHECK(all_incremented(in, out));
    co_await p.async_shutdown(use_awaitable);
  }());
  CHECK(coropipe_test::has_children() == false);
}
