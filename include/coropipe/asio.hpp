// SPDX-License-Identifier: BSL-1.0
/// @file
/// The one place that knows which Asio coropipe is built on.
///
/// coropipe is written once and compiled for two flavours of Asio:
///
/// | flavour     | selected by                 | namespace      | error_code                  |
/// |-------------|-----------------------------|----------------|-----------------------------|
/// | standalone  | (default)                   | `::asio`       | `std::error_code`           |
/// | Boost.Asio  | `COROPIPE_ASIO_BOOST` == 1  | `boost::asio`  | `boost::system::error_code` |
///
/// The CMake targets set the macro for you: `coropipe::coropipe` is the
/// standalone flavour, `coropipe::coropipe_boost` the Boost.Asio one (its
/// interface defines `COROPIPE_ASIO_BOOST=1`). Do not mix the two in one
/// translation unit.
///
/// Inside namespace `coropipe`, `asio::` names the flavour's Asio, and the
/// names below stand for what moved between Asio releases. No other file of
/// coropipe spells a flavour- or version-specific name.
///
/// - `coropipe::error_code`, `coropipe::system_error`, `coropipe::system_category()`:
///   the flavour's error code (the first argument of every completion
///   signature), the exception thrown with it, and the category of errno values. A Boost flavour error_code compares equal to
///   `std::errc` and `coropipe::errc` values, as Boost.System allows.
/// - `coropipe::compat::as_tuple`, `compat::as_tuple_t`, `compat::deferred`:
///   in `asio::experimental` up to Asio 1.23, in `asio` from 1.24 (Boost 1.80)
///   on; the experimental headers are gone from newer releases.
/// - `coropipe::compat::awaitable_operators`, `compat::make_parallel_group`,
///   `compat::wait_for_one`, `compat::wait_for_all`: still experimental.
///
/// Supported: standalone Asio 1.22 (Debian 12) to 1.38, Boost.Asio from
/// Boost 1.81 (Asio 1.26). Older releases are refused here and at configure time.
#pragma once

// COROPIPE_ASIO_INCLUDE(file): the flavour's header, e.g.
// `#include COROPIPE_ASIO_INCLUDE(steady_timer.hpp)` includes
// <asio/steady_timer.hpp> or <boost/asio/steady_timer.hpp>.
#define COROPIPE_ASIO_STRINGIZE_(x) #x
#define COROPIPE_ASIO_STRINGIZE(x) COROPIPE_ASIO_STRINGIZE_(x)
#if defined(COROPIPE_ASIO_BOOST) && COROPIPE_ASIO_BOOST
#define COROPIPE_ASIO_INCLUDE(file) COROPIPE_ASIO_STRINGIZE(boost/asio/file)
#include <boost/asio/version.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>
#include <boost/version.hpp>
#if BOOST_VERSION < 108100
#error "coropipe needs Boost 1.81 or newer for its Boost.Asio flavour (coropipe::coropipe_boost)"
#endif
/// The flavour's Asio version, as ASIO_VERSION spells it (1.26.0 is 102600).
#define COROPIPE_ASIO_VERSION BOOST_ASIO_VERSION
#else
#undef COROPIPE_ASIO_BOOST
#define COROPIPE_ASIO_BOOST 0
#define COROPIPE_ASIO_INCLUDE(file) COROPIPE_ASIO_STRINGIZE(asio/file)
#include <asio/version.hpp>
#define COROPIPE_ASIO_VERSION ASIO_VERSION
#endif

#if COROPIPE_ASIO_VERSION < 102200
#error "coropipe needs Asio 1.22 or newer"
#endif

#include COROPIPE_ASIO_INCLUDE(any_io_executor.hpp)
#include COROPIPE_ASIO_INCLUDE(associated_allocator.hpp)
#include COROPIPE_ASIO_INCLUDE(associated_cancellation_slot.hpp)
#include COROPIPE_ASIO_INCLUDE(associated_executor.hpp)
#include COROPIPE_ASIO_INCLUDE(async_result.hpp)
#include COROPIPE_ASIO_INCLUDE(awaitable.hpp)
#include COROPIPE_ASIO_INCLUDE(bind_cancellation_slot.hpp)
#include COROPIPE_ASIO_INCLUDE(buffer.hpp)
#include COROPIPE_ASIO_INCLUDE(cancellation_signal.hpp)
#include COROPIPE_ASIO_INCLUDE(cancellation_state.hpp)
#include COROPIPE_ASIO_INCLUDE(cancellation_type.hpp)
#include COROPIPE_ASIO_INCLUDE(co_spawn.hpp)
#include COROPIPE_ASIO_INCLUDE(compose.hpp)
#include COROPIPE_ASIO_INCLUDE(detached.hpp)
#include COROPIPE_ASIO_INCLUDE(dispatch.hpp)
#include COROPIPE_ASIO_INCLUDE(error.hpp)
#include COROPIPE_ASIO_INCLUDE(execution_context.hpp)
#include COROPIPE_ASIO_INCLUDE(executor_work_guard.hpp)
#include COROPIPE_ASIO_INCLUDE(experimental/awaitable_operators.hpp)
#include COROPIPE_ASIO_INCLUDE(experimental/parallel_group.hpp)
#include COROPIPE_ASIO_INCLUDE(io_context.hpp)
#include COROPIPE_ASIO_INCLUDE(post.hpp)
#include COROPIPE_ASIO_INCLUDE(posix/stream_descriptor.hpp)
#include COROPIPE_ASIO_INCLUDE(read.hpp)
#include COROPIPE_ASIO_INCLUDE(recycling_allocator.hpp)
#include COROPIPE_ASIO_INCLUDE(redirect_error.hpp)
#include COROPIPE_ASIO_INCLUDE(steady_timer.hpp)
#include COROPIPE_ASIO_INCLUDE(this_coro.hpp)
#include COROPIPE_ASIO_INCLUDE(use_awaitable.hpp)
#include COROPIPE_ASIO_INCLUDE(write.hpp)
#if COROPIPE_ASIO_VERSION >= 103600
#include COROPIPE_ASIO_INCLUDE(config.hpp)
#endif
#if COROPIPE_ASIO_VERSION >= 102400
#include COROPIPE_ASIO_INCLUDE(as_tuple.hpp)
#include COROPIPE_ASIO_INCLUDE(deferred.hpp)
#else
#include COROPIPE_ASIO_INCLUDE(experimental/as_tuple.hpp)
#include COROPIPE_ASIO_INCLUDE(experimental/deferred.hpp)
#endif

#include <system_error>

namespace coropipe {

#if COROPIPE_ASIO_BOOST
namespace asio = ::boost::asio;
/// The error code of coropipe's completion signatures and `error_code&` overloads.
using error_code = ::boost::system::error_code;
/// What coropipe throws with an error_code (Boost.Asio's use_awaitable throws it too).
using system_error = ::boost::system::system_error;
#else
namespace asio = ::asio;
/// The error code of coropipe's completion signatures and `error_code&` overloads.
using error_code = std::error_code;
/// What coropipe throws with an error_code (Asio's use_awaitable throws it too).
using system_error = std::system_error;
#endif

/// The names that moved between Asio releases, spelled once.
namespace compat {
#if COROPIPE_ASIO_VERSION >= 102400
using asio::as_tuple;
using asio::as_tuple_t;
using asio::deferred;
#else
using asio::experimental::as_tuple;
using asio::experimental::as_tuple_t;
using asio::experimental::deferred;
#endif
namespace awaitable_operators = asio::experimental::awaitable_operators;
using asio::experimental::make_parallel_group;
using asio::experimental::wait_for_all;
using asio::experimental::wait_for_one;

/// 1 when io_context configuration has `reactor.reset_edge_on_partial_read`
/// (Asio 1.36 and later), and compat::config_from_string is Asio's.
#if COROPIPE_ASIO_VERSION >= 103600
#define COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ 1
using asio::config_from_string;
#else
#define COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ 0
#endif

/// True when @p ctx is configured with `reactor.reset_edge_on_partial_read`
/// (its epoll reactor treats a short read as consuming the readiness edge);
/// false on an Asio without that option.
inline bool resets_edge_on_partial_read([[maybe_unused]] asio::execution_context& ctx) {
#if COROPIPE_ASIO_HAS_RESET_EDGE_ON_PARTIAL_READ
  return asio::config(ctx).get("reactor", "reset_edge_on_partial_read", 0) != 0;
#else
  return false;
#endif
}
} // namespace compat

/// The category of errno values in coropipe's error codes: std::system_category()
/// for standalone Asio, boost::system::system_category() for Boost.Asio (both
/// compare equal to `std::errc` values).
inline const auto& system_category() noexcept {
#if COROPIPE_ASIO_BOOST
  return ::boost::system::system_category();
#else
  return std::system_category();
#endif
}

namespace detail {
/// An errno value as an error_code of coropipe's system_category().
inline error_code errno_code(int err) noexcept { return error_code(err, system_category()); }
} // namespace detail

} // namespace coropipe

// Code written for standalone Asio (`asio::` at global scope) compiles against
// the Boost flavour when COROPIPE_GLOBAL_ASIO_ALIAS is defined: coropipe's own
// tests, samples and benchmarks do so. Off by default: a library does not
// declare names in the global namespace behind its users' backs.
#if COROPIPE_ASIO_BOOST && defined(COROPIPE_GLOBAL_ASIO_ALIAS)
namespace asio = ::boost::asio;
#endif
