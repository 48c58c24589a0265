// SPDX-License-Identifier: BSL-1.0
#include <coropipe/listener.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/address.hpp>
#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>
#include <coropipe/handshake.hpp>

#include <coropipe/asio.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <cstring>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using namespace coropipe::compat::awaitable_operators;
using asio::awaitable;
using asio::use_awaitable;
using coropipe::address;
using coropipe::errc;
using coropipe::error_code;
using coropipe::listen_options;
using coropipe::connect_options;
using coropipe::socket_stream;
namespace handshake = coropipe::handshake;

namespace {

constexpr auto as_tuple = coropipe::compat::as_tuple(use_awaitable);

struct python {
  std::string name;
  std::string path;
};

std::vector<python> pythons() {
  std::vector<python> all;
  for (const python& p : {python{"3.11", COROPIPE_PYTHON311}, python{"3.12", COROPIPE_PYTHON312},
                          python{"3.13", COROPIPE_PYTHON313}}) {
    if (p.path.empty()) {
      MESSAGE("Python " << p.name << " not found at configure time: its interop cases are SKIPPED");
    } else {
      all.push_back(p);
    }
  }
  return all;
}

const std::string mp_peer = COROPIPE_MP_PEER;

std::string unique_name(const char* what) {
  static std::atomic<int> counter{0};
  return "coropipe-test-" + std::to_string(::getpid()) + "-" + what + "-" + std::to_string(counter++);
}

std::string temp_path(const char* what) { return "/tmp/" + unique_name(what) + ".sock"; }

// The four address forms the tests listen on (port 0: the listener picks).
std::vector<address> test_addresses() {
  return {address::unix_path(temp_path("path")), address::abstract(unique_name("abstract")),
          address::parse("127.0.0.1:0"), address::parse("[::1]:0")};
}

// The forms Python's multiprocessing.connection can use: a tuple address is
// always AF_INET there (address_type()), so no IPv6.
std::vector<address> python_addresses() {
  auto all = test_addresses();
  all.pop_back();
  return all;
}

std::string hex(const std::string& s) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string key_arg(const std::optional<std::string>& key) { return key ? hex(*key) : std::string("-"); }

std::string payload(std::size_t n, std::size_t seed) {
  std::string block(256, '\0');
  for (std::size_t i = 0; i < 256; ++i) block[i] = static_cast<char>((i * 7 + seed) & 0xff);
  std::string p;
  p.reserve(n);
  while (p.size() < n) p.append(block, 0, std::min<std::size_t>(256, n - p.size()));
  return p;
}

std::string as_string(coropipe::message_view v) { return {reinterpret_cast<const char*>(v.data()), v.size()}; }

// Echoes every message back until end of stream.
awaitable<void> echo(socket_stream s) {
  for (;;) {
    auto [ec, msg] = co_await s.async_receive(as_tuple);
    if (ec || !msg) break;
    auto [se] = co_await s.async_send(asio::buffer(msg->data(), msg->size()), as_tuple);
    if (se) break;
  }
  co_await s.async_close(as_tuple);
}

// A server for the tests: accepts until @p outcomes connections have
// succeeded or failed, echoing on each accepted one (concurrently); returns
// the errors of the failed ones once every echo session has ended.
struct test_server {
  coropipe::listener& l;
  std::vector<error_code> failures;
  int accepted = 0;

  awaitable<void> run(int outcomes) {
    auto ex = co_await asio::this_coro::executor;
    int running = 0;
    std::exception_ptr error;
    for (int i = 0; i < outcomes; ++i) {
      auto [ec, s] = co_await l.async_accept(as_tuple);
      if (ec) {
        failures.push_back(ec);
        continue;
      }
      ++accepted;
      ++running;
      asio::co_spawn(ex, echo(std::move(s)), [&](std::exception_ptr e) {
        if (e) error = e;
        --running;
      });
    }
    asio::steady_timer t(ex);
    while (running > 0) {
      t.expires_after(2ms);
      co_await t.async_wait(as_tuple);
    }
    if (error) std::rethrow_exception(error);
  }
};

// One round trip of each payload over a connected stream.
awaitable<void> round_trips(socket_stream& s, const std::vector<std::size_t>& sizes) {
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::string p = payload(sizes[i], i);
    co_await s.async_send(asio::buffer(p), use_awaitable);
    auto msg = co_await s.async_receive(use_awaitable);
    REQUIRE(msg);
    CHECK(msg->size() == p.size());
    CHECK(as_string(*msg) == p);
  }
}

std::vector<std::size_t> parse_sizes(const std::string& csv) {
  std::vector<std::size_t> out;
  std::istringstream is(csv);
  for (std::string item; std::getline(is, item, ',');)
    if (!item.empty()) out.push_back(std::stoul(item));
  return out;
}

// Connects, sends each size (comma-separated) and checks its echo, closes.
// (Key and form, not a connect_options: g++ 12 miscompiles a designated
// initializer passed by value to a coroutine.)
awaitable<error_code> connect_and_echo(address where, std::optional<std::string> key, std::string csv,
                                       handshake::challenge_form form = handshake::challenge_form::modern) {
  const auto sizes = parse_sizes(csv);
  connect_options opts;
  opts.authkey = key;
  opts.challenge = form;
  auto ex = co_await asio::this_coro::executor;
  auto [ec, s] = co_await coropipe::async_connect(ex, where, opts, as_tuple);
  if (ec) co_return ec;
  co_await round_trips(s, sizes);
  co_await s.async_close(use_awaitable);
  co_return error_code();
}

bool exists(const std::string& path) {
  struct ::stat sb {};
  return ::lstat(path.c_str(), &sb) == 0;
}

} // namespace

// --- Addresses -------------------------------------------------------------------------

TEST_CASE("address: parses and prints every form") {
  CHECK(address::parse("/run/app.sock").family() == address::kind::unix_path);
  CHECK(address::parse("/run/app.sock").to_string() == "/run/app.sock");
  CHECK(address::parse("relative.sock").family() == address::kind::unix_path);
  CHECK(address::parse("@name").family() == address::kind::abstract);
  CHECK(address::parse("@name").host_or_path() == "name");
  CHECK(address::parse(std::string("\0name", 5)) == address::parse("@name"));
  CHECK(address::parse("@name").to_string() == "@name");
  CHECK(address::parse("@name").python_literal() == "'\\0name'");
  CHECK(address::parse("127.0.0.1:8000").family() == address::kind::tcp_v4);
  CHECK(address::parse("127.0.0.1:8000").port() == 8000);
  CHECK(address::parse("localhost:80").to_string() == "127.0.0.1:80");
  CHECK(address::parse("127.0.0.1:8000").python_literal() == "('127.0.0.1', 8000)");
  CHECK(address::parse("[::1]:9").family() == address::kind::tcp_v6);
  CHECK(address::parse("[::1]:9").to_string() == "[::1]:9");
  CHECK(address::parse("[0:0::1]:9").to_string() == "[::1]:9");
  CHECK(address::parse("127.0.0.1:0").is_local());
  CHECK_FALSE(address::parse("0.0.0.0:0").is_local());
  CHECK_FALSE(address::parse("[::]:0").is_local());
  CHECK(address::tcp("::1", 5).to_string() == "[::1]:5");
  for (const char* bad : {"", "@", "[::1]", "[::1]:x", "[nothost]:1", "host.example:80", "1.2.3.4:65536"}) {
    INFO(std::string(bad));
    error_code ec;
    (void)address::parse(bad, ec);
    CHECK(ec == errc::invalid_argument);
  }
  CHECK_THROWS_AS((void)address::parse("[::1]"), coropipe::system_error);
}

// --- Handshake messages ----------------------------------------------------------------

TEST_CASE("handshake: both generations answer and verify each other") {
  using handshake::challenge_form;
  const std::string key = "secret";
  for (auto form : {challenge_form::modern, challenge_form::legacy}) {
    const std::string c = handshake::make_challenge(form);
    CHECK(c.rfind("#CHALLENGE#", 0) == 0);
    CHECK(c.size() == (form == challenge_form::modern ? 11u + 8 + 40 : 11u + 20));
    std::string response;
    REQUIRE_FALSE(handshake::answer(key, c, response));
    CHECK(response.size() == (form == challenge_form::modern ? 8u + 32 : 16u));
    CHECK_FALSE(handshake::verify(key, c, response));
    CHECK(handshake::verify("wrong", c, response) == errc::authentication_failed);
    std::string wrong;
    REQUIRE_FALSE(handshake::answer("wrong", c, wrong));
    CHECK(handshake::verify(key, c, wrong) == errc::authentication_failed);
  }
  // A modern verifier accepts a legacy (raw HMAC-MD5) answer to its modern
  // challenge, as Python 3.12 does for 3.11 clients.
  const std::string c = handshake::make_challenge(challenge_form::modern);
  CHECK_FALSE(handshake::verify(key, c, handshake::hmac("md5", key, c.substr(11))));
  // Another digest may be named in the answer.
  CHECK_FALSE(handshake::verify(key, c, "{sha384}" + handshake::hmac("sha384", key, c.substr(11))));
  CHECK(handshake::verify(key, c, "{sha1}" + handshake::hmac("sha256", key, c.substr(11))) ==
        errc::authentication_failed);
  std::string r;
  CHECK(handshake::answer(key, "#CHALLENGE#short", r) == errc::authentication_failed);
  CHECK(handshake::answer(key, "#WELCOME#", r) == errc::authentication_failed);
  CHECK(handshake::answer(key, "#CHALLENGE#{nope}0123456789012345678901234", r) == errc::authentication_failed);
  CHECK(handshake::hmac("sha3_256", "k", "data").size() == 32);
  CHECK(handshake::hmac("unknown", "k", "data").empty());
}

TEST_CASE("handshake: the same bytes Python's hmac computes") {
  // Python: hmac.new(b'key', b'The quick brown fox jumps over the lazy dog', 'md5').hexdigest()
  CHECK(hex(handshake::hmac("md5", "key", "The quick brown fox jumps over the lazy dog")) ==
        "80070713463e7749b90c2dc24911e275");
  CHECK(hex(handshake::hmac("sha256", "key", "The quick brown fox jumps over the lazy dog")) ==
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
  CHECK(hex(handshake::hmac("md5", "", "")) == "74e6f7298a9c2d168935f58c001bad88");
}

// --- coropipe to coropipe --------------------------------------------------------------

TEST_CASE("listener: coropipe clients on every address form, with and without authkey") {
  using handshake::challenge_form;
  for (const std::optional<std::string>& key : {std::optional<std::string>(), std::optional<std::string>("k3y")}) {
    for (const address& where : test_addresses()) {
      for (auto server_form : {challenge_form::modern, challenge_form::legacy}) {
        for (auto client_form : {challenge_form::modern, challenge_form::legacy}) {
          INFO(where.to_string() << (key ? " with authkey" : " without authkey"));
          asio::io_context io;
          coropipe::listener l(io, where, {.authkey = key, .challenge = server_form});
          const address bound = l.local_address();
          if (where.is_tcp()) CHECK(bound.port() != 0);
          test_server server{l, {}};
          error_code client_ec;
          coropipe_test::run_all(io, server.run(1), [&]() -> awaitable<void> {
            client_ec = co_await connect_and_echo(bound, key, "0,1,5,300", client_form);
          }());
          CHECK_FALSE(client_ec);
          CHECK(server.failures.empty());
          if (where.family() == address::kind::unix_path) {
            struct ::stat sb {};
            REQUIRE(::lstat(where.host_or_path().c_str(), &sb) == 0);
            CHECK((sb.st_mode & 0777) == 0600);
            CHECK(S_ISSOCK(sb.st_mode));
          }
          l.close();
          if (where.family() == address::kind::unix_path) CHECK_FALSE(exists(where.host_or_path()));
        }
      }
    }
  }
}

TEST_CASE("listener: a wrong key fails on both sides, and the listener keeps serving") {
  asio::io_context io;
  coropipe::listener l(io, address::parse("127.0.0.1:0"), {.authkey = "right"});
  test_server server{l, {}};
  error_code wrong_ec, right_ec;
  coropipe_test::run_all(io, server.run(2), [&]() -> awaitable<void> {
    wrong_ec = co_await connect_and_echo(l.local_address(), "wrong", "3");
    right_ec = co_await connect_and_echo(l.local_address(), "right", "3");
  }());
  CHECK(wrong_ec == errc::authentication_failed);
  CHECK_FALSE(right_ec);
  REQUIRE(server.failures.size() == 1);
  CHECK(server.failures[0] == errc::authentication_failed);
  CHECK(server.accepted == 1);
}

TEST_CASE("listener: a client that sends nothing times out; others are served meanwhile") {
  asio::io_context io;
  coropipe::listener l(io, address::unix_path(temp_path("silent")),
                       {.authkey = "k", .handshake_timeout = 1s});
  test_server server{l, {}};
  coropipe_test::run_all(io, server.run(3), [&]() -> awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    // A silent raw connection, held open past the timeout.
    coropipe::socket_type silent(ex);
    silent.open(asio::generic::stream_protocol(AF_UNIX, 0));
    ::sockaddr_storage sa{};
    error_code ec;
    const auto len = l.local_address().to_sockaddr(sa, ec);
    REQUIRE(::connect(silent.native_handle(), reinterpret_cast<::sockaddr*>(&sa), len) == 0);
    // Clients sending either challenge form are served while it stalls.
    CHECK_FALSE(co_await connect_and_echo(l.local_address(), "k", "10"));
    CHECK_FALSE(co_await connect_and_echo(l.local_address(), "k", "10", handshake::challenge_form::legacy));
    asio::steady_timer t(ex, 1500ms);
    co_await t.async_wait(use_awaitable);
  }());
  REQUIRE(server.failures.size() == 1);
  CHECK(server.failures[0] == std::errc::timed_out);
}

TEST_CASE("listener: garbage, oversized and early-closed handshakes are refused with a clear error") {
  struct garbage_case {
    const char* what;
    std::string bytes;
    error_code expected;
  };
  auto frame = [](const std::string& payload) {
    std::string f(4, '\0');
    const auto n = static_cast<std::uint32_t>(payload.size());
    f[0] = static_cast<char>(n >> 24);
    f[1] = static_cast<char>(n >> 16);
    f[2] = static_cast<char>(n >> 8);
    f[3] = static_cast<char>(n);
    return f + payload;
  };
  const std::vector<garbage_case> cases = {
      {"a wrong answer", frame("0123456789abcdef"), make_error_code(errc::authentication_failed)},
      {"an answer naming no digest", frame("{sha256"), make_error_code(errc::authentication_failed)},
      {"an oversized answer", frame(std::string(1000, 'x')), make_error_code(errc::message_too_large)},
      {"a malformed frame", std::string("\xff\xff\xff\xf0", 4), make_error_code(errc::malformed_frame)},
      {"closed after half a frame", std::string("\0\0", 2), make_error_code(errc::truncated_message)},
      {"closed at once", std::string(), make_error_code(errc::authentication_failed)},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    asio::io_context io;
    coropipe::listener l(io, address::parse("[::1]:0"), {.authkey = "k"});
    test_server server{l, {}};
    coropipe_test::run_all(io, server.run(2), [&]() -> awaitable<void> {
      auto ex = co_await asio::this_coro::executor;
      {
        coropipe::socket_type raw(ex);
        raw.open(asio::generic::stream_protocol(AF_INET6, 0));
        ::sockaddr_storage sa{};
        error_code ec;
        const auto len = l.local_address().to_sockaddr(sa, ec);
        REQUIRE(::connect(raw.native_handle(), reinterpret_cast<::sockaddr*>(&sa), len) == 0);
        if (!c.bytes.empty()) co_await asio::async_write(raw, asio::buffer(c.bytes), use_awaitable);
        ::shutdown(raw.native_handle(), SHUT_WR);
        // Whatever the server says, then its close.
        char buf[512];
        for (;;) {
          auto [re, n] = co_await raw.async_read_some(asio::buffer(buf), as_tuple);
          if (re) break;
        }
      }
      CHECK_FALSE(co_await connect_and_echo(l.local_address(), "k", "1"));
    }());
    REQUIRE(server.failures.size() == 1);
    CHECK(server.failures[0] == c.expected);
    CHECK(server.accepted == 1);
  }
}

TEST_CASE("listener: 100 concurrent clients") {
  asio::io_context io;
  coropipe::listener l(io, address::unix_path(temp_path("many")), {.authkey = "k"});
  test_server server{l, {}};
  std::vector<awaitable<void>> all;
  all.push_back(server.run(100));
  int ok = 0;
  for (int i = 0; i < 100; ++i) {
    all.push_back([](const address& a, int& count, int n) -> awaitable<void> {
      const auto ec = co_await connect_and_echo(a, "k", std::to_string(n) + ",100,70000");
      CHECK_FALSE(ec);
      if (!ec) ++count;
    }(l.local_address(), ok, i));
  }
  coropipe_test::run_all(io, std::move(all));
  CHECK(ok == 100);
  CHECK(server.accepted == 100);
}

TEST_CASE("listener: socket files: stale replaced, live kept, removed on close, refused without a key remotely") {
  asio::io_context io;
  const std::string path = temp_path("stale");
  {
    // A stale socket file: bound, never listening, closed.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ::sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strcpy(un.sun_path, path.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<::sockaddr*>(&un), sizeof un) == 0);
    ::close(fd);
  }
  REQUIRE(exists(path));
  coropipe::listener l(io, address::unix_path(path));
  CHECK(l.is_open());
  // A live one is not replaced.
  error_code ec;
  coropipe::listener second(io.get_executor(), address::unix_path(path), {}, ec);
  CHECK(ec == std::errc::address_in_use);
  CHECK(exists(path));
  second.close();
  CHECK(exists(path));
  l.close();
  CHECK_FALSE(exists(path));
  // A regular file is never replaced.
  { std::ofstream(path) << "data"; }
  coropipe::listener third(io.get_executor(), address::unix_path(path), {}, ec);
  CHECK(ec == std::errc::address_in_use);
  CHECK(exists(path));
  ::unlink(path.c_str());
  // Non-loopback TCP without a key: refused unless opted out.
  coropipe::listener remote(io.get_executor(), address::parse("0.0.0.0:0"), {}, ec);
  CHECK(ec == errc::unauthenticated_remote_listener);
  coropipe::listener opted(io.get_executor(), address::parse("0.0.0.0:0"), {.allow_unauthenticated_remote = true}, ec);
  CHECK_FALSE(ec);
  coropipe::listener keyed(io.get_executor(), address::parse("0.0.0.0:0"), {.authkey = "k"}, ec);
  CHECK_FALSE(ec);
  CHECK_THROWS_AS(coropipe::listener(io, address::parse("0.0.0.0:0")), coropipe::system_error);
}

TEST_CASE("listener: peer credentials, and refusal by uid") {
  asio::io_context io;
  coropipe::listener l(io, address::abstract(unique_name("cred")));
  coropipe_test::run(io, [&]() -> awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    auto [cec, client] = co_await coropipe::async_connect(ex, l.local_address(), {}, as_tuple);
    REQUIRE_FALSE(cec);
    auto server = co_await l.async_accept(use_awaitable);
    const auto cred = coropipe::get_peer_credentials(server.next_layer().native_handle());
    CHECK(cred.pid == ::getpid());
    CHECK(cred.uid == ::getuid());
    CHECK(cred.gid == ::getgid());
  }());
  error_code ec;
  (void)coropipe::get_peer_credentials(-1, ec);
  CHECK(ec == std::errc::bad_file_descriptor);

  coropipe::listener strict(io, address::abstract(unique_name("strict")), {.allowed_uids = {::getuid() + 1}});
  test_server server{strict, {}};
  coropipe_test::run_all(io, server.run(1), [&]() -> awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    auto [cec, s] = co_await coropipe::async_connect(ex, strict.local_address(), {}, as_tuple);
    REQUIRE_FALSE(cec);
    auto [re, msg] = co_await s.async_receive(as_tuple);
    CHECK((re || !msg));  // closed without a message
  }());
  REQUIRE(server.failures.size() == 1);
  CHECK(server.failures[0] == errc::peer_not_allowed);
}

TEST_CASE("connect: refused, missing file, timeout against a silent server, cancellation") {
  asio::io_context io;
  coropipe_test::run(io, [&]() -> awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    auto [e1, s1] = co_await coropipe::async_connect(ex, address::unix_path(temp_path("none")), {}, as_tuple);
    CHECK(e1 == std::errc::no_such_file_or_directory);
    // A TCP port nobody listens on: bind one, do not listen.
    coropipe::listener probe(ex, address::parse("127.0.0.1:0"));
    const address gone = probe.local_address();
    probe.close();
    auto [e2, s2] = co_await coropipe::async_connect(ex, gone, {}, as_tuple);
    CHECK(e2 == std::errc::connection_refused);
    // A listener that never answers the handshake (nobody accepts on a raw socket).
    const int raw = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ::sockaddr_storage sa{};
    error_code ec;
    const auto lo = address::parse("127.0.0.1:0");
    auto len = lo.to_sockaddr(sa, ec);
    REQUIRE(::bind(raw, reinterpret_cast<::sockaddr*>(&sa), len) == 0);
    REQUIRE(::listen(raw, 4) == 0);
    ::socklen_t blen = sizeof sa;
    ::getsockname(raw, reinterpret_cast<::sockaddr*>(&sa), &blen);
    const address silent = address::from_sockaddr(sa, blen);
    connect_options quick;
    quick.authkey = "k";
    quick.timeout = 200ms;
    auto [e3, s3] = co_await coropipe::async_connect(ex, silent, quick, as_tuple);
    CHECK(e3 == std::errc::timed_out);
    // Cancelled by a shorter timer.
    asio::steady_timer t(ex, 50ms);
    connect_options slow;
    slow.authkey = "k";
    slow.timeout = 5s;
    auto r = co_await (coropipe::async_connect(ex, silent, slow, as_tuple) ||
                       t.async_wait(use_awaitable));
    CHECK(r.index() == 1);
    ::close(raw);
  }());
}

// --- Python interop ----------------------------------------------------------------------

TEST_CASE("python: Client to a coropipe listener, every address form, with and without authkey") {
  for (const python& py : pythons()) {
    for (const std::optional<std::string>& key : {std::optional<std::string>(), std::optional<std::string>("s3cret")}) {
      for (const address& where : python_addresses()) {
        for (auto form : {handshake::challenge_form::modern, handshake::challenge_form::legacy}) {
          INFO("Python " << py.name << " Client to " << where.to_string() << (key ? " with authkey" : " without"));
          asio::io_context io;
          coropipe::listener l(io, where, {.authkey = key, .challenge = form});
          auto p = coropipe_test::start_program(
              {py.path, mp_peer, "client", l.local_address().python_literal(), key_arg(key), "0,1,100,70000"});
          test_server server{l, {}};
          coropipe_test::run(io, server.run(1));
          const auto r = coropipe_test::finish_program(p);
          INFO("stderr: " << r.err);
          CHECK(r.out == "ok 4\n");
          CHECK(coropipe::exit_status::from_wait_status(r.wait_status).success());
          CHECK(server.failures.empty());
        }
      }
    }
  }
}

TEST_CASE("python: coropipe client to a Python Listener, every address form, with and without authkey") {
  for (const python& py : pythons()) {
    for (const std::optional<std::string>& key : {std::optional<std::string>(), std::optional<std::string>("s3cret")}) {
      for (const address& where : python_addresses()) {
        for (auto form : {handshake::challenge_form::modern, handshake::challenge_form::legacy}) {
          INFO("coropipe client to Python " << py.name << " Listener on " << where.to_string()
                                            << (key ? " with authkey" : " without"));
          auto p = coropipe_test::start_program({py.path, mp_peer, "listener", where.python_literal(), key_arg(key)});
          const std::string line = coropipe_test::read_line(p.out);
          const address bound = address::parse(line.substr(0, line.find('\n')));
          asio::io_context io;
          error_code ec;
          coropipe_test::run(io, [&]() -> awaitable<void> {
            ec = co_await connect_and_echo(bound, key, "0,1,100,70000", form);
          }());
          CHECK_FALSE(ec);
          const auto r = coropipe_test::finish_program(p);
          INFO("stderr: " << r.err);
          CHECK(r.out == "done 4\n");
        }
      }
    }
  }
}

TEST_CASE("python: a wrong key fails on either side, as AuthenticationError and errc::authentication_failed") {
  for (const python& py : pythons()) {
    INFO("Python " << py.name);
    {
      asio::io_context io;
      coropipe::listener l(io, address::parse("127.0.0.1:0"), {.authkey = "right"});
      auto p = coropipe_test::start_program(
          {py.path, mp_peer, "client", l.local_address().python_literal(), hex("wrong"), "1"});
      test_server server{l, {}};
      coropipe_test::run(io, server.run(1));
      const auto r = coropipe_test::finish_program(p);
      CHECK(coropipe::exit_status::from_wait_status(r.wait_status).exit_code() == 3);
      CHECK(r.err.find("auth-failed") != std::string::npos);
      REQUIRE(server.failures.size() == 1);
      CHECK(server.failures[0] == errc::authentication_failed);
    }
    {
      const address where = address::abstract(unique_name("wrong"));
      auto p = coropipe_test::start_program({py.path, mp_peer, "listener", where.python_literal(), hex("right")});
      (void)coropipe_test::read_line(p.out);
      asio::io_context io;
      error_code ec;
      coropipe_test::run(io, [&]() -> awaitable<void> {
        ec = co_await connect_and_echo(where, "wrong", "1");
      }());
      CHECK(ec == errc::authentication_failed);
      const auto r = coropipe_test::finish_program(p);
      CHECK(coropipe::exit_status::from_wait_status(r.wait_status).exit_code() == 3);
    }
  }
}

TEST_CASE("python: the empty authkey b'' authenticates (no bpo-43952 hang)") {
  for (const python& py : pythons()) {
    INFO("Python " << py.name);
    asio::io_context io;
    coropipe::listener l(io, address::parse("127.0.0.1:0"), {.authkey = std::string()});
    auto p = coropipe_test::start_program({py.path, mp_peer, "client", l.local_address().python_literal(), "", "5"});
    test_server server{l, {}};
    coropipe_test::run(io, server.run(1));
    const auto r = coropipe_test::finish_program(p);
    CHECK(r.out == "ok 1\n");
  }
}

TEST_CASE("python: messages of 0 B to 64 MiB both ways") {
  const auto all = pythons();
  REQUIRE_FALSE(all.empty());
  const python& py = all.back();
  const std::vector<std::size_t> sizes = {0, 1, 255, 256, 257, 65535, 65536, 1 << 20, std::size_t{64} << 20};
  std::string list;
  for (auto n : sizes) list += std::to_string(n) + ",";
  {
    asio::io_context io;
    coropipe::listener l(io, address::unix_path(temp_path("big")), {.authkey = "k"});
    auto p = coropipe_test::start_program({py.path, mp_peer, "client", l.local_address().python_literal(), hex("k"), list});
    test_server server{l, {}};
    coropipe_test::run(io, server.run(1));
    const auto r = coropipe_test::finish_program(p);
    INFO("stderr: " << r.err);
    CHECK(r.out == "ok " + std::to_string(sizes.size()) + "\n");
  }
  {
    auto p = coropipe_test::start_program({py.path, mp_peer, "listener", "('127.0.0.1', 0)", hex("k")});
    const std::string line = coropipe_test::read_line(p.out);
    const address bound = address::parse(line.substr(0, line.find('\n')));
    asio::io_context io;
    error_code ec;
    coropipe_test::run(io, [&]() -> awaitable<void> { ec = co_await connect_and_echo(bound, "k", list); }());
    CHECK_FALSE(ec);
    const auto r = coropipe_test::finish_program(p);
    CHECK(r.out == "done " + std::to_string(sizes.size()) + "\n");
  }
}

TEST_CASE("python: 100 Python clients open at once on one coropipe listener") {
  const auto all = pythons();
  REQUIRE_FALSE(all.empty());
  asio::io_context io;
  coropipe::listener l(io, address::parse("127.0.0.1:0"), {.authkey = "k"});
  auto p = coropipe_test::start_program({all.front().path, mp_peer, "clients", l.local_address().python_literal(), hex("k"), "100"});
  test_server server{l, {}};
  coropipe_test::run(io, server.run(100));
  const auto r = coropipe_test::finish_program(p);
  INFO("stderr: " << r.err);
  CHECK(r.out == "ok 100\n");
  CHECK(server.accepted == 100);
}
