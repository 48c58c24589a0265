// SPDX-License-Identifier: BSL-1.0
// msg_client: connects to a multiprocessing.connection-style listener (a
// coropipe echo_server, or Python's Listener) and sends each line of its
// stdin, without the newline, as one message; prints each reply as one line.
//
//   msg_client --connect ADDRESS [--authkey-env NAME]
//
// Exit status 0 at end of input; 1 with a one-line error on stderr when the
// connection is refused or authentication fails; 2 on bad flags.
#include <coropipe/coropipe.hpp>
#include <coropipe/listener.hpp>

#include <coropipe/asio.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

constexpr const char* usage = "usage: msg_client --connect ADDRESS [--authkey-env NAME]\n";

// [docs:msg-client]
asio::awaitable<void> talk(coropipe::address where, coropipe::connect_options options) {
  auto ex = co_await asio::this_coro::executor;
  // Connects and, with an authkey, authenticates both ways (or throws).
  coropipe::socket_stream s = co_await coropipe::async_connect(ex, where, options, asio::use_awaitable);
  for (std::string line; std::getline(std::cin, line);) {
    co_await s.async_send(asio::buffer(line), asio::use_awaitable);
    std::optional<coropipe::message_view> reply = co_await s.async_receive(asio::use_awaitable);
    if (!reply) throw std::runtime_error("the server closed the connection");
    std::fwrite(reply->data(), 1, reply->size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  co_await s.async_close(asio::use_awaitable);
}
// [docs:end]

} // namespace

int main(int argc, char** argv) {
  std::optional<coropipe::address> where;
  coropipe::connect_options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    try {
      if (arg == "--connect" && i + 1 < argc) {
        where = coropipe::address::parse(argv[++i]);
      } else if (arg == "--authkey-env" && i + 1 < argc) {
        const char* name = argv[++i];
        const char* value = std::getenv(name);
        if (value == nullptr) throw std::invalid_argument(std::string("environment variable ") + name + " is not set");
        options.authkey = value;
      } else if (arg == "--help") {
        std::printf("%s", usage);
        return 0;
      } else {
        throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "msg_client: %s\n%s", e.what(), usage);
      return 2;
    }
  }
  if (!where) {
    std::fprintf(stderr, "msg_client: --connect is required\n%s", usage);
    return 2;
  }
  try {
    asio::io_context io(1);
    asio::co_spawn(io, talk(*where, options), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "msg_client: %s: %s\n", where->to_string().c_str(), e.what());
    return 1;
  }
  return 0;
}
