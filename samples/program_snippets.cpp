// SPDX-License-Identifier: BSL-1.0
// program_snippets: the short examples of docs/tutorial/03-programs.md, each
// in a function of its own so that the docs show compiled code. Run without
// arguments it runs the ones that need nothing but the programs every Debian
// system has (sh, sort, uniq, tail), and prints what they did.
#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>

#include <cstdio>
#include <exception>
#include <optional>
#include <string>

using namespace std::chrono_literals;

namespace snippets {

coropipe::process spawn_self(asio::io_context& io) {
  // [docs:spawn-self]
  // This very program, started anew (not forked): it parses --worker in main.
  coropipe::process worker = coropipe::spawn(io, {.argv = {"my-program", "--worker"},
                                                  .program = "/proc/self/exe",
                                                  .out = coropipe::stdio::pipe()});
  // [docs:end]
  return worker;
}

void frames_to_python(asio::io_context& io) {
  // [docs:frames-to-python]
  coropipe::process py = coropipe::spawn(io, {.argv = {"python3", "worker.py"},
                                              .in = coropipe::stdio::pipe(),
                                              .out = coropipe::stdio::pipe()});
  coropipe::framed_stream<> to_py(std::move(py.stdin_pipe()));     // its sys.stdin
  coropipe::framed_stream<> from_py(std::move(py.stdout_pipe()));  // its sys.stdout
  // [docs:end]
  py.detach();
}

coropipe::process pass_descriptor(asio::io_context& io) {
  // [docs:pass-fd]
  auto [events, events_w] = coropipe::pipe();
  coropipe::spawn_options opts{.argv = {"worker", "--events-fd=3"}};
  opts.pass_fd(3, std::move(events_w));   // the worker writes to its descriptor 3
  coropipe::process w = coropipe::spawn(io, std::move(opts));
  // [docs:end]
  return w;
}

void environment(coropipe::spawn_options& opts) {
  // [docs:environment]
  opts.env.set("LC_ALL", "C").unset("DISPLAY");                        // the parent's, edited
  opts.env = coropipe::environment::empty().set("PATH", "/usr/bin");  // replaced
  opts.cwd = "/srv/build";
  // [docs:end]
}

asio::awaitable<coropipe::exit_status> communicate_bounded(coropipe::process& p) {
  // [docs:communicate-bounded]
  auto [ec, r] = co_await coropipe::async_communicate(
      p, "", {.output_limit = 1 << 20, .timeout = 30s, .grace = 2s},
      coropipe::compat::as_tuple(asio::use_awaitable));
  if (ec == asio::error::timed_out)  // see docs/errors.md: Asio 1.22 and std::errc
    std::printf("stopped after 30 s (%s); it had printed:\n%s", r.status.to_string().c_str(), r.out.c_str());
  // [docs:end]
  co_return r.status;
}

void handle(const std::string& line) { std::printf("line: %s\n", line.c_str()); }

asio::awaitable<void> follow_log(asio::io_context& io) {
  // [docs:line-reader]
  coropipe::process p = coropipe::spawn(io, {.argv = {"tail", "-n", "0", "-F", "/var/log/app.log"},
                                             .out = coropipe::stdio::pipe()});
  coropipe::line_reader lines(p.stdout_pipe());  // refers to the pipe; line_reader(std::move(s)) owns
  while (std::optional<std::string> line = co_await lines.async_read_line(asio::use_awaitable))
    handle(*line);                               // std::nullopt: the end of the stream
  // [docs:end]
  co_await p.async_wait(asio::use_awaitable);
}

coropipe::pipeline sort_uniq(asio::io_context& io) {
  // [docs:pipeline-spawn]
  using coropipe::spawn_options;
  coropipe::pipeline p = coropipe::spawn(io, spawn_options{.argv = {"sort"}, .in = coropipe::stdio::pipe()} |
                                             spawn_options{.argv = {"uniq", "-c"}} |
                                             spawn_options{.argv = {"sort", "-rn"}, .out = coropipe::stdio::pipe()});
  // [docs:end]
  return p;
}

} // namespace snippets

namespace {

// Runs what needs only standard programs: a bounded communicate and a pipeline.
asio::awaitable<int> run_some(asio::io_context& io) {
  coropipe::process p = coropipe::spawn(io, {.argv = {"sh", "-c", "echo bounded"},
                                             .in = coropipe::stdio::pipe(),
                                             .out = coropipe::stdio::pipe(),
                                             .err = coropipe::stdio::pipe()});
  const coropipe::exit_status st = co_await snippets::communicate_bounded(p);
  std::printf("communicate: %s\n", st.to_string().c_str());

  coropipe::pipeline pl = snippets::sort_uniq(io);
  co_await asio::async_write(pl.stdin_pipe(), asio::buffer(std::string_view("b\na\nb\n")), asio::use_awaitable);
  pl.stdin_pipe().close();
  std::string out;
  char buf[256];
  for (;;) {
    auto [ec, n] = co_await pl.stdout_pipe().async_read_some(asio::buffer(buf),
                                                             coropipe::compat::as_tuple(asio::use_awaitable));
    out.append(buf, n);
    if (ec == asio::error::eof) break;
    if (ec) throw coropipe::system_error(ec, "read");
  }
  const auto status = co_await pl.async_wait(asio::use_awaitable);
  std::printf("pipeline: %s", out.c_str());
  co_return status.success() ? 0 : 1;
}

} // namespace

int main() {
  try {
    asio::io_context io;
    int code = 1;
    asio::co_spawn(io, run_some(io), [&code](std::exception_ptr e, int c) {
      if (e) std::rethrow_exception(e);
      code = c;
    });
    io.run();
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "program_snippets: %s\n", e.what());
    return 1;
  }
}
