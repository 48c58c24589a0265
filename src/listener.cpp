// SPDX-License-Identifier: BSL-1.0
#include <coropipe/listener.hpp>

#include <coropipe/unique_fd.hpp>

#include <coropipe/asio.hpp>
#include COROPIPE_ASIO_INCLUDE(basic_socket_acceptor.hpp)

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <list>
#include <string_view>
#include <variant>

namespace coropipe {

namespace detail {

namespace {

using namespace compat::awaitable_operators;
constexpr auto as_tuple = compat::as_tuple(asio::use_awaitable);
using acceptor_type = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

std::string_view view(const std::optional<message_view>& m) {
  return {reinterpret_cast<const char*>(m->data()), m->size()};
}

// Messages are written whole (one writev per batch), so Nagle's algorithm
// only delays them: a request-reply round trip over TCP would wait for the
// peer's delayed ACK. Off on every TCP connection, both ends.
void set_no_delay(int fd, int family) noexcept {
  if (family != AF_INET && family != AF_INET6) return;
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int socket_family(int fd) noexcept {
  ::sockaddr_storage sa{};
  ::socklen_t len = sizeof sa;
  if (::getsockname(fd, reinterpret_cast<::sockaddr*>(&sa), &len) != 0) return AF_UNSPEC;
  return sa.ss_family;
}

// A receive during the handshake: end of stream is a failed handshake.
error_code handshake_receive_error(const error_code& ec, const std::optional<message_view>& msg) {
  if (ec) return ec;
  if (!msg) return make_error_code(errc::authentication_failed);
  return {};
}

// Sends our challenge, checks the peer's answer, replies #WELCOME# or #FAILURE#.
asio::awaitable<error_code> deliver_challenge(socket_stream& fs, const std::string& key,
                                              handshake::challenge_form form) {
  std::string challenge;
  try {
    challenge = handshake::make_challenge(form);
  } catch (const system_error& e) {
    co_return e.code();
  }
  auto [se] = co_await fs.async_send(asio::buffer(challenge), as_tuple);
  if (se) co_return se;
  auto [re, msg] = co_await fs.async_receive(as_tuple);
  if (auto ec = handshake_receive_error(re, msg)) co_return ec;
  if (auto ec = handshake::verify(key, challenge, view(msg))) {
    co_await fs.async_send(asio::buffer(handshake::failure.data(), handshake::failure.size()), as_tuple);
    co_return ec;
  }
  auto [we] = co_await fs.async_send(asio::buffer(handshake::welcome.data(), handshake::welcome.size()), as_tuple);
  co_return we;
}

// Answers the peer's challenge and expects #WELCOME#.
asio::awaitable<error_code> answer_challenge(socket_stream& fs, const std::string& key) {
  auto [re, msg] = co_await fs.async_receive(as_tuple);
  if (auto ec = handshake_receive_error(re, msg)) co_return ec;
  std::string response;
  if (auto ec = handshake::answer(key, view(msg), response)) co_return ec;
  auto [se] = co_await fs.async_send(asio::buffer(response), as_tuple);
  if (se) co_return se;
  auto [re2, reply] = co_await fs.async_receive(as_tuple);
  if (auto ec = handshake_receive_error(re2, reply)) co_return ec;
  if (view(reply) != handshake::welcome) co_return make_error_code(errc::authentication_failed);
  co_return error_code();
}

asio::awaitable<error_code> run_handshake(socket_stream& fs, const std::string& key, handshake::challenge_form form,
                                          bool server) {
  const std::size_t limit = fs.options().max_message_size;
  fs.max_message_size(handshake::max_message_size);
  error_code ec;
  if (server) {
    ec = co_await deliver_challenge(fs, key, form);
    if (!ec) ec = co_await answer_challenge(fs, key);
  } else {
    ec = co_await answer_challenge(fs, key);
    if (!ec) ec = co_await deliver_challenge(fs, key, form);
  }
  fs.max_message_size(limit);
  co_return ec;
}

// Races the handshake against @p deadline; timed_out when the deadline wins.
asio::awaitable<error_code> handshake_until(socket_stream& fs, const std::string& key,
                                            handshake::challenge_form form, bool server,
                                            asio::steady_timer& deadline) {
  auto r = co_await (run_handshake(fs, key, form, server) || deadline.async_wait(as_tuple));
  if (r.index() == 0) co_return std::get<0>(r);
  const auto [timer_ec] = std::get<1>(r);
  co_return timer_ec ? error_code(asio::error::operation_aborted) : detail::errno_code(ETIMEDOUT);
}

} // namespace

struct listener_state : std::enable_shared_from_this<listener_state> {
  listener_state(const asio::any_io_executor& e, const listen_options& o)
      : ex(e), opts(o), acceptor(e), notify(e, asio::steady_timer::time_point::max()) {}

  asio::any_io_executor ex;
  address addr;
  listen_options opts;
  acceptor_type acceptor;
  std::deque<stream_result> ready;
  asio::steady_timer notify;
  std::list<asio::steady_timer*> deadlines;  // of the handshakes in flight
  std::size_t inflight = 0;
  bool looping = false;
  bool closed = false;
  bool own_file = false;
  ::dev_t file_dev = 0;
  ::ino_t file_ino = 0;

  void wake() { notify.cancel(); }

  bool has_room() const noexcept { return ready.size() + inflight < opts.max_pending; }

  void kick() {
    if (looping || closed || !has_room()) return;
    looping = true;
    asio::co_spawn(ex, accept_loop(shared_from_this()), asio::detached);
  }

  void close() noexcept {
    if (closed) return;
    closed = true;
    error_code ignored;
    acceptor.close(ignored);
    for (auto* t : deadlines) t->cancel();
    ready.clear();
    wake();
    if (own_file) {
      struct ::stat sb {};
      const std::string& path = addr.host_or_path();
      if (::lstat(path.c_str(), &sb) == 0 && sb.st_dev == file_dev && sb.st_ino == file_ino) ::unlink(path.c_str());
      own_file = false;
    }
  }

  static asio::awaitable<void> accept_loop(std::shared_ptr<listener_state> st) {
    while (!st->closed && st->has_room()) {
      auto [ec, sock] = co_await st->acceptor.async_accept(as_tuple);
      if (st->closed) break;
      if (ec) {
        if (ec == asio::error::operation_aborted) break;
        if (ec == std::errc::connection_aborted || ec == std::errc::interrupted) continue;
        st->ready.push_back(stream_result{ec, std::nullopt});
        st->wake();
        // Out of descriptors or memory: let the server close some first.
        asio::steady_timer pause(st->ex, std::chrono::milliseconds(50));
        co_await pause.async_wait(as_tuple);
        continue;
      }
      ++st->inflight;
      asio::co_spawn(st->ex, admit(st, std::move(sock)), asio::detached);
    }
    st->looping = false;
  }

  // Checks the peer and runs the handshake, then queues the outcome.
  static asio::awaitable<void> admit(std::shared_ptr<listener_state> st, socket_type sock) {
    stream_result r = co_await authenticate(st, std::move(sock));
    --st->inflight;
    if (!st->closed) {
      st->ready.push_back(std::move(r));
      st->wake();
      st->kick();
    }
  }

  static asio::awaitable<stream_result> authenticate(std::shared_ptr<listener_state> st, socket_type sock) {
    if (!st->opts.allowed_uids.empty() && st->addr.is_unix()) {
      error_code ec;
      const peer_credentials cred = get_peer_credentials(sock.native_handle(), ec);
      const auto& uids = st->opts.allowed_uids;
      if (ec) co_return stream_result{ec, std::nullopt};
      if (std::find(uids.begin(), uids.end(), cred.uid) == uids.end())
        co_return stream_result{make_error_code(errc::peer_not_allowed), std::nullopt};
    }
    set_no_delay(sock.native_handle(), socket_family(sock.native_handle()));
    socket_stream fs(std::move(sock), st->opts.framing);
    if (!st->opts.authkey) co_return stream_result{{}, std::move(fs)};
    asio::steady_timer deadline(st->ex, st->opts.handshake_timeout);
    const auto it = st->deadlines.insert(st->deadlines.end(), &deadline);
    const error_code ec = co_await handshake_until(fs, *st->opts.authkey, st->opts.challenge, true, deadline);
    st->deadlines.erase(it);
    if (ec) co_return stream_result{ec, std::nullopt};
    co_return stream_result{{}, std::move(fs)};
  }

  // Binds and listens; sets addr to the real address.
  error_code open(const address& where) {
    if (where.is_tcp() && !where.is_local() && !opts.authkey && !opts.allow_unauthenticated_remote)
      return make_error_code(errc::unauthenticated_remote_listener);
    ::sockaddr_storage sa{};
    error_code ec;
    const ::socklen_t len = where.to_sockaddr(sa, ec);
    if (ec) return ec;
    const int family = sa.ss_family;
    unique_fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return errno_code(errno);
    const int one = 1;
    if (where.is_tcp()) {
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (family == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    const bool file = where.family() == address::kind::unix_path;
    // Linux gives the socket file the socket inode's mode (minus the umask).
    if (file) ::fchmod(fd.get(), opts.socket_mode);
    for (int attempt = 0;; ++attempt) {
      if (::bind(fd.get(), reinterpret_cast<const ::sockaddr*>(&sa), len) == 0) break;
      const int err = errno;
      if (err != EADDRINUSE || !file || attempt > 0 || !stale_socket_file(where, sa, len)) return errno_code(err);
      ::unlink(where.host_or_path().c_str());
    }
    if (file) {
      const std::string& path = where.host_or_path();
      struct ::stat sb {};
      if (::lstat(path.c_str(), &sb) == 0) {
        own_file = true;
        file_dev = sb.st_dev;
        file_ino = sb.st_ino;
        ::chmod(path.c_str(), opts.socket_mode);
      }
    }
    if (::listen(fd.get(), opts.backlog) != 0) {
      const int err = errno;
      close_file();
      return errno_code(err);
    }
    addr = where;
    if (where.is_tcp()) {
      ::sockaddr_storage bound{};
      ::socklen_t blen = sizeof bound;
      if (::getsockname(fd.get(), reinterpret_cast<::sockaddr*>(&bound), &blen) == 0)
        addr = address::from_sockaddr(bound, blen);
    }
    acceptor.assign(asio::generic::stream_protocol(family, 0), fd.get(), ec);
    if (ec) {
      close_file();
      return ec;
    }
    (void)fd.release();
    return {};
  }

  void close_file() noexcept {
    if (own_file) ::unlink(addr.host_or_path().c_str());
    own_file = false;
  }

  // True when the file at @p where is a socket nobody listens on.
  static bool stale_socket_file(const address& where, const ::sockaddr_storage& sa, ::socklen_t len) {
    struct ::stat sb {};
    if (::lstat(where.host_or_path().c_str(), &sb) != 0 || !S_ISSOCK(sb.st_mode)) return false;
    unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe) return false;
    if (::connect(probe.get(), reinterpret_cast<const ::sockaddr*>(&sa), len) == 0) return false;
    return errno == ECONNREFUSED;
  }
};

asio::any_io_executor listener_executor(const listener_state& st) { return st.ex; }

error_code exception_code(std::exception_ptr e) noexcept {
  try {
    std::rethrow_exception(e);
  } catch (const system_error& se) {
    return se.code();
  } catch (const std::bad_alloc&) {
    return errno_code(ENOMEM);
  } catch (...) {
    return asio::error::operation_aborted;
  }
}

asio::awaitable<stream_result> accept_one(std::shared_ptr<listener_state> st) {
  for (;;) {
    if (!st->ready.empty()) {
      stream_result r = std::move(st->ready.front());
      st->ready.pop_front();
      st->kick();
      co_return r;
    }
    if (st->closed) co_return stream_result{asio::error::operation_aborted, std::nullopt};
    st->kick();
    co_await st->notify.async_wait(as_tuple);
    if ((co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none)
      co_return stream_result{asio::error::operation_aborted, std::nullopt};
  }
}

asio::awaitable<stream_result> connect_one(asio::any_io_executor ex, address addr, connect_options opts) {
  asio::steady_timer deadline(ex, opts.timeout);
  ::sockaddr_storage sa{};
  error_code ec;
  const ::socklen_t len = addr.to_sockaddr(sa, ec);
  if (ec) co_return stream_result{ec, std::nullopt};
  const int family = sa.ss_family;
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) co_return stream_result{errno_code(errno), std::nullopt};
  socket_type sock(ex);
  sock.assign(asio::generic::stream_protocol(family, 0), fd, ec);
  if (ec) {
    ::close(fd);
    co_return stream_result{ec, std::nullopt};
  }
  const auto cancelled = [&]() -> asio::awaitable<bool> {
    co_return (co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none;
  };
  std::chrono::milliseconds retry{1};
  bool waited_for_write = false;
  for (;;) {
    if (::connect(fd, reinterpret_cast<const ::sockaddr*>(&sa), len) == 0) break;
    const int err = errno;
    if (err == EINPROGRESS || err == EINTR) {
      waited_for_write = true;
      auto r = co_await (sock.async_wait(socket_type::wait_write, as_tuple) || deadline.async_wait(as_tuple));
      if (co_await cancelled()) co_return stream_result{asio::error::operation_aborted, std::nullopt};
      if (r.index() == 1) co_return stream_result{errno_code(ETIMEDOUT), std::nullopt};
      int so_error = 0;
      ::socklen_t slen = sizeof so_error;
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &slen) != 0) so_error = errno;
      if (so_error != 0) co_return stream_result{errno_code(so_error), std::nullopt};
      break;
    }
    if (err == EAGAIN && family == AF_UNIX) {
      // The listener's backlog is full (Python's is 1): try again shortly.
      if (std::chrono::steady_clock::now() + retry >= deadline.expiry())
        co_return stream_result{errno_code(ETIMEDOUT), std::nullopt};
      asio::steady_timer pause(ex, retry);
      co_await pause.async_wait(as_tuple);
      if (co_await cancelled()) co_return stream_result{asio::error::operation_aborted, std::nullopt};
      retry = std::min(retry * 2, std::chrono::milliseconds(50));
      continue;
    }
    co_return stream_result{errno_code(err), std::nullopt};
  }
  if (waited_for_write) {
    // The wait for the connection left the socket registered with the
    // reactor for writability too (Asio never takes that back): every ACK
    // that frees send-buffer room would then wake the event loop for
    // nothing. A fresh registration watches for reading only, as an
    // accepted socket's does.
    const int raw = sock.release(ec);
    if (ec) co_return stream_result{ec, std::nullopt};
    sock.assign(asio::generic::stream_protocol(family, 0), raw, ec);
    if (ec) {
      ::close(raw);
      co_return stream_result{ec, std::nullopt};
    }
  }
  set_no_delay(fd, family);
  socket_stream fs(std::move(sock), opts.framing);
  if (opts.authkey) {
    ec = co_await handshake_until(fs, *opts.authkey, opts.challenge, false, deadline);
    if (co_await cancelled()) co_return stream_result{asio::error::operation_aborted, std::nullopt};
    if (ec) co_return stream_result{ec, std::nullopt};
  }
  co_return stream_result{{}, std::move(fs)};
}

} // namespace detail

peer_credentials get_peer_credentials(int fd, error_code& ec) noexcept {
  ::ucred cred{};
  ::socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ec = detail::errno_code(errno);
    return {};
  }
  ec = {};
  return {cred.pid, cred.uid, cred.gid};
}

peer_credentials get_peer_credentials(int fd) {
  error_code ec;
  const peer_credentials c = get_peer_credentials(fd, ec);
  if (ec) detail::throw_error(ec, "coropipe::get_peer_credentials", "getsockopt(SO_PEERCRED)");
  return c;
}

listener::listener(const executor_type& ex, const address& where, const listen_options& options, error_code& ec)
    : st_(std::make_shared<detail::listener_state>(ex, options)) {
  ec = st_->open(where);
  if (ec) st_->close();
}

listener::listener(const executor_type& ex, const address& where, const listen_options& options)
    : st_(std::make_shared<detail::listener_state>(ex, options)) {
  if (const error_code ec = st_->open(where)) {
    st_->close();
    throw system_error(ec, "coropipe::listener: " + where.to_string());
  }
}

listener& listener::operator=(listener&& other) noexcept {
  if (this != &other) {
    close();
    st_ = std::move(other.st_);
  }
  return *this;
}

listener::~listener() { close(); }

listener::executor_type listener::get_executor() const { return st_->ex; }

const address& listener::local_address() const noexcept { return st_->addr; }

void listener::close() noexcept {
  if (st_) st_->close();
}

bool listener::is_open() const noexcept { return st_ && !st_->closed; }

} // namespace coropipe
