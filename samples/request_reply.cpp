// SPDX-License-Identifier: BSL-1.0
// request_reply: a parent asks a forked worker questions over a duplex
// channel, waiting for each answer with a timeout.
//
//   request_reply [--count N] [--slow K] [--bad-frame K] [--timeout DURATION]
//
// The worker squares numbers; it answers request K (--slow; default: none)
// only after one and a half timeouts, so the parent's wait for it times out
// and the answer arrives while the parent waits for the next one. Answers
// carry their request's id, so a late answer is recognised and dropped
// instead of being taken for the answer to a later question. --bad-frame K
// makes the worker answer request K with bytes that are not a frame: the
// parent reports the receive's error at once (not a timeout) and, since a
// framing error is sticky, stops asking; it exits 1.
// See docs/tutorial/02-messages.md.
#include <coropipe/coropipe.hpp>

#include "spam_cli.hpp"

#include <coropipe/asio.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string_view>
#include <tuple>

using namespace coropipe::compat::awaitable_operators;
using namespace std::chrono_literals;

namespace {

// [docs:rr-types]
// Trivially copyable: coropipe sends its bytes as they are (same machine).
struct request {
  std::int64_t id;
  std::int64_t number;
};
struct reply {
  std::int64_t id;
  std::int64_t square;
};
// [docs:end]

struct options {
  long long count = 5;
  long long slow = 0;       // 0: none
  long long bad_frame = 0;  // 0: none
  std::chrono::nanoseconds timeout = 200ms;
};

// [docs:rr-worker]
// The child's end: it receives requests and sends replies.
asio::awaitable<int> worker(coropipe::child_context& ctx, coropipe::child_channel<request, reply> ch, long long slow,
                            std::chrono::nanoseconds pause_for, long long bad_frame) {
  asio::steady_timer pause(ctx.get_executor());
  while (std::optional<request> rq = co_await ch.async_receive(asio::use_awaitable)) {
    if (rq->id == slow) {  // take longer than the parent waits
      pause.expires_after(pause_for);
      co_await pause.async_wait(asio::use_awaitable);
    }
    if (rq->id == bad_frame) {  // for the tests: bytes that are not a frame (a negative length)
      static constexpr char garbage[] = {'\x80', '\0', '\0', '\x01', 'x'};
      co_await ch.async_flush(asio::use_awaitable);
      co_await asio::async_write(ch.framed().next_layer(), asio::buffer(garbage), asio::use_awaitable);
      continue;
    }
    co_await ch.async_send(reply{rq->id, rq->number * rq->number}, asio::use_awaitable);
  }
  co_return 0;  // the parent closed its end
}
// [docs:end]

// [docs:rr-parent]
// ETIMEDOUT as an errno value: `ec == std::errc::timed_out` finds it.
coropipe::error_code timed_out() { return coropipe::error_code(ETIMEDOUT, coropipe::system_category()); }

// Waits for the reply to request `id`, at most `timeout`. Completes with the
// square, or with an error: timed_out(), asio::error::eof (the
// worker closed its end) or the receive's own (a bad frame:
// coropipe::errc::malformed_frame). Replies to earlier requests that arrive
// late are dropped on the way.
asio::awaitable<std::tuple<coropipe::error_code, std::int64_t>> await_reply(coropipe::channel<request, reply>& ch,
                                                                            std::int64_t id,
                                                                            std::chrono::nanoseconds timeout) {
  asio::steady_timer timer(co_await asio::this_coro::executor, timeout);
  for (;;) {
    // as_tuple: the receive reports its error as a value instead of throwing,
    // so || ends as soon as the receive completes, whatever its outcome. (||
    // waits for the first branch to succeed: a receive that threw would wait
    // out the timer and look like a timeout.)
    auto r = co_await (ch.async_receive(coropipe::compat::as_tuple(asio::use_awaitable)) ||
                       timer.async_wait(asio::use_awaitable));
    if (r.index() == 1) co_return std::tuple{timed_out(), 0};  // the receive was cancelled
    auto [ec, rep] = std::get<0>(std::move(r));
    if (ec) co_return std::tuple{ec, 0};                     // sticky: every later receive fails too
    if (!rep) co_return std::tuple{asio::error::eof, 0};     // the worker closed its end
    if (rep->id == id) co_return std::tuple{coropipe::error_code{}, rep->square};
    std::printf("late reply to request %lld dropped\n", static_cast<long long>(rep->id));
  }
}

asio::awaitable<int> ask(coropipe::channel<request, reply>& ch, coropipe::child& kid, const options& opts) {
  bool failed = false;
  for (std::int64_t id = 1; id <= opts.count && !failed; ++id) {
    const std::int64_t number = id + 6;
    co_await ch.async_send(request{id, number}, asio::use_awaitable);
    auto [ec, square] = co_await await_reply(ch, id, opts.timeout);
    if (!ec) {
      std::printf("%lld squared is %lld\n", static_cast<long long>(number), static_cast<long long>(square));
    } else if (ec == std::errc::timed_out) {
      std::printf("request %lld timed out\n", static_cast<long long>(id));
    } else {
      std::printf("request %lld failed: %s\n", static_cast<long long>(id), ec.message().c_str());
      failed = true;  // the channel cannot recover: stop asking
    }
  }
  co_await ch.async_close(asio::use_awaitable);  // the worker's receive ends: it exits
  const coropipe::exit_status st = co_await kid.async_wait(asio::use_awaitable);
  std::printf("worker %s\n", st.to_string().c_str());
  co_return st.success() && !failed ? 0 : 1;
}
// [docs:end]

} // namespace

int main(int argc, char** argv) {
  options opts;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view arg = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument("unknown argument or missing value: '" + std::string(arg) + "'");
      if (arg == "--count") opts.count = samples::parse_number(arg, argv[++i], 0, 1'000'000);
      else if (arg == "--slow") opts.slow = samples::parse_number(arg, argv[++i], 0, 1'000'000);
      else if (arg == "--bad-frame") opts.bad_frame = samples::parse_number(arg, argv[++i], 0, 1'000'000);
      else if (arg == "--timeout") opts.timeout = samples::parse_duration(argv[++i]);
      else throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "request_reply: %s\nusage: request_reply [--count N] [--slow K] [--bad-frame K] "
                 "[--timeout DURATION]\n",
                 e.what());
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    // [docs:rr-main]
    asio::io_context io;
    // One call: a socketpair, a forked child running worker() on its end,
    // and the parent's end as a channel of the mirrored types.
    auto [ch, kid] = coropipe::fork_with_channel<request, reply>(io, worker, opts.slow, opts.timeout * 3 / 2,
                                                                 opts.bad_frame);
    int code = 1;
    asio::co_spawn(io, ask(ch, kid, opts), [&code](std::exception_ptr e, int c) {
      if (e) std::rethrow_exception(e);
      code = c;
    });
    io.run();
    return code;
    // [docs:end]
  } catch (const std::exception& e) {
    std::fprintf(stderr, "request_reply: %s\n", e.what());
    return 1;
  }
}
