// SPDX-License-Identifier: BSL-1.0
// spam: the seed's program, in C++20 coroutines on coropipe.
//
// The seed (Programming Python) creates a pipe, forks, and has the child
// write "Spam 0" ... "Spam 4" forever, sleeping 0-4 seconds before each write,
// while the parent blocks in os.read(pipein, 32) and prints what it got.
// Here both sides are coroutines: the child's on an io_context of its own,
// the parent's on main()'s. See docs/tutorial/01-pipes-and-forks.md.
#include <coropipe/coropipe.hpp>

#include "python_format.hpp"
#include "spam_cli.hpp"

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(signal_set.hpp)

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

using namespace coropipe::compat::awaitable_operators;
using namespace std::chrono_literals;

namespace {

// [docs:spam-child]
// def child(pipeout):
asio::awaitable<int> child(coropipe::child_context& ctx, coropipe::unique_fd pipeout,
                           samples::spam_options opts) {
  auto out = ctx.attach(std::move(pipeout));  // on the child's own io_context
  asio::steady_timer timer(ctx.get_executor());
  int zzz = 0;
  for (long long sent = 0; !opts.count || sent < *opts.count; ++sent) {  // while True:
    timer.expires_after(zzz * opts.tick);                                 //   time.sleep(zzz)
    co_await timer.async_wait(asio::use_awaitable);
    const std::string msg = "Spam " + std::to_string(zzz);  // ('Spam {}'.format(zzz)).encode()
    co_await asio::async_write(out, asio::buffer(msg), asio::use_awaitable);  // os.write(pipeout, msg)
    zzz = (zzz + 1) % 5;
  }
  co_return 0;  // the child's exit code; closing `out` ends the parent's stream
}
// [docs:end]

// [docs:spam-parent]
// while True: line = os.read(pipein, 32); print(...)
// Returns at the end of the child's stream (no error), or with the error that
// stopped it. It reports errors as values, not exceptions, because it runs in
// an `a || b` race below: Asio's operator|| (experimental::awaitable_operators,
// in every release to date) waits for the first branch to *succeed*, so a
// branch that threw would leave the other one running.
asio::awaitable<coropipe::error_code> parent(asio::posix::stream_descriptor& pipein, std::size_t read_size) {
  std::vector<char> line(read_size);
  for (;;) {
    auto [ec, n] = co_await pipein.async_read_some(
        asio::buffer(line), coropipe::compat::as_tuple(asio::use_awaitable));
    if (ec == asio::error::eof) co_return coropipe::error_code();  // the child closed its end
    if (ec) co_return ec;
    std::printf("Parent %d got [%s] as %s\n", static_cast<int>(::getpid()),
                samples::bytes_repr({line.data(), n}).c_str(),
                samples::float_repr(samples::unix_time()).c_str());
    if (std::ferror(stdout)) co_return coropipe::error_code(errno, coropipe::system_category());
  }
}
// [docs:end]

// [docs:spam-supervise]
// Reads until the child's stream ends, an error, or SIGINT/SIGTERM; then
// reaps the child. Returns the exit code, or the signal to die of.
struct outcome {
  int exit_code = 0;
  int signal = 0;
};

asio::awaitable<outcome> supervise(coropipe::child& kid, asio::posix::stream_descriptor& pipein,
                                   asio::signal_set& signals, std::size_t read_size) {
  auto first = co_await (parent(pipein, read_size) || signals.async_wait(asio::use_awaitable));
  if (first.index() == 1) {
    // Ctrl-C or SIGTERM: stop the child (SIGTERM, SIGKILL after 50 ms), reap it.
    co_await kid.async_stop(50ms, asio::use_awaitable);
    co_return outcome{0, std::get<1>(first)};
  }
  if (const coropipe::error_code ec = std::get<0>(first)) {
    co_await kid.async_stop(50ms, asio::use_awaitable);
    // Our own reader went away (spam | head): end quietly, as SIGPIPE would.
    if (ec == std::errc::broken_pipe) co_return outcome{128 + SIGPIPE, 0};
    std::fprintf(stderr, "spam: %s\n", ec.message().c_str());
    co_return outcome{1, 0};
  }
  // End of stream: the child is over, or about to be. Reap it and report.
  const coropipe::exit_status status = co_await kid.async_wait(asio::use_awaitable);
  if (!status.success()) {
    std::fprintf(stderr, "spam: child %d %s\n", static_cast<int>(kid.pid()), status.to_string().c_str());
    co_return outcome{1, 0};
  }
  co_return outcome{0, 0};
}
// [docs:end]

} // namespace

int main(int argc, char** argv) {
  samples::spam_options opts;
  try {
    opts = samples::parse_spam_options(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "spam: %s\n", e.what());
    std::fprintf(stderr, samples::spam_usage(), "spam");
    return 2;
  }
  if (opts.help) {
    std::printf(samples::spam_usage(), "spam");
    return 0;
  }
  // Each line reaches a pipe reading our output as soon as it is printed.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  outcome result;
  try {
    // [docs:spam-main]
    asio::io_context io;
    // Installed before the fork, so no Ctrl-C is missed; the child gets the
    // default actions back (coropipe resets handlers in forked children).
    asio::signal_set signals(io, SIGINT, SIGTERM);

    auto [pipein, pipeout] = coropipe::pipe();                              // os.pipe()
    coropipe::child kid = coropipe::fork_child(io, child, std::move(pipeout), opts);  // os.fork()
    // pipeout was handed to the child and is closed here; pipein is ours.
    auto in = coropipe::attach(io, std::move(pipein));

    asio::co_spawn(io, supervise(kid, in, signals, opts.read_size),
                   [&](std::exception_ptr error, outcome o) {
                     if (error) std::rethrow_exception(error);  // out of io.run()
                     result = o;
                   });
    io.run();
    // [docs:end]
  } catch (const std::exception& e) {
    // The child handle's destructor has killed and reaped the child already.
    std::fprintf(stderr, "spam: %s\n", e.what());
    return 1;
  }
  if (result.signal != 0) {
    // Die of the signal we caught, so our own parent sees how we ended.
    std::signal(result.signal, SIG_DFL);
    std::raise(result.signal);
    return 128 + result.signal;
  }
  return result.exit_code;
}
