// SPDX-License-Identifier: BSL-1.0
// hello: the README's example, a complete program. A forked child writes a
// line into a pipe; the parent reads it to the end of the stream, reaps the
// child and prints:
//
//   child says: Hello from the child
//   child exited with 0
// [docs:hello]
#include <coropipe/coropipe.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <utility>

// Runs in the forked child, on an io_context of its own.
asio::awaitable<int> child(coropipe::child_context& ctx, coropipe::unique_fd out) {
  auto pipe_out = ctx.attach(std::move(out));  // an asio::posix::stream_descriptor
  co_await asio::async_write(pipe_out, asio::buffer(std::string_view("Hello from the child")), asio::use_awaitable);
  co_return 0;  // the child's exit code
}

asio::awaitable<void> parent(asio::io_context& io) {
  auto [in, out] = coropipe::pipe();                                      // two owned, close-on-exec ends
  coropipe::child kid = coropipe::fork_child(io, child, std::move(out));  // out goes to the child only
  auto reader = coropipe::attach(io, std::move(in));
  std::string text;
  // Reads until the end of the stream (asio::error::eof): the child has closed its end.
  auto [ec, n] = co_await asio::async_read(reader, asio::dynamic_buffer(text),
                                           coropipe::compat::as_tuple(asio::use_awaitable));
  if (ec != asio::error::eof) throw coropipe::system_error(ec, "read");
  coropipe::exit_status st = co_await kid.async_wait(asio::use_awaitable);  // reaps it: no zombie
  std::printf("child says: %s\nchild %s\n", text.c_str(), st.to_string().c_str());
}

int main() try {
  asio::io_context io;
  asio::co_spawn(io, parent(io), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);  // out of io.run(), to the catch below
  });
  io.run();
} catch (const std::exception& e) {
  std::fprintf(stderr, "hello: %s\n", e.what());
  return 1;
}
// [docs:end]
