// SPDX-License-Identifier: BSL-1.0
/// @file
/// async_communicate(): feed a program its input and collect its output and
/// exit status, all at once (Python's `Popen.communicate()`).
///
/// ```
/// coropipe::process p = coropipe::spawn(io, {.argv = {"sort"}, .in = coropipe::stdio::pipe(),
///                                            .out = coropipe::stdio::pipe(),
///                                            .err = coropipe::stdio::pipe()});
/// auto r = co_await coropipe::async_communicate(p, "b\na\n", asio::use_awaitable);
/// // r.out == "a\nb\n", r.status.success()
/// ```
///
/// Writing the input and reading stdout and stderr happen concurrently, so no
/// amount of data deadlocks (a program blocked writing a full stdout pipe
/// while the parent is blocked writing its full stdin pipe, say).
#pragma once

#include <coropipe/exit_status.hpp>
#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>

namespace coropipe {

/// How async_communicate() bounds its work.
struct communicate_options {
  /// Keep at most this many bytes of stdout, and as many of stderr; what comes
  /// beyond is read and discarded (the program is not blocked, nor stopped)
  /// and the result says it was truncated. Nothing: no limit.
  std::optional<std::size_t> output_limit{};
  /// Stop the program if it has not ended after this long; the operation
  /// then completes with `asio::error::timed_out`. Nothing: no limit.
  std::optional<std::chrono::steady_clock::duration> timeout{};
  /// How a timeout or a cancellation stops the program: stop_signal, then
  /// SIGKILL if it still runs after grace.
  std::chrono::steady_clock::duration grace = std::chrono::seconds(1);
  /// The first signal of a stop (SIGTERM by default).
  int stop_signal = 15;
};

/// What async_communicate() collected.
struct communicate_result {
  /// How the program ended.
  exit_status status{};
  /// Its stdout (empty unless stdout was stdio::pipe()).
  std::string out{};
  /// Its stderr (empty unless stderr was stdio::pipe()).
  std::string err{};
  /// True when stdout went beyond communicate_options::output_limit.
  bool out_truncated = false;
  /// True when stderr went beyond communicate_options::output_limit.
  bool err_truncated = false;
};

namespace detail {
asio::awaitable<std::tuple<error_code, communicate_result>> communicate(
    process& p, std::string_view input, communicate_options opts);
} // namespace detail

/// Writes @p input to the program's stdin and closes it, while reading its
/// stdout and stderr to their end; then reaps the program.
///
/// Completion signature: `void(error_code, coropipe::communicate_result)`.
///
/// @param p      a process whose stdin (if @p input is not empty), stdout and
///               stderr are pipes as needed; streams that are not pipes are
///               left alone. It must outlive the operation; its pipes are
///               closed when the operation completes, and the program reaped.
/// @param input  the bytes for stdin, which must stay valid until the
///               operation completes (like `asio::buffer`). If the program
///               exits without reading them all, the rest is dropped (no
///               error).
/// @param opts   output limit, timeout and how to stop the program.
///
/// Waiting for the end does not depend on the pipes: once the program has
/// exited, what it left in them is read and the operation completes, even if
/// a grandchild still holds them open.
///
/// **Timeout and cancellation keep the output.** On a timeout, or when the
/// operation is cancelled (per-operation cancellation, any type), the program
/// is stopped — communicate_options::stop_signal, then SIGKILL after
/// communicate_options::grace, to its whole process group if it leads one
/// (spawn_options::new_session or process_group) — and reaped. Its output
/// keeps being read meanwhile (so what it prints while stopping is kept),
/// and the operation completes with `asio::error::timed_out` or
/// `asio::error::operation_aborted` **together with the result**: the
/// status, and everything read. To see that result, complete with error codes
/// as values (`compat::as_tuple`, a callback, or
/// `make_parallel_group` to race it against something else); `use_awaitable`
/// throws the error and drops the result, and `a || b` drops the loser's.
/// Other errors: `errc::no_child` for an empty process,
/// `errc::invalid_argument` for input without a stdin pipe, and read or wait
/// errors (the program is still stopped and reaped then).
template <typename CommunicateToken = asio::default_completion_token_t<process::executor_type>>
auto async_communicate(process& p, std::string_view input, communicate_options opts,
                       CommunicateToken&& token =
                           asio::default_completion_token_t<process::executor_type>()) {
  return detail::async_run<communicate_result>(p.get_executor(), detail::communicate(p, input, opts),
                                               std::forward<CommunicateToken>(token));
}

/// async_communicate() with default options (no limit, no timeout).
template <typename CommunicateToken = asio::default_completion_token_t<process::executor_type>>
  requires(!std::is_convertible_v<CommunicateToken, communicate_options>)
auto async_communicate(process& p, std::string_view input,
                       CommunicateToken&& token =
                           asio::default_completion_token_t<process::executor_type>()) {
  return coropipe::async_communicate(p, input, communicate_options{},
                                     std::forward<CommunicateToken>(token));
}

} // namespace coropipe
