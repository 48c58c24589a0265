// SPDX-License-Identifier: BSL-1.0
/// @file
/// Pipelines: `a | b | c`, each program's stdout connected to the next one's
/// stdin by a pipe of their own (the bytes never pass through the parent),
/// with the status of every stage, like bash's `PIPESTATUS`.
///
/// ```
/// using coropipe::spawn_options;
/// coropipe::pipeline p = coropipe::spawn(io,
///     spawn_options{.argv = {"sort"}, .in = coropipe::stdio::pipe()} |
///     spawn_options{.argv = {"uniq", "-c"}} |
///     spawn_options{.argv = {"sort", "-rn"}, .out = coropipe::stdio::pipe()});
/// // write p.stdin_pipe(), close it, read p.stdout_pipe(), then:
/// coropipe::pipeline_status st = co_await p.async_wait(asio::use_awaitable);
/// // st.stages[i] for each stage; st.pipefail() as with `set -o pipefail`
/// ```
///
/// The first stage's stdin and the last stage's stdout are whatever their
/// spawn_options say (inherited by default, or pipes, `/dev/null`, your
/// descriptors); each stage's stderr too. The pipes between stages are made
/// by spawn(), and the parent closes its copies of their ends as soon as
/// both stages run: when a stage ends, the next one sees the end of its
/// input, and the previous one gets SIGPIPE (EPIPE) writing to it, as in a
/// shell. A failing stage does not hang the others.
#pragma once

#include <coropipe/exit_status.hpp>
#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

namespace coropipe {

/// The stages of a pipeline, and how to start them. Usually made with `|`.
struct pipeline_options {
  /// The programs, first to last. The `in` of every stage but the first,
  /// and the `out` of every stage but the last, must be left as they are
  /// (stdio::inherit()): the pipeline connects them.
  std::vector<spawn_options> stages{};
  /// Start the pipeline in a new process group led by its first stage, as a
  /// shell does for a job: pipeline::process_group(), and stops that reach
  /// the stages' own children. The stages' own new_session and process_group
  /// must then be left unset.
  bool new_process_group = false;
};

/// `a | b`: a pipeline of two stages.
[[nodiscard]] pipeline_options operator|(spawn_options a, spawn_options b);
/// `(a | b) | c`: one more stage at the end.
[[nodiscard]] pipeline_options operator|(pipeline_options p, spawn_options b);

/// How each stage of a pipeline ended.
struct pipeline_status {
  /// One status per stage, first to last (bash's `PIPESTATUS`).
  std::vector<exit_status> stages{};

  /// The last stage's status: what a shell reports for the pipeline.
  [[nodiscard]] exit_status last() const noexcept;
  /// As with bash's `set -o pipefail`: the status of the last stage that did
  /// not succeed, or success when all did.
  [[nodiscard]] exit_status pipefail() const noexcept;
  /// True when every stage succeeded.
  [[nodiscard]] bool success() const noexcept;
};

namespace detail {
asio::awaitable<std::tuple<error_code, pipeline_status>> wait_pipeline(
    std::vector<std::shared_ptr<child_state>> states);
asio::awaitable<std::tuple<error_code, pipeline_status>> stop_pipeline(
    std::vector<std::shared_ptr<child_state>> states, pid_t pgid,
    std::chrono::steady_clock::duration grace, int signo);
struct pipeline_access;
} // namespace detail

/// The programs of a running pipeline. Destroying it destroys each stage's
/// coropipe::process: programs still running are killed and reaped.
class pipeline {
public:
  using executor_type = asio::any_io_executor;

  /// An empty pipeline.
  pipeline() = default;
  pipeline(pipeline&&) noexcept = default;
  /// Kills and reaps the programs held so far first.
  pipeline& operator=(pipeline&&) noexcept = default;
  pipeline(const pipeline&) = delete;
  pipeline& operator=(const pipeline&) = delete;
  ~pipeline() = default;

  /// The stages, first to last: each a coropipe::process, for its pid, its
  /// stderr pipe, or to wait for or signal it alone.
  [[nodiscard]] std::span<process> stages() noexcept { return stages_; }
  /// The number of stages; 0 for an empty pipeline.
  [[nodiscard]] std::size_t size() const noexcept { return stages_.size(); }

  /// The first stage's stdin pipe (when it was stdio::pipe()). The pipeline
  /// must not be empty.
  [[nodiscard]] asio::posix::stream_descriptor& stdin_pipe() noexcept { return stages_.front().stdin_pipe(); }
  /// The last stage's stdout pipe (when it was stdio::pipe()). The pipeline
  /// must not be empty.
  [[nodiscard]] asio::posix::stream_descriptor& stdout_pipe() noexcept { return stages_.back().stdout_pipe(); }

  /// The pipeline's process group (pipeline_options::new_process_group),
  /// or 0.
  [[nodiscard]] pid_t process_group() const noexcept { return pgid_; }

  /// The executor its operations run on.
  [[nodiscard]] executor_type get_executor() const;

  /// Sends @p signo to every stage not reaped yet.
  /// @throws system_error naming "kill"; `errc::no_child` when empty.
  void signal(int signo);
  /// As signal(), reporting the first error in @p ec.
  void signal(int signo, error_code& ec) noexcept;

  /// Waits for every stage to end, and reaps them all.
  ///
  /// Completion signature: `void(error_code, coropipe::pipeline_status)`.
  ///
  /// Waiting does not depend on the pipes (see process). Supports
  /// per-operation cancellation: a cancelled wait completes with
  /// `asio::error::operation_aborted` and leaves the programs running, ready
  /// to be waited for again. `errc::no_child` for an empty pipeline.
  template <typename WaitToken = asio::default_completion_token_t<executor_type>>
  auto async_wait(WaitToken&& token = asio::default_completion_token_t<executor_type>()) {
    return detail::async_run<pipeline_status>(get_executor(), detail::wait_pipeline(states()),
                                              std::forward<WaitToken>(token));
  }

  /// Stops every stage and reaps them all: sends @p signo to each (and to the
  /// pipeline's process group, if it has one), then SIGKILL to those still
  /// running after @p grace; once all have ended, SIGKILL to what is left of
  /// the process group.
  ///
  /// Completion signature: `void(error_code, coropipe::pipeline_status)`.
  ///
  /// Cancelling it completes it with `asio::error::operation_aborted`; the
  /// first signal has been sent.
  template <typename StopToken = asio::default_completion_token_t<executor_type>>
  auto async_stop(std::chrono::steady_clock::duration grace, int signo,
                  StopToken&& token = asio::default_completion_token_t<executor_type>()) {
    return detail::async_run<pipeline_status>(get_executor(),
                                              detail::stop_pipeline(states(), pgid_, grace, signo),
                                              std::forward<StopToken>(token));
  }

  /// async_stop() with SIGTERM as the first signal.
  template <typename StopToken = asio::default_completion_token_t<executor_type>>
  auto async_stop(std::chrono::steady_clock::duration grace,
                  StopToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_stop(grace, child::terminate_signal, std::forward<StopToken>(token));
  }

private:
  friend struct detail::pipeline_access;
  std::vector<std::shared_ptr<detail::child_state>> states() const;

  std::vector<process> stages_;
  pid_t pgid_ = 0;
};

namespace detail {
// On failure sets @p ec, and @p what to "stage <i> (<argv[0]>): <step>".
pipeline spawn_pipeline(const asio::any_io_executor& ex, pipeline_options& opts, error_code& ec,
                        std::string& what);
} // namespace detail

/// Starts the stages of a pipeline, first to last, connected by pipes.
///
/// @param where  an executor or execution context (e.g. `asio::io_context&`).
/// @param opts   the stages (see pipeline_options).
/// @throws system_error whose what() names the stage and the step, as
/// spawn() does: `coropipe::spawn: stage 1 (sortx): execve sortx: No such
/// file or directory`. The stages already started are killed and reaped.
/// `errc::invalid_argument` for a pipeline without stages, or with a stdin
/// or stdout set where the pipeline connects two stages.
template <detail::executor_or_context Where>
[[nodiscard]] pipeline spawn(Where&& where, pipeline_options opts) {
  error_code ec;
  std::string what;
  pipeline p = detail::spawn_pipeline(detail::executor_of(where), opts, ec, what);
  if (ec) detail::throw_error(ec, "coropipe::spawn", what.c_str());
  return p;
}

/// As above, reporting the error in @p ec; the pipeline is then empty.
template <detail::executor_or_context Where>
[[nodiscard]] pipeline spawn(Where&& where, pipeline_options opts, error_code& ec) {
  std::string what;
  return detail::spawn_pipeline(detail::executor_of(where), opts, ec, what);
}

} // namespace coropipe
