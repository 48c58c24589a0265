// SPDX-License-Identifier: BSL-1.0
// A private OpenSSH server for the tests (tests/ssh_test.cpp) and the bench
// (bench/pool_cases.cpp): header-only, plain POSIX, no test framework.
//
// ssh_server starts `/usr/sbin/sshd -D -e -f <dir>/sshd_config` as a
// non-daemon child of this process, on 127.0.0.1 at free ports, with its own
// host key, authorized_keys, client key, known_hosts and client config (for
// `ssh -F`) in a mkdtemp() directory that the destructor removes. Nothing of
// ~/.ssh or /etc/ssh is read or changed: sshd reads only its -f file (with
// PermitUserRC no), the client only its -F file (IdentitiesOnly, its own
// known-hosts files, GlobalKnownHostsFile /dev/null).
//
// sshd needs its privilege separation directory /run/sshd, which is not
// created on the machine: sshd runs inside `unshare -m -p -f --mount-proc`
// (new mount and pid namespaces; we are root) with a tmpfs on /run there. It
// is the namespace's init, so killing it (the destructor does, SIGKILL) ends
// every session and every process they started. unshare gets
// PR_SET_PDEATHSIG and --kill-child: a test that dies takes the server along.
//
// Where sshd cannot be started (not root, no unshare, the sandbox refuses
// namespaces, no sshd), available() is false and reason() says why; the
// caller reports the test as skipped ("SKIPPED: ssh: <reason>"). Setting
// COROPIPE_SSH_TESTS_SKIP=<why> in the environment does the same (to try that
// path); COROPIPE_KEEP_SSHD_DIR keeps the directory (to read sshd.log).
//
// Host aliases in config_file():
//   coropipe-test           the server (the client key, a known host key)
//   coropipe-test-banner    the same server on its second port, where sshd's
//                           ForceCommand prints a banner on stdout before it
//                           runs the command (like a chatty shell rc)
//   coropipe-test-refused   a port where nothing listens (bound by this
//                           process, so no other test's server takes it)
//   coropipe-test-wrongkey  the server, with a key it does not authorize
//   coropipe-test-badhostkey the server, with a known_hosts file that holds
//                           another key for it
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "spawn_support.hpp"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace coropipe_test {

namespace ssh_detail {

// The file's contents; what could be read when it cannot be read to the end
// (a /proc file of a process that has just ended: ESRCH).
inline std::string read_text(const std::string& path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

inline bool write_text(const std::string& path, const std::string& text, mode_t mode = 0600) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return done == text.size();
}

// Runs @p argv (stdin /dev/null, stdout and stderr to @p log) and returns
// its wait status, or -1 when it could not be started.
inline int run_quietly(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  const coropipe_test::clean_spawnattr attr;
  auto args = coropipe_test::spawn_args(argv);
  pid_t pid = -1;
  const int r = ::posix_spawnp(&pid, args[0], &fa, &attr.attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

// A port on 127.0.0.1 that was free a moment ago (0 on failure). With
// @p keep, the socket bound to it (not listening: connections to it are
// refused) is left open in *keep, so that no one else takes the port.
inline unsigned free_port(int* keep = nullptr) {
  const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  unsigned port = 0;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  if (keep != nullptr && port != 0) *keep = s;
  else ::close(s);
  return port;
}

// /proc/<pid>/stat's parent pid and command name (empty name: gone).
inline void stat_of(pid_t pid, pid_t& ppid, std::string& comm) {
  const std::string text = read_text("/proc/" + std::to_string(pid) + "/stat");
  const auto open = text.find('(');
  const auto close = text.rfind(')');
  ppid = 0;
  comm.clear();
  if (open == std::string::npos || close == std::string::npos || close + 4 >= text.size()) return;
  comm = text.substr(open + 1, close - open - 1);
  std::istringstream rest(text.substr(close + 2));
  char state = 0;
  rest >> state >> ppid;
  if (state == 'Z') comm += " <defunct>";
}

inline std::string last_lines(const std::string& text, std::size_t n) {
  std::size_t pos = text.size();
  while (pos > 0 && (text[pos - 1] == '\n')) --pos;
  const std::size_t end = pos;
  for (std::size_t lines = 0; pos > 0; --pos) {
    if (text[pos - 1] == '\n' && ++lines == n) break;
  }
  std::string s = text.substr(pos, end - pos);
  for (char& c : s)
    if (c == '\n') c = '|';
  return s;
}

} // namespace ssh_detail

/// A process that runs under the private sshd (outer pid, i.e. as this
/// process sees it).
struct remote_process {
  pid_t pid = 0;
  pid_t ppid = 0;
  std::string comm;     // /proc/<pid>/stat's name (" <defunct>" appended for a zombie)
  std::string cmdline;  // argv joined by spaces
};

/// See the file's documentation.
class ssh_server {
public:
  static constexpr const char* host = "coropipe-test";
  static constexpr const char* banner_host = "coropipe-test-banner";
  static constexpr const char* refused_host = "coropipe-test-refused";
  static constexpr const char* wrong_key_host = "coropipe-test-wrongkey";
  static constexpr const char* bad_host_key_host = "coropipe-test-badhostkey";
  /// What the banner host prints before the command's own output.
  static constexpr const char* banner = "Welcome to the coropipe test host!";

  ssh_server() {
    // Tests run in parallel, each with its own server: a port taken between
    // its choice and sshd's bind() is chosen again.
    for (int attempt = 1;; ++attempt) {
      try {
        start();
        reason_.clear();
        return;
      } catch (const std::exception& e) {
        reason_ = e.what();
        stop();
        if (attempt == 3 || reason_.find("Address already in use") == std::string::npos) return;
      }
    }
  }
  ~ssh_server() { stop(); }
  ssh_server(const ssh_server&) = delete;
  ssh_server& operator=(const ssh_server&) = delete;

  /// True when the server runs and accepts connections.
  [[nodiscard]] bool available() const noexcept { return reason_.empty(); }
  /// Why it is not available.
  [[nodiscard]] const std::string& reason() const noexcept { return reason_; }
  /// The temporary directory holding keys, configs and sshd.log.
  [[nodiscard]] const std::string& dir() const noexcept { return dir_; }
  /// The client configuration: `ssh -F config_file() coropipe-test ...`.
  [[nodiscard]] std::string config_file() const { return dir_ + "/ssh_config"; }
  [[nodiscard]] std::string client_key() const { return dir_ + "/client_key"; }
  [[nodiscard]] std::string known_hosts() const { return dir_ + "/known_hosts"; }
  [[nodiscard]] unsigned port() const noexcept { return port_; }
  [[nodiscard]] unsigned banner_port() const noexcept { return banner_port_; }
  [[nodiscard]] unsigned refused_port() const noexcept { return refused_port_; }
  [[nodiscard]] const std::string& user() const noexcept { return user_; }
  /// sshd's pid as this process sees it (the namespace's init).
  [[nodiscard]] pid_t sshd_pid() const noexcept { return init_; }
  /// What sshd has logged so far.
  [[nodiscard]] std::string log() const { return ssh_detail::read_text(dir_ + "/sshd.log"); }

  /// `ssh -F config_file() -T @p alias --` followed by @p command.
  [[nodiscard]] std::vector<std::string> ssh_argv(const std::string& alias = host,
                                                  const std::vector<std::string>& command = {}) const {
    std::vector<std::string> argv{"/usr/bin/ssh", "-F", config_file(), "-T", alias, "--"};
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
  }

  /// Every process under sshd other than sshd's own (the sessions' shells
  /// and the programs they run), zombies included.
  [[nodiscard]] std::vector<remote_process> processes() const {
    std::vector<remote_process> out;
    if (init_ <= 0) return out;
    // Every process of the machine, then the descendants of sshd.
    std::vector<remote_process> all;
    if (DIR* d = ::opendir("/proc")) {
      while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        remote_process p;
        p.pid = std::atoi(e->d_name);
        ssh_detail::stat_of(p.pid, p.ppid, p.comm);
        if (!p.comm.empty()) all.push_back(std::move(p));
      }
      ::closedir(d);
    }
    std::vector<pid_t> parents{init_};
    for (std::size_t i = 0; i < parents.size(); ++i) {
      for (auto& p : all) {
        if (p.ppid != parents[i]) continue;
        parents.push_back(p.pid);
        if (p.comm.rfind("sshd", 0) == 0) continue;
        std::string cmd = ssh_detail::read_text("/proc/" + std::to_string(p.pid) + "/cmdline");
        for (char& c : cmd)
          if (c == '\0') c = ' ';
        while (!cmd.empty() && cmd.back() == ' ') cmd.pop_back();
        p.cmdline = cmd;
        out.push_back(p);
      }
    }
    return out;
  }

  /// The processes under sshd whose command line contains @p text.
  [[nodiscard]] std::vector<remote_process> processes_running(const std::string& text) const {
    std::vector<remote_process> out;
    for (auto& p : processes())
      if (p.cmdline.find(text) != std::string::npos) out.push_back(p);
    return out;
  }

  /// Waits up to @p timeout until no process under sshd runs @p text;
  /// returns what still runs it then (empty: none).
  [[nodiscard]] std::vector<remote_process> wait_until_none_running(const std::string& text,
                                                                    std::chrono::milliseconds timeout) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto left = processes_running(text);
      for (auto it = left.begin(); it != left.end();) {
        if (it->comm.find("<defunct>") != std::string::npos) it = left.erase(it);
        else ++it;
      }
      if (left.empty() || std::chrono::steady_clock::now() > deadline) return left;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  /// True while @p pid runs (not ended, not a zombie).
  static bool running(pid_t pid) {
    pid_t ppid = 0;
    std::string comm;
    ssh_detail::stat_of(pid, ppid, comm);
    return !comm.empty() && comm.find("<defunct>") == std::string::npos;
  }

  static std::string describe(const std::vector<remote_process>& ps) {
    std::string s;
    for (const auto& p : ps) {
      if (!s.empty()) s += "; ";
      s += std::to_string(p.pid) + " (" + p.comm + ") " + p.cmdline;
    }
    return s.empty() ? "(none)" : s;
  }

private:
  void fail(const std::string& why) { throw std::runtime_error(why); }

  void start() {
    if (const char* why = std::getenv("COROPIPE_SSH_TESTS_SKIP"))  // to try the skip path
      fail(std::string("COROPIPE_SSH_TESTS_SKIP is set (") + why + ")");
    if (::access("/usr/sbin/sshd", X_OK) != 0) fail("/usr/sbin/sshd is not installed (Debian package openssh-server)");
    if (::geteuid() != 0) fail("sshd needs root here (its own pid and mount namespaces); not root");
    for (const char* prog : {"/usr/bin/ssh", "/usr/bin/ssh-keygen", "/usr/bin/unshare"})
      if (::access(prog, X_OK) != 0) fail(std::string(prog) + " is not installed");
    if (const passwd* pw = ::getpwuid(::geteuid())) user_ = pw->pw_name;
    else fail("no user name for uid " + std::to_string(::geteuid()));

    char tmpl[] = "/tmp/coropipe-sshd-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) fail(std::string("mkdtemp: ") + std::strerror(errno));
    dir_ = tmpl;
    const std::string keylog = dir_ + "/ssh-keygen.log";
    for (const char* key : {"host_key", "client_key", "wrong_key", "other_host_key"}) {
      const int st = ssh_detail::run_quietly(
          {"/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "coropipe-test", "-f", dir_ + "/" + key}, keylog);
      if (st != 0) fail("ssh-keygen failed: " + ssh_detail::last_lines(ssh_detail::read_text(keylog), 2));
    }
    if (!ssh_detail::write_text(dir_ + "/authorized_keys", ssh_detail::read_text(dir_ + "/client_key.pub")))
      fail("cannot write authorized_keys");

    port_ = ssh_detail::free_port();
    banner_port_ = ssh_detail::free_port();
    refused_port_ = ssh_detail::free_port(&refused_socket_);  // bound, never listening
    if (port_ == 0 || banner_port_ == 0 || refused_port_ == 0 || port_ == banner_port_ ||
        refused_port_ == port_ || refused_port_ == banner_port_)
      fail("no free ports on 127.0.0.1");

    // known_hosts: the real host key for both ports; the bad one holds another key.
    auto key_of = [&](const char* name) {
      std::string pub = ssh_detail::read_text(dir_ + "/" + name + ".pub");
      const auto sp = pub.find(' ', pub.find(' ') + 1);  // "ssh-ed25519 AAAA... comment"
      return pub.substr(0, sp);
    };
    const std::string host_pub = key_of("host_key");
    const std::string other_pub = key_of("other_host_key");
    auto entry = [](unsigned port, const std::string& key) {
      return "[127.0.0.1]:" + std::to_string(port) + " " + key + "\n";
    };
    ssh_detail::write_text(dir_ + "/known_hosts", entry(port_, host_pub) + entry(banner_port_, host_pub));
    ssh_detail::write_text(dir_ + "/known_hosts_bad", entry(port_, other_pub));

    const std::string sshd_config =
        "# coropipe tests: a private sshd (tests/ssh_fixture.hpp)\n"
        "Port " + std::to_string(port_) + "\n"
        "Port " + std::to_string(banner_port_) + "\n"
        "ListenAddress 127.0.0.1\n"
        "HostKey " + dir_ + "/host_key\n"
        "PidFile none\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "AuthorizedKeysFile " + dir_ + "/authorized_keys\n"
        "AuthorizedPrincipalsFile none\n"
        "PermitUserRC no\n"
        "PermitUserEnvironment no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "X11Forwarding no\n"
        "AllowTcpForwarding no\n"
        "UseDNS no\n"
        "LogLevel INFO\n"
        // Many workers start at once in the tests and the bench.
        "MaxStartups 200\n"
        "MaxSessions 200\n"
        "Match LocalPort " + std::to_string(banner_port_) + "\n"
        "  ForceCommand echo '" + banner + "'; eval \"$SSH_ORIGINAL_COMMAND\"\n";
    if (!ssh_detail::write_text(dir_ + "/sshd_config", sshd_config)) fail("cannot write sshd_config");

    auto block = [&](const std::string& alias, unsigned port, const std::string& key, const std::string& known) {
      return "Host " + alias + "\n  HostName 127.0.0.1\n  Port " + std::to_string(port) + "\n  IdentityFile " + dir_ +
             "/" + key + "\n  UserKnownHostsFile " + dir_ + "/" + known + "\n";
    };
    const std::string ssh_config =
        "# coropipe tests: the client side of the private sshd (ssh -F this file)\n" +
        block(host, port_, "client_key", "known_hosts") + block(banner_host, banner_port_, "client_key", "known_hosts") +
        block(refused_host, refused_port_, "client_key", "known_hosts") +
        block(wrong_key_host, port_, "wrong_key", "known_hosts") +
        block(bad_host_key_host, port_, "client_key", "known_hosts_bad") +
        "Host *\n"
        "  User " + user_ + "\n"
        "  IdentitiesOnly yes\n"
        "  IdentityAgent none\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  UpdateHostKeys no\n"
        "  CheckHostIP no\n"
        "  BatchMode yes\n"
        "  PasswordAuthentication no\n"
        "  KbdInteractiveAuthentication no\n"
        "  ConnectTimeout 20\n"
        "  LogLevel ERROR\n";
    if (!ssh_detail::write_text(config_file(), ssh_config)) fail("cannot write ssh_config");

    // sshd -t checks the configuration first: a clear reason if it is refused.
    const std::string checklog = dir_ + "/sshd-check.log";
    if (ssh_detail::run_quietly({"/usr/sbin/sshd", "-t", "-f", dir_ + "/sshd_config"}, checklog) != 0) {
      const std::string text = ssh_detail::read_text(checklog);
      // Missing /run/sshd is expected here (sshd -t checks it); only other complaints count.
      if (text.find("/run/sshd") == std::string::npos && text.find("privilege separation") == std::string::npos)
        fail("sshd -t refuses the configuration: " + ssh_detail::last_lines(text, 2));
    }

    const std::string script = "mount -t tmpfs -o mode=0755 coropipe-run /run && mkdir -m 0755 /run/sshd && exec "
                               "/usr/sbin/sshd -D -e -f " + dir_ + "/sshd_config";
    std::vector<std::string> argv{"/usr/bin/unshare", "--mount", "--pid", "--fork", "--mount-proc",
                                  "--kill-child",     "/bin/sh", "-c",    script};
    const std::string logpath = dir_ + "/sshd.log";
    const int logfd = ::open(logpath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0) fail("cannot create sshd.log");
    auto args = coropipe_test::spawn_args(argv);
    std::fflush(nullptr);
    sigset_t all, old;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // The server ends with this process, whatever happens to it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      for (int sig = 1; sig < NSIG; ++sig) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        ::signal(sig, SIG_DFL);
      }
      sigset_t none;
      sigemptyset(&none);
      ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
      const int null = ::open("/dev/null", O_RDONLY);
      if (null < 0 || ::dup2(null, 0) < 0 || ::dup2(logfd, 1) < 0 || ::dup2(logfd, 2) < 0) ::_exit(127);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    const int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    ::close(logfd);
    if (pid < 0) fail(std::string("fork: ") + std::strerror(fork_errno));
    unshare_ = pid;

    // Up when sshd listens on both ports; down when unshare has exited.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      int status = 0;
      const pid_t r = ::waitpid(unshare_, &status, WNOHANG);
      if (r == unshare_) {
        unshare_ = -1;
        fail("sshd did not start (" + describe_status(status) + "): " + ssh_detail::last_lines(log(), 3));
      }
      if (init_ <= 0) init_ = child_of(unshare_);
      // Its own "Server listening" lines (a connection test could reach
      // another test's server, had it taken the port meanwhile).
      const std::string text = log();
      auto listening = [&](unsigned port) {
        return text.find("Server listening on 127.0.0.1 port " + std::to_string(port) + ".") != std::string::npos;
      };
      if (init_ > 0 && listening(port_) && listening(banner_port_)) break;
      if (text.find("Address already in use") != std::string::npos)  // one port taken: sshd runs on
        fail("sshd could not bind its ports: " + ssh_detail::last_lines(text, 3));
      if (std::chrono::steady_clock::now() > deadline)
        fail("sshd did not accept connections within 30 s: " + ssh_detail::last_lines(log(), 3));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  static std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("killed by signal ") + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
  }

  static pid_t child_of(pid_t parent) {
    const std::string text = ssh_detail::read_text("/proc/" + std::to_string(parent) + "/task/" +
                                                   std::to_string(parent) + "/children");
    return std::atoi(text.c_str());
  }

  void stop() noexcept {
    if (unshare_ > 0) {
      // The namespace's init: its death ends every process in the namespace.
      if (init_ <= 0) init_ = child_of(unshare_);
      if (init_ > 0) ::kill(init_, SIGKILL);
      else ::kill(unshare_, SIGKILL);  // --kill-child takes its child along
      int status = 0;
      while (::waitpid(unshare_, &status, 0) < 0 && errno == EINTR) {
      }
      unshare_ = -1;
    }
    init_ = -1;
    if (refused_socket_ >= 0) ::close(refused_socket_);
    refused_socket_ = -1;
    if (!dir_.empty() && std::getenv("COROPIPE_KEEP_SSHD_DIR") == nullptr) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
    dir_.clear();
  }

  std::string reason_;
  std::string dir_;
  std::string user_;
  unsigned port_ = 0;
  unsigned banner_port_ = 0;
  unsigned refused_port_ = 0;
  int refused_socket_ = -1;
  pid_t unshare_ = -1;
  pid_t init_ = -1;
};

} // namespace coropipe_test
