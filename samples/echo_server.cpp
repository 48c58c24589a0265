// SPDX-License-Identifier: BSL-1.0
// echo_server: a coropipe listener that Python's multiprocessing.connection
// Client can talk to. Sends every message it receives back to its sender.
//
//   echo_server --listen ADDRESS [--authkey-env NAME] [--max-clients N] [--objects]
//
// ADDRESS: /path/to.sock, @abstract-name, 127.0.0.1:PORT or [::1]:PORT (port
// 0 picks a free one). The first line on stdout is "listening on ADDRESS",
// with the real port. The authkey is read from the environment variable NAME
// (never from the command line, where `ps` shows it). A client that fails
// authentication gets nothing; one line goes to stderr and the server carries
// on. SIGINT or SIGTERM: close the listener (removing a socket file), exit 0.
// With --objects each message is decoded as a pickle (coropipe::pyobject) and
// encoded again before it goes back, so a Python `conn.send(obj)` /
// `conn.recv()` round trip returns an equal object; a message that does not
// decode gets back the pickled str "error: <what was wrong>" and the
// connection stays usable. Bad flags: usage on stderr, exit 2.
#include <coropipe/coropipe.hpp>
#include <coropipe/listener.hpp>

#include "spam_cli.hpp"

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(signal_set.hpp)

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr const char* usage =
    "usage: echo_server --listen ADDRESS [--authkey-env NAME] [--max-clients N] [--objects]\n";
constexpr auto as_tuple = coropipe::compat::as_tuple(asio::use_awaitable);

// [docs:echo-server-session]
// One client: every message goes back unchanged, until the client closes.
asio::awaitable<void> serve(coropipe::socket_stream s) {
  while (std::optional<coropipe::message_view> msg = co_await s.async_receive(asio::use_awaitable))
    co_await s.async_send(asio::buffer(msg->data(), msg->size()), asio::use_awaitable);
  co_await s.async_close(asio::use_awaitable);
}
// [docs:end]

// [docs:echo-server-objects]
// One client of --objects: every message is a pickle, decoded into a
// pyobject and encoded again; one that does not decode is answered with the
// pickled str "error: ..." (the decoder never runs code from a message).
asio::awaitable<void> serve_objects(coropipe::socket_stream s) {
  while (std::optional<coropipe::message_view> msg = co_await s.async_receive(asio::use_awaitable)) {
    std::vector<std::byte> reply;
    try {
      reply = coropipe::pickle_reencode(std::as_bytes(std::span(msg->data(), msg->size())));
    } catch (const coropipe::decode_error& e) {
      reply = coropipe::pickle_dumps(coropipe::pyobject(std::string("error: ") + e.what()));
    }
    co_await s.async_send(asio::buffer(reply), asio::use_awaitable);
  }
  co_await s.async_close(asio::use_awaitable);
}
// [docs:end]

// [docs:echo-server-accept]
// Accepts clients for ever, each served on its own coroutine; at most
// max_clients at once (0: no limit).
asio::awaitable<void> accept_clients(coropipe::listener& l, std::size_t max_clients, bool objects) {
  auto ex = co_await asio::this_coro::executor;
  std::size_t clients = 0;
  asio::steady_timer client_left(ex, asio::steady_timer::time_point::max());
  for (;;) {
    while (max_clients != 0 && clients >= max_clients) co_await client_left.async_wait(as_tuple);
    auto [ec, s] = co_await l.async_accept(as_tuple);
    if (ec == asio::error::operation_aborted) break;  // the listener was closed
    if (ec) {
      // One client failed (wrong authkey, garbage, timeout): log, carry on.
      std::fprintf(stderr, "echo_server: client refused: %s\n", ec.message().c_str());
      continue;
    }
    ++clients;
    asio::co_spawn(ex, objects ? serve_objects(std::move(s)) : serve(std::move(s)), [&clients, &client_left](std::exception_ptr e) {
      --clients;
      client_left.cancel();
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& x) {
          std::fprintf(stderr, "echo_server: client dropped: %s\n", x.what());
        }
      }
    });
  }
}
// [docs:end]

} // namespace

int main(int argc, char** argv) {
  std::optional<coropipe::address> where;
  coropipe::listen_options options;
  std::size_t max_clients = 0;
  bool objects = false;  // --objects: pickled Python objects, re-encoded
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    try {
      if (arg == "--listen" && i + 1 < argc) {
        where = coropipe::address::parse(argv[++i]);
      } else if (arg == "--authkey-env" && i + 1 < argc) {
        const char* name = argv[++i];
        const char* value = std::getenv(name);
        if (value == nullptr) throw std::invalid_argument(std::string("environment variable ") + name + " is not set");
        options.authkey = value;
      } else if (arg == "--max-clients" && i + 1 < argc) {
        max_clients = static_cast<std::size_t>(samples::parse_number(arg, argv[++i], 0, 1 << 20));
      } else if (arg == "--objects") {
        objects = true;
      } else if (arg == "--help") {
        std::printf("%s", usage);
        return 0;
      } else {
        throw std::invalid_argument("unknown argument '" + std::string(arg) + "'");
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "echo_server: %s\n%s", e.what(), usage);
      return 2;
    }
  }
  if (!where) {
    std::fprintf(stderr, "echo_server: --listen is required\n%s", usage);
    return 2;
  }
  try {
    // [docs:echo-server-main]
    asio::io_context io(1);
    coropipe::listener l(io, *where, options);
    std::printf("listening on %s\n", l.local_address().to_string().c_str());
    std::fflush(stdout);

    // SIGINT / SIGTERM: stop accepting, remove the socket file, leave.
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](coropipe::error_code, int) {
      l.close();
      io.stop();
    });
    asio::co_spawn(io, accept_clients(l, max_clients, objects), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io.run();
    // [docs:end]
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
