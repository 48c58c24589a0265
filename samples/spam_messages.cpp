// SPDX-License-Identifier: BSL-1.0
// spam_messages: the spam sample with messages instead of bytes.
//
// The child sends each "Spam N" as one message on a coropipe::channel; the
// parent receives whole messages, so it prints exactly one line per message
// and never "Spam 4Spam 0". Same flags and output format as spam.
// See docs/tutorial/02-messages.md.
#include <coropipe/coropipe.hpp>

#include "python_format.hpp"
#include "spam_cli.hpp"

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(signal_set.hpp)

#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>

using namespace coropipe::compat::awaitable_operators;
using namespace std::chrono_literals;

namespace {

// [docs:messages-child]
asio::awaitable<int> child(coropipe::child_context& ctx, coropipe::unique_fd pipeout,
                           samples::spam_options opts) {
  coropipe::channel<std::string> out(ctx.attach(std::move(pipeout)));  // messages, not bytes
  asio::steady_timer timer(ctx.get_executor());
  int zzz = 0;
  for (long long sent = 0; !opts.count || sent < *opts.count; ++sent) {
    timer.expires_after(zzz * opts.tick);
    co_await timer.async_wait(asio::use_awaitable);
    co_await out.async_send("Spam " + std::to_string(zzz), asio::use_awaitable);  // one frame
    zzz = (zzz + 1) % 5;
  }
  co_await out.async_close(asio::use_awaitable);  // flush, then end the stream
  co_return 0;
}
// [docs:end]

// [docs:messages-parent]
asio::awaitable<coropipe::error_code> parent(coropipe::channel<std::string>& in) {
  std::string msg;
  for (;;) {
    auto [ec, got] = co_await in.async_receive(msg, coropipe::compat::as_tuple(asio::use_awaitable));
    if (ec) co_return ec;           // e.g. coropipe::errc::truncated_message
    if (!got) co_return ec;         // a clean end of stream, between messages
    std::printf("Parent %d got [%s] as %s\n", static_cast<int>(::getpid()), samples::bytes_repr(msg).c_str(),
                samples::float_repr(samples::unix_time()).c_str());
    if (std::ferror(stdout)) co_return coropipe::error_code(errno, coropipe::system_category());
  }
}
// [docs:end]

struct outcome {
  int exit_code = 0;
  int signal = 0;
};

asio::awaitable<outcome> supervise(coropipe::child& kid, coropipe::channel<std::string>& in,
                                   asio::signal_set& signals) {
  auto first = co_await (parent(in) || signals.async_wait(asio::use_awaitable));
  if (first.index() == 1) {
    co_await kid.async_stop(50ms, asio::use_awaitable);
    co_return outcome{0, std::get<1>(first)};
  }
  if (const coropipe::error_code ec = std::get<0>(first)) {
    co_await kid.async_stop(50ms, asio::use_awaitable);
    if (ec == std::errc::broken_pipe) co_return outcome{128 + SIGPIPE, 0};
    std::fprintf(stderr, "spam_messages: %s\n", ec.message().c_str());
    co_return outcome{1, 0};
  }
  const coropipe::exit_status status = co_await kid.async_wait(asio::use_awaitable);
  if (!status.success()) {
    std::fprintf(stderr, "spam_messages: child %d %s\n", static_cast<int>(kid.pid()), status.to_string().c_str());
    co_return outcome{1, 0};
  }
  co_return outcome{0, 0};
}

} // namespace

int main(int argc, char** argv) {
  samples::spam_options opts;
  try {
    opts = samples::parse_spam_options(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "spam_messages: %s\n", e.what());
    std::fprintf(stderr, samples::spam_usage(), "spam_messages");
    return 2;
  }
  if (opts.help) {
    std::printf(samples::spam_usage(), "spam_messages");
    return 0;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  outcome result;
  try {
    asio::io_context io;
    asio::signal_set signals(io, SIGINT, SIGTERM);
    auto [pipein, pipeout] = coropipe::pipe();
    coropipe::child kid = coropipe::fork_child(io, child, std::move(pipeout), opts);
    coropipe::framed_options framing;
    framing.read_size = opts.read_size;  // --read-size: the read-ahead
    coropipe::channel<std::string> in(coropipe::attach(io, std::move(pipein)), framing);
    asio::co_spawn(io, supervise(kid, in, signals), [&](std::exception_ptr error, outcome o) {
      if (error) std::rethrow_exception(error);
      result = o;
    });
    io.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spam_messages: %s\n", e.what());
    return 1;
  }
  if (result.signal != 0) {
    std::signal(result.signal, SIG_DFL);
    std::raise(result.signal);
    return 128 + result.signal;
  }
  return result.exit_code;
}
