// SPDX-License-Identifier: BSL-1.0
// request_reply: a parent asks a forked worker questions over a duplex
// channel, waiting for each answer with a timeout.
//
//   request_reply [--count N] [--slow K] [--timeout DURATION]
//
// The worker squares numbers; it answers request K (default: none) only
// after one and a half timeouts, so the parent's wait for it times out and
// the answer arrives while the parent waits for the next one. Answers carry
// their request's id, so a late answer is recognised and dropped instead of
// being taken for the answer to a later question.
// See docs/tutorial/02-messages.md.
#include <coropipe/coropipe.hpp>

#include "spam_cli.hpp"

#include <coropipe/asio.hpp>

#include <cstdint>
#include <cstdio>
#include <string_view>

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
  long long slow = 0;  // 0: none
  std::chrono::nanoseconds timeout = 200ms;
};

// [docs:rr-worker]
// The child's end: it receives requests and sends replies.
asio::awaitable<int> worker(coropipe::child_context& ctx, coropipe::child_channel<request, reply> ch,
                            long long slow, std::chrono::nanoseconds pause_for) {
  asio::steady_timer pause(ctx.get_executor());
  while (std::optional<request> rq = co_await ch.async_receive(asio::use_awaitable)) {
    if (rq->id == slow) {  // take longer than the parent waits
      pause.expires_after(pause_for);
      co_await pause.async_wait(asio::use_awaitable);
    }
    co_await ch.async_send(reply{rq->id, rq->number * rq->number}, asio::use_awaitable);
  }
  co_return 0;  // the parent closed its end
}
// [docs:end]

// [docs:rr-parent]
// Waits for the reply to request `id`, at most `timeout`. Replies to earlier
// requests that arrive late are dropped on the way.
asio::awaitable<std::optional<std::int64_t>> await_reply(coropipe::channel<request, reply>& ch, std::int64_t id,
                                                         std::chrono::nanoseconds timeout) {
  asio::steady_timer timer(co_await asio::this_coro::executor, timeout);
  for (;;) {
    auto r = co_await (ch.async_receive(asio::use_awaitable) || timer.async_wait(asio::use_awaitable));
    if (r.index() == 1) co_return std::nullopt;  // the timer won: the receive was cancelled
    const std::optional<reply>& rep = std::get<0>(r);
    if (!rep) throw std::runtime_error("the worker closed its end");
    if (rep->id == id) co_return rep->square;
    std::printf("late reply to request %lld dropped\n", static_cast<long long>(rep->id));
  }
}

asio::awaitable<int> ask(coropipe::channel<request, reply>& ch, coropipe::child& kid, const options& opts) {
  for (std::int64_t id = 1; id <= opts.count; ++id) {
    const std::int64_t number = id + 6;
    co_await ch.async_send(request{id, number}, asio::use_awaitable);
    if (auto square = co_await await_reply(ch, id, opts.timeout))
      std::printf("%lld squared is %lld\n", static_cast<long long>(number), static_cast<long long>(*square));
    else
      std::printf("request %lld timed out\n", static_cast<long long>(id));
  }
  co_await ch.async_close(asio::use_awaitable);  // the worker's receive ends: it exits
  const coropipe::exit_status st = co_await kid.async_wait(asio::use_awaitable);
  std::printf("worker %s\n", st.to_string().c_str());
  co_return st.success() ? 0 : 1;
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
      else if (arg == "--timeout") opts.timeout = samples::parse_duration(argv[++i]);
      else throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "request_reply: %s\nusage: request_reply [--count N] [--slow K] [--timeout DURATION]\n",
                 e.what());
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    // [docs:rr-main]
    asio::io_context io;
    // One call: a socketpair, a forked child running worker() on its end,
    // and the parent's end as a channel of the mirrored types.
    auto [ch, kid] = coropipe::fork_with_channel<request, reply>(io, worker, opts.slow, opts.timeout * 3 / 2);
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
