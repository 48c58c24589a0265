// SPDX-License-Identifier: BSL-1.0
// Runs a coroutine on an io_context until it completes and returns its
// result (rethrowing its exception); the io_context can be run again after.
#pragma once

#include <coropipe/asio.hpp>

#include <exception>
#include <utility>

namespace bench {

template <typename T>
T run_to_completion(asio::io_context& io, asio::awaitable<T> aw) {
  std::exception_ptr error;
  T result{};
  asio::co_spawn(io, std::move(aw), [&](std::exception_ptr e, T r) {
    error = e;
    result = r;
  });
  io.run();
  io.restart();
  if (error) std::rethrow_exception(error);
  return result;
}

} // namespace bench
