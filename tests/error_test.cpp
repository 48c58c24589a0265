// SPDX-License-Identifier: BSL-1.0
#include <coropipe/error.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <ostream>  // doctest prints coropipe::error_code with operator<<
#include <set>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace {

// Every enumerator of coropipe::errc, in declaration order.
const std::vector<coropipe::errc> all_errcs = {
    coropipe::errc::fork_in_threaded_process,
    coropipe::errc::no_child,
    coropipe::errc::message_too_large,
    coropipe::errc::truncated_message,
    coropipe::errc::malformed_frame,
    coropipe::errc::decode_failed,
    coropipe::errc::invalid_argument,
    coropipe::errc::authentication_failed,
    coropipe::errc::peer_not_allowed,
    coropipe::errc::descriptor_passing_failed,
    coropipe::errc::unauthenticated_remote_listener,
    coropipe::errc::nesting_too_deep,
    coropipe::errc::child_failed,
    coropipe::errc::scope_closed,
    coropipe::errc::worker_died,
    coropipe::errc::pool_restart_budget_exhausted,
    coropipe::errc::pool_closed,
    coropipe::errc::remote_connection_failed,
    coropipe::errc::remote_host_unknown,
    coropipe::errc::remote_authentication_failed,
    coropipe::errc::remote_host_key_rejected,
    coropipe::errc::remote_program_missing,
    coropipe::errc::remote_start_failed,
    coropipe::errc::worker_protocol_error,
};

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

} // namespace

TEST_CASE("category is named \"coropipe\" and is a singleton") {
  CHECK(std::string(coropipe::category().name()) == "coropipe");
  CHECK(&coropipe::category() == &coropipe::category());
  CHECK(coropipe::category() != coropipe::system_category());
#if !COROPIPE_ASIO_BOOST
  CHECK(coropipe::category() != std::generic_category());
#endif
}

TEST_CASE("errc values are numbered from 1, so none of them is 'no error'") {
  CHECK(static_cast<int>(coropipe::errc::fork_in_threaded_process) == 1);
  int expected = 1;
  for (coropipe::errc e : all_errcs) {
    CAPTURE(expected);
    CHECK(static_cast<int>(e) == expected);
    const coropipe::error_code ec = coropipe::make_error_code(e);
    CHECK(static_cast<bool>(ec));
    ++expected;
  }
}

TEST_CASE("every errc value has a non-empty, distinct message") {
  std::set<std::string> messages;
  for (coropipe::errc e : all_errcs) {
    const int value = static_cast<int>(e);
    CAPTURE(value);
    const std::string message = coropipe::category().message(value);
    CHECK_FALSE(message.empty());
    CHECK(message.find("unknown") == std::string::npos);
    CHECK(coropipe::make_error_code(e).message() == message);
    messages.insert(message);
  }
  CHECK(messages.size() == all_errcs.size());
}

TEST_CASE("a value outside the enumeration gets an 'unknown' message naming it") {
  const std::string message = coropipe::category().message(999);
  CHECK(message.find("unknown") != std::string::npos);
  CHECK(message.find("999") != std::string::npos);
  CHECK(coropipe::category().message(0).find("0") != std::string::npos);
}

TEST_CASE("make_error_code and implicit conversion give coropipe's category") {
#if COROPIPE_ASIO_BOOST
  static_assert(boost::system::is_error_code_enum<coropipe::errc>::value);
#else
  static_assert(std::is_error_code_enum_v<coropipe::errc>);
#endif

  const coropipe::error_code made = coropipe::make_error_code(coropipe::errc::no_child);
  CHECK(made.category() == coropipe::category());
  CHECK(made.value() == static_cast<int>(coropipe::errc::no_child));

  coropipe::error_code ec = coropipe::errc::no_child;
  CHECK(ec.category() == coropipe::category());
  CHECK(ec.value() == static_cast<int>(coropipe::errc::no_child));
  CHECK(ec == made);
  CHECK(ec == coropipe::errc::no_child);
  CHECK(ec != coropipe::errc::decode_failed);
  CHECK(coropipe::error_code() != coropipe::errc::no_child);

  ec = coropipe::errc::malformed_frame;  // assignment from the enum also works
  CHECK(ec.category() == coropipe::category());
  CHECK(ec == coropipe::errc::malformed_frame);

  // The default condition stays in coropipe's category.
  CHECK(made.default_error_condition().category() == coropipe::category());
  CHECK(made.default_error_condition().value() == made.value());
}

TEST_CASE("coropipe codes never compare equal to std::errc or errno codes with the same number") {
  for (coropipe::errc e : all_errcs) {
    const int value = static_cast<int>(e);
    CAPTURE(value);
    const coropipe::error_code ec = coropipe::make_error_code(e);
    CHECK(ec != std::error_condition(value, std::generic_category()));
    CHECK(ec != coropipe::error_code(value, coropipe::system_category()));
    CHECK(ec != coropipe::error_code(std::error_code(value, std::generic_category())));
    CHECK(ec != std::make_error_code(static_cast<std::errc>(value)));
  }
  // Same name, different meaning: coropipe::errc::invalid_argument is not EINVAL.
  const coropipe::error_code invalid = coropipe::errc::invalid_argument;
  CHECK(invalid != std::errc::invalid_argument);
  CHECK(coropipe::error_code(EINVAL, coropipe::system_category()) != coropipe::errc::invalid_argument);
  // errc::no_child (2) is not ENOENT (2), errc::fork_in_threaded_process (1) not EPERM.
  CHECK(coropipe::error_code(coropipe::errc::no_child) != std::errc::no_such_file_or_directory);
  CHECK(coropipe::error_code(coropipe::errc::fork_in_threaded_process) != std::errc::operation_not_permitted);
}

TEST_CASE("throw_error throws coropipe::system_error with \"function: call\" and the code") {
  const coropipe::error_code ec(EBADF, coropipe::system_category());
  bool thrown = false;
  try {
    coropipe::detail::throw_error(ec, "fn", "call");
  } catch (const coropipe::system_error& e) {
    thrown = true;
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(starts_with(what, "fn: call"));
    CHECK(what.find(ec.message()) != std::string::npos);
    CHECK(e.code() == ec);
    CHECK(e.code().category() == coropipe::system_category());
  }
  CHECK(thrown);
}

TEST_CASE("throw_error with a coropipe code keeps the code and its message") {
  const coropipe::error_code ec = coropipe::errc::truncated_message;
  bool thrown = false;
  try {
    coropipe::detail::throw_error(ec, "coropipe::receive", "read");
  } catch (const coropipe::system_error& e) {
    thrown = true;
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(starts_with(what, "coropipe::receive: read"));
    CHECK(what.find(coropipe::category().message(ec.value())) != std::string::npos);
    CHECK(e.code() == coropipe::errc::truncated_message);
    CHECK(e.code().category() == coropipe::category());
  }
  CHECK(thrown);
}

TEST_CASE("throw_error without a call names only the function") {
  const coropipe::error_code ec(EMFILE, coropipe::system_category());
  SUBCASE("call is nullptr") {
    bool thrown = false;
    try {
      coropipe::detail::throw_error(ec, "fn", nullptr);
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(starts_with(what, "fn"));
      CHECK_FALSE(starts_with(what, "fn: : "));
      CHECK(what.find("(null)") == std::string::npos);
      CHECK(what.find(ec.message()) != std::string::npos);
      CHECK(e.code() == ec);
    }
    CHECK(thrown);
  }
  SUBCASE("call defaulted") {
    bool thrown = false;
    try {
      coropipe::detail::throw_error(ec, "fn");
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(starts_with(what, "fn"));
      CHECK_FALSE(starts_with(what, "fn: : "));
      CHECK(e.code() == ec);
    }
    CHECK(thrown);
  }
  SUBCASE("call is empty") {
    bool thrown = false;
    try {
      coropipe::detail::throw_error(ec, "fn", "");
    } catch (const coropipe::system_error& e) {
      thrown = true;
      const std::string what = e.what();
      CAPTURE(what);
      CHECK(starts_with(what, "fn"));
      CHECK_FALSE(starts_with(what, "fn: : "));
      CHECK(e.code() == ec);
    }
    CHECK(thrown);
  }
}

TEST_CASE("throw_error is catchable as std::runtime_error and std::exception") {
  CHECK_THROWS_AS(coropipe::detail::throw_error(coropipe::errc::invalid_argument, "fn", "execve"),
                  std::runtime_error);
  CHECK_THROWS_WITH_AS(coropipe::detail::throw_error(coropipe::errc::invalid_argument, "fn", "execve"),
                       doctest::Contains("fn: execve"), std::exception);
}
