// SPDX-License-Identifier: BSL-1.0
/// @file
/// Worker pools: requests in, replies out, crashes contained.
///
/// ```
/// coropipe::pool<int, int> pool(io.get_executor(),
///     coropipe::pool_workers<int, int>::forked([](int x) -> asio::awaitable<int> { co_return x + 1; }),
///     {.workers = 2, .max_retries = 2});
/// int y = co_await pool.async_submit(41, asio::use_awaitable);        // 42
/// co_await pool.async_shutdown(asio::use_awaitable);                   // finish, then reap
/// ```
///
/// A `pool<Request, Reply>` keeps N worker processes, sends each request to
/// one of them and completes async_submit() with the worker's reply.
/// Requests and replies are `channel`-codable types (see channel.hpp): each
/// travels as one message of the `multiprocessing.connection` wire format,
/// holding exactly the codec's bytes — no envelope. A worker answers its
/// requests **in the order it received them**, one reply per request.
///
/// ### Three kinds of worker, one pool type (pool_workers)
/// - **forked**: a coroutine function `asio::awaitable<Reply>(Request)` run in
///   fork()ed children (fork_child(): no exec, the fastest start). Refused
///   in a process that runs threads (`errc::fork_in_threaded_process`).
/// - **spawned**: any program speaking the wire format on its stdin and
///   stdout: a C++ program whose main() calls coropipe::serve_stdio(), or a
///   Python program using `multiprocessing.connection.Connection(0)` and
///   `Connection(1)` (`recv_bytes()` / `send_bytes()` of the codec's bytes).
///   Its argv may start with a launcher (`ssh host --`, `srun`, ...): all
///   the pool needs is stdin and stdout.
/// - **self**: this program re-executed through `/proc/self/exe` with the
///   arguments you give (e.g. `--serve`), like Python's "spawn" start
///   method: a process with threads can still have C++ workers; its main()
///   sees the arguments and calls serve_stdio().
/// - **launched**: a spawned program on another machine, through a launcher
///   (launcher.hpp: ssh, srun, `kubectl exec -i`). The pool reads its stderr
///   (and copies it to its own) to tell why a start failed.
///
/// ### Groups: workers of several kinds, on several hosts
/// The constructor that takes `std::vector<worker_group>` mixes kinds in one
/// pool, e.g. 4 workers on each of two hosts and 2 local ones. Each group has
/// its own restart budget and `max_start_failures`: a host that keeps
/// failing (unknown, refusing, the program missing, a banner on stdout) is
/// removed with one message (pool_options::on_group_removed, groups()) and
/// the others go on; requests its workers held that never ran are sent to
/// the others. A worker whose first output is not a message frame is a
/// protocol error (`errc::worker_protocol_error`), not a hang.
///
/// ### Crashes are contained
/// A worker that dies (killed, exits, closes its pipe, or sends something
/// that is not a reply) fails only the requests it held, with
/// `errc::worker_died`; submit_options::info gets the worker's pid and
/// exit_status. The pool starts a replacement and goes on. With
/// `pool_options::max_retries` = K, such a request is sent again to a worker
/// up to K times first (for idempotent work). Replacements count against a
/// restart budget (`restart_budget` restarts per `restart_period`); once it is
/// exhausted the pool stops restarting and fails what is queued, and every
/// later submit, with `errc::pool_restart_budget_exhausted` — it reports
/// instead of looping. Restarts after consecutive deaths wait
/// `restart_backoff`, doubling up to `max_restart_backoff`.
///
/// ### Cancellation and timeouts
/// async_submit() supports per-operation cancellation (terminal), and
/// submit_options::timeout (or pool_options::timeout), counted from the
/// moment the request enters the queue. A request still queued, or waiting
/// for room in the queue, is simply removed. A request that a worker is already busy with gets that
/// worker stopped (SIGKILL: there is no other way to interrupt a process) and
/// replaced, without counting against the restart budget; the request
/// completes with `asio::error::operation_aborted`, or ETIMEDOUT
/// (`ec == std::errc::timed_out`). The worker's other requests are sent
/// again to other workers: they are untouched. A request written to a worker
/// that has not begun it yet is only abandoned (its reply is dropped).
///
/// ### Throughput and backpressure
/// Each worker has up to `window` requests in flight, so it never waits for
/// the next one; the messages of many requests go out in one write (the
/// framed_stream batches). A request to an idle worker, and a worker's reply
/// to the last request it has read, are written at once instead
/// (framed_stream::try_send_now(): nothing would join them in a batch, and
/// someone waits for each). A request goes to the least-loaded worker. At most
/// `queue_limit` requests wait for a worker; further ones wait for room, first
/// come first served (backpressure, bounded memory).
///
/// async_submit() is an Asio asynchronous operation of its own (no coroutine
/// frame, no timer unless the request has a timeout: one timer per pool
/// serves every deadline). A request's record (its encoded bytes, inline up to
/// 64 bytes, and the completion handler) comes from the handler's associated
/// allocator or, for a handler without one, from a free list kept by the
/// pool: in steady state a request allocates nothing beyond what its codec
/// needs.
///
/// ### Lifetime
/// async_shutdown() stops taking requests (new ones fail with
/// `errc::pool_closed`), finishes everything queued, closes the workers'
/// stdin (end of input: they exit) and reaps them. With
/// `shutdown_mode::immediate` it fails what is pending with
/// `errc::pool_closed`, kills the workers and reaps them. Destroying the
/// pool does the same at once, synchronously: SIGKILL and reap. So a pool that is a local of a scope's body (or of any coroutine)
/// leaves nothing running when it ends. A pool is used from one thread (its
/// executor's; run it on a single-threaded io_context or a strand).
///
/// ### How the known failures of Python's pools are avoided
/// - `multiprocessing.Pool`, a killed worker's task never completes and
///   `.get()` hangs forever (bpo-22393 / gh-66587): here every request a
///   dead worker held completes, with its reply after a retry or with
///   `errc::worker_died` and the worker's exit status.
/// - An initializer that raises makes `multiprocessing.Pool` respawn workers
///   forever (gh-87472): here a worker whose initializer fails dies like any
///   other, its restarts count against the restart budget, and the pool then
///   reports `errc::pool_restart_budget_exhausted`.
/// - `AsyncResult.get(timeout)` leaves the task running, and
///   `Future.cancel()` cannot stop a running task: here a timed-out or
///   cancelled request's worker is killed and replaced.
/// - `ProcessPoolExecutor`: one worker's death fails every pending future
///   with `BrokenProcessPool` and the executor is unusable: here it fails only
///   the requests that worker held, and the pool goes on.
/// - `max_tasks_per_child` deadlocks with one worker (gh-115634): here a
///   worker that reached `max_requests_per_worker` is replaced once its
///   requests are answered; queued requests wait for the replacement.
/// - Children left running when the parent fails: forked and serve_stdio()
///   workers get SIGKILL when the pool's thread ends (PR_SET_PDEATHSIG), a
///   serve_stdio() worker also exits when its stdin reaches end of input
///   while it works, and a pool destroyed by an exception kills and reaps its
///   workers.
#pragma once

#include <coropipe/attach.hpp>
#include <coropipe/channel.hpp>
#include <coropipe/child.hpp>
#include <coropipe/error.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/launcher.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <cerrno>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstddef>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coropipe {

/// How a worker ended, as told to pool_options::on_worker_exit.
struct worker_exit {
  /// The worker's position in the pool (0 to workers - 1).
  std::size_t position = 0;
  /// Its pid.
  pid_t pid = 0;
  /// How it ended.
  exit_status status{};
  /// False for a crash (died, exited on its own, closed its pipe, sent
  /// garbage); true when the pool ended it (shutdown, retirement after
  /// max_requests_per_worker, a cancelled or timed-out request it was busy with).
  bool expected = false;
};

/// Tuning of a pool; the defaults suit most uses.
struct pool_options {
  /// The number of workers; 0: the number of CPUs.
  std::size_t workers = 0;
  /// Requests in flight per worker.
  std::size_t window = 16;
  /// Requests waiting for a worker before async_submit() waits for room.
  std::size_t queue_limit = 4096;
  /// How many times a request whose worker died is sent again (0: never).
  unsigned max_retries = 0;
  /// A request's default timeout; zero: none.
  std::chrono::steady_clock::duration timeout{};
  /// A worker is replaced after this many requests (0: never).
  std::size_t max_requests_per_worker = 0;
  /// Restarts of dead workers allowed per restart_period.
  unsigned restart_budget = 20;
  /// See restart_budget.
  std::chrono::steady_clock::duration restart_period = std::chrono::seconds(10);
  /// The wait before restarting after consecutive deaths; doubles each time.
  std::chrono::steady_clock::duration restart_backoff = std::chrono::milliseconds(10);
  /// The longest such wait.
  std::chrono::steady_clock::duration max_restart_backoff = std::chrono::seconds(1);
  /// The largest reply accepted; a worker announcing a larger one is taken
  /// for broken (stopped, its requests failed or retried).
  std::size_t max_reply_size = default_max_message_size;
  /// How long a worker that is to end gets to exit on its own before SIGKILL:
  /// one asked to exit (shutdown, retirement: its stdin is closed) and one
  /// whose output ended or turned to garbage (its stdin is closed too). Its
  /// own exit status is what is reported when it exits within this time.
  std::chrono::steady_clock::duration stop_grace = std::chrono::seconds(2);
  /// Called on the pool's executor each time a worker has ended and been
  /// reaped (before its replacement starts); may be empty.
  std::function<void(const worker_exit&)> on_worker_exit{};
  /// Called on the pool's executor when a group of workers is taken out of
  /// the pool (see worker_group), with the group's name, the error and one
  /// message saying why (e.g. "group 'build1' removed after 3 failed starts
  /// in a row: ... Connection refused"); may be empty.
  std::function<void(const std::string& name, error_code ec, const std::string& message)> on_group_removed{};
};

/// The state of one group of a pool's workers (pool::groups()).
struct group_stats {
  /// The group's name (worker_group::name).
  std::string name{};
  /// Its workers running now.
  std::size_t workers_running = 0;
  /// True once the group is taken out of the pool.
  bool removed = false;
  /// Why its last worker failed to start, or why it was removed; empty if none.
  error_code last_error{};
  /// The same in words, naming the group (host) and, for a launched worker,
  /// the line of its stderr that tells what failed.
  std::string last_message{};
};

/// What became of a request; filled when its async_submit() completes.
struct request_info {
  /// The pid of the worker that answered or failed it last (0: none).
  pid_t worker_pid = 0;
  /// When it failed with errc::worker_died: how that worker ended.
  std::optional<exit_status> worker_status{};
  /// How many times it was sent to a worker.
  unsigned attempts = 0;
};

/// Per-request settings of async_submit().
struct submit_options {
  /// Zero: pool_options::timeout.
  std::chrono::steady_clock::duration timeout{};
  /// Filled on completion when not null; must outlive the operation.
  request_info* info = nullptr;
};

/// Statistics of one worker position of a pool (it survives restarts).
struct worker_stats {
  /// The current worker's pid; 0 while none runs.
  pid_t pid = 0;
  /// Replies received from the workers at this position.
  std::size_t served = 0;
  /// Workers started at this position after the first.
  std::size_t restarts = 0;
  /// How the last worker at this position ended.
  std::optional<exit_status> last_exit{};
};

/// async_shutdown()'s choice.
enum class shutdown_mode {
  graceful,   ///< finish what is queued, then end the workers
  immediate,  ///< fail what is pending, kill the workers now
};

/// How a pool starts its workers: make one with forked(), spawned(), self()
/// or launched().
template <codable Request, codable Reply>
struct pool_workers {
  /// The coroutine function of forked workers.
  using function_type = std::function<asio::awaitable<Reply>(Request)>;
  /// Run once in each forked worker before it serves; an exception ends the
  /// worker (exit status 1), which counts against the restart budget.
  using initializer_type = std::function<asio::awaitable<void>()>;

  /// Forked workers running @p fn (see fork_child() for what a forked child is).
  static pool_workers forked(function_type fn, initializer_type init = {}, fork_options opts = {}) {
    pool_workers w;
    w.function = std::move(fn);
    w.initializer = std::move(init);
    w.fork = opts;
    return w;
  }
  /// Spawned programs: @p argv, speaking the wire format on stdin/stdout
  /// (stderr is inherited). Any launcher prefix may come first.
  static pool_workers spawned(std::vector<std::string> argv) {
    pool_workers w;
    w.argv = std::move(argv);
    return w;
  }
  /// This program re-executed (`/proc/self/exe`) with @p args after argv[0].
  static pool_workers self(std::vector<std::string> args) {
    pool_workers w;
    w.argv.push_back("/proc/self/exe");
    for (auto& a : args) w.argv.push_back(std::move(a));
    w.program = "/proc/self/exe";
    return w;
  }
  /// Programs @p argv (speaking the wire format on stdin/stdout) started on
  /// another machine through @p l (ssh_launcher(), command_launcher()): the
  /// pool spawns `l.command(argv)`. Their stderr is read by the pool (and
  /// copied to its own), so that a failed start is told apart: see
  /// worker_group. @throws std::invalid_argument when @p argv is empty.
  static pool_workers launched(const launcher& l, const std::vector<std::string>& argv) {
    pool_workers w;
    w.argv = l.command(argv);
    w.host = l.host.empty() ? std::string("local") : l.host;
    w.through_launcher = true;
    return w;
  }

  function_type function;
  initializer_type initializer;
  fork_options fork{};
  std::vector<std::string> argv;
  std::string program;
  /// launched(): the launcher's host, and true.
  std::string host;
  bool through_launcher = false;
};

/// Some workers of a pool, all of one kind (e.g. N workers on one host):
/// pool's constructor takes a list of them.
///
/// ```
/// auto ssh = coropipe::ssh_launcher("build1", {.control_master = true});
/// coropipe::pool<int, int> p(ex, {{.workers = int_workers::launched(ssh, {"/opt/w", "--serve"}), .count = 4},
///                                 {.workers = int_workers::self({"--serve"}), .count = 2}});
/// ```
///
/// Each group has its own restart budget (pool_options::restart_budget per
/// restart_period). A start fails when the worker cannot be started (spawn()
/// or fork refused), when its first output is not a message frame
/// (`errc::worker_protocol_error`: a banner on stdout), or, for a launched
/// worker, when it ends before its first reply: its exit status and stderr
/// are classified by classify_launch_failure() (`errc::remote_*`). Requests
/// such a worker held never ran and go back to the queue (except after
/// `remote_start_failed`, which may be a crash: then they count as attempts).
/// After `max_start_failures` failed starts in a row while none of its
/// workers serves, or when its restart budget is exhausted, the group is
/// **removed**: its workers finish what
/// they hold and end, pool_options::on_group_removed is called once, and the
/// other groups go on. Only when every group is removed does the pool fail
/// what is queued and every later request: with the last group's start
/// error, or `errc::pool_restart_budget_exhausted`.
///
/// The workers of a launched group start one first; the others start once
/// a worker of the group has replied (so an ssh ControlMaster connection is
/// up and shared), or 2 seconds after the pool started.
template <codable Request, codable Reply>
struct worker_group {
  /// How this group's workers start.
  pool_workers<Request, Reply> workers;
  /// How many.
  std::size_t count = 1;
  /// Its name in messages and pool::groups(); empty: the launcher's host, or "local".
  std::string name{};
  /// Failed starts in a row after which the group is removed; 0: never (only
  /// the restart budget then).
  unsigned max_start_failures = 3;
};

namespace detail {

// Serves requests from @p in, replies to @p out, in order, until end of
// input. Returns the exit code: 0 at a clean end, 2 on a protocol error.
// @p busy counts the requests received and not answered yet.
template <codable Request, codable Reply, typename Fn>
asio::awaitable<int> serve_channels(asio::posix::stream_descriptor in, asio::posix::stream_descriptor out, Fn& fn,
                                    std::atomic<std::size_t>* busy = nullptr) {
  constexpr auto tuple = compat::as_tuple(asio::use_awaitable);
  channel<Reply, Request> rx(std::move(in));
  framed_stream<> tx(std::move(out));
  Request req;
  std::vector<std::byte> encoded;  // the reply's bytes, memory reused
  for (;;) {
    // What has arrived is taken without an asynchronous operation (no
    // coroutine frames of the receive path); an empty pipe is waited for,
    // which lets the replies' posted flush run first.
    error_code ec;
    const bool got = rx.try_receive(req, ec);
    if (!got && ec == asio::error::would_block) {
      auto [wec] = co_await rx.framed().next_layer().async_wait(asio::posix::stream_descriptor::wait_read, tuple);
      if (wec) co_return 2;
      continue;
    }
    if (ec) co_return 2;
    if (!got) break;
    if (busy) ++*busy;
    Reply rep = co_await fn(std::move(req));
    if (busy) --*busy;
    // The reply to the last request read is written at once (the pool may
    // be waiting for it); replies to requests read ahead are queued for the
    // background flush, which batches them. Either needs no asynchronous
    // operation while the queue has room.
    encoded.clear();
    codec<Reply>::encode(rep, encoded);
    const asio::const_buffer bytes = asio::buffer(encoded);
    bool queued = false;
    if (rx.framed().buffered_bytes() == 0) {
      queued = tx.try_send_now(bytes);
      // Written whole, and nothing read ahead: the pool had nothing more
      // for us when we read, so we wait before reading again.
      if (queued && tx.pending_bytes() == 0) rx.framed().wait_before_next_read();
    } else {
      queued = tx.try_send(bytes);
    }
    if (!queued) {
      auto [sec] = co_await tx.async_send(bytes, tuple);
      if (sec) co_return 0;  // the pool is gone
    }
    // Requests that keep arriving do not keep the thread to themselves (the
    // flush of the replies runs).
    if (should_yield()) (void)co_await asio::post(rx.get_executor(), tuple);
  }
  (void)co_await tx.async_close(tuple);
  co_return 0;
}

// serve_stdio()'s set-up: stdout's descriptor moved to a private one and fd 1
// pointed at stderr; stdin's moved too (fd 0 reads /dev/null); the parent
// death signal set; a thread that _exits when stdin hangs up while @p busy.
struct stdio_channels {
  unique_fd in;
  unique_fd out;
};
stdio_channels take_stdio(error_code& ec);
void watch_hangup(int fd, const std::atomic<std::size_t>* busy);

} // namespace detail

/// The worker side of a spawned pool worker: serves requests arriving on
/// stdin with `fn` (`asio::awaitable<Reply>(Request)`), one at a time, and
/// writes the replies to stdout, until end of input. Returns the exit code
/// for main(): 0 at a clean end, 2 on a protocol error, 1 on a set-up error.
///
/// It first makes the protocol safe: the real stdout is moved to a private
/// descriptor and fd 1 is pointed at stderr (a stray `printf` then goes to
/// stderr instead of corrupting a frame), and stdin is moved likewise (fd 0
/// then reads `/dev/null`). It sets PR_SET_PDEATHSIG to SIGKILL (the worker
/// ends with the process that started it) and watches stdin from a thread:
/// when it hangs up (the pool, or the ssh connection carrying it, is gone)
/// while a request is being worked on, the worker exits at once instead of
/// finishing work no one will read. @p init runs once before serving; an
/// exception from it is printed to stderr and gives exit code 1.
template <codable Request, codable Reply, typename Fn>
int serve_stdio(Fn fn, std::function<void()> init = {}) {
  error_code ec;
  auto fds = detail::take_stdio(ec);
  if (ec) return 1;
  try {
    if (init) init();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "coropipe::serve_stdio: initializer failed: %s\n", e.what());
    return 1;
  }
  static std::atomic<std::size_t> busy{0};  // read by the watching thread
  detail::watch_hangup(fds.in.get(), &busy);
  asio::io_context io;
  int code = 1;
  asio::co_spawn(
      io,
      detail::serve_channels<Request, Reply>(attach(io, std::move(fds.in)), attach(io, std::move(fds.out)), fn, &busy),
      [&](std::exception_ptr e, int r) {
        if (e) {
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& ex) {
            std::fprintf(stderr, "coropipe::serve_stdio: %s\n", ex.what());
          }
          code = 1;
        } else {
          code = r;
        }
      });
  io.run();
  return code;
}

namespace detail {

// A double-ended queue of pointers in one ring of memory that is kept: in
// steady state it never allocates (std::deque frees and allocates a block
// every 64 pointers that pass through it: 0.03 allocations per request with
// two of them in a request's way). What the pool needs of a deque: both
// ends, iteration, find and erase.
template <typename T>
class ring {
  static_assert(std::is_trivially_copyable_v<T>);

public:
  template <typename R, typename V>
  class basic_iterator {
  public:
    using iterator_category = std::bidirectional_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using pointer = V*;
    using reference = V&;
    basic_iterator() = default;
    basic_iterator(R* r, std::size_t i) : r_(r), i_(i) {}
    reference operator*() const { return (*r_)[i_]; }
    pointer operator->() const { return &(*r_)[i_]; }
    basic_iterator& operator++() { ++i_; return *this; }
    basic_iterator operator++(int) { auto t = *this; ++i_; return t; }
    basic_iterator& operator--() { --i_; return *this; }
    basic_iterator operator--(int) { auto t = *this; --i_; return t; }
    bool operator==(const basic_iterator& o) const { return i_ == o.i_; }
    [[nodiscard]] std::size_t index() const noexcept { return i_; }

  private:
    R* r_ = nullptr;
    std::size_t i_ = 0;
  };
  using iterator = basic_iterator<ring, T>;
  using const_iterator = basic_iterator<const ring, const T>;
  using reverse_iterator = std::reverse_iterator<iterator>;

  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  T& operator[](std::size_t i) noexcept { return buf_[(head_ + i) & (buf_.size() - 1)]; }
  const T& operator[](std::size_t i) const noexcept { return buf_[(head_ + i) & (buf_.size() - 1)]; }
  T& front() noexcept { return (*this)[0]; }
  iterator begin() noexcept { return {this, 0}; }
  iterator end() noexcept { return {this, size_}; }
  const_iterator begin() const noexcept { return {this, 0}; }
  const_iterator end() const noexcept { return {this, size_}; }
  reverse_iterator rbegin() noexcept { return reverse_iterator(end()); }
  reverse_iterator rend() noexcept { return reverse_iterator(begin()); }

  void push_back(T v) {
    grow();
    buf_[(head_ + size_) & (buf_.size() - 1)] = v;
    ++size_;
  }
  void push_front(T v) {
    grow();
    head_ = (head_ - 1) & (buf_.size() - 1);
    buf_[head_] = v;
    ++size_;
  }
  void pop_front() noexcept {
    head_ = (head_ + 1) & (buf_.size() - 1);
    --size_;
  }
  void erase(iterator it) noexcept {
    for (std::size_t i = it.index(); i + 1 < size_; ++i) (*this)[i] = (*this)[i + 1];
    --size_;
  }
  void clear() noexcept { size_ = 0; head_ = 0; }
  void swap(ring& o) noexcept {
    buf_.swap(o.buf_);
    std::swap(head_, o.head_);
    std::swap(size_, o.size_);
  }

private:
  // Capacity is a power of two (16 at first).
  void grow() {
    if (size_ < buf_.size()) return;
    std::vector<T> bigger(buf_.empty() ? 16 : buf_.size() * 2);
    for (std::size_t i = 0; i < size_; ++i) bigger[i] = (*this)[i];
    buf_.swap(bigger);
    head_ = 0;
  }

  std::vector<T> buf_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
};

// A request's encoded bytes, kept for retries: inline when small (no
// allocation).
struct encoded_request {
  std::array<std::byte, 64> small{};
  std::size_t size = 0;
  std::vector<std::byte> large;

  void store(const std::vector<std::byte>& encoded) {
    size = encoded.size();
    if (size <= small.size()) std::copy(encoded.begin(), encoded.end(), small.begin());
    else large = encoded;
  }
  [[nodiscard]] asio::const_buffer payload() const noexcept {
    return size <= small.size() ? asio::const_buffer(small.data(), size) : asio::buffer(large);
  }
};

// Blocks for the records of pending requests whose handlers have no
// allocator of their own, kept for reuse: in steady state a request costs no
// allocation, however many are in flight. Owned by the pool's state; a record
// goes back here before its handler runs.
class request_blocks {
public:
  request_blocks() = default;
  request_blocks(const request_blocks&) = delete;
  request_blocks& operator=(const request_blocks&) = delete;
  ~request_blocks() {
    for (const auto& b : free_) ::operator delete(b.first);
  }

  // A block of at least @p size bytes; its capacity in @p capacity.
  void* take(std::size_t size, std::size_t& capacity) {
    while (!free_.empty()) {
      auto [p, cap] = free_.back();
      free_.pop_back();
      if (cap >= size) {
        capacity = cap;
        return p;
      }
      ::operator delete(p);  // from a larger handler type's era: too small
    }
    capacity = (size + 63) / 64 * 64;
    return ::operator new(capacity);
  }

  void give(void* p, std::size_t capacity) noexcept {
    if (free_.size() < max_kept) {
      try {
        free_.emplace_back(p, capacity);
        return;
      } catch (...) {
      }
    }
    ::operator delete(p);
  }

private:
  static constexpr std::size_t max_kept = 4096;
  std::vector<std::pair<void*, std::size_t>> free_;
};

// The record of a pending request (the part that does not depend on the
// completion handler's type; see submit_op).
template <typename Reply>
struct pool_request {
  // Completes the request: moves the handler out, frees the record (into
  // @p blocks when it came from there), then hands the handler to its
  // executor: asio::dispatch when @p direct (a reply, on the pool's
  // executor), asio::post otherwise.
  using complete_fn = void (*)(pool_request&, request_blocks&, const asio::any_io_executor&, error_code, Reply*,
                               bool direct);
  static constexpr std::size_t not_timed = static_cast<std::size_t>(-1);

  explicit pool_request(complete_fn fn) noexcept : on_complete(fn) {}
  pool_request(const pool_request&) = delete;
  pool_request& operator=(const pool_request&) = delete;

  [[nodiscard]] asio::const_buffer payload() const noexcept { return bytes.payload(); }

  complete_fn on_complete;
  request_info info;
  request_info* info_out = nullptr;
  encoded_request bytes;
  std::chrono::steady_clock::duration timeout{};  // zero: none
  std::chrono::steady_clock::time_point deadline{};
  std::size_t heap_index = not_timed;  // in the pool's deadline heap
  std::size_t block = 0;  // capacity of its request_blocks block; 0: the handler's allocator
};

// What is posted or dispatched when a request completes: the handler and its
// arguments, with the handler's executor and allocator.
template <typename Handler, typename Reply>
struct submit_completion {
  using executor_type = asio::associated_executor_t<Handler, asio::any_io_executor>;
  using allocator_type = asio::associated_allocator_t<Handler>;

  [[nodiscard]] executor_type get_executor() const noexcept { return ex; }
  [[nodiscard]] allocator_type get_allocator() const noexcept { return asio::get_associated_allocator(handler); }
  void operator()() { std::move(handler)(ec, std::move(reply)); }

  Handler handler;
  executor_type ex;
  error_code ec;
  Reply reply;
};

// A pending async_submit(): the record and the completion handler (type
// erased behind pool_request::on_complete). Allocated with the handler's
// associated allocator, or from the pool's request_blocks when it has none.
template <typename Reply, typename Handler>
struct submit_op final : pool_request<Reply> {
  using executor_type = asio::associated_executor_t<Handler, asio::any_io_executor>;
  using slot_type = asio::associated_cancellation_slot_t<Handler>;
  using handler_allocator = asio::associated_allocator_t<Handler>;
  using allocator_type = typename std::allocator_traits<handler_allocator>::template rebind_alloc<submit_op>;
  // Records of handlers without an allocator come from request_blocks.
  static constexpr bool own_blocks = std::is_same_v<handler_allocator, std::allocator<void>> &&
                                     __STDCPP_DEFAULT_NEW_ALIGNMENT__ >= alignof(submit_op);

  submit_op(Handler&& h, const asio::any_io_executor& io_ex)
      : pool_request<Reply>(&do_complete), handler(std::move(h)), slot(asio::get_associated_cancellation_slot(handler)) {
    // The handler's executor has work while the request is pending (the
    // pool's own executor has the pool's pending reads).
    auto ex = asio::get_associated_executor(handler, io_ex);
    if constexpr (std::is_same_v<executor_type, asio::any_io_executor>) {
      on_io_executor = ex == io_ex;
      if (!on_io_executor) work.emplace(std::move(ex));
    } else {
      work.emplace(std::move(ex));
    }
  }

  static submit_op* create(Handler&& h, const asio::any_io_executor& io_ex, request_blocks& blocks) {
    if constexpr (own_blocks) {
      std::size_t capacity = 0;
      void* mem = blocks.take(sizeof(submit_op), capacity);
      try {
        auto* op = ::new (mem) submit_op(std::move(h), io_ex);
        op->block = capacity;
        return op;
      } catch (...) {
        blocks.give(mem, capacity);
        throw;
      }
    } else {
      allocator_type alloc(asio::get_associated_allocator(h));
      submit_op* mem = std::allocator_traits<allocator_type>::allocate(alloc, 1);
      try {
        return ::new (static_cast<void*>(mem)) submit_op(std::move(h), io_ex);
      } catch (...) {
        std::allocator_traits<allocator_type>::deallocate(alloc, mem, 1);
        throw;
      }
    }
  }

  static void do_complete(pool_request<Reply>& base, request_blocks& blocks, const asio::any_io_executor& io_ex,
                          error_code ec, Reply* value, bool direct) {
    auto* self = static_cast<submit_op*>(&base);
    if (self->slot.is_connected()) self->slot.clear();
    if (base.info_out) *base.info_out = base.info;
    const bool on_io = self->on_io_executor;
    auto hex = asio::get_associated_executor(self->handler, io_ex);
    submit_completion<Handler, Reply> c{std::move(self->handler), std::move(hex), ec, value ? std::move(*value) : Reply()};
    auto work = std::move(self->work);
    // The record is freed before the handler runs (it may submit again).
    if constexpr (own_blocks) {
      const std::size_t capacity = self->block;
      self->~submit_op();
      blocks.give(self, capacity);
    } else {
      allocator_type alloc(asio::get_associated_allocator(c.handler));
      self->~submit_op();
      std::allocator_traits<allocator_type>::deallocate(alloc, self, 1);
    }
    if (!direct) {
      asio::post(io_ex, std::move(c));
      return;
    }
    // A reply arrives on the pool's executor: a handler of that executor is
    // called here, like the handler of an Asio operation; one of another
    // executor is dispatched to it.
    if (on_io) {
      std::move(c)();
      return;
    }
    asio::dispatch(io_ex, std::move(c));
  }

  Handler handler;
  slot_type slot;
  std::optional<asio::executor_work_guard<executor_type>> work;
  bool on_io_executor = false;  // the handler's executor is the pool's
};


// The parts of a pool that do not depend on its types.
std::size_t default_worker_count() noexcept;

// A launched worker's stderr: read to its end, copied to this process's
// stderr, and its first 4 KiB kept to tell why a start failed.
class stderr_capture : public std::enable_shared_from_this<stderr_capture> {
public:
  static constexpr std::size_t keep = 4096;
  explicit stderr_capture(asio::posix::stream_descriptor s);
  void start();
  [[nodiscard]] const std::string& text() const noexcept { return text_; }
  // Waits until the stream has ended, at most @p limit.
  asio::awaitable<void> wait(std::chrono::steady_clock::duration limit);
  void close() noexcept;

private:
  void read();
  asio::posix::stream_descriptor s_;
  asio::steady_timer ended_timer_;
  std::array<char, 4096> buf_{};
  std::string text_;
  bool ended_ = false;
};

// One group's bookkeeping (worker_group).
struct pool_group {
  pool_group(const asio::any_io_executor& ex, std::string group_name, std::size_t n, unsigned max_failures,
             bool is_launched)
      : name(std::move(group_name)), count(n), max_start_failures(max_failures), launched(is_launched), ready(ex) {}
  std::string name;
  std::size_t count;
  unsigned max_start_failures;
  bool launched;
  asio::steady_timer ready;  // a launched group's later workers wait for its first answer
  std::size_t first = 0;     // its first position
  unsigned failed_starts = 0;  // in a row
  bool answered = false;
  bool removed = false;
  bool budget_exhausted = false;
  error_code last_error;
  std::string last_message;
  std::deque<std::chrono::steady_clock::time_point> restarts;

  // One restart more, if the budget allows it.
  bool budget_allows(unsigned budget, std::chrono::steady_clock::duration period);
  // A failed start: true when the group must now be removed (never while
  // one of its workers serves: @p serving).
  bool failed_start(error_code ec, std::string message, bool serving);
  // A worker of the group replied.
  void answer() noexcept;
  // The one message of its removal.
  [[nodiscard]] std::string removal_message(unsigned budget, std::chrono::steady_clock::duration period) const;
};

// "NAME: could not start 'PROGRAM': REASON".
std::string spawn_failure_message(const std::string& group, const std::vector<std::string>& argv, error_code ec);
// "NAME: REASON: STDERR LINE (exit status ...)".
std::string launch_failure_message(const std::string& group, error_code ec, const exit_status& st,
                                   std::string_view stderr_text);

template <codable Request, codable Reply>
class pool_state : public std::enable_shared_from_this<pool_state<Request, Reply>> {
public:
  using request = pool_request<Reply>;
  using stream = asio::posix::stream_descriptor;

  struct worker {
    explicit worker(const asio::any_io_executor& ex) : tx(stream(ex)), rx(stream(ex)) {}
    child proc;
    framed_stream<stream> tx;
    channel<Reply, Reply> rx;
    ring<request*> inflight;  // null: abandoned, its reply is dropped
    std::size_t sent = 0;
    bool usable = true;  // takes requests
    bool expected_end = false;  // stopped on purpose: not a crash
    bool blocked = false;  // its send queue was full
    bool replied = false;  // has sent a reply
    std::shared_ptr<stderr_capture> err;  // launched workers: their stderr
  };

  pool_state(asio::any_io_executor ex, std::vector<worker_group<Request, Reply>> groups, pool_options opts)
      : ex_(std::move(ex)), opts_(std::move(opts)), idle_(ex_), backoff_(ex_) {
    if (opts_.window == 0) opts_.window = 1;
    if (opts_.queue_limit == 0) opts_.queue_limit = 1;
    idle_.expires_at(std::chrono::steady_clock::time_point::max());
    groups_.reserve(groups.size());
    std::size_t total = 0;
    for (auto& g : groups) {
      std::string name = !g.name.empty() ? g.name : !g.workers.host.empty() ? g.workers.host : std::string("local");
      groups_.emplace_back(ex_, std::move(name), g.count, g.max_start_failures, g.workers.through_launcher);
      groups_.back().first = total;
      total += g.count;
      for (std::size_t i = 0; i < g.count; ++i) group_of_.push_back(groups_.size() - 1);
      kinds_.push_back(std::move(g.workers));
    }
    if (total == 0) detail::throw_error(errc::invalid_argument, "coropipe::pool", "no workers in any group");
    opts_.workers = total;
    workers_.resize(total);
    stats_.resize(total);
  }

  void start() {
    for (auto& g : groups_) {
      if (g.launched) g.ready.expires_after(std::chrono::seconds(2));
    }
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      ++running_;
      asio::co_spawn(ex_, run_position(this->shared_from_this(), i), [self = this->shared_from_this()](std::exception_ptr) {
        --self->running_;
        self->idle_.cancel();
      });
    }
  }

  // --- submitting ---------------------------------------------------------

  // Encodes @p value (through a reused buffer: no allocation for a small one).
  encoded_request encode(const Request& value) {
    encoded_request e;
    scratch_.clear();
    codec<Request>::encode(value, scratch_);
    e.store(scratch_);
    return e;
  }

  // async_submit()'s initiation: never completes inline (an immediate error
  // is posted); a full queue parks the request until there is room.
  template <typename Handler>
  void start_submit(Handler handler, encoded_request bytes, const submit_options& so) {
    using op_type = submit_op<Reply, Handler>;
    error_code ec;
    if (broken_) ec = broken_error_;
    else if (closed_) ec = errc::pool_closed;
    if (ec) {
      if (so.info) *so.info = request_info{};
      auto hex = asio::get_associated_executor(handler, ex_);
      asio::post(ex_, submit_completion<Handler, Reply>{std::move(handler), std::move(hex), ec, Reply()});
      return;
    }
    op_type* op = op_type::create(std::move(handler), ex_, blocks_);
    request& r = *op;
    r.bytes = std::move(bytes);
    r.info_out = so.info;
    r.timeout = so.timeout != std::chrono::steady_clock::duration::zero() ? so.timeout : opts_.timeout;
    if (op->slot.is_connected()) op->slot.template emplace<cancel_handler>(this, &r);
    if (parked_.empty() && queue_.size() < opts_.queue_limit) {
      admit(r);
      dispatch();
    } else {
      parked_.push_back(&r);  // backpressure
    }
  }

  // --- shutdown -----------------------------------------------------------

  asio::awaitable<std::tuple<error_code, int>> shutdown(shutdown_mode mode) {
    co_await asio::this_coro::throw_if_cancelled(false);
    closed_ = true;
    fail_parked(errc::pool_closed);
    if (mode == shutdown_mode::immediate) {
      fail_all(errc::pool_closed);
      stopping_ = true;
      for (auto& w : workers_)
        if (w) kill(*w);
    } else {
      while (!queue_.empty() || in_flight() != 0) {
        if (broken_ || running_ == 0) {
          fail_all(broken_ ? broken_error_ : error_code(errc::pool_closed));
          break;
        }
        (void)co_await idle_.async_wait(compat::as_tuple(asio::use_awaitable));
      }
      stopping_ = true;
      for (auto& w : workers_)
        if (w) end_input(*w);
    }
    backoff_.cancel();
    for (auto& g : groups_) g.ready.cancel();
    while (running_ != 0) {
      (void)co_await idle_.async_wait(compat::as_tuple(asio::use_awaitable));
    }
    deadline_.cancel();
    co_return std::tuple{error_code(), 0};
  }

  // Synchronous end (the pool's destructor): fail everything, kill and reap.
  void destroy() noexcept {
    closed_ = true;
    stopping_ = true;
    backoff_.cancel();
    deadline_.cancel();
    for (auto& g : groups_) g.ready.cancel();
    fail_all(errc::pool_closed);
    for (auto& w : workers_) {
      if (!w) continue;
      w->expected_end = true;
      w->proc = child();  // SIGKILL and reap, now
      error_code ignored;
      w->rx.framed().next_layer().close(ignored);
      w->tx.next_layer().close(ignored);
      if (w->err) w->err->close();
    }
  }

  [[nodiscard]] std::vector<worker_stats> stats() const { return stats_; }
  [[nodiscard]] std::vector<group_stats> groups() const {
    std::vector<group_stats> out;
    out.reserve(groups_.size());
    for (const auto& g : groups_) {
      group_stats gs;
      gs.name = g.name;
      gs.removed = g.removed;
      gs.last_error = g.last_error;
      gs.last_message = g.last_message;
      for (std::size_t i = g.first; i < g.first + g.count; ++i)
        if (workers_[i]) ++gs.workers_running;
      out.push_back(std::move(gs));
    }
    return out;
  }
  [[nodiscard]] std::size_t queued() const noexcept { return queue_.size(); }
  [[nodiscard]] std::size_t in_flight() const noexcept {
    std::size_t n = 0;
    for (const auto& w : workers_)
      if (w) n += static_cast<std::size_t>(std::count_if(w->inflight.begin(), w->inflight.end(), [](request* r) { return r != nullptr; }));
    return n;
  }
  [[nodiscard]] bool broken() const noexcept { return broken_; }
  [[nodiscard]] error_code last_start_error() const noexcept { return start_error_; }
  [[nodiscard]] const asio::any_io_executor& executor() const noexcept { return ex_; }

private:
  // --- dispatch -----------------------------------------------------------

  void dispatch() {
    while (!queue_.empty()) {
      worker* best = nullptr;
      for (auto& w : workers_) {
        if (!w || !w->usable || w->blocked || w->inflight.size() >= opts_.window) continue;
        if (opts_.max_requests_per_worker != 0 && w->sent >= opts_.max_requests_per_worker) continue;
        if (!best || w->inflight.size() < best->inflight.size()) best = w.get();
      }
      if (!best) return;
      request* r = queue_.front();
      // An idle worker waits for this request: it is written at once. One
      // with requests in flight gets it batched with the others by the
      // background flush.
      const bool sent =
          best->inflight.empty() ? best->tx.try_send_now(r->payload()) : best->tx.try_send(r->payload());
      if (!sent) {
        best->blocked = true;
        continue;
      }
      queue_.pop_front();
      make_room();
      ++r->info.attempts;
      r->info.worker_pid = best->proc.pid();
      best->inflight.push_back(r);
      ++best->sent;
    }
  }

  // Fails @p r with @p ec: its handler is posted.
  void complete(request& r, error_code ec) {
    if (r.heap_index != request::not_timed) untime(r);
    r.on_complete(r, blocks_, ex_, ec, nullptr, false);
  }

  // Answers @p r with @p value (on the pool's executor: its handler is
  // called here when it runs there too, else dispatched to its executor).
  void deliver(request& r, Reply&& value) {
    if (r.heap_index != request::not_timed) untime(r);
    try {
      r.on_complete(r, blocks_, ex_, {}, &value, true);
    } catch (...) {
      // An exception from the handler leaves the io_context's run(), as
      // from any handler, instead of ending this worker's coroutine.
      asio::post(ex_, [e = std::current_exception()] { std::rethrow_exception(e); });
    }
  }

  void fail_all(error_code ec) {
    fail_parked(ec);
    while (!queue_.empty()) {
      request* r = queue_.front();
      queue_.pop_front();
      complete(*r, ec);
    }
    for (auto& w : workers_) {
      if (!w) continue;
      for (auto*& r : w->inflight) {
        if (r) complete(*r, ec);
        r = nullptr;
      }
    }
    idle_.cancel();
  }

  // Requests waiting for room in the queue.
  void fail_parked(error_code ec) {
    while (!parked_.empty()) {
      request* r = parked_.front();
      parked_.pop_front();
      complete(*r, ec);
    }
  }

  // The queue has shrunk: parked requests move in.
  void make_room() {
    while (!parked_.empty() && queue_.size() < opts_.queue_limit) {
      request* r = parked_.front();
      parked_.pop_front();
      admit(*r);
    }
  }

  // Into the queue; its timeout starts now.
  void admit(request& r) {
    queue_.push_back(&r);
    if (r.timeout != std::chrono::steady_clock::duration::zero()) {
      r.deadline = std::chrono::steady_clock::now() + r.timeout;
      time(r);
    }
  }

  // Per-operation cancellation of a pending request (its handler's
  // cancellation slot holds this).
  struct cancel_handler {
    cancel_handler(pool_state* s, request* q) noexcept : st(s), r(q) {}
    pool_state* st;
    request* r;
    void operator()(asio::cancellation_type type) const {
      if ((type & asio::cancellation_type::terminal) == asio::cancellation_type::none) return;
      // abandon() clears the slot, which destroys this object: nothing of it
      // is read after the call.
      pool_state* s = st;
      request* q = r;
      s->abandon(*q, asio::error::operation_aborted);
    }
  };

  // A pending request gives up (cancelled or timed out).
  void abandon(request& r, error_code ec) {
    if (auto it = std::find(parked_.begin(), parked_.end(), &r); it != parked_.end()) {
      parked_.erase(it);
      complete(r, ec);
      return;
    }
    if (auto it = std::find(queue_.begin(), queue_.end(), &r); it != queue_.end()) {
      queue_.erase(it);
      complete(r, ec);
      make_room();
      dispatch();
      return;
    }
    for (auto& w : workers_) {
      if (!w) continue;
      auto it = std::find(w->inflight.begin(), w->inflight.end(), &r);
      if (it == w->inflight.end()) continue;
      const bool busy_with_it = std::find_if(w->inflight.begin(), it, [](request* q) { return q != nullptr; }) == it;
      *it = nullptr;
      complete(r, ec);
      if (busy_with_it) {
        // The worker is working on it: the only way to stop that is to
        // stop the worker. Its other requests go back to the queue as they
        // were (not a retry), and its replacement does not count as a crash.
        requeue_front(*w, false);
        w->expected_end = true;
        kill(*w);
      }
      idle_.cancel();
      return;
    }
    complete(r, ec);
  }

  // --- timeouts: one timer for the pool, at the earliest deadline ----------

  void time(request& r) {
    r.heap_index = timed_.size();
    timed_.push_back(&r);
    sift_up(r.heap_index);
    if (!deadline_armed_ || r.deadline < armed_at_) arm_deadline();
  }

  void untime(request& r) {
    const std::size_t i = r.heap_index;
    r.heap_index = request::not_timed;
    request* last = timed_.back();
    timed_.pop_back();
    if (i < timed_.size()) {
      timed_[i] = last;
      last->heap_index = i;
      sift_up(i);
      sift_down(last->heap_index);
    }
  }

  void arm_deadline() {
    deadline_armed_ = true;
    armed_at_ = timed_.front()->deadline;
    deadline_.expires_at(armed_at_);  // a wait already pending ends with operation_aborted
    deadline_.async_wait([self = this->shared_from_this()](error_code ec) {
      if (ec != asio::error::operation_aborted) self->on_deadline();
    });
  }

  void on_deadline() {
    deadline_armed_ = false;
    const auto now = std::chrono::steady_clock::now();
    while (!timed_.empty() && timed_.front()->deadline <= now) abandon(*timed_.front(), errno_code(ETIMEDOUT));
    if (!timed_.empty() && !stopping_) arm_deadline();
  }

  void sift_up(std::size_t i) {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!(timed_[i]->deadline < timed_[parent]->deadline)) break;
      swap_timed(i, parent);
      i = parent;
    }
  }

  void sift_down(std::size_t i) {
    for (;;) {
      std::size_t least = i;
      for (std::size_t c = 2 * i + 1; c <= 2 * i + 2 && c < timed_.size(); ++c)
        if (timed_[c]->deadline < timed_[least]->deadline) least = c;
      if (least == i) return;
      swap_timed(i, least);
      i = least;
    }
  }

  void swap_timed(std::size_t a, std::size_t b) {
    std::swap(timed_[a], timed_[b]);
    timed_[a]->heap_index = a;
    timed_[b]->heap_index = b;
  }

  void requeue_front(worker& w, bool retry) {
    for (auto it = w.inflight.rbegin(); it != w.inflight.rend(); ++it) {
      if (!*it) continue;
      if (!retry) --(*it)->info.attempts;  // not an attempt of its own: sent again as it was
      queue_.push_front(*it);
    }
    w.inflight.clear();
  }

  void kill(worker& w) {
    w.usable = false;
    error_code ignored;
    w.proc.signal(SIGKILL, ignored);
  }

  void end_input(worker& w) {
    w.usable = false;
    w.expected_end = true;
    error_code ignored;
    w.tx.next_layer().close(ignored);  // (queued bytes are written first only while open: nothing is queued now)
  }

  // --- workers ------------------------------------------------------------

  std::shared_ptr<worker> start_worker(const pool_workers<Request, Reply>& kind, error_code& ec) {
    auto w = std::make_shared<worker>(ex_);
    if (kind.function) {
      auto req = coropipe::pipe(ec);
      if (ec) return nullptr;
      auto rep = coropipe::pipe(ec);
      if (ec) return nullptr;
      const char* failed = nullptr;
      w->proc = detail::fork_bound(
          ex_, kind.fork, ec, failed,
          [fn = kind.function, init = kind.initializer](child_context& ctx, unique_fd in,
                                                          unique_fd out) -> asio::awaitable<int> {
            if (init) co_await init();
            auto f = fn;
            co_return co_await serve_channels<Request, Reply>(ctx.attach(std::move(in)), ctx.attach(std::move(out)), f);
          },
          std::move(req.read_end), std::move(rep.write_end));
      if (ec) return nullptr;
      w->tx = framed_stream<stream>(attach(ex_, std::move(req.write_end), ec), request_options());
      if (ec) return nullptr;
      w->rx = channel<Reply, Reply>(attach(ex_, std::move(rep.read_end), ec), reply_options());
      if (ec) return nullptr;
      return w;
    }
    spawn_options so;
    so.argv = kind.argv;
    so.program = kind.program;
    so.in = stdio::pipe();
    so.out = stdio::pipe();
    if (kind.through_launcher) so.err = stdio::pipe();  // read: it tells why a start failed
    so.parent_death_signal = 9;
    process p = coropipe::spawn(ex_, std::move(so), ec);
    if (ec) return nullptr;
    w->tx = framed_stream<stream>(std::move(p.stdin_pipe()), request_options());
    w->rx = channel<Reply, Reply>(std::move(p.stdout_pipe()), reply_options());
    if (kind.through_launcher) {
      w->err = std::make_shared<stderr_capture>(std::move(p.stderr_pipe()));
      w->err->start();
    }
    w->proc = std::move(p);  // the pipes have been taken: only the child is kept
    return w;
  }

  // Every request is copied into the send queue (dispatch never waits), so
  // a large one is never refused for its size.
  static framed_options request_options() {
    framed_options fo;
    fo.copy_threshold = std::numeric_limits<std::size_t>::max();
    return fo;
  }

  framed_options reply_options() const {
    framed_options fo;
    fo.max_message_size = opts_.max_reply_size;
    return fo;
  }

  void give_up() {
    broken_ = true;
    // What waits for a worker cannot get one; what live workers hold goes on.
    while (!queue_.empty()) {
      request* r = queue_.front();
      queue_.pop_front();
      complete(*r, broken_error_);
    }
    fail_parked(broken_error_);
    idle_.cancel();
  }

  // Takes group @p gi out of the pool: @p ec is its error, @p pool_ec the
  // pool's if it was the last group.
  void remove_group(std::size_t gi, error_code ec, std::string message, error_code pool_ec) {
    auto& g = groups_[gi];
    if (g.removed) return;
    g.removed = true;
    g.last_error = ec;
    g.last_message = std::move(message);
    g.ready.cancel();
    // Its live workers take no more requests and end once they have answered.
    for (std::size_t i = g.first; i < g.first + g.count; ++i) {
      auto& w = workers_[i];
      if (!w) continue;
      w->usable = false;
      if (w->inflight.empty()) end_input(*w);
    }
    const std::string text = g.removal_message(opts_.restart_budget, opts_.restart_period);
    if (opts_.on_group_removed) opts_.on_group_removed(g.name, ec, text);
    if (std::all_of(groups_.begin(), groups_.end(), [](const pool_group& x) { return x.removed || x.count == 0; })) {
      broken_error_ = pool_ec;
      give_up();
    } else {
      dispatch();
      idle_.cancel();
    }
  }

  static asio::awaitable<void> run_position(std::shared_ptr<pool_state> self, std::size_t index) {
    co_await self->position(index);
  }

  // Whether a worker of @p g has answered and still runs: its host works.
  bool serving(const pool_group& g) const {
    for (std::size_t i = g.first; i < g.first + g.count; ++i)
      if (workers_[i] && workers_[i]->replied && workers_[i]->usable) return true;
    return false;
  }

  static bool is_protocol_error(const error_code& ec) {
    return ec == errc::message_too_large || ec == errc::malformed_frame || ec == errc::decode_failed ||
           ec == errc::truncated_message;
  }

  asio::awaitable<void> position(std::size_t index) {
    co_await asio::this_coro::throw_if_cancelled(false);
    constexpr auto tuple = compat::as_tuple(asio::use_awaitable);
    const std::size_t gi = group_of_[index];
    pool_group& g = groups_[gi];
    const pool_workers<Request, Reply>& kind = kinds_[gi];
    // A launched group's later workers start once the first has answered
    // (its connection is up, and shared under ssh's ControlMaster).
    while (g.launched && index != g.first && !g.answered && !g.removed && !stopping_ && !broken_) {
      auto [rec] = co_await g.ready.async_wait(tuple);
      if (!rec) break;  // waited long enough
    }
    unsigned consecutive = 0;
    bool first = true;
    while (!stopping_ && !broken_ && !g.removed) {
      if (consecutive > 0) {
        auto delay = opts_.restart_backoff;
        for (unsigned i = 1; i < consecutive && delay < opts_.max_restart_backoff; ++i) delay *= 2;
        backoff_.expires_after(std::min(delay, opts_.max_restart_backoff));
        (void)co_await backoff_.async_wait(tuple);
        if (stopping_ || broken_ || g.removed) break;
      }
      error_code ec;
      auto w = start_worker(kind, ec);
      if (!first) ++stats_[index].restarts;
      first = false;
      if (!w) {
        // Could not start one (fork refused, EAGAIN, spawn failure).
        stats_[index].last_exit.reset();
        start_error_ = ec;
        ++consecutive;
        std::string message = spawn_failure_message(g.name, kind.argv, ec);
        // Errors that no retry can cure end the group at once.
        if (ec == errc::fork_in_threaded_process || ec == errc::invalid_argument) {
          remove_group(gi, ec, std::move(message), errc::pool_restart_budget_exhausted);
          break;
        }
        if (g.failed_start(ec, message, serving(g))) {
          remove_group(gi, ec, std::move(message), ec);
          break;
        }
        if (!g.budget_allows(opts_.restart_budget, opts_.restart_period)) {
          g.budget_exhausted = true;
          remove_group(gi, errc::pool_restart_budget_exhausted, std::move(message), errc::pool_restart_budget_exhausted);
          break;
        }
        continue;
      }
      workers_[index] = w;
      stats_[index].pid = w->proc.pid();
      dispatch();
      bool served_any = false;
      bool garbage = false;
      Reply value{};
      error_code rec;
      for (;;) {
        // What has arrived is taken without an asynchronous operation; only
        // an empty pipe is waited for, with one async_wait (no coroutine
        // frames of the receive path: with one request at a time those
        // missed Asio's frame cache, two heap allocations per request).
        error_code e;
        const bool got = w->rx.try_receive(value, e);
        if (!got && e == asio::error::would_block) {
          auto [wec] = co_await w->rx.framed().next_layer().async_wait(stream::wait_read, tuple);
          if (!wec) continue;
          e = wec;
        }
        rec = e;
        if (rec || !got) break;
        if (w->inflight.empty()) {  // a reply to nothing: garbage
          garbage = true;
          break;
        }
        request* r = w->inflight.front();
        w->inflight.pop_front();
        // Every reply the worker owed has been read: the requests in flight
        // from now on are sent after this, so their replies are waited for
        // without a read(2) that would find the pipe empty.
        if (w->inflight.empty()) w->rx.framed().wait_before_next_read();
        ++stats_[index].served;
        served_any = true;
        if (!w->replied) {
          w->replied = true;
          g.answer();
        }
        w->blocked = false;
        if (r) deliver(*r, std::move(value));
        if ((opts_.max_requests_per_worker != 0 && w->sent >= opts_.max_requests_per_worker && w->inflight.empty()) ||
            (g.removed && w->inflight.empty())) {
          end_input(*w);  // retired, or its group removed: it exits on end of input
        }
        dispatch();
        if (w->inflight.empty()) idle_.cancel();
        // Replies that keep arriving do not keep the thread to themselves.
        if (detail::should_yield()) (void)co_await asio::post(ex_, tuple);
      }
      // The worker has ended, or must.
      w->usable = false;
      const bool expected = w->expected_end;
      error_code ignored;
      w->tx.next_layer().close(ignored);
      // No signal at first (signal 0 only checks): a worker on its way out
      // (its output ended, or its input just did) ends on its own, with its
      // own status, however long its exit takes (atexit handlers, a loaded
      // machine, a sanitizer's leak check); SIGKILL once stop_grace is over.
      auto [wec, status] = co_await w->proc.async_stop(opts_.stop_grace, 0, tuple);
      // A launched worker's last words (ssh's error) are read and copied
      // before its stderr is closed: it has exited, so they are in the pipe.
      if (w->err) co_await w->err->wait(std::chrono::milliseconds(500));
      if (!wec) stats_[index].last_exit = status;
      stats_[index].pid = 0;
      if (opts_.on_worker_exit && !wec) opts_.on_worker_exit(worker_exit{index, w->proc.pid(), status, expected});
      // A failed start: output that is no frame before any reply, or a
      // launched worker that ended before its first reply.
      error_code start_ec;
      std::string message;
      if (!w->replied && !expected && !stopping_ && (garbage || is_protocol_error(rec) || w->err)) {
        const std::string err_text = w->err ? w->err->text() : std::string();
        start_ec = w->err ? classify_launch_failure(status, err_text) : error_code(errc::remote_start_failed);
        if ((garbage || is_protocol_error(rec)) && (!w->err || start_ec == errc::remote_start_failed))
          start_ec = errc::worker_protocol_error;
        message = launch_failure_message(g.name, start_ec, status, err_text);
      }
      if (w->err) w->err->close();
      // Requests a worker that failed to start held never ran: they go back
      // as they were (remote_start_failed may be a crash: those count).
      const bool never_ran = start_ec && start_ec != errc::remote_start_failed;
      // Its requests: sent again, or failed with its status.
      ring<request*> held;
      held.swap(w->inflight);
      for (auto it = held.rbegin(); it != held.rend(); ++it) {
        request* r = *it;
        if (!r) continue;
        r->info.worker_pid = w->proc.pid();
        r->info.worker_status = status;
        if (never_ran && !stopping_) {
          --r->info.attempts;
          queue_.push_front(r);
        } else if (r->info.attempts <= opts_.max_retries && !stopping_) {
          queue_.push_front(r);
        } else {
          complete(*r, errc::worker_died);
        }
      }
      workers_[index].reset();
      idle_.cancel();
      if (stopping_ || g.removed) break;
      if (expected) {
        consecutive = 0;
      } else {
        consecutive = served_any ? 1 : consecutive + 1;
        if (start_ec) {
          start_error_ = start_ec;
          if (g.failed_start(start_ec, message, serving(g))) {
            remove_group(gi, start_ec, std::move(message), start_ec);
            break;
          }
        }
        if (!g.budget_allows(opts_.restart_budget, opts_.restart_period)) {
          g.budget_exhausted = true;
          remove_group(gi, errc::pool_restart_budget_exhausted,
                       message.empty() ? g.name + ": its workers keep dying" : std::move(message),
                       errc::pool_restart_budget_exhausted);
          break;
        }
      }
      dispatch();
    }
    if (broken_) give_up();  // what came back to the queue has no worker left
    else dispatch();         // what this position's group left queued goes to the others
  }

  asio::any_io_executor ex_;
  std::vector<pool_workers<Request, Reply>> kinds_;  // per group
  std::vector<pool_group> groups_;
  std::vector<std::size_t> group_of_;  // per position
  pool_options opts_;
  asio::steady_timer idle_;     // cancelled when requests or workers finish
  asio::steady_timer backoff_;  // restart delays (one timer: cancel() ends them all)
  ring<request*> queue_;
  std::vector<std::shared_ptr<worker>> workers_;
  std::vector<worker_stats> stats_;
  std::vector<std::byte> scratch_;  // encoding, reused
  request_blocks blocks_;           // records of pending requests, reused
  ring<request*> parked_;     // waiting for room in queue_ (backpressure)
  std::vector<request*> timed_;     // requests with a deadline: a min-heap
  asio::steady_timer deadline_{ex_};  // at the earliest deadline while deadline_armed_
  std::chrono::steady_clock::time_point armed_at_{};
  bool deadline_armed_ = false;
  std::size_t running_ = 0;  // worker positions' coroutines
  bool closed_ = false;
  bool stopping_ = false;
  bool broken_ = false;
  error_code broken_error_ = errc::pool_restart_budget_exhausted;
  error_code start_error_;
};

} // namespace detail

/// A pool of worker processes; see the file's documentation.
template <codable Request, codable Reply>
class pool {
public:
  using executor_type = asio::any_io_executor;
  using request_type = Request;
  using reply_type = Reply;
  /// pool_workers of this pool's types.
  using workers_type = pool_workers<Request, Reply>;

  /// Starts the workers (forked ones before this returns, spawned ones too:
  /// spawn() returns once the program is exec'd): pool_options::workers of
  /// them (0: one per CPU), one group whose failed starts count against the
  /// restart budget only.
  pool(const executor_type& ex, pool_workers<Request, Reply> workers, pool_options opts = {})
      : st_(std::make_shared<detail::pool_state<Request, Reply>>(ex, one_group(std::move(workers), opts), opts)) {
    st_->start();
  }
  /// Starts the workers of every group (see worker_group); pool_options::workers
  /// is ignored. @throws system_error with `errc::invalid_argument` when no
  /// group has a worker.
  pool(const executor_type& ex, std::vector<worker_group<Request, Reply>> groups, pool_options opts = {})
      : st_(std::make_shared<detail::pool_state<Request, Reply>>(ex, std::move(groups), opts)) {
    st_->start();
  }
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;

  /// Fails what is pending with `errc::pool_closed`, kills the workers and
  /// reaps them, synchronously.
  ~pool() { st_->destroy(); }

  [[nodiscard]] executor_type get_executor() const noexcept { return st_->executor(); }

  /// Sends @p request to a worker and completes with its reply.
  ///
  /// Completion signature: `void(error_code, Reply)`.
  ///
  /// Errors: `errc::worker_died` (the worker died and retries are used up;
  /// see submit_options::info for its exit status),
  /// `asio::error::operation_aborted` (cancelled), ETIMEDOUT (`ec == std::errc::timed_out`),
  /// `errc::pool_closed`, `errc::pool_restart_budget_exhausted`, and once
  /// every group is removed for failed starts, the last one's error
  /// (`errc::remote_*`, `errc::worker_protocol_error`, or spawn()'s). Supports
  /// per-operation cancellation (terminal). @p request is encoded before
  /// this returns.
  ///
  /// The handler runs on its associated executor (by default the pool's),
  /// never inside async_submit() (an immediate error is posted): when a reply
  /// arrives it is called at once if that executor is the pool's, and
  /// dispatched to its own otherwise (a strand, another io_context), which
  /// has outstanding work while the request is pending.
  template <typename SubmitToken = asio::default_completion_token_t<executor_type>>
  auto async_submit(const Request& request, submit_options so,
                    SubmitToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<SubmitToken, void(error_code, Reply)>(submit_initiation{st_}, token,
                                                                      st_->encode(request), so);
  }

  /// async_submit() with default submit_options.
  template <typename SubmitToken = asio::default_completion_token_t<executor_type>>
  auto async_submit(const Request& request, SubmitToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_submit(request, submit_options{}, std::forward<SubmitToken>(token));
  }

  /// Ends the pool (see shutdown_mode); completes once every worker is reaped.
  ///
  /// Completion signature: `void(error_code)`.
  template <typename ShutdownToken = asio::default_completion_token_t<executor_type>>
  auto async_shutdown(shutdown_mode mode, ShutdownToken&& token = asio::default_completion_token_t<executor_type>()) {
    return asio::async_initiate<ShutdownToken, void(error_code)>(
        [](auto handler, std::shared_ptr<detail::pool_state<Request, Reply>> st, shutdown_mode m) {
          auto ex = st->executor();
          // The completion holds the state: the shutdown coroutine runs on it
          // even when the pool object is destroyed first (e.g. a detached
          // shutdown started from a signal handler).
          detail::async_run<int>(ex, st->shutdown(m),
                                 [h = std::move(handler), st](error_code ec, int) mutable { std::move(h)(ec); });
        },
        token, st_, mode);
  }

  /// Graceful async_shutdown().
  template <typename ShutdownToken = asio::default_completion_token_t<executor_type>>
  auto async_shutdown(ShutdownToken&& token = asio::default_completion_token_t<executor_type>()) {
    return async_shutdown(shutdown_mode::graceful, std::forward<ShutdownToken>(token));
  }

  /// Statistics per worker position (the groups' positions in order).
  [[nodiscard]] std::vector<worker_stats> stats() const { return st_->stats(); }
  /// The state of each group, in the order given.
  [[nodiscard]] std::vector<group_stats> groups() const { return st_->groups(); }
  /// Requests waiting for a worker.
  [[nodiscard]] std::size_t queued() const noexcept { return st_->queued(); }
  /// Requests sent to workers and not answered yet.
  [[nodiscard]] std::size_t in_flight() const noexcept { return st_->in_flight(); }
  /// True once every group is removed: its restart budget exhausted, too
  /// many failed starts in a row, or a worker could not be started for a
  /// reason no retry cures (`errc::fork_in_threaded_process`,
  /// `errc::invalid_argument`).
  [[nodiscard]] bool broken() const noexcept { return st_->broken(); }
  /// Why the last worker that could not be started failed (fork_child() or
  /// spawn()'s error, e.g. ENOENT for a missing program, or a failed start's
  /// `errc::remote_*` / `errc::worker_protocol_error`); empty if none.
  [[nodiscard]] error_code last_start_error() const noexcept { return st_->last_start_error(); }

private:
  struct submit_initiation {
    std::shared_ptr<detail::pool_state<Request, Reply>> st;
    template <typename Handler>
    void operator()(Handler&& handler, detail::encoded_request bytes, submit_options so) const {
      st->start_submit(std::forward<Handler>(handler), std::move(bytes), so);
    }
  };

  static std::vector<worker_group<Request, Reply>> one_group(pool_workers<Request, Reply> workers,
                                                             const pool_options& opts) {
    std::vector<worker_group<Request, Reply>> groups(1);
    groups[0].workers = std::move(workers);
    groups[0].count = opts.workers != 0 ? opts.workers : detail::default_worker_count();
    groups[0].max_start_failures = 0;
    return groups;
  }

  std::shared_ptr<detail::pool_state<Request, Reply>> st_;
};

namespace detail {
// Runs @p lanes coroutines `lane()` side by side on @p ex and returns once
// every one of them has ended (the map helpers' workers: each lane takes the
// next item until none is left).
template <typename Executor, typename Lane>
asio::awaitable<void> run_lanes(Executor ex, std::size_t lanes, Lane& lane) {
  std::size_t active = 0;
  asio::steady_timer done(ex);
  done.expires_at(std::chrono::steady_clock::time_point::max());
  for (std::size_t l = 0; l < lanes; ++l) {
    ++active;
    asio::co_spawn(ex, lane(), [&](std::exception_ptr) {
      if (--active == 0) done.cancel();
    });
  }
  while (active != 0) (void)co_await done.async_wait(compat::as_tuple(asio::use_awaitable));
}
} // namespace detail

/// Submits every request of @p requests and completes with the replies in
/// the same order; at most @p lanes requests in flight (0: as many as the
/// pool's queue takes).
///
/// Completion signature: `void(error_code, std::vector<Reply>)`: the first
/// error (the replies are then those received so far).
template <codable Request, codable Reply, typename Range,
          typename Token = asio::default_completion_token_t<asio::any_io_executor>>
auto async_map(pool<Request, Reply>& p, const Range& requests, Token&& token = Token()) {
  auto body = [](pool<Request, Reply>& pl, const Range& reqs) -> asio::awaitable<std::tuple<error_code, std::vector<Reply>>> {
    std::vector<Reply> out(std::size(reqs));
    error_code first;
    std::size_t next = 0;
    const std::size_t lanes = std::max<std::size_t>(1, std::min<std::size_t>(out.size(), 1024));
    auto lane = [&]() -> asio::awaitable<void> {
      while (next < out.size() && !first) {
        const std::size_t i = next++;
        const auto& req = *std::next(std::begin(reqs), static_cast<std::ptrdiff_t>(i));
        auto [ec, rep] = co_await pl.async_submit(req, compat::as_tuple(asio::use_awaitable));
        if (ec && !first) first = ec;
        else out[i] = std::move(rep);
      }
    };
    co_await detail::run_lanes(pl.get_executor(), lanes, lane);
    co_return std::tuple{first, std::move(out)};
  };
  return detail::async_run<std::vector<Reply>>(p.get_executor(), body(p, requests), std::forward<Token>(token));
}

/// Submits every request of @p requests and calls `on_reply(index, Reply&&)`
/// for each reply as it arrives (in completion order, not request order).
///
/// Completion signature: `void(error_code, std::size_t)`: the first error,
/// and the number of replies delivered.
template <codable Request, codable Reply, typename Range, typename OnReply,
          typename Token = asio::default_completion_token_t<asio::any_io_executor>>
auto async_for_each_reply(pool<Request, Reply>& p, const Range& requests, OnReply on_reply, Token&& token = Token()) {
  auto body = [](pool<Request, Reply>& pl, const Range& reqs,
                 OnReply cb) -> asio::awaitable<std::tuple<error_code, std::size_t>> {
    const std::size_t total = static_cast<std::size_t>(std::size(reqs));
    error_code first;
    std::size_t next = 0, delivered = 0;
    const std::size_t lanes = std::max<std::size_t>(1, std::min<std::size_t>(total, 1024));
    auto lane = [&]() -> asio::awaitable<void> {
      while (next < total && !first) {
        const std::size_t i = next++;
        const auto& req = *std::next(std::begin(reqs), static_cast<std::ptrdiff_t>(i));
        auto [ec, rep] = co_await pl.async_submit(req, compat::as_tuple(asio::use_awaitable));
        if (ec) {
          if (!first) first = ec;
        } else {
          ++delivered;
          cb(i, std::move(rep));
        }
      }
    };
    co_await detail::run_lanes(pl.get_executor(), lanes, lane);
    co_return std::tuple{first, delivered};
  };
  return detail::async_run<std::size_t>(p.get_executor(), body(p, requests, std::move(on_reply)),
                                        std::forward<Token>(token));
}

} // namespace coropipe
