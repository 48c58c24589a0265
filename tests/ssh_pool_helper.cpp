// SPDX-License-Identifier: BSL-1.0
// ssh_pool_helper: the program of tests/ssh_test.cpp's remote-worker tests.
//   ssh_pool_helper --serve
//       a pool worker (serve_stdio, int -> int): a request x > 0 is a long
//       computation, x milliseconds of busy CPU (no event loop, no reads:
//       only serve_stdio's own hang-up watch can end it early); it replies x.
//   ssh_pool_helper --pool N X LAUNCHER... --
//       a pool of N workers, each `LAUNCHER... <this program> --serve` (e.g.
//       `ssh -F cfg host --`); submits N requests of X, prints
//       "submitted N" on stdout, and when every reply is in, "replies N".
//       The test SIGKILLs it meanwhile.
//   ssh_pool_helper --pool N X --ssh-config FILE HOST
//       the same with a launched group: ssh_launcher(HOST, -F FILE).
//   ssh_pool_helper --print-args ARGS...
//       writes each argument followed by a NUL byte on stdout (the quoting test).
#include <coropipe/launcher.hpp>
#include <coropipe/pool.hpp>

#include <coropipe/asio.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

asio::awaitable<int> compute(int x) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(x);
  volatile unsigned long spin = 0;
  while (std::chrono::steady_clock::now() < until) {
    for (int i = 0; i < 10000; ++i) spin = spin + 1;
  }
  co_return x;
}

std::string self_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

coropipe::pool<int, int> make_pool(asio::io_context& io, std::size_t n, std::vector<std::string> launcher) {
  const std::vector<std::string> worker{self_path(), "--serve"};
  if (launcher.size() == 3 && launcher[0] == "--ssh-config") {
    coropipe::ssh_options o;
    o.program = "/usr/bin/ssh";
    o.config_file = launcher[1];
    std::vector<coropipe::worker_group<int, int>> groups;
    groups.push_back(
        {.workers = coropipe::pool_workers<int, int>::launched(coropipe::ssh_launcher(launcher[2], o), worker),
         .count = n});
    return coropipe::pool<int, int>(io.get_executor(), std::move(groups), {.window = 1});
  }
  launcher.insert(launcher.end(), worker.begin(), worker.end());
  return coropipe::pool<int, int>(io.get_executor(), coropipe::pool_workers<int, int>::spawned(launcher),
                                  {.workers = n, .window = 1});
}

int run_pool(std::size_t n, int x, std::vector<std::string> launcher) {
  asio::io_context io;
  auto pool = make_pool(io, n, std::move(launcher));
  std::size_t replies = 0;
  int code = 0;
  for (std::size_t i = 0; i < n; ++i) {
    pool.async_submit(x, [&](coropipe::error_code ec, int r) {
      if (ec || r != x) {
        std::fprintf(stderr, "ssh_pool_helper: %s\n", ec ? ec.message().c_str() : "wrong reply");
        code = 1;
      }
      if (++replies == n) pool.async_shutdown([](coropipe::error_code) {});
    });
  }
  std::printf("submitted %zu\n", n);
  std::fflush(stdout);
  io.run();
  std::printf("replies %zu\n", replies);
  return code;
}

} // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "--serve") return coropipe::serve_stdio<int, int>(compute);
  if (mode == "--print-args") {
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      std::fwrite(a.c_str(), 1, a.size() + 1, stdout);
    }
    return std::fflush(stdout) == 0 ? 0 : 1;
  }
  if (mode == "--pool" && argc >= 5) {
    std::vector<std::string> launcher;
    int i = 4;
    for (; i < argc && std::string(argv[i]) != "--"; ++i) launcher.push_back(argv[i]);
    if (i < argc) launcher.push_back("--");  // (ssh's end of options)
    return run_pool(static_cast<std::size_t>(std::atoi(argv[2])), std::atoi(argv[3]), launcher);
  }
  std::fprintf(stderr, "usage: ssh_pool_helper --serve | --pool N X LAUNCHER... -- | --pool N X --ssh-config FILE HOST\n"
                       "       | --print-args ARGS...\n");
  return 2;
}
