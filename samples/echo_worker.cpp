// SPDX-License-Identifier: BSL-1.0
// echo_worker: reads messages on its stdin and writes each one back,
// unchanged, on its stdout, until end of stream; then exits 0.
//
// The wire format is Python's multiprocessing.connection, so a Python program
// can drive it through Connection objects over subprocess pipes (see
// samples/echo_client.py and docs/tutorial/02-messages.md).
//   echo_worker [--max-message-size N]
// Malformed input: a message on stderr, exit 1. Usage errors: exit 2.
#include <coropipe/coropipe.hpp>

#include "spam_cli.hpp"

#include <coropipe/asio.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string_view>

namespace {

// [docs:echo-loop]
asio::awaitable<void> echo(coropipe::framed_stream<>& in, coropipe::framed_stream<>& out) {
  // A clean end of stream (between messages) ends the loop; errors throw.
  while (std::optional<coropipe::message_view> msg = co_await in.async_receive(asio::use_awaitable))
    co_await out.async_send(asio::buffer(msg->data(), msg->size()), asio::use_awaitable);
  co_await out.async_close(asio::use_awaitable);  // everything written, then EOF
}
// [docs:end]

// Our copies of stdin/stdout share their open file descriptions with whoever
// started us; Asio makes them non-blocking, so put that back when done.
struct restore_blocking {
  int flags0 = ::fcntl(0, F_GETFL);
  int flags1 = ::fcntl(1, F_GETFL);
  ~restore_blocking() {
    if (flags0 >= 0) ::fcntl(0, F_SETFL, flags0);
    if (flags1 >= 0) ::fcntl(1, F_SETFL, flags1);
  }
};

} // namespace

int main(int argc, char** argv) {
  coropipe::framed_options opts;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    try {
      if (arg == "--max-message-size" && i + 1 < argc) {
        opts.max_message_size = static_cast<std::size_t>(
            samples::parse_number(arg, argv[++i], 0, std::int64_t{1} << 40));
      } else if (arg == "--help") {
        std::printf("usage: echo_worker [--max-message-size N]\n");
        return 0;
      } else {
        throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
      }
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr, "echo_worker: %s\nusage: echo_worker [--max-message-size N]\n", e.what());
      return 2;
    }
  }
  restore_blocking restore;
  try {
    asio::io_context io(1);
    coropipe::framed_stream<> in(coropipe::attach(io, coropipe::unique_fd(::fcntl(0, F_DUPFD_CLOEXEC, 3))), opts);
    coropipe::framed_stream<> out(coropipe::attach(io, coropipe::unique_fd(::fcntl(1, F_DUPFD_CLOEXEC, 3))), opts);
    asio::co_spawn(io, echo(in, out), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_worker: %s\n", e.what());
    return 1;
  }
  return 0;
}
