// SPDX-License-Identifier: BSL-1.0
// The cases of coropipe-bench: each as a raw baseline (plain C++ on the
// system calls, blocking, no Asio) and through coropipe.
#include "run.hpp"
#include "cases.hpp"

#include <coropipe/coropipe.hpp>

#include <coropipe/asio.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

extern "C" char** environ;

namespace bench {

// Where the streaming cases' child runs (-1: anywhere); see pin_cpus().
namespace {
int child_cpu = -1;
}  // namespace

void pin_child() noexcept {
  if (child_cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<std::size_t>(child_cpu), &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

namespace {

using asio::awaitable;
using asio::use_awaitable;
using coropipe::child_context;
using coropipe::unique_fd;

[[noreturn]] void fail(const char* what) { throw coropipe::system_error(errno, coropipe::system_category(), what); }

// The buffers every byte-moving case reads into and writes from, raw and
// coropipe alike: page-aligned. The kernel copies a pipe's bytes faster to and
// from a well-aligned buffer (4 KiB chunks: about 10% slower with a 16-byte
// aligned reader or writer than with page-aligned ones, docs/performance.md),
// and what alignment malloc gives depends on the heap's history, so it differed
// between the sides and from run to run.
class io_buffer {
public:
  explicit io_buffer(std::size_t size, char fill = 0) : size_(size) {
    constexpr std::size_t page = 4096;
    data_.reset(static_cast<char*>(std::aligned_alloc(page, (size + page - 1) / page * page)));
    if (!data_) throw std::bad_alloc();
    std::memset(data_.get(), fill, size);
  }
  char* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  char& operator[](std::size_t i) const noexcept { return data_.get()[i]; }
  asio::mutable_buffer all() const noexcept { return {data_.get(), size_}; }

private:
  struct free_memory {
    void operator()(char* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<char, free_memory> data_;
  std::size_t size_;
};

void write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write");
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

void read_exact(int fd, char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::read(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("read");
    }
    if (n == 0) throw std::runtime_error("unexpected end of stream");
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

void reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("a raw child failed");
}

void set_capacity(int fd, std::size_t capacity) {
  if (capacity != 0 && ::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(capacity)) < 0) fail("F_SETPIPE_SZ");
}

// --- reads of the child's writes ---------------------------------------------

awaitable<void> read_exact(asio::posix::stream_descriptor& s, char* data, std::size_t size) {
  while (size > 0) {
    const std::size_t n = co_await coropipe::async_read_some(s, asio::buffer(data, size), use_awaitable);
    data += n;
    size -= n;
  }
}

} // namespace

// Case 1 and 2: bytes from a child to its parent, `chunk` bytes per write and
// per read. Returns MB/s (1e6 bytes per second).
double raw_throughput(std::size_t chunk, std::size_t total, std::size_t capacity) {
  int data[2], go[2];
  if (::pipe2(data, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) fail("pipe2");
  set_capacity(data[1], capacity);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    pin_child();
    ::close(data[0]);
    ::close(go[1]);
    io_buffer buf(chunk, 'x');
    char b;
    read_exact(go[0], &b, 1);
    for (std::size_t sent = 0; sent < total; sent += chunk)
      write_all(data[1], buf.data(), std::min(chunk, total - sent));
    ::_exit(0);
  }
  ::close(data[1]);
  ::close(go[0]);
  io_buffer buf(chunk);
  const auto t0 = clock::now();
  write_all(go[1], "g", 1);
  std::size_t got = 0;
  while (got < total) {
    const ssize_t n = ::read(data[0], buf.data(), chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("read");
    got += static_cast<std::size_t>(n);
  }
  const double secs = seconds_since(t0);
  reap(pid);
  ::close(data[0]);
  ::close(go[1]);
  return static_cast<double>(total) / secs / 1e6;
}

namespace {

// The two ways of doing the byte I/O of case 1: coropipe's try-first
// operations, or Asio's own (every operation through the reactor).
struct coropipe_io {
  static auto write(asio::posix::stream_descriptor& s, asio::const_buffer b) {
    return coropipe::async_write(s, b, use_awaitable);
  }
  static auto read_some(asio::posix::stream_descriptor& s, asio::mutable_buffer b) {
    return coropipe::async_read_some(s, b, use_awaitable);
  }
};

struct plain_asio_io {
  static auto write(asio::posix::stream_descriptor& s, asio::const_buffer b) {
    return asio::async_write(s, b, use_awaitable);
  }
  static auto read_some(asio::posix::stream_descriptor& s, asio::mutable_buffer b) {
    return s.async_read_some(b, use_awaitable);
  }
};

template <typename Io>
double throughput_with(std::size_t chunk, std::size_t total, std::size_t capacity) {
  asio::io_context io(1);
  auto [in, out] = coropipe::pipe();
  auto [go_in, go_out] = coropipe::pipe();
  if (capacity != 0) coropipe::set_pipe_capacity(out.get(), capacity);
  auto kid = coropipe::fork_child(
      io,
      [](child_context& ctx, unique_fd w, unique_fd g, std::size_t size, std::size_t all) -> awaitable<int> {
        pin_child();
        auto pipe_out = ctx.attach(std::move(w));
        auto gate = ctx.attach(std::move(g));
        io_buffer buf(size, 'x');
        char b;
        co_await read_exact(gate, &b, 1);
        for (std::size_t sent = 0; sent < all; sent += size)
          co_await Io::write(pipe_out, asio::buffer(buf.data(), std::min(size, all - sent)));
        co_return 0;
      },
      std::move(out), std::move(go_in), chunk, total);
  auto reader = coropipe::attach(io, std::move(in));
  auto gate = coropipe::attach(io, std::move(go_out));
  return run_to_completion(io, [&]() -> awaitable<double> {
    io_buffer buf(chunk);
    const auto t0 = clock::now();
    co_await Io::write(gate, asio::buffer("g", 1));
    std::size_t got = 0;
    while (got < total) got += co_await Io::read_some(reader, buf.all());
    const double secs = seconds_since(t0);
    const coropipe::exit_status status = co_await kid.async_wait(use_awaitable);
    if (!status.success()) throw std::runtime_error("child failed");
    co_return static_cast<double>(total) / secs / 1e6;
  }());
}

} // namespace

double coropipe_throughput(std::size_t chunk, std::size_t total, std::size_t capacity) {
  return throughput_with<coropipe_io>(chunk, total, capacity);
}

// Case 3: a 16-byte message to the child and back, `rounds` times. Returns
// microseconds per round trip.
double raw_ping_pong(int rounds) {
  int ping[2], pong[2];
  if (::pipe2(ping, O_CLOEXEC) != 0 || ::pipe2(pong, O_CLOEXEC) != 0) fail("pipe2");
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    pin_child();
    ::close(ping[1]);
    ::close(pong[0]);
    char msg[16];
    for (int i = 0; i < rounds; ++i) {
      read_exact(ping[0], msg, sizeof msg);
      write_all(pong[1], msg, sizeof msg);
    }
    ::_exit(0);
  }
  ::close(ping[0]);
  ::close(pong[1]);
  char msg[16] = "ping-pong-16-b!";
  const auto t0 = clock::now();
  for (int i = 0; i < rounds; ++i) {
    write_all(ping[1], msg, sizeof msg);
    read_exact(pong[0], msg, sizeof msg);
  }
  const double secs = seconds_since(t0);
  reap(pid);
  ::close(ping[1]);
  ::close(pong[0]);
  return secs / rounds * 1e6;
}

double coropipe_ping_pong(int rounds) {
  asio::io_context io(1);
  auto [ping_in, ping_out] = coropipe::pipe();
  auto [pong_in, pong_out] = coropipe::pipe();
  auto kid = coropipe::fork_child(
      io,
      [](child_context& ctx, unique_fd r, unique_fd w, int n) -> awaitable<int> {
        pin_child();
        auto in = ctx.attach(std::move(r));
        auto out = ctx.attach(std::move(w));
        char msg[16];
        for (int i = 0; i < n; ++i) {
          co_await read_exact(in, msg, sizeof msg);
          co_await coropipe::async_write(out, asio::buffer(msg), use_awaitable);
        }
        co_return 0;
      },
      std::move(ping_in), std::move(pong_out), rounds);
  auto out = coropipe::attach(io, std::move(ping_out));
  auto in = coropipe::attach(io, std::move(pong_in));
  return run_to_completion(io, [&]() -> awaitable<double> {
    char msg[16] = "ping-pong-16-b!";
    const auto t0 = clock::now();
    for (int i = 0; i < rounds; ++i) {
      co_await coropipe::async_write(out, asio::buffer(msg), use_awaitable);
      co_await read_exact(in, msg, sizeof msg);
    }
    const double secs = seconds_since(t0);
    if (!(co_await kid.async_wait(use_awaitable)).success()) throw std::runtime_error("child failed");
    co_return secs / rounds * 1e6;
  }());
}

// Case 4: `count` framed messages of 16 bytes from a child. Returns messages
// per second. The raw sender makes one write(2) per frame.

namespace {

// One frame of case 4: the 4-byte big-endian length, then the payload.
constexpr char frame16[20] = {0,   0,   0,   16,  'p', 'a', 'y', 'l', 'o', 'a',
                               'd', '-', 's', 'i', 'x', 't', 'e', 'e', 'n', '!'};
constexpr std::size_t frame_header = 4;

} // namespace

double raw_messages(int count) {
  int data[2], go[2];
  if (::pipe2(data, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) fail("pipe2");
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    pin_child();
    ::close(data[0]);
    ::close(go[1]);
    char b;
    read_exact(go[0], &b, 1);
    for (int i = 0; i < count; ++i) write_all(data[1], frame16, sizeof frame16);
    ::_exit(0);
  }
  ::close(data[1]);
  ::close(go[0]);
  io_buffer buf(1 << 16);
  const auto t0 = clock::now();
  write_all(go[1], "g", 1);
  // Parse the frames as they come (a frame may straddle two reads).
  int got = 0;
  std::size_t have = 0;
  while (got < count) {
    const ssize_t n = ::read(data[0], buf.data() + have, buf.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("read");
    have += static_cast<std::size_t>(n);
    std::size_t pos = 0;
    while (have - pos >= 4) {
      const std::size_t len = (std::size_t{static_cast<unsigned char>(buf[pos])} << 24) |
                              (std::size_t{static_cast<unsigned char>(buf[pos + 1])} << 16) |
                              (std::size_t{static_cast<unsigned char>(buf[pos + 2])} << 8) |
                              std::size_t{static_cast<unsigned char>(buf[pos + 3])};
      if (have - pos < 4 + len) break;
      pos += 4 + len;
      ++got;
    }
    std::memmove(buf.data(), buf.data() + pos, have - pos);
    have -= pos;
  }
  const double secs = seconds_since(t0);
  reap(pid);
  ::close(data[0]);
  ::close(go[1]);
  return count / secs;
}

namespace {

// The two senders of case 4's coropipe side: a framed_stream (batched), or
// one coropipe::async_write per frame.
struct framed_sender {
  static awaitable<void> send(asio::posix::stream_descriptor out, int n) {
    coropipe::framed_stream<> tx(std::move(out));
    for (int i = 0; i < n; ++i)
      co_await tx.async_send(asio::buffer(frame16 + frame_header, sizeof frame16 - frame_header), use_awaitable);
    co_await tx.async_close(use_awaitable);
  }
};

struct unbatched_sender {
  static awaitable<void> send(asio::posix::stream_descriptor out, int n) {
    for (int i = 0; i < n; ++i) co_await coropipe::async_write(out, asio::buffer(frame16), use_awaitable);
  }
};

// `count` frames from a forked child sending with Sender, received by a
// framed_stream. Returns messages per second.
template <typename Sender>
double messages_with(int count) {
  asio::io_context io(1);
  auto [in, out] = coropipe::pipe();
  auto [go_in, go_out] = coropipe::pipe();
  auto kid = coropipe::fork_child(
      io,
      [](child_context& ctx, unique_fd w, unique_fd g, int n) -> awaitable<int> {
        pin_child();
        auto pipe_out = ctx.attach(std::move(w));
        auto gate = ctx.attach(std::move(g));
        char b;
        co_await read_exact(gate, &b, 1);
        co_await Sender::send(std::move(pipe_out), n);
        co_return 0;
      },
      std::move(out), std::move(go_in), count);
  coropipe::framed_stream<> rx(coropipe::attach(io, std::move(in)));
  auto gate = coropipe::attach(io, std::move(go_out));
  return run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    co_await coropipe::async_write(gate, asio::buffer("g", 1), use_awaitable);
    int got = 0;
    while (auto msg = co_await rx.async_receive(use_awaitable)) {
      if (msg->size() != sizeof frame16 - frame_header) throw std::runtime_error("bad message");
      ++got;
    }
    const double secs = seconds_since(t0);
    if (got != count) throw std::runtime_error("messages lost");
    const coropipe::exit_status status = co_await kid.async_wait(use_awaitable);
    if (!status.success()) throw std::runtime_error("child failed");
    co_return got / secs;
  }());
}

} // namespace

double coropipe_messages(int count) { return messages_with<framed_sender>(count); }

// Case 6: children forked and waited for, one after another. Returns
// children per second.
double raw_forks(int count) {
  const auto t0 = clock::now();
  for (int i = 0; i < count; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) fail("fork");
    if (pid == 0) ::_exit(0);
    reap(pid);
  }
  return count / seconds_since(t0);
}

// The floor under any forked coroutine child: hand-written, without
// coropipe, a child that runs one trivial coroutine on an io_context. The
// pages such a child touches are what separate it from fork + _exit (every
// page a child writes is copied, every code page it runs is mapped, at a
// fault each).
namespace {

// The io_context the floors' children run: built once in the parent, before
// any fork, and never run there (a rehearsal on another one first warms the
// allocator and Asio's code), so that each child only runs its own copy of
// it, as coropipe's children do.
asio::io_context& spare_context() {
  static asio::io_context* spare = [] {
    asio::io_context rehearsal(1);
    asio::co_spawn(rehearsal, []() -> awaitable<int> { co_return 0; }, [](std::exception_ptr, int) {});
    rehearsal.run();
    return new asio::io_context(1);  // one, for the process's lifetime
  }();
  return *spare;
}

// _exit, bound when the program is loaded. A child calling ::_exit through
// the PLT, as the raw baseline's does, binds it lazily every time (the
// parent never calls it): a symbol lookup and a copied GOT page, some 19 us
// of a 145 us fork on the development machine. The floors spare themselves
// that, as coropipe's children do.
void (*volatile exit_bound)(int) = ::_exit;

// What the floors' forked child does: one trivial coroutine on the spare
// io_context, then _exit with its result.
[[noreturn]] void trivial_asio_child() {
  asio::io_context& io = spare_context();
  int code = 1;
  asio::co_spawn(io, []() -> awaitable<int> { co_return 0; }, [&](std::exception_ptr, int c) { code = c; });
  io.run();
  exit_bound(code);
  ::_exit(code);  // not reached
}

} // namespace

double floor_forks(int count) {
  spare_context();
  const auto t0 = clock::now();
  for (int i = 0; i < count; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) fail("fork");
    if (pid == 0) trivial_asio_child();
    reap(pid);
  }
  return count / seconds_since(t0);
}

namespace {

// Waits for @p pid to end the way an event loop must (without blocking its
// thread): its pidfd through Asio's reactor, then waitid(2). Throws @p what
// unless it exited with 0.
awaitable<void> await_exit(asio::io_context& io, pid_t pid, const char* what) {
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) fail("pidfd_open");
  asio::posix::stream_descriptor waiter(io, pidfd);
  co_await waiter.async_wait(asio::posix::stream_descriptor::wait_read, use_awaitable);
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED) != 0) fail("waitid");
  if (info.si_code != CLD_EXITED || info.si_status != 0) throw std::runtime_error(what);
}

// fork, then the child waited for with await_exit. The parent keeps running
// while the child lives, so its own writes to pages it shares with the
// child are copied, as in coropipe.
double async_forks(int count, void (*child)()) {
  spare_context();
  asio::io_context io(1);
  return run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i) {
      const pid_t pid = ::fork();
      if (pid < 0) fail("fork");
      if (pid == 0) child();
      co_await await_exit(io, pid, "a child failed");
    }
    co_return count / seconds_since(t0);
  }());
}

// The raw child (it runs no code of its own), its _exit bound in advance.
[[noreturn]] void exiting_child() {
  exit_bound(0);
  ::_exit(0);  // not reached
}

} // namespace

// The Asio child, waited for asynchronously.
double floor_async_forks(int count) { return async_forks(count, trivial_asio_child); }

// The raw child, waited for asynchronously: what waiting without blocking
// costs by itself, the ceiling of any awaited child.
double floor_exit_forks(int count) { return async_forks(count, exiting_child); }

double coropipe_forks(int count) {
  asio::io_context io(1);
  return run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i) {
      auto kid = coropipe::fork_child(io, [](child_context&) -> awaitable<int> { co_return 0; });
      if (!(co_await kid.async_wait(use_awaitable)).success()) throw std::runtime_error("child failed");
    }
    co_return count / seconds_since(t0);
  }());
}

// Minor page faults per child while @p forks runs @p count children: taken
// by this process (parent = true) or by the children, all reaped by then.
double fork_faults(double (*forks)(int), int count, bool parent) {
  rusage self0{}, kids0{}, self1{}, kids1{};
  ::getrusage(RUSAGE_SELF, &self0);
  ::getrusage(RUSAGE_CHILDREN, &kids0);
  forks(count);
  ::getrusage(RUSAGE_SELF, &self1);
  ::getrusage(RUSAGE_CHILDREN, &kids1);
  const long faults = parent ? self1.ru_minflt - self0.ru_minflt : kids1.ru_minflt - kids0.ru_minflt;
  return static_cast<double>(faults) / count;
}

namespace {

// glibc's posix_spawn of /bin/true: the raw way to start a program.
pid_t posix_spawn_true() {
  char arg0[] = "/bin/true";
  char* argv[] = {arg0, nullptr};
  pid_t pid = -1;
  const int r = ::posix_spawn(&pid, arg0, nullptr, nullptr, argv, environ);
  if (r != 0) {
    errno = r;
    fail("posix_spawn");
  }
  return pid;
}

} // namespace

// Case 5: /bin/true spawned and waited for, one after another. Returns
// programs per second.
double raw_spawns(int count) {
  const auto t0 = clock::now();
  for (int i = 0; i < count; ++i) reap(posix_spawn_true());
  return count / seconds_since(t0);
}

double coropipe_spawns(int count) {
  asio::io_context io(1);
  return run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i) {
      auto p = coropipe::spawn(io, {.argv = {"/bin/true"}});
      if (!(co_await p.async_wait(use_awaitable)).success()) throw std::runtime_error("/bin/true failed");
    }
    co_return count / seconds_since(t0);
  }());
}

// posix_spawn, then the program waited for with await_exit.
double floor_async_spawns(int count) {
  asio::io_context io(1);
  return run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i) co_await await_exit(io, posix_spawn_true(), "/bin/true failed");
    co_return count / seconds_since(t0);
  }());
}

big_parent::big_parent(std::size_t bytes) : size_(bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("mmap");
  // Small pages, each one written: the largest page tables such a parent can
  // have, the worst case for anything that copies the address space.
  ::madvise(p, bytes, MADV_NOHUGEPAGE);
  for (std::size_t off = 0; off < bytes; off += 4096) static_cast<volatile char*>(p)[off] = 1;
  mem_ = p;
}

big_parent::~big_parent() { ::munmap(mem_, size_); }

// --- floors: what any readiness-based event loop pays ------------------------
//
// Hand-written, without Asio or coroutines: non-blocking descriptors, try the
// system call first, epoll_wait(2) only on EAGAIN. No event loop built on
// readiness (Asio's reactor, and so coropipe) can make fewer system calls.

namespace {

// How the floors keep a descriptor in their epoll set: registered once for
// good, as Asio's reactor does (so as coropipe must), or only while waiting.
// A pipe that has been polled wakes its waiters on every write, and a
// registered epoll entry is one: every write then runs epoll's callback
// even when nobody waits (Linux fs/pipe.c, `poll_usage`).
enum class registration { persistent, while_waiting };
registration floor_registration = registration::persistent;

// Waits until @p fd is ready for @p events, through epoll instance @p ep.
void epoll_ready(int ep, int fd, std::uint32_t events) {
  const bool transient = floor_registration == registration::while_waiting;
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(ep, transient ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) != 0) fail("epoll_ctl");
  while (::epoll_wait(ep, &ev, 1, -1) < 0)
    if (errno != EINTR) fail("epoll_wait");
  if (transient && ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, &ev) != 0) fail("epoll_ctl");
}

int epoll_for(int fd) {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) fail("epoll_create1");
  epoll_event ev{};
  ev.events = 0;
  ev.data.fd = fd;
  if (floor_registration == registration::persistent && ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
    fail("epoll_ctl");
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) fail("fcntl");
  return ep;
}

void nb_write_all(int ep, int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EAGAIN) {
        epoll_ready(ep, fd, EPOLLOUT);
        continue;
      }
      if (errno == EINTR) continue;
      fail("write");
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

std::size_t nb_read_some(int ep, int fd, char* data, std::size_t size) {
  for (;;) {
    const ssize_t n = ::read(fd, data, size);
    if (n > 0) return static_cast<std::size_t>(n);
    if (n == 0) throw std::runtime_error("unexpected end of stream");
    if (errno == EAGAIN) epoll_ready(ep, fd, EPOLLIN);
    else if (errno != EINTR) fail("read");
  }
}

void nb_read_exact(int ep, int fd, char* data, std::size_t size) {
  while (size > 0) {
    const std::size_t n = nb_read_some(ep, fd, data, size);
    data += n;
    size -= n;
  }
}

} // namespace

// Case 1's transfer with each side written either way: the hand-written
// floor (non-blocking system calls, epoll_wait on EAGAIN) or coropipe's
// operations on an io_context, so that the costs of each side show apart.
double mixed_throughput(std::size_t chunk, std::size_t total, side reader, side writer) {
  int data[2], go[2];
  if (::pipe2(data, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) fail("pipe2");
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    pin_child();
    ::close(data[0]);
    ::close(go[1]);
    io_buffer buf(chunk, 'x');
    char b;
    read_exact(go[0], &b, 1);
    if (writer == side::floor) {
      const int ep = epoll_for(data[1]);
      for (std::size_t sent = 0; sent < total; sent += chunk)
        nb_write_all(ep, data[1], buf.data(), std::min(chunk, total - sent));
    } else {
      asio::io_context io(1);
      auto out = coropipe::attach(io, unique_fd(data[1]));
      run_to_completion(io, [&]() -> awaitable<int> {
        for (std::size_t sent = 0; sent < total; sent += chunk)
          co_await coropipe::async_write(out, asio::buffer(buf.data(), std::min(chunk, total - sent)), use_awaitable);
        co_return 0;
      }());
    }
    ::_exit(0);
  }
  ::close(data[1]);
  ::close(go[0]);
  io_buffer buf(chunk);
  double secs = 0;
  if (reader == side::floor) {
    const int ep = epoll_for(data[0]);
    const auto t0 = clock::now();
    write_all(go[1], "g", 1);
    std::size_t got = 0;
    while (got < total) got += nb_read_some(ep, data[0], buf.data(), chunk);
    secs = seconds_since(t0);
    ::close(ep);
    ::close(data[0]);
  } else {
    asio::io_context io(1);
    auto in = coropipe::attach(io, unique_fd(data[0]));
    secs = run_to_completion(io, [&]() -> awaitable<double> {
      const auto t0 = clock::now();
      write_all(go[1], "g", 1);
      std::size_t got = 0;
      while (got < total) got += co_await coropipe::async_read_some(in, buf.all(), use_awaitable);
      co_return seconds_since(t0);
    }());
  }
  reap(pid);
  ::close(go[1]);
  return static_cast<double>(total) / secs / 1e6;
}

namespace {
int open_dev_zero() {
  const int fd = ::open("/dev/zero", O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("open /dev/zero");
  return fd;
}
} // namespace

// What one co_await of an operation costs beyond its system call: 4 KiB
// reads of /dev/zero (never empty, never polled), nanoseconds per read.
double raw_zero_reads(int count) {
  const int fd = open_dev_zero();
  io_buffer buf(4096);
  const auto t0 = clock::now();
  for (int i = 0; i < count; ++i)
    if (::read(fd, buf.data(), buf.size()) <= 0) fail("read");
  const double secs = seconds_since(t0);
  ::close(fd);
  return secs / count * 1e9;
}

double coropipe_zero_reads(int count) {
  const int fd = open_dev_zero();
  asio::io_context io(1);
  auto in = coropipe::attach(io, unique_fd(fd));
  io_buffer buf(4096);
  return run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i) co_await coropipe::async_read_some(in, buf.all(), use_awaitable);
    co_return seconds_since(t0) / count * 1e9;
  }());
}

namespace {
// One read(2) in a coroutine of its own, and nothing else.
__attribute__((noinline)) awaitable<std::size_t> plain_read(int fd, char* data, std::size_t size) {
  const ssize_t n = ::read(fd, data, size);
  co_return n > 0 ? static_cast<std::size_t>(n) : 0;
}
} // namespace

// The same reads, each in a plain coroutine around read(2): the least any
// co_await'ed read costs, whatever the library.
double plain_coroutine_zero_reads(int count) {
  const int fd = open_dev_zero();
  asio::io_context io(1);
  io_buffer buf(4096);
  const double ns = run_to_completion(io, [&]() -> awaitable<double> {
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i)
      if (co_await plain_read(fd, buf.data(), buf.size()) == 0) fail("read");
    co_return seconds_since(t0) / count * 1e9;
  }());
  ::close(fd);
  return ns;
}

namespace {
// An awaitable that does nothing: what Asio's coroutine machinery costs alone.
__attribute__((noinline)) awaitable<std::size_t> nothing(std::size_t x) { co_return x; }
} // namespace

// Nanoseconds per co_await of an asio::awaitable that completes at once.
double empty_co_awaits(int count) {
  asio::io_context io(1);
  return run_to_completion(io, [&]() -> awaitable<double> {
    std::size_t sum = 0;
    const auto t0 = clock::now();
    for (int i = 0; i < count; ++i) sum += co_await nothing(static_cast<std::size_t>(i));
    const double ns = seconds_since(t0) / count * 1e9;
    if (sum == 0 && count > 1) throw std::runtime_error("optimised away");
    co_return ns;
  }());
}

double floor_throughput(std::size_t chunk, std::size_t total) {
  return mixed_throughput(chunk, total, side::floor, side::floor);
}

double floor_throughput_registered_while_waiting(std::size_t chunk, std::size_t total) {
  floor_registration = registration::while_waiting;
  try {
    const double r = floor_throughput(chunk, total);
    floor_registration = registration::persistent;
    return r;
  } catch (...) {
    floor_registration = registration::persistent;
    throw;
  }
}

double floor_ping_pong(int rounds) {
  int ping[2], pong[2];
  if (::pipe2(ping, O_CLOEXEC) != 0 || ::pipe2(pong, O_CLOEXEC) != 0) fail("pipe2");
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    pin_child();
    ::close(ping[1]);
    ::close(pong[0]);
    const int ep = epoll_for(ping[0]);
    const int ep_out = epoll_for(pong[1]);
    char msg[16];
    for (int i = 0; i < rounds; ++i) {
      nb_read_exact(ep, ping[0], msg, sizeof msg);
      nb_write_all(ep_out, pong[1], msg, sizeof msg);
    }
    ::_exit(0);
  }
  ::close(ping[0]);
  ::close(pong[1]);
  const int ep = epoll_for(pong[0]);
  const int ep_out = epoll_for(ping[1]);
  char msg[16] = "ping-pong-16-b!";
  const auto t0 = clock::now();
  for (int i = 0; i < rounds; ++i) {
    nb_write_all(ep_out, ping[1], msg, sizeof msg);
    nb_read_exact(ep, pong[0], msg, sizeof msg);
  }
  const double secs = seconds_since(t0);
  reap(pid);
  for (int fd : {ep, ep_out, ping[1], pong[0]}) ::close(fd);
  return secs / rounds * 1e6;
}

// --- what the optimisations bought ------------------------------------------

// Case 1 written with Asio's own operations (asio::async_write and
// stream_descriptor::async_read_some): every operation goes through the
// reactor, even one that could complete at once.
double plain_asio_throughput(std::size_t chunk, std::size_t total) {
  return throughput_with<plain_asio_io>(chunk, total, 0);
}

// Case 4 without batching: each frame written by its own
// coropipe::async_write (header and payload in one gather write).
double unbatched_messages(int count) { return messages_with<unbatched_sender>(count); }

bool pin_cpus() {
  cpu_set_t allowed;
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
  int first = -1;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(static_cast<std::size_t>(cpu), &allowed)) continue;
    if (first < 0) {
      first = cpu;
    } else {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(static_cast<std::size_t>(first), &set);
      if (::sched_setaffinity(0, sizeof set, &set) != 0) return false;
      child_cpu = cpu;
      return true;
    }
  }
  return false;
}

} // namespace bench
