// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe::exit_status, how a child process ended.
#pragma once

#include <string>

namespace coropipe {

/// How a child process ended: it exited with a code, or a signal killed it
/// (perhaps dumping core). A value type, shared by forked children and spawned
/// programs. `exit_status::from_code(137)` and `exit_status::killed(SIGKILL)`
/// are different values, although a shell shows both as 137.
///
/// ```
/// coropipe::exit_status st = co_await c.async_wait(asio::use_awaitable);
/// if (st == coropipe::exit_status::from_code(3)) { /* exited with 3 */ }
/// if (st.exited()) std::cout << st.exit_code();    // the question, not a factory
/// ```
class exit_status {
public:
  /// Exited normally with @p code (`_exit(code)` / `return code` from main);
  /// only its low 8 bits are kept, as the kernel does.
  [[nodiscard]] static constexpr exit_status from_code(int code) noexcept {
    return exit_status(kind::exited, code & 0xff);
  }
  /// The former name of from_code(), kept for one release: `exited()` is the
  /// question "did it exit?".
  [[deprecated("use exit_status::from_code")]] [[nodiscard]] static constexpr exit_status exited(
      int code) noexcept {
    return from_code(code);
  }
  /// Killed by signal @p signo, with or without a core dump.
  [[nodiscard]] static constexpr exit_status killed(int signo, bool core_dumped = false) noexcept {
    return exit_status(core_dumped ? kind::dumped : kind::killed, signo);
  }
  /// Decodes the status word of a *terminated* process, as returned by
  /// waitpid() without WUNTRACED/WCONTINUED (a stop status is not an end).
  [[nodiscard]] static exit_status from_wait_status(int wstatus) noexcept;

  /// Exited with code 0. A default-constructed exit_status is from_code(0).
  constexpr exit_status() noexcept = default;

  /// True when the process exited (returned from main, called exit/_exit).
  [[nodiscard]] constexpr bool exited() const noexcept { return kind_ == kind::exited; }
  /// True when a signal terminated the process.
  [[nodiscard]] constexpr bool signaled() const noexcept { return kind_ != kind::exited; }
  /// True when a signal terminated the process and it dumped core.
  [[nodiscard]] constexpr bool core_dumped() const noexcept { return kind_ == kind::dumped; }
  /// True when the process exited with code 0.
  [[nodiscard]] constexpr bool success() const noexcept { return exited() && value_ == 0; }

  /// The exit code (0-255) if exited(), otherwise -1.
  [[nodiscard]] constexpr int exit_code() const noexcept { return exited() ? value_ : -1; }
  /// The terminating signal if signaled(), otherwise 0.
  [[nodiscard]] constexpr int term_signal() const noexcept { return signaled() ? value_ : 0; }

  /// The number a POSIX shell puts in `$?`: the exit code, or 128 + the signal.
  [[nodiscard]] constexpr int shell_code() const noexcept {
    return exited() ? value_ : 128 + value_;
  }

  /// "exited with 9", "killed by SIGKILL", "killed by SIGSEGV (core dumped)".
  [[nodiscard]] std::string to_string() const;

  friend constexpr bool operator==(const exit_status&, const exit_status&) noexcept = default;

private:
  enum class kind : unsigned char { exited, killed, dumped };
  constexpr exit_status(kind k, int v) noexcept : kind_(k), value_(v) {}

  kind kind_ = kind::exited;
  int value_ = 0;
};

} // namespace coropipe
