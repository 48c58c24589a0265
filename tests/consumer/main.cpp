// SPDX-License-Identifier: BSL-1.0
// A program outside coropipe's tree: forks a coroutine child that writes
// through a pipe, reads it, and checks the child's exit status.
#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>

#include <cstdio>
#include <string>

int main() {
  asio::io_context io;
  auto [in, out] = coropipe::pipe();
  auto kid = coropipe::fork_child(
      io,
      [](coropipe::child_context& ctx, coropipe::unique_fd w) -> asio::awaitable<int> {
        auto pipe_out = ctx.attach(std::move(w));
        co_await asio::async_write(pipe_out, asio::buffer(std::string("consumer")), asio::use_awaitable);
        co_return 3;
      },
      std::move(out));
  auto reader = coropipe::attach(io, std::move(in));
  std::string got(8, '\0');
  int result = 1;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    co_await asio::async_read(reader, asio::buffer(got), asio::use_awaitable);
    const coropipe::exit_status st = co_await kid.async_wait(asio::use_awaitable);
    result = (got == "consumer" && st == coropipe::exit_status::from_code(3)) ? 0 : 1;
  }, [](std::exception_ptr e) { if (e) std::rethrow_exception(e); });
  io.run();
  std::printf("consumer: %s\n", result == 0 ? "ok" : "FAILED");
  return result;
}
