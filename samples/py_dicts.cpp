// SPDX-License-Identifier: BSL-1.0
// py_dicts: a C++ program sends dicts to a Python worker (samples/py_worker.py)
// and gets dicts back, over the worker's stdin and stdout; the worker uses
// nothing but multiprocessing.connection's Connection.recv() and send().
//
//   py_dicts path/to/py_worker.py [python3]
//
// Prints each answer as Python's repr() would, then the worker's exit.
// See docs/tutorial/02-messages.md ("Messages with structure").
#include <coropipe/coropipe.hpp>
#include <coropipe/pickle.hpp>

#include <coropipe/asio.hpp>

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace {

// [docs:py-dicts]
// What C++ sends: a std::map that Python receives as a dict.
using job = std::map<std::string, std::variant<std::int64_t, std::string>>;

job make_job(std::size_t id, const std::string& text) {
  return {{"id", static_cast<std::int64_t>(id)}, {"text", text}};
}

// Prints an answer as Python's repr() would, then picks a field out of it.
void print_answer(const coropipe::pyobject& answer) {
  std::printf("%s\n", answer.repr().c_str());
  const std::optional<std::int64_t> words = answer.as_dict().at("words").to_int64();
  std::printf("  %lld words\n", static_cast<long long>(words.value_or(-1)));
}

std::vector<std::string> sample_texts() { return {"Spam 0", "lovely spam", "wonderful spam and eggs"}; }

asio::awaitable<int> run(asio::io_context& io, std::string python, std::string worker) {
  coropipe::spawn_options opts;
  opts.argv = {python, worker};
  opts.in = coropipe::stdio::pipe();   // the worker's Connection(0)
  opts.out = coropipe::stdio::pipe();  // the worker's Connection(1)
  coropipe::process p = coropipe::spawn(io, std::move(opts));

  // Sends typed C++ values as pickles; receives any Python data as pyobject.
  coropipe::channel<coropipe::pickled<job>> to_worker(std::move(p.stdin_pipe()));
  coropipe::channel<coropipe::pyobject> from_worker(std::move(p.stdout_pipe()));

  const std::vector<std::string> texts = sample_texts();
  for (std::size_t i = 0; i < texts.size(); ++i) {
    co_await to_worker.async_send(make_job(i, texts[i]), asio::use_awaitable);
    std::optional<coropipe::pyobject> answer = co_await from_worker.async_receive(asio::use_awaitable);
    if (!answer) break;                                      // the worker ended early
    print_answer(*answer);
  }
  co_await to_worker.async_close(asio::use_awaitable);      // the worker's recv() raises EOFError
  const coropipe::exit_status st = co_await p.async_wait(asio::use_awaitable);
  std::printf("worker exited with %d\n", st.exit_code());
  co_return st.exited() && st.exit_code() == 0 ? 0 : 1;
}
// [docs:end]

} // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: py_dicts path/to/py_worker.py [python3]\n");
    return 2;
  }
  try {
    asio::io_context io(1);
    int code = 1;
    asio::co_spawn(io, run(io, argc == 3 ? argv[2] : "python3", argv[1]), [&](std::exception_ptr e, int c) {
      if (e) std::rethrow_exception(e);
      code = c;
    });
    io.run();
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "py_dicts: %s\n", e.what());
    return 1;
  }
}
