// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pipeline.hpp>

#include <coropipe/error.hpp>
#include <coropipe/pipe.hpp>

#include "process_ops.hpp"
#include "sys.hpp"

#include <coropipe/asio.hpp>

#include <algorithm>
#include <new>

namespace coropipe {

pipeline_options operator|(spawn_options a, spawn_options b) {
  pipeline_options p;
  p.stages.push_back(std::move(a));
  p.stages.push_back(std::move(b));
  return p;
}

pipeline_options operator|(pipeline_options p, spawn_options b) {
  p.stages.push_back(std::move(b));
  return p;
}

exit_status pipeline_status::last() const noexcept { return stages.empty() ? exit_status() : stages.back(); }

exit_status pipeline_status::pipefail() const noexcept {
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) {
    if (!it->success()) return *it;
  }
  return exit_status();
}

bool pipeline_status::success() const noexcept {
  return std::all_of(stages.begin(), stages.end(), [](const exit_status& s) { return s.success(); });
}

pipeline::executor_type pipeline::get_executor() const {
  return stages_.empty() ? detail::fallback_executor() : stages_.front().get_executor();
}

std::vector<std::shared_ptr<detail::child_state>> pipeline::states() const {
  std::vector<std::shared_ptr<detail::child_state>> out;
  out.reserve(stages_.size());
  for (const auto& s : stages_) out.push_back(detail::child_access::state(s));
  return out;
}

void pipeline::signal(int signo, error_code& ec) noexcept {
  ec.clear();
  if (stages_.empty()) {
    ec = errc::no_child;
    return;
  }
  for (auto& s : stages_) {
    error_code e;
    s.signal(signo, e);
    if (e && !ec) ec = e;
  }
}

void pipeline::signal(int signo) {
  error_code ec;
  signal(signo, ec);
  if (ec) detail::throw_error(ec, "coropipe::pipeline::signal", "kill");
}

namespace detail {

struct pipeline_access {
  static pipeline make(std::vector<process> stages, pid_t pgid) {
    pipeline p;
    p.stages_ = std::move(stages);
    p.pgid_ = pgid;
    return p;
  }
};

namespace {

pipeline_status to_status(std::vector<exit_status> v) {
  pipeline_status s;
  s.stages = std::move(v);
  return s;
}

std::string stage_name(std::size_t i, const spawn_options& o) {
  std::string name = "stage " + std::to_string(i);
  const std::string program = !o.program.empty() ? o.program.string() : !o.argv.empty() ? o.argv[0] : "";
  if (!program.empty()) name += " (" + program + ")";
  return name;
}

std::string invalid_pipeline(const pipeline_options& opts) {
  using kind = stdio_access::kind;
  if (opts.stages.empty()) return "the pipeline has no stage";
  for (std::size_t i = 0; i < opts.stages.size(); ++i) {
    const spawn_options& s = opts.stages[i];
    if (i > 0 && stdio_access::kind_of(s.in) != kind::inherit)
      return stage_name(i, s) + ": in is set, but the previous stage's stdout is its stdin";
    if (i + 1 < opts.stages.size() && stdio_access::kind_of(s.out) != kind::inherit)
      return stage_name(i, s) + ": out is set, but its stdout is the next stage's stdin";
    if (opts.new_process_group && (s.new_session || s.process_group))
      return stage_name(i, s) + ": new_session or process_group set in a pipeline with new_process_group";
    if (std::string problem = invalid_options(s); !problem.empty()) return stage_name(i, s) + ": " + problem;
  }
  return {};
}

} // namespace

pipeline spawn_pipeline(const asio::any_io_executor& ex, pipeline_options& opts, error_code& ec,
                        std::string& what) {
  ec.clear();
  what.clear();
  try {
    if (std::string problem = invalid_pipeline(opts); !problem.empty()) {
      ec = errc::invalid_argument;
      what = std::move(problem);
      return pipeline();
    }
    std::vector<process> stages;
    stages.reserve(opts.stages.size());
    pid_t pgid = 0;
    unique_fd previous;  // the read end of the pipe into the next stage
    for (std::size_t i = 0; i < opts.stages.size(); ++i) {
      spawn_options stage = std::move(opts.stages[i]);
      const std::string name = stage_name(i, stage);
      if (i > 0) stage.in = stdio::from(std::move(previous));
      if (i + 1 < opts.stages.size()) {
        pipe_ends p = coropipe::pipe(ec);
        if (ec) {
          what = name + ": pipe2";
          return pipeline();  // the stages started so far are killed and reaped
        }
        stage.out = stdio::from(std::move(p.write_end));
        previous = std::move(p.read_end);
      }
      if (opts.new_process_group) stage.process_group = i == 0 ? 0 : pgid;
      std::string step;
      process proc = spawn_impl(ex, stage, ec, step);
      // `stage` goes now, and with it the parent's copies of this stage's
      // ends of the pipes between stages.
      if (ec) {
        what = name + ": " + step;
        return pipeline();
      }
      if (i == 0 && opts.new_process_group) pgid = proc.pid();
      stages.push_back(std::move(proc));
    }
    return pipeline_access::make(std::move(stages), pgid);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
    what = "allocating";
    return pipeline();
  }
}

asio::awaitable<std::tuple<error_code, pipeline_status>> wait_pipeline(
    std::vector<std::shared_ptr<child_state>> states) {
  co_await asio::this_coro::throw_if_cancelled(false);
  auto r = co_await wait_programs(std::move(states));
  co_return std::tuple{std::get<0>(r), to_status(std::move(std::get<1>(r)))};
}

asio::awaitable<std::tuple<error_code, pipeline_status>> stop_pipeline(
    std::vector<std::shared_ptr<child_state>> states, pid_t pgid,
    std::chrono::steady_clock::duration grace, int signo) {
  co_await asio::this_coro::throw_if_cancelled(false);
  auto r = co_await stop_programs(std::move(states), pgid, grace, signo);
  co_return std::tuple{std::get<0>(r), to_status(std::move(std::get<1>(r)))};
}

} // namespace detail

} // namespace coropipe
