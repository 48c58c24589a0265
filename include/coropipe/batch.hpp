// SPDX-License-Identifier: BSL-1.0
/// @file
/// Batches: many small requests as one message, for pools that map a
/// function over many items.
///
/// ```
/// using squares = coropipe::batch_pool<int, int>;  // pool<batch<int>, batch<int>>
/// squares pool(ex, squares::workers_type::forked(coropipe::batched(square)), {.workers = 2});
/// std::vector<int> out = co_await coropipe::async_batch_map(pool, in, {.chunk_size = 4096}, asio::use_awaitable);
/// ```
///
/// A pool sends one message per request. For a tiny request (an `int`) the
/// cost of a message — a frame, a completion, a place in a worker's window —
/// dwarfs the work, which is why Python's `Pool.imap_unordered` takes a
/// `chunksize` and pickles whole chunks into one message. coropipe does the
/// same with types, not with a special protocol: a `batch<T>` is a
/// `channel`-codable vector of `T` that travels as one message, a worker
/// function made with batched() applies a per-item function to every item of
/// a batch, and async_batch_map() cuts a range into batches, submits them
/// with the pool's usual crash containment, retries and backpressure, and
/// puts the replies back in order. A batch pool is an ordinary
/// `pool<batch<Request>, batch<Reply>>`: its workers may be forked, spawned
/// (`serve_stdio<batch<Request>, batch<Reply>>(batched(fn))`) or re-executed.
///
/// The unit of failure is the batch: a worker that dies fails (or, with
/// `max_retries`, sends again) the whole batch it held.
#pragma once

#include <coropipe/channel.hpp>
#include <coropipe/error.hpp>
#include <coropipe/pool.hpp>

#include <coropipe/asio.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropipe {

/// Many values of `T` as one message.
template <codable T>
struct batch {
  std::vector<T> items;

  friend bool operator==(const batch&, const batch&) = default;
};

/// A batch's payload. For a trivially copyable `T` (`int`, `double`, a
/// struct of them): the items' bytes back to back, exactly as
/// `std::vector<T>` travels. For any other codable `T`: each item as a
/// 4-byte big-endian length followed by the item's own codec bytes. A
/// payload that does not split into whole items is `errc::decode_failed`.
template <codable T>
struct codec<batch<T>> {
  static void encode(const batch<T>& b, std::vector<std::byte>& out) {
    if constexpr (detail::is_plain_bytes<T> && !std::is_same_v<T, bool>) {
      codec<std::vector<T>>::encode(b.items, out);
    } else {
      for (const T& item : b.items) {
        const std::size_t at = out.size();
        out.resize(at + 4);
        codec<T>::encode(item, out);
        const std::size_t n = out.size() - at - 4;
        if (n > std::numeric_limits<std::uint32_t>::max()) throw system_error(errc::message_too_large, "coropipe::batch");
        for (std::size_t i = 0; i < 4; ++i) out[at + i] = static_cast<std::byte>((n >> (8 * (3 - i))) & 0xffU);
      }
    }
  }

  static error_code decode(message_view in, batch<T>& out) {
    if constexpr (detail::is_plain_bytes<T> && !std::is_same_v<T, bool>) {
      return codec<std::vector<T>>::decode(in, out.items);
    } else {
      std::size_t count = 0;
      std::size_t pos = 0;
      // Count first: one resize, and every item decodes into its place.
      while (pos < in.size()) {
        if (in.size() - pos < 4) return errc::decode_failed;
        const std::size_t n = load_length(in.data() + pos);
        if (n > in.size() - pos - 4) return errc::decode_failed;
        pos += 4 + n;
        ++count;
      }
      out.items.resize(count);
      pos = 0;
      for (T& item : out.items) {
        const std::size_t n = load_length(in.data() + pos);
        if (auto ec = codec<T>::decode(message_view(in.data() + pos + 4, n), item)) return ec;
        pos += 4 + n;
      }
      return {};
    }
  }

private:
  static std::size_t load_length(const std::byte* p) noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < 4; ++i) n = (n << 8) | std::to_integer<std::size_t>(p[i]);
    return n;
  }
};

/// A pool whose requests and replies are batches: `pool<batch<Request>,
/// batch<Reply>>`.
template <codable Request, codable Reply>
using batch_pool = pool<batch<Request>, batch<Reply>>;

namespace detail {
template <typename Fn, typename Request>
using per_item_result = std::invoke_result_t<Fn&, Request>;

template <typename T>
struct awaitable_value {
  using type = T;
  static constexpr bool is_awaitable = false;
};
template <typename T, typename E>
struct awaitable_value<asio::awaitable<T, E>> {
  using type = T;
  static constexpr bool is_awaitable = true;
};
} // namespace detail

/// Makes a batch worker function from a per-item one: the result takes a
/// `batch<Request>` and gives the `batch<Reply>` of @p fn applied to each
/// item, in order. @p fn is `asio::awaitable<Reply>(Request)` (a coroutine,
/// as for any pool worker) or a plain `Reply(Request)` callable (cheaper
/// per item: no coroutine frame). An exception from @p fn ends the worker,
/// as it does for an unbatched one.
///
/// The Request type is named explicitly when @p fn is generic:
/// `batched<int>([](auto x) { return x + 1; })`; otherwise it is deduced
/// from @p fn's parameter.
template <typename Request, typename Fn>
auto batched(Fn fn) {
  using result = detail::per_item_result<Fn, Request>;
  using Reply = typename detail::awaitable_value<result>::type;
  return [fn = std::move(fn)](batch<Request> in) mutable -> asio::awaitable<batch<Reply>> {
    batch<Reply> out;
    out.items.reserve(in.items.size());
    for (Request& item : in.items) {
      if constexpr (detail::awaitable_value<result>::is_awaitable) {
        out.items.push_back(co_await fn(std::move(item)));
      } else {
        out.items.push_back(fn(std::move(item)));
      }
    }
    co_return out;
  };
}

namespace detail {
template <typename F>
struct first_parameter;
template <typename R, typename A>
struct first_parameter<R (*)(A)> {
  using type = std::remove_cvref_t<A>;
};
template <typename R, typename C, typename A>
struct first_parameter<R (C::*)(A)> {
  using type = std::remove_cvref_t<A>;
};
template <typename R, typename C, typename A>
struct first_parameter<R (C::*)(A) const> {
  using type = std::remove_cvref_t<A>;
};
template <typename F, typename = void>
struct callable_parameter {
  using type = typename first_parameter<std::decay_t<F>>::type;
};
template <typename F>
struct callable_parameter<F, std::void_t<decltype(&F::operator())>> {
  using type = typename first_parameter<decltype(&F::operator())>::type;
};
} // namespace detail

/// batched() with the Request type deduced from @p fn's one parameter (a
/// function, or a lambda that is not generic).
template <typename Fn>
auto batched(Fn fn) {
  return batched<typename detail::callable_parameter<std::decay_t<Fn>>::type>(std::move(fn));
}

/// async_batch_map()'s options.
struct batch_map_options {
  /// Items per batch; 0 chooses: the items spread over four batches per
  /// worker (as `Pool.map` chooses its chunksize), at most 8,192 per batch.
  std::size_t chunk_size = 0;
};

/// Applies the pool's workers to every item of @p requests, in batches of
/// batch_map_options::chunk_size items, and completes with the replies in
/// the order of @p requests (`Pool.map` with a chunksize). Batches go to
/// the workers as the pool dispatches them (least-loaded first, each
/// worker's window full), so a slow batch does not hold back the others.
///
/// @param p a batch pool (`batch_pool<Request, Reply>`) whose workers run a
///   batched() function.
/// @param requests a sized range of values convertible to `Request`.
///
/// Completion signature: `void(error_code, std::vector<Reply>)`: the first
/// error of any batch (`errc::worker_died`, `errc::pool_closed`, ...), with
/// the replies received so far in their places (default-constructed where
/// missing); or `errc::decode_failed` when a worker answered a batch with a
/// different number of items.
template <codable Request, codable Reply, typename Range,
          typename Token = asio::default_completion_token_t<asio::any_io_executor>>
auto async_batch_map(batch_pool<Request, Reply>& p, const Range& requests, batch_map_options options = {},
                     Token&& token = Token()) {
  auto body = [](batch_pool<Request, Reply>& pl, const Range& reqs,
                 batch_map_options o) -> asio::awaitable<std::tuple<error_code, std::vector<Reply>>> {
    const std::size_t total = static_cast<std::size_t>(std::size(reqs));
    std::vector<Reply> out(total);
    const std::size_t workers = std::max<std::size_t>(1, pl.stats().size());
    std::size_t chunk = o.chunk_size;
    if (chunk == 0) chunk = std::clamp<std::size_t>((total + 4 * workers - 1) / (4 * workers), 1, 8192);
    const std::size_t batches = (total + chunk - 1) / chunk;
    error_code first;
    std::size_t next = 0;
    auto begin = std::begin(reqs);
    // Enough batches in flight to fill every worker's window and the queue
    // behind it; each lane submits one batch at a time.
    const std::size_t lanes = std::max<std::size_t>(1, std::min<std::size_t>(batches, 2 * workers + 2));
    auto lane = [&]() -> asio::awaitable<void> {
      while (next < batches && !first) {
        const std::size_t i = next++;
        const std::size_t lo = i * chunk, hi = std::min(total, lo + chunk);
        batch<Request> b;
        b.items.assign(std::next(begin, static_cast<std::ptrdiff_t>(lo)), std::next(begin, static_cast<std::ptrdiff_t>(hi)));
        auto r = co_await pl.async_submit(std::move(b), compat::as_tuple(asio::use_awaitable));
        error_code ec = std::get<0>(r);
        batch<Reply>& rep = std::get<1>(r);
        if (!ec && rep.items.size() != hi - lo) ec = errc::decode_failed;
        if (ec) {
          if (!first) first = ec;
        } else {
          std::move(rep.items.begin(), rep.items.end(), out.begin() + static_cast<std::ptrdiff_t>(lo));
        }
      }
    };
    co_await detail::run_lanes(pl.get_executor(), lanes, lane);
    co_return std::tuple{first, std::move(out)};
  };
  return detail::async_run<std::vector<Reply>>(p.get_executor(), body(p, requests, options), std::forward<Token>(token));
}

} // namespace coropipe
