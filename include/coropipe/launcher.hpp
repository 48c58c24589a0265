// SPDX-License-Identifier: BSL-1.0
/// @file
/// Launchers: how a pool worker's argv reaches another machine through a
/// tool that forwards stdin and stdout (ssh, Slurm's srun, `kubectl exec -i`).
///
/// ```
/// auto ssh = coropipe::ssh_launcher("build1", {.control_master = true});
/// auto srun = coropipe::command_launcher({"srun", "--ntasks=1", "--quiet"}, "slurm");
/// coropipe::pool<chunk, std::int64_t> pool(io.get_executor(),
///     {{.workers = prime_pool::workers_type::launched(ssh, {"/opt/bin/prime_pool", "--serve"}), .count = 4},
///      {.workers = prime_pool::workers_type::self({"--serve"}), .count = 2}});
/// ```
///
/// A launcher is a command prefix: the pool spawns `prefix + argv` locally
/// and speaks the message wire format with it over its stdin and stdout; the
/// tool carries them to the worker on the far side. Nothing listens: the pool
/// opens no port, and ssh authenticates and encrypts.
///
/// ssh hands the far side ONE string, which the remote user's login shell
/// parses (a POSIX sh is assumed): ssh_launcher() builds it with
/// remote_command(), each argument single-quoted, so spaces, quotes, `$`, `;`
/// and newlines arrive as they were. srun and kubectl pass an argv on, so
/// command_launcher() appends the arguments as they are.
///
/// When a launched worker fails to start, the tool's exit status and the
/// first part of its stderr tell why: classify_launch_failure() turns them
/// into one of `errc::remote_host_unknown`, `remote_connection_failed`,
/// `remote_authentication_failed`, `remote_host_key_rejected`,
/// `remote_program_missing` or `remote_start_failed`.
#pragma once

#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace coropipe {

/// Quotes @p arg for a POSIX shell: `abc` -> `'abc'`, `it's` -> `'it'\''s'`,
/// the empty string -> `''`. Every byte other than `'` stands for itself
/// inside single quotes (newlines and non-ASCII bytes too).
[[nodiscard]] std::string shell_quote(std::string_view arg);

/// The one command string ssh hands the remote login shell for @p argv:
/// `exec 'prog' 'arg 1'` (exec: the shell is replaced by the program, so the
/// program's parent is the sshd session). @throws std::invalid_argument when
/// @p argv is empty.
[[nodiscard]] std::string remote_command(const std::vector<std::string>& argv);

/// How ssh_launcher() runs ssh. The defaults never prompt (BatchMode), accept
/// the key of a host seen for the first time and refuse a changed one
/// (StrictHostKeyChecking=accept-new), give up connecting after 10 s, and
/// on a host that stops answering after about 45 s.
struct ssh_options {
  /// The ssh client program.
  std::string program = "ssh";
  /// The remote user (`-l`); empty: ssh's default (its config, or yours).
  std::string user{};
  /// The port (`-p`); 0: ssh's default.
  unsigned port = 0;
  /// A private key (`-i`); empty: ssh's default keys and agent.
  std::string identity_file{};
  /// An ssh config file (`-F`); empty: ssh reads `~/.ssh/config`.
  std::string config_file{};
  /// `-o UserKnownHostsFile=`; empty: ssh's default.
  std::string known_hosts_file{};
  /// `-o StrictHostKeyChecking=`; empty: not given (ssh's config decides).
  std::string strict_host_key_checking = "accept-new";
  /// `-o BatchMode=yes`: never prompt for a password or passphrase.
  bool batch_mode = true;
  /// `-o ConnectTimeout=`; zero: not given.
  std::chrono::seconds connect_timeout{10};
  /// `-o ServerAliveInterval=` with `ServerAliveCountMax=3`: ssh gives up on
  /// a host that stops answering (crashed, cut off) after about 3 times
  /// this, so its workers' requests fail or are retried instead of waiting
  /// forever; zero: not given (ssh's default: never).
  std::chrono::seconds server_alive_interval{15};
  /// One connection for all workers on the host: `ControlMaster=auto`,
  /// `ControlPersist=60` and a ControlPath. sshd refuses connections beyond
  /// MaxStartups (10:30:100 by default) while they authenticate, so use it
  /// for more than a few workers per host.
  bool control_master = false;
  /// The ControlPath; empty: `$XDG_RUNTIME_DIR/coropipe-ssh-%C` when that
  /// variable is set, else `~/.ssh/coropipe-ssh-%C` (the directory must exist).
  std::string control_path{};
  /// More arguments for ssh, e.g. `{"-o", "Compression=yes"}`. They come
  /// before coropipe's own options, and ssh keeps the first value it gets
  /// for an option, so these override the defaults above.
  std::vector<std::string> extra_options{};
};

/// How a worker's argv reaches another machine: a command prefix.
struct launcher {
  /// The command that runs the worker: `ssh -T ... -- host`, `srun ...`.
  std::vector<std::string> prefix{};
  /// Names the host (or cluster, pod, ...) in error messages, and a pool's
  /// group by default; empty: "local".
  std::string host{};
  /// True (ssh): the worker's argv becomes one remote_command() string.
  /// False (srun, kubectl): the argv is appended as it is.
  bool quote_for_shell = true;

  /// The full argv to spawn for the worker argv @p argv.
  /// @throws std::invalid_argument when @p argv is empty.
  [[nodiscard]] std::vector<std::string> command(const std::vector<std::string>& argv) const;
};

/// A launcher running workers on @p host through OpenSSH without a pty
/// (`ssh -T -e none`): `host`, `user@host`, `host:port`, `user@[::1]:port`
/// or a Host alias of the ssh config. @throws std::invalid_argument for an
/// empty host, one starting with `-`, or a bad port.
[[nodiscard]] launcher ssh_launcher(std::string host, const ssh_options& opts = {});

/// A launcher that puts @p prefix before the worker's argv, unquoted: for
/// `{"srun", "--ntasks=1", "--quiet"}` or `{"kubectl", "exec", "-i", pod, "--"}`.
/// @p label names it (default: the prefix's first element).
/// @throws std::invalid_argument when @p prefix is empty.
[[nodiscard]] launcher command_launcher(std::vector<std::string> prefix, std::string label = {});

/// A host and how many workers to run there.
struct host_spec {
  /// As given, user and port included (`user@host:22`).
  std::string host{};
  /// Workers on that host.
  std::size_t workers = 1;
};

/// Parses `HOST` (one worker) or `HOST/N` (N workers), like GNU parallel's
/// `--sshlogin`: `"build1/4"` -> {"build1", 4}. The host part may be
/// `user@host:22`. @throws std::invalid_argument naming the text for an
/// empty host, an N that is not a number from 1 to 4096, or a host starting
/// with `-`.
[[nodiscard]] host_spec parse_host_spec(std::string_view text);

/// Turns how a launched worker's start failed into an error. ssh's exit
/// status 255 is its own failure, told apart by its stderr:
/// "Could not resolve hostname" -> `errc::remote_host_unknown`; "Connection
/// refused", "timed out", "No route to host", "Connection closed" or
/// "reset" -> `remote_connection_failed`; "Permission denied" ->
/// `remote_authentication_failed`; "Host key verification failed" or
/// "REMOTE HOST IDENTIFICATION HAS CHANGED" -> `remote_host_key_rejected`.
/// Exit status 127 or 126 (the shell could not run the program), or
/// "command not found" / "No such file" -> `remote_program_missing`;
/// anything else -> `remote_start_failed`.
[[nodiscard]] error_code classify_launch_failure(const exit_status& st, std::string_view stderr_text);

/// The line of @p stderr_text that explains a launch failure: the first one
/// that classify_launch_failure() recognises, else the last non-empty line
/// ("" when there is none). At most 300 bytes, control characters replaced.
[[nodiscard]] std::string launch_failure_line(std::string_view stderr_text);

} // namespace coropipe
