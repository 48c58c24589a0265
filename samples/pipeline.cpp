// SPDX-License-Identifier: BSL-1.0
// pipeline: runs `A ... '|' B ... '|' C ...` given as arguments, like a shell
// would run `A ... | B ... | C ...` but without a shell:
//
//   $ printf 'b\na\nb\n' | pipeline sort '|' uniq -c '|' sort -rn
//         2 b
//         1 a
//   pipeline: stage 0 (sort): exited with 0
//   pipeline: stage 1 (uniq): exited with 0
//   pipeline: stage 2 (sort): exited with 0
//
// The first stage reads pipeline's own stdin and the last one writes straight
// to pipeline's stdout, as its output comes (the bytes never pass through
// pipeline). Every stage's status is printed on stderr, and the exit status
// is that of bash's `set -o pipefail`: the last failing stage's, as a shell
// shows it. Ctrl-C or SIGTERM stops the stages (SIGTERM, then SIGKILL after
// a second), prints their statuses, and pipeline dies of that signal.
// 127 when a program cannot be found, 126 when it cannot be executed, 2 for
// a usage error. See docs/tutorial/03-programs.md.
#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(signal_set.hpp)

#include <signal.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

using namespace coropipe::compat::awaitable_operators;
using namespace std::chrono_literals;

namespace {

// The stages' argvs, split at the "|" arguments; nothing for a usage error
// (no stage, or an empty one).
std::optional<std::vector<std::vector<std::string>>> parse(int argc, char** argv) {
  std::vector<std::vector<std::string>> stages(1);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "|") == 0) {
      if (stages.back().empty()) return std::nullopt;
      stages.emplace_back();
    } else {
      stages.back().emplace_back(argv[i]);
    }
  }
  if (stages.back().empty()) return std::nullopt;
  return stages;
}

struct outcome {
  coropipe::pipeline_status status;
  int signal = 0;  // the signal that stopped the pipeline, or 0
};

// [docs:pipeline-supervise]
// Waits for every stage, or for Ctrl-C / SIGTERM, which stops them all.
asio::awaitable<outcome> supervise(coropipe::pipeline& stages, asio::signal_set& signals) {
  auto first = co_await (stages.async_wait(asio::use_awaitable) ||
                         signals.async_wait(asio::use_awaitable));
  if (first.index() == 0) co_return outcome{std::get<0>(first), 0};
  // SIGTERM to every stage, SIGKILL to those still there a second later.
  coropipe::pipeline_status st = co_await stages.async_stop(1s, asio::use_awaitable);
  co_return outcome{st, std::get<1>(first)};
}
// [docs:end]

int usage(std::FILE* to, int code) {
  std::fputs("usage: pipeline A [ARG...] ['|' B [ARG...]]...\n"
             "Runs A | B | ... without a shell (quote each '|'), prints every stage's status on\n"
             "stderr, and exits with the status of bash's `set -o pipefail`.\n",
             to);
  return code;
}

} // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0))
    return usage(stdout, 0);
  const auto commands = parse(argc, argv);
  if (!commands) return usage(stderr, 2);

  outcome result;
  try {
    // [docs:pipeline-main]
    asio::io_context io;
    // Before the spawn, so that no Ctrl-C is missed; the stages start with
    // the default actions (spawn resets handlers in the child).
    asio::signal_set signals(io, SIGINT, SIGTERM);

    coropipe::pipeline_options opts;
    for (const auto& argv_of_stage : *commands) opts.stages.push_back({.argv = argv_of_stage});
    // The first stage's stdin and the last stage's stdout are left inherited:
    // our own stdin and stdout. Between stages, spawn() makes the pipes.
    coropipe::pipeline stages = coropipe::spawn(io, std::move(opts));

    asio::co_spawn(io, supervise(stages, signals), [&](std::exception_ptr error, outcome o) {
      if (error) std::rethrow_exception(error);  // out of io.run()
      result = std::move(o);
    });
    io.run();
    // [docs:end]
  } catch (const coropipe::system_error& e) {
    // "coropipe::spawn: stage 1 (sortx): execve sortx: No such file or directory";
    // the stages already started were killed and reaped.
    std::fprintf(stderr, "pipeline: %s\n", e.what());
    const bool not_executable =
        e.code() == std::errc::permission_denied || e.code() == std::errc::executable_format_error;
    return not_executable ? 126 : 127;
  }

  // [docs:pipeline-report]
  for (std::size_t i = 0; i < result.status.stages.size(); ++i) {
    std::fprintf(stderr, "pipeline: stage %zu (%s): %s\n", i, (*commands)[i][0].c_str(),
                 result.status.stages[i].to_string().c_str());
  }
  if (result.signal != 0) {
    // Die of the signal we caught, so our own parent sees how we ended.
    std::signal(result.signal, SIG_DFL);
    std::raise(result.signal);
  }
  return result.status.pipefail().shell_code();  // bash's `set -o pipefail`
  // [docs:end]
}
