// SPDX-License-Identifier: BSL-1.0
// child_helper: a small program the tests spawn, with one behaviour per mode.
// It uses plain POSIX calls only, so that what it reports about itself
// (descriptors, signals, flags, ids) is what it got from its parent.
//
//   child_helper echo                     copy stdin to stdout until end of input
//   child_helper exit N                   exit with N
//   child_helper sleep SECONDS            sleep, then exit 0
//   child_helper print-args               argv, one per line (argv[0] first)
//   child_helper print-fds                "<fd> <target>" per open descriptor
//   child_helper print-env                the environment, one entry per line
//   child_helper print-cwd                the working directory
//   child_helper print-signals            SigBlk/SigIgn/SigCgt/SigPnd from /proc/self/status
//   child_helper print-flags              "<fd> blocking|nonblocking" for 0, 1, 2
//   child_helper print-ids                "<pid> <ppid> <pgid> <sid>"
//   child_helper write N [FD]             N bytes of pattern() to stdout (or FD)
//   child_helper write-both N             N bytes of pattern() to stdout and to stderr, interleaved
//   child_helper write-fd FD TEXT         TEXT to descriptor FD
//   child_helper grandchild SECONDS       fork a grandchild that keeps stdout open for SECONDS,
//                                         print its pid, exit 0 at once
//   child_helper close-stdout SECONDS     print "bye", close stdout, sleep, exit 0
//   child_helper ready-sleep SECONDS      print "ready", sleep (SIGTERM ends it by default)
//   child_helper ignore-term SECONDS      ignore SIGTERM, print "ready", sleep
//   child_helper term-message SECONDS     on SIGTERM print "got TERM" and exit 0; print "ready", sleep
//   child_helper lines-on-demand N        print "line I" for I in 1..N, each after one byte of stdin
//                                         (none before the first)
//   child_helper slow-bytes TEXT          write TEXT one byte per write(), 1 ms apart
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <string>
#include <vector>

extern char** environ;

namespace {

unsigned char pattern(std::size_t i) { return static_cast<unsigned char>((i * 7 + i / 251) & 0xff); }

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool print(const std::string& s, int fd = 1) { return write_all(fd, s.data(), s.size()); }

void sleep_for(double seconds) {
  timespec ts{static_cast<time_t>(seconds), static_cast<long>((seconds - static_cast<double>(static_cast<time_t>(seconds))) * 1e9)};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

int write_pattern(const std::vector<int>& fds, std::size_t total) {
  std::vector<char> buf(65536);
  for (std::size_t done = 0; done < total;) {
    const std::size_t n = std::min(buf.size(), total - done);
    for (std::size_t i = 0; i < n; ++i) buf[i] = static_cast<char>(pattern(done + i));
    for (int fd : fds) {
      if (!write_all(fd, buf.data(), n)) return 3;
    }
    done += n;
  }
  return 0;
}

int print_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 3;
  std::string out;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const int fd = std::atoi(e->d_name);
    if (fd == ::dirfd(dir)) continue;
    char path[64], target[PATH_MAX];
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    const ssize_t n = ::readlink(path, target, sizeof target - 1);
    out += std::to_string(fd) + " " + (n < 0 ? std::string("?") : std::string(target, static_cast<std::size_t>(n))) + "\n";
  }
  ::closedir(dir);
  return print(out) ? 0 : 3;
}

int print_signals() {
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 3;
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  std::string out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const std::string line = text.substr(pos, eol - pos);
    for (const char* key : {"SigPnd:", "SigBlk:", "SigIgn:", "SigCgt:"}) {
      if (line.rfind(key, 0) == 0) out += line + "\n";
    }
    pos = eol + 1;
  }
  return print(out) ? 0 : 3;
}

volatile sig_atomic_t got_term = 0;

} // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  auto arg = [&](int i) -> std::string { return argc > i ? argv[i] : ""; };

  if (mode == "echo") {
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(0, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return 3;
      if (n == 0) return 0;
      if (!write_all(1, buf, static_cast<std::size_t>(n))) return 4;
    }
  }
  if (mode == "exit") return std::atoi(arg(2).c_str());
  if (mode == "sleep") {
    sleep_for(std::atof(arg(2).c_str()));
    return 0;
  }
  if (mode == "print-args") {
    std::string out;
    for (int i = 0; i < argc; ++i) out += std::string(argv[i]) + "\n";
    return print(out) ? 0 : 3;
  }
  if (mode == "print-fds") return print_fds();
  if (mode == "print-env") {
    std::string out;
    for (char** e = environ; *e != nullptr; ++e) out += std::string(*e) + "\n";
    return print(out) ? 0 : 3;
  }
  if (mode == "print-cwd") {
    char buf[PATH_MAX];
    if (::getcwd(buf, sizeof buf) == nullptr) return 3;
    return print(std::string(buf) + "\n") ? 0 : 3;
  }
  if (mode == "print-signals") return print_signals();
  if (mode == "print-flags") {
    std::string out;
    for (int fd = 0; fd < 3; ++fd) {
      const int fl = ::fcntl(fd, F_GETFL);
      out += std::to_string(fd) + (fl < 0 ? " closed" : (fl & O_NONBLOCK) ? " nonblocking" : " blocking") + "\n";
    }
    return print(out, 1) ? 0 : 3;
  }
  if (mode == "print-ids") {
    return print(std::to_string(::getpid()) + " " + std::to_string(::getppid()) + " " +
                 std::to_string(::getpgid(0)) + " " + std::to_string(::getsid(0)) + "\n")
               ? 0
               : 3;
  }
  if (mode == "write") {
    const std::size_t n = std::strtoull(arg(2).c_str(), nullptr, 10);
    const int fd = argc > 3 ? std::atoi(argv[3]) : 1;
    return write_pattern({fd}, n);
  }
  if (mode == "write-both") return write_pattern({1, 2}, std::strtoull(arg(2).c_str(), nullptr, 10));
  if (mode == "write-fd") return print(arg(3), std::atoi(arg(2).c_str())) ? 0 : 3;
  if (mode == "grandchild") {
    const pid_t pid = ::fork();
    if (pid < 0) return 3;
    if (pid == 0) {
      sleep_for(std::atof(arg(2).c_str()));
      ::_exit(0);
    }
    return print(std::to_string(pid) + "\n") ? 0 : 3;
  }
  if (mode == "close-stdout") {
    print("bye\n");
    ::close(1);
    sleep_for(std::atof(arg(2).c_str()));
    return 0;
  }
  if (mode == "ready-sleep" || mode == "ignore-term" || mode == "term-message") {
    if (mode == "ignore-term") ::signal(SIGTERM, SIG_IGN);
    if (mode == "term-message") {
      struct sigaction sa {};
      sa.sa_handler = [](int) { got_term = 1; };
      ::sigaction(SIGTERM, &sa, nullptr);  // no SA_RESTART: nanosleep returns
    }
    print("ready\n");
    timespec ts{static_cast<time_t>(std::atof(arg(2).c_str())), 0};
    while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      if (got_term) {
        print("got TERM\n");
        return 0;
      }
    }
    return 0;
  }
  if (mode == "lines-on-demand") {
    const int n = std::atoi(arg(2).c_str());
    for (int i = 1; i <= n; ++i) {
      if (i > 1) {
        char c;
        if (::read(0, &c, 1) != 1) return 3;
      }
      if (!print("line " + std::to_string(i) + "\n")) return 4;
    }
    return 0;
  }
  if (mode == "slow-bytes") {
    const std::string text = arg(2);
    for (char c : text) {
      if (!write_all(1, &c, 1)) return 3;
      sleep_for(0.001);
    }
    return 0;
  }
  std::fprintf(stderr, "child_helper: unknown mode \"%s\"\n", mode.c_str());
  return 2;
}
