// SPDX-License-Identifier: BSL-1.0
// Private building blocks of spawn.cpp, pipeline.cpp and the process-level
// coroutines (process_ops.cpp, communicate.cpp).
#pragma once

#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <memory>
#include <string>
#include <system_error>
#include <tuple>

namespace coropipe::detail {

// True when @p cs has seen a cancellation (a coroutine checks this between
// two operations: a signal emitted while no operation waits is remembered
// only there).
inline bool is_cancelled(const asio::cancellation_state& cs) noexcept {
  return cs.cancelled() != asio::cancellation_type::none;
}

// Completes once the program of @p st has ended, without reaping it; with
// operation_aborted when cancelled. Errors are returned, never thrown.
asio::awaitable<error_code> wait_ended(std::shared_ptr<child_state> st);

// child::async_wait() on a bare state: waits for the program and reaps it.
asio::awaitable<std::tuple<error_code, exit_status>> wait_one(std::shared_ptr<child_state> st);

// The first problem with @p opts that makes spawn() refuse them
// (errc::invalid_argument), or an empty string.
std::string invalid_options(const spawn_options& opts);

} // namespace coropipe::detail
