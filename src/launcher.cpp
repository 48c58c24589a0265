// SPDX-License-Identifier: BSL-1.0
// Launchers: quoting for the remote shell, ssh's command line, host specs,
// and the classification of failed starts.
#include <coropipe/launcher.hpp>

#include "parse.hpp"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <utility>

namespace coropipe {

std::string shell_quote(std::string_view arg) {
  std::string out;
  out.reserve(arg.size() + 2);
  out += '\'';
  for (const char c : arg) {
    if (c == '\'') out += "'\\''";  // end the quote, an escaped quote, quote again
    else out += c;
  }
  out += '\'';
  return out;
}

std::string remote_command(const std::vector<std::string>& argv) {
  if (argv.empty()) throw std::invalid_argument("coropipe::remote_command: empty argv");
  std::string out = "exec";
  for (const auto& a : argv) {
    out += ' ';
    out += shell_quote(a);
  }
  return out;
}

std::vector<std::string> launcher::command(const std::vector<std::string>& argv) const {
  if (argv.empty()) throw std::invalid_argument("coropipe::launcher::command: empty argv");
  std::vector<std::string> out = prefix;
  if (quote_for_shell) {
    out.push_back(remote_command(argv));
  } else {
    out.insert(out.end(), argv.begin(), argv.end());
  }
  return out;
}

namespace {

unsigned parse_port(std::string_view s, std::string_view whole) {
  unsigned long v = 0;
  if (!detail::parse_decimal(s, 5, 1, 65535, v))
    throw std::invalid_argument("bad port in ssh host '" + std::string(whole) + "'");
  return static_cast<unsigned>(v);
}

// "user@host:port", "host:port", "[v6]:port", "user@[v6]", or a plain name
// (an IPv6 literal without brackets has several ':' and is left alone).
struct destination {
  std::string user;
  std::string host;
  unsigned port = 0;
};

destination split_destination(std::string_view text) {
  destination d;
  std::string_view rest = text;
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
    d.user = std::string(rest.substr(0, at));
    rest.remove_prefix(at + 1);
  }
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) throw std::invalid_argument("unclosed '[' in ssh host '" + std::string(text) + "'");
    d.host = std::string(rest.substr(1, close - 1));
    rest.remove_prefix(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') throw std::invalid_argument("bad ssh host '" + std::string(text) + "'");
      d.port = parse_port(rest.substr(1), text);
    }
    return d;
  }
  const auto colon = rest.find(':');
  if (colon != std::string_view::npos && rest.find(':', colon + 1) == std::string_view::npos) {
    d.host = std::string(rest.substr(0, colon));
    d.port = parse_port(rest.substr(colon + 1), text);
  } else {
    d.host = std::string(rest);
  }
  return d;
}

void option(std::vector<std::string>& out, const std::string& value) {
  out.emplace_back("-o");
  out.push_back(value);
}

} // namespace

launcher ssh_launcher(std::string host, const ssh_options& opts) {
  if (host.empty()) throw std::invalid_argument("coropipe::ssh_launcher: empty host");
  if (host.front() == '-') throw std::invalid_argument("coropipe::ssh_launcher: host '" + host + "' starts with '-'");
  if (host.find('\0') != std::string::npos || host.find_first_of(" \t\n") != std::string::npos)
    throw std::invalid_argument("coropipe::ssh_launcher: host '" + host + "' contains white space or NUL");
  const destination d = split_destination(host);
  if (d.host.empty() || d.host.front() == '-')
    throw std::invalid_argument("coropipe::ssh_launcher: bad host '" + host + "'");
  launcher l;
  l.host = host;
  l.quote_for_shell = true;
  auto& p = l.prefix;
  p.push_back(opts.program.empty() ? std::string("ssh") : opts.program);
  p.emplace_back("-T");           // no pty: a clean binary channel, stderr kept apart
  p.emplace_back("-e");           // no escape character: "~." in the data is data
  p.emplace_back("none");
  // First: ssh keeps the first value it gets for an option.
  p.insert(p.end(), opts.extra_options.begin(), opts.extra_options.end());
  if (!opts.config_file.empty()) {
    p.emplace_back("-F");
    p.push_back(opts.config_file);
  }
  if (opts.batch_mode) option(p, "BatchMode=yes");
  if (!opts.strict_host_key_checking.empty()) option(p, "StrictHostKeyChecking=" + opts.strict_host_key_checking);
  if (!opts.known_hosts_file.empty()) option(p, "UserKnownHostsFile=" + opts.known_hosts_file);
  if (opts.connect_timeout.count() > 0) option(p, "ConnectTimeout=" + std::to_string(opts.connect_timeout.count()));
  if (opts.server_alive_interval.count() > 0) {
    option(p, "ServerAliveInterval=" + std::to_string(opts.server_alive_interval.count()));
    option(p, "ServerAliveCountMax=3");
  }
  if (!opts.identity_file.empty()) {
    p.emplace_back("-i");
    p.push_back(opts.identity_file);
  }
  if (opts.control_master) {
    std::string path = opts.control_path;
    if (path.empty()) {
      const char* runtime = std::getenv("XDG_RUNTIME_DIR");
      path = runtime != nullptr && *runtime != '\0' ? std::string(runtime) + "/coropipe-ssh-%C" : "~/.ssh/coropipe-ssh-%C";
    }
    option(p, "ControlMaster=auto");
    option(p, "ControlPersist=60");
    option(p, "ControlPath=" + path);
  }
  const std::string user = !opts.user.empty() ? opts.user : d.user;
  if (!user.empty()) {
    p.emplace_back("-l");
    p.push_back(user);
  }
  const unsigned port = opts.port != 0 ? opts.port : d.port;
  if (port != 0) {
    p.emplace_back("-p");
    p.push_back(std::to_string(port));
  }
  // "--": the host and command are never taken for options.
  p.emplace_back("--");
  p.push_back(d.host);
  return l;
}

launcher command_launcher(std::vector<std::string> prefix, std::string label) {
  if (prefix.empty() || prefix.front().empty()) throw std::invalid_argument("coropipe::command_launcher: empty prefix");
  launcher l;
  l.host = label.empty() ? prefix.front() : std::move(label);
  l.prefix = std::move(prefix);
  l.quote_for_shell = false;
  return l;
}

host_spec parse_host_spec(std::string_view text) {
  auto bad = [&](const char* why) {
    return std::invalid_argument("bad host '" + std::string(text) + "': " + why + " (expected HOST or HOST/N)");
  };
  host_spec spec;
  std::string_view host = text;
  if (const auto slash = text.rfind('/'); slash != std::string_view::npos) {
    const std::string_view n = text.substr(slash + 1);
    host = text.substr(0, slash);
    unsigned long v = 0;
    if (!detail::parse_decimal(n, 4, 1, 4096, v)) throw bad("N is not a number from 1 to 4096");
    spec.workers = v;
  }
  if (host.empty()) throw bad("empty host");
  if (host.front() == '-') throw bad("a host cannot start with '-'");
  if (host.find_first_of(std::string_view(" \t\n\0/", 5)) != std::string_view::npos) throw bad("white space, NUL or '/' in the host");
  spec.host = std::string(host);
  return spec;
}

namespace {

bool contains(std::string_view text, std::string_view what) { return text.find(what) != std::string_view::npos; }

bool ci_contains(std::string_view text, std::string_view what) {
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
  return std::search(text.begin(), text.end(), what.begin(), what.end(),
                     [&](char a, char b) { return lower(a) == lower(b); }) != text.end();
}

// What a line of ssh's (or the remote shell's) stderr says, if anything.
errc classify_line(std::string_view line, bool ssh_failed) {
  if (ssh_failed) {
    if (contains(line, "Host key verification failed") || contains(line, "REMOTE HOST IDENTIFICATION HAS CHANGED") ||
        contains(line, "host key is known for") || contains(line, "No matching host key type"))
      return errc::remote_host_key_rejected;
    if (contains(line, "Permission denied") || contains(line, "Too many authentication failures") ||
        contains(line, "No more authentication methods"))
      return errc::remote_authentication_failed;
    if (contains(line, "Could not resolve hostname") || contains(line, "Name or service not known") ||
        contains(line, "nodename nor servname"))
      return errc::remote_host_unknown;
    if (contains(line, "Connection refused") || ci_contains(line, "timed out") || contains(line, "No route to host") ||
        contains(line, "Network is unreachable") || contains(line, "Connection closed") ||
        contains(line, "Connection reset") || contains(line, "kex_exchange_identification") ||
        contains(line, "Broken pipe"))
      return errc::remote_connection_failed;
  } else {
    if (contains(line, "command not found") || contains(line, "No such file") || contains(line, ": not found"))
      return errc::remote_program_missing;
  }
  return errc{};
}

template <typename Fn>
void for_each_line(std::string_view text, Fn fn) {
  while (!text.empty()) {
    const auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (!line.empty() && fn(line)) return;
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

bool ssh_own_failure(const exit_status& st) { return st.exited() && st.exit_code() == 255; }

} // namespace

error_code classify_launch_failure(const exit_status& st, std::string_view stderr_text) {
  const bool ssh_failed = ssh_own_failure(st);
  errc found{};
  for_each_line(stderr_text, [&](std::string_view line) {
    found = classify_line(line, ssh_failed);
    return found != errc{};
  });
  if (found != errc{}) return found;
  if (st.exited() && (st.exit_code() == 127 || st.exit_code() == 126)) return errc::remote_program_missing;
  return errc::remote_start_failed;
}

std::string launch_failure_line(std::string_view stderr_text) {
  std::string_view chosen;
  std::string_view last;
  for_each_line(stderr_text, [&](std::string_view line) {
    last = line;
    if (classify_line(line, true) != errc{} || classify_line(line, false) != errc{}) {
      chosen = line;
      return true;
    }
    return false;
  });
  if (chosen.empty()) chosen = last;
  std::string out;
  for (const char c : chosen.substr(0, 300)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  return out;
}

} // namespace coropipe
