// SPDX-License-Identifier: BSL-1.0
// Socket cases: 16-byte messages over a Unix socket and over TCP loopback,
// and a request-reply round trip, through coropipe (listener + async_connect
// + socket_stream on both ends) against a raw C baseline (blocking send/recv
// of one framed message per call), and Python's own Client/Listener rate for
// the same messages, all in the same run.
#include "run.hpp"
#include "cases.hpp"
#include "harness.hpp"

#include <coropipe/exit_status.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/listener.hpp>

#include <coropipe/asio.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fcntl.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace bench {

namespace {

using asio::awaitable;
using asio::use_awaitable;

constexpr char frame16[20] = {0,   0,   0,   16,  'p', 'a', 'y', 'l', 'o', 'a',
                               'd', '-', 's', 'i', 'x', 't', 'e', 'e', 'n', '!'};

[[noreturn]] void fail(const char* what) { throw coropipe::system_error(errno, coropipe::system_category(), what); }

void send_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("send");
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

void recv_exact(int fd, char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail("recv");
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

void reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

coropipe::address where(bool tcp) {
  static int n = 0;
  return tcp ? coropipe::address::parse("127.0.0.1:0")
             : coropipe::address::abstract("coropipe-bench-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
}

// A raw listening socket on @p a; returns the descriptor and the real address.
int raw_listen(coropipe::address& a) {
  ::sockaddr_storage sa{};
  coropipe::error_code ec;
  const ::socklen_t len = a.to_sockaddr(sa, ec);
  const int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::bind(fd, reinterpret_cast<const ::sockaddr*>(&sa), len) != 0 || ::listen(fd, 16) != 0) fail("listen");
  ::socklen_t blen = sizeof sa;
  ::getsockname(fd, reinterpret_cast<::sockaddr*>(&sa), &blen);
  a = coropipe::address::from_sockaddr(sa, blen);
  return fd;
}

int raw_connect(const coropipe::address& a) {
  ::sockaddr_storage sa{};
  coropipe::error_code ec;
  const ::socklen_t len = a.to_sockaddr(sa, ec);
  const int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const ::sockaddr*>(&sa), len) != 0) fail("connect");
  return fd;
}

// Reads what a non-blocking socket has, up to @p n bytes; returns how many.
std::size_t recv_ready(int fd, char* p, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, p + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) break;
    if (r <= 0) fail("recv");
    got += static_cast<std::size_t>(r);
  }
  return got;
}

// TCP_NODELAY on a TCP socket, as coropipe sets it on its connections.
void no_delay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Forks a child that connects to a fresh listening socket (TCP loopback when
// @p tcp, else an abstract Unix name) and runs @p peer(fd) on its end (an
// exception there: one line on stderr, exit status 1); accepts it here and
// returns what @p timed(fd) returns on this end (the seconds it measured).
// Then reaps the child and closes both sockets.
template <typename Peer, typename Timed>
double with_forked_peer(bool tcp, Peer peer, Timed timed) {
  coropipe::address a = where(tcp);
  const int l = raw_listen(a);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    try {
      peer(raw_connect(a));
      ::_exit(0);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench child: %s\n", e.what());
      ::_exit(1);
    }
  }
  const int fd = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) fail("accept");
  const double secs = timed(fd);
  reap(pid);
  ::close(fd);
  ::close(l);
  return secs;
}

// The floor's side of a connection: non-blocking, TCP_NODELAY on TCP (as
// coropipe's), registered once with an epoll set for reading.
struct floor_end {
  int fd;
  int ep;
  floor_end(int s, bool tcp) : fd(s), ep(::epoll_create1(EPOLL_CLOEXEC)) {
    if (ep < 0) fail("epoll_create1");
    if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) fail("fcntl");
    if (tcp) no_delay(fd);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) fail("epoll_ctl");
  }
  ~floor_end() { ::close(ep); }
  void wait() const {
    epoll_event ev{};
    while (::epoll_wait(ep, &ev, 1, -1) < 0)
      if (errno != EINTR) fail("epoll_wait");
  }
  // One frame written at once (the socket buffer always has room here).
  void send_frame(const char* p, std::size_t n) const {
    while (n > 0) {
      const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EAGAIN) {
        pollfd pf{fd, POLLOUT, 0};
        ::poll(&pf, 1, -1);
        continue;
      }
      if (r <= 0) fail("send");
      p += r;
      n -= static_cast<std::size_t>(r);
    }
  }
  // The reply: right after our own request nothing can be there yet, so wait
  // first, then read (3 system calls a round: send, epoll_wait, recv).
  void receive_frame(char* p, std::size_t n) const {
    for (std::size_t got = 0; got < n;) {
      wait();
      got += recv_ready(fd, p + got, n - got);
    }
  }
};

} // namespace

double raw_socket_messages(bool tcp, int count) {
  const double secs = with_forked_peer(
      tcp,
      [&](int s) {
        for (int i = 0; i < count; ++i) send_all(s, frame16, sizeof frame16);
      },
      [&](int s) {
        const auto t0 = clock::now();
        // One message per call: its header, then its payload.
        char buf[64];
        for (int i = 0; i < count; ++i) {
          recv_exact(s, buf, 4);
          const std::size_t n =
              (std::size_t{static_cast<unsigned char>(buf[2])} << 8) | static_cast<unsigned char>(buf[3]);
          recv_exact(s, buf, n);
        }
        return seconds_since(t0);
      });
  return count / secs;
}

double coropipe_socket_messages(bool tcp, int count) {
  asio::io_context io(1);
  coropipe::listener l(io, where(tcp));
  auto kid = coropipe::fork_child(
      io,
      [](coropipe::child_context&, coropipe::address a, int n) -> awaitable<int> {
        auto ex = co_await asio::this_coro::executor;
        auto s = co_await coropipe::async_connect(ex, a, {}, use_awaitable);
        for (int i = 0; i < n; ++i) co_await s.async_send(asio::buffer(frame16 + 4, 16), use_awaitable);
        co_await s.async_close(use_awaitable);
        co_return 0;
      },
      l.local_address(), count);
  return run_to_completion(io, [&]() -> awaitable<double> {
    auto s = co_await l.async_accept(use_awaitable);
    const auto t0 = clock::now();
    int got = 0;
    while (auto msg = co_await s.async_receive(use_awaitable)) {
      if (msg->size() != 16) throw std::runtime_error("bad message");
      ++got;
    }
    const double secs = seconds_since(t0);
    if (got != count) throw std::runtime_error("messages lost");
    if (!(co_await kid.async_wait(use_awaitable)).success()) throw std::runtime_error("child failed");
    l.close();  // an open listener keeps accepting, and io.run() from returning
    co_return got / secs;
  }());
}

double raw_socket_ping_pong(bool tcp, int rounds) {
  const double secs = with_forked_peer(
      tcp,
      [&](int s) {
        char buf[20];
        for (int i = 0; i < rounds; ++i) {
          recv_exact(s, buf, 4);
          recv_exact(s, buf + 4, 16);
          send_all(s, buf, sizeof buf);
        }
      },
      [&](int s) {
        char buf[20];
        const auto t0 = clock::now();
        for (int i = 0; i < rounds; ++i) {
          send_all(s, frame16, sizeof frame16);
          recv_exact(s, buf, 4);
          recv_exact(s, buf + 4, 16);
        }
        return seconds_since(t0);
      });
  return secs / rounds * 1e6;
}

// The round trip written as any readiness-based event loop would at best:
// both ends non-blocking with one epoll set each, registered once.
double floor_socket_ping_pong(bool tcp, int rounds) {
  const double secs = with_forked_peer(
      tcp,
      [&](int fd) {
        const floor_end s(fd, tcp);
        char buf[20];
        for (int i = 0; i < rounds; ++i) {
          s.receive_frame(buf, sizeof buf);
          s.send_frame(buf, sizeof buf);
        }
      },
      [&](int fd) {
        const floor_end s(fd, tcp);
        char buf[20];
        const auto t0 = clock::now();
        for (int i = 0; i < rounds; ++i) {
          s.send_frame(frame16, sizeof frame16);
          s.receive_frame(buf, sizeof buf);
        }
        return seconds_since(t0);
      });
  return secs / rounds * 1e6;
}

namespace {

// One end of the round trip through Asio alone, with no coropipe code: the
// socket non-blocking (TCP_NODELAY on TCP), a request sent with send(2),
// the reply awaited with a coroutine's co_await async_wait and read with
// recv(2): the least any program on Asio's coroutines does per round trip.
awaitable<int> asio_alone_rounds(int fd, bool tcp, int n, bool requester) {
  auto ex = co_await asio::this_coro::executor;
  asio::generic::stream_protocol::socket s(ex, tcp ? asio::generic::stream_protocol(AF_INET, IPPROTO_TCP)
                                                   : asio::generic::stream_protocol(AF_UNIX, 0),
                                          fd);
  s.non_blocking(true);
  if (tcp) no_delay(fd);
  char buf[20];
  for (int i = 0; i < n; ++i) {
    if (requester) send_all(fd, frame16, sizeof frame16);
    for (std::size_t got = 0; got < sizeof buf;) {
      auto [ec] = co_await s.async_wait(asio::socket_base::wait_read, coropipe::compat::as_tuple(use_awaitable));
      if (ec) throw coropipe::system_error(ec, "async_wait");
      got += recv_ready(fd, buf + got, sizeof buf - got);
    }
    if (!requester) send_all(fd, buf, sizeof buf);
  }
  (void)s.release();  // the descriptor stays with_forked_peer()'s to close
  co_return 0;
}

} // namespace

// The round trip through Asio alone (see asio_alone_rounds()), both ends on
// their own io_context, as coropipe's.
double asio_socket_ping_pong(bool tcp, int rounds) {
  const double secs = with_forked_peer(
      tcp,
      [&](int fd) {
        asio::io_context io(1);
        (void)run_to_completion(io, asio_alone_rounds(fd, tcp, rounds, false));
      },
      [&](int fd) {
        asio::io_context io(1);
        const auto t0 = clock::now();
        (void)run_to_completion(io, asio_alone_rounds(fd, tcp, rounds, true));
        return seconds_since(t0);
      });
  return secs / rounds * 1e6;
}

namespace {

// The child's side of the coropipe round trip: connects, echoes @p n messages.
awaitable<int> echo_rounds(coropipe::address a, int n) {
  auto ex = co_await asio::this_coro::executor;
  auto s = co_await coropipe::async_connect(ex, a, {}, use_awaitable);
  for (int i = 0; i < n; ++i) {
    auto msg = co_await s.async_receive(use_awaitable);
    if (!msg) co_return 1;
    co_await s.async_send(asio::buffer(msg->data(), msg->size()), use_awaitable);
  }
  co_await s.async_close(use_awaitable);
  co_return 0;
}

#if COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ
// An io_context for one thread whose epoll reactor treats a short read as
// consuming the edge (Asio 1.36+): a framed_stream's receive then waits with
// an Asio read, without epoll_ctl (framed_stream.hpp).
std::unique_ptr<asio::io_context> reset_edge_context() {
  return std::make_unique<asio::io_context>(
      coropipe::compat::config_from_string{"scheduler.concurrency_hint=1\nreactor.reset_edge_on_partial_read=1"});
}
#endif

} // namespace

// @p reset_edge (Asio 1.36+ only): both ends run on an io_context made by
// reset_edge_context() (the child on a second one of its own, since a forked
// child's io_context is coropipe's).
double coropipe_socket_ping_pong(bool tcp, int rounds, bool reset_edge) {
  std::unique_ptr<asio::io_context> own;
#if COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ
  if (reset_edge) own = reset_edge_context();
#endif
  if (!own) own = std::make_unique<asio::io_context>(1);
  asio::io_context& io = *own;
  coropipe::listener l(io, where(tcp));
  auto kid = coropipe::fork_child(
      io,
      [](coropipe::child_context&, coropipe::address a, int n, [[maybe_unused]] bool edge) -> awaitable<int> {
#if COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ
        if (edge) {
          auto io2 = reset_edge_context();
          co_return run_to_completion(*io2, echo_rounds(std::move(a), n));
        }
#endif
        co_return co_await echo_rounds(std::move(a), n);
      },
      l.local_address(), rounds, reset_edge);
  return run_to_completion(io, [&]() -> awaitable<double> {
    auto s = co_await l.async_accept(use_awaitable);
    const auto t0 = clock::now();
    for (int i = 0; i < rounds; ++i) {
      co_await s.async_send(asio::buffer(frame16 + 4, 16), use_awaitable);
      auto msg = co_await s.async_receive(use_awaitable);
      if (!msg || msg->size() != 16) throw std::runtime_error("bad reply");
    }
    const double secs = seconds_since(t0);
    if (!(co_await kid.async_wait(use_awaitable)).success()) throw std::runtime_error("child failed");
    l.close();
    co_return secs / rounds * 1e6;
  }());
}

// Python's Listener receiving from Python's Client in a forked child: the
// same messages, timed from accept() to the last recv_bytes(). Returns
// messages per second (or microseconds per round trip when @p round_trip).
double python_socket(bool tcp, int count, bool round_trip) {
  static const char* script = R"(
import os, sys, time
from multiprocessing.connection import Client, Listener
tcp, n, rt = sys.argv[1] == 'tcp', int(sys.argv[2]), sys.argv[3] == 'rt'
address = ('127.0.0.1', 0) if tcp else '\0coropipe-bench-py-%d' % os.getpid()
payload = b'payload-sixteen!'
with Listener(address) as l:
    pid = os.fork()
    if pid == 0:
        with Client(l.address) as c:
            for _ in range(n):
                if rt:
                    c.send_bytes(c.recv_bytes())
                else:
                    c.send_bytes(payload)
        os._exit(0)
    with l.accept() as c:
        t0 = time.perf_counter()
        for _ in range(n):
            if rt:
                c.send_bytes(payload)
            c.recv_bytes()
        secs = time.perf_counter() - t0
    os.waitpid(pid, 0)
print(secs / n * 1e6 if rt else n / secs)
)";
  // The script goes to a file once (removed at exit); popen runs it.
  static const std::string path = [] {
    char tmpl[] = "/tmp/coropipe-bench-py-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    if (fd < 0) fail("mkstemp");
    const std::size_t n = std::strlen(script);
    if (::write(fd, script, n) != static_cast<ssize_t>(n)) fail("write");
    ::close(fd);
    static const std::string name = tmpl;
    std::atexit([] { ::unlink(name.c_str()); });
    return name;
  }();
  const std::string cmd = std::string(COROPIPE_BENCH_PYTHON) + " " + path + (tcp ? " tcp " : " unix ") +
                          std::to_string(count) + (round_trip ? " rt" : " msgs");
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) fail("popen");
  char line[128] = {};
  const bool got = std::fgets(line, sizeof line, p) != nullptr;
  if (::pclose(p) != 0 || !got) throw std::runtime_error("python benchmark failed");
  return std::strtod(line, nullptr);
}

void add_socket_cases(std::vector<case_spec>& cases, const settings& s) {
  const int messages = s.quick ? 100000 : 500000;
  const int rounds = s.quick ? 5000 : 15000;
  const int py_messages = s.quick ? 20000 : 100000;
  const int py_rounds = s.quick ? 2000 : 5000;
  for (const bool tcp : {false, true}) {
    const std::string over = tcp ? "TCP loopback" : "Unix socket";
    cases.push_back({"socket messages 16 B, " + over,
                     "{\"payload\": 16, \"messages\": " + std::to_string(messages) + "}", "msg/s", better::higher, 8.0,
                     [=] { return coropipe_socket_messages(tcp, messages); },
                     [=] { return raw_socket_messages(tcp, messages); },
                     "baseline: blocking send(2) of one frame, recv(2) of one frame, per message"});
    cases.push_back({"socket round trip 16 B, " + over, "{\"bytes\": 16, \"rounds\": " + std::to_string(rounds) + "}",
                     "us/round trip", better::lower, 1 / 1.1, [=] { return coropipe_socket_ping_pong(tcp, rounds, false); },
                     [=] { return raw_socket_ping_pong(tcp, rounds); }, ""});
#if COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ
    cases.push_back({"socket round trip 16 B, " + over + ": io_context with reactor.reset_edge_on_partial_read",
                     "{\"bytes\": 16, \"rounds\": " + std::to_string(rounds) + "}", "us/round trip", better::lower,
                     std::nullopt, [=] { return coropipe_socket_ping_pong(tcp, rounds, true); },
                     [=] { return raw_socket_ping_pong(tcp, rounds); },
                     "reference (Asio 1.36+): both ends' io_context configured so that a short read consumes the "
                     "epoll edge; a round trip is write, epoll_wait, read on each side"});
#endif
    cases.push_back({"socket round trip 16 B, " + over + ": Asio alone",
                     "{\"bytes\": 16, \"rounds\": " + std::to_string(rounds) + "}", "us/round trip", better::lower,
                     std::nullopt, [=] { return asio_socket_ping_pong(tcp, rounds); },
                     [=] { return raw_socket_ping_pong(tcp, rounds); },
                     "reference: no coropipe code, send, co_await async_wait, recv on each side "
                     "(what any program on Asio's coroutines does at least)"});
    cases.push_back({"socket round trip 16 B, " + over + ": floor, epoll without Asio",
                     "{\"bytes\": 16, \"rounds\": " + std::to_string(rounds) + "}", "us/round trip", better::lower,
                     std::nullopt, [=] { return floor_socket_ping_pong(tcp, rounds); },
                     [=] { return raw_socket_ping_pong(tcp, rounds); },
                     "reference: non-blocking send, epoll_wait, recv (3 system calls a round, registered once)"});
    cases.push_back({"socket messages 16 B, " + over + ": Python Client/Listener",
                     "{\"payload\": 16, \"messages\": " + std::to_string(py_messages) + "}", "msg/s", better::higher,
                     std::nullopt, [=] { return python_socket(tcp, py_messages, false); },
                     [=] { return raw_socket_messages(tcp, py_messages); },
                     "reference: Python's own Client sending to its own Listener (" COROPIPE_BENCH_PYTHON ")"});
    cases.push_back({"socket round trip 16 B, " + over + ": Python Client/Listener",
                     "{\"bytes\": 16, \"rounds\": " + std::to_string(py_rounds) + "}", "us/round trip", better::lower,
                     std::nullopt, [=] { return python_socket(tcp, py_rounds, true); },
                     [=] { return raw_socket_ping_pong(tcp, py_rounds); },
                     "reference: Python's own Client and Listener"});
  }
}

} // namespace bench
