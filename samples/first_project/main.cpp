// SPDX-License-Identifier: BSL-1.0
// [docs:first-main]
// main.cpp: runs `uname -sr` and prints what it said and how it ended.
#include <coropipe/coropipe.hpp>

#include <cstdio>
#include <exception>

asio::awaitable<int> run(asio::io_context& io) {
  coropipe::process p = coropipe::spawn(io, {.argv = {"uname", "-sr"}, .out = coropipe::stdio::pipe()});
  // Reads its output to the end and reaps it; throws coropipe::system_error on failure.
  coropipe::communicate_result r = co_await coropipe::async_communicate(p, "", asio::use_awaitable);
  std::printf("uname says: %suname %s\n", r.out.c_str(), r.status.to_string().c_str());
  co_return r.status.success() ? 0 : 1;
}

int main() try {
  asio::io_context io;
  int code = 1;
  asio::co_spawn(io, run(io), [&code](std::exception_ptr e, int c) {
    if (e) std::rethrow_exception(e);
    code = c;
  });
  io.run();
  return code;
} catch (const std::exception& e) {
  std::fprintf(stderr, "first_project: %s\n", e.what());
  return 1;
}
// [docs:end]
