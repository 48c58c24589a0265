// SPDX-License-Identifier: BSL-1.0
// run_capture: runs the command given on its command line, captures its
// stdout and its stderr separately and concurrently, and prints them
// labelled, with the way it ended:
//
//   $ run_capture sh -c 'echo hello; echo oops >&2; exit 3'
//   == stdout (6 bytes) ==
//   hello
//   == stderr (5 bytes) ==
//   oops
//   == exited with 3 ==
//
// Its exit status is the program's as a shell shows it (128 + N for a
// program killed by signal N); 127 when the program cannot be found, 126 when
// it cannot be executed, 2 for a usage error. The program's stdin is
// run_capture's own. See docs/tutorial/03-programs.md.
#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <system_error>
#include <tuple>

namespace {

void print_labelled(const char* label, const std::string& text) {
  std::printf("== %s (%zu bytes) ==\n", label, text.size());
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (!text.empty() && text.back() != '\n') std::fputc('\n', stdout);
}

int usage(std::FILE* to, int code) {
  std::fputs("usage: run_capture PROGRAM [ARG...]\n"
             "Runs PROGRAM (found on the PATH unless it contains a '/'), never through a shell,\n"
             "and prints its stdout, its stderr and its exit status, labelled.\n",
             to);
  return code;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr, 2);
  if (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) return usage(stdout, 0);

  asio::io_context io;
  // [docs:run-capture-spawn]
  // argv[1...] is the command: no shell, so no quoting, globbing or injection.
  coropipe::process program(io.get_executor());
  try {
    program = coropipe::spawn(io, {.argv = {argv + 1, argv + argc},
                                   .out = coropipe::stdio::pipe(),
                                   .err = coropipe::stdio::pipe()});
  } catch (const coropipe::system_error& e) {
    // Not started: an error naming the step, such as
    // "coropipe::spawn: execve nosuch: No such file or directory".
    std::fprintf(stderr, "run_capture: %s\n", e.what());
    const bool not_executable =
        e.code() == std::errc::permission_denied || e.code() == std::errc::executable_format_error;
    return not_executable ? 126 : 127;  // as shells do
  }
  // [docs:end]

  // [docs:run-capture-communicate]
  // Reads stdout and stderr concurrently (a program that fills one pipe while
  // a sequential reader waits on the other would deadlock), then reaps it.
  coropipe::communicate_result result;
  coropipe::error_code error;
  asio::co_spawn(io, coropipe::async_communicate(program, "", coropipe::compat::as_tuple(asio::use_awaitable)),
                 [&](std::exception_ptr e, std::tuple<coropipe::error_code, coropipe::communicate_result> r) {
                   if (e) std::rethrow_exception(e);  // out of io.run()
                   std::tie(error, result) = std::move(r);
                 });
  io.run();
  // [docs:end]

  // [docs:run-capture-report]
  if (error) {
    std::fprintf(stderr, "run_capture: %s\n", error.message().c_str());
    return 1;
  }

  print_labelled("stdout", result.out);
  print_labelled("stderr", result.err);
  std::printf("== %s ==\n", result.status.to_string().c_str());
  if (std::fflush(stdout) != 0) return errno == EPIPE ? 128 + 13 : 1;  // as SIGPIPE would
  return result.status.shell_code();
  // [docs:end]
}
