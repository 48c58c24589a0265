// SPDX-License-Identifier: BSL-1.0
// scoped_children: process scopes, structured lifetime for child processes.
//
//   scoped_children [--fail]
//
// A scope runs a body that starts three children: a program that would
// sleep for an hour, a shell whose background job (a grandchild) would too,
// and a forked worker that finishes in 100 ms. When the body returns, the
// scope stops what still runs — the sleeper, and the shell's whole process
// group, grandchild included — and reaps everything before the program goes
// on. With --fail the worker exits with code 3 instead, and since the scope
// is a nursery (fail_fast) that cancels the body and fails the scope.
// See docs/tutorial/04-many-workers.md.
#include <coropipe/coropipe.hpp>
#include <coropipe/scope.hpp>

#include <coropipe/asio.hpp>

#include <chrono>
#include <cstdio>
#include <string_view>

using namespace std::chrono_literals;

namespace {

// [docs:scope-body]
asio::awaitable<int> run(bool fail) {
  auto ex = co_await asio::this_coro::executor;
  co_await coropipe::async_scope(
      ex, coropipe::scope_options{.grace = 500ms, .fail_fast = true},
      [&](coropipe::scope& s) -> asio::awaitable<void> {
        s.spawn({.argv = {"sleep", "3600"}});
        // A group leader: when the scope ends, its whole group is stopped.
        s.spawn({.argv = {"sh", "-c", "sleep 3600 & wait"}, .process_group = 0});
        coropipe::child& worker = s.fork(
            [fail](coropipe::child_context& ctx) -> asio::awaitable<int> {
              asio::steady_timer t(ctx.get_executor(), 100ms);
              co_await t.async_wait(asio::use_awaitable);
              co_return fail ? 3 : 0;
            });
        const coropipe::exit_status st = co_await worker.async_wait(asio::use_awaitable);
        std::printf("worker %s\n", st.to_string().c_str());
      },  // the body returns: the sleepers are stopped and reaped here
      asio::use_awaitable);
  std::printf("scope ended, nothing left running\n");
  co_return 0;
}
// [docs:end]

} // namespace

int main(int argc, char** argv) {
  bool fail = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--fail") {
      fail = true;
    } else {
      std::fprintf(stderr, "usage: scoped_children [--fail]\n");
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  asio::io_context io;
  int code = 1;
  asio::co_spawn(io, run(fail), [&code](std::exception_ptr e, int c) {
    code = c;
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const coropipe::child_failed_error& err) {
      std::fprintf(stderr, "scoped_children: %s\n", err.what());
    } catch (const std::exception& err) {
      std::fprintf(stderr, "scoped_children: %s\n", err.what());
    }
    code = 1;
  });
  io.run();
  return code;
}
