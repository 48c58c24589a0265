// SPDX-License-Identifier: BSL-1.0
#include <coropipe/error.hpp>

#include <string>

namespace coropipe {

namespace {

class category_impl final : public std::error_category {
public:
  const char* name() const noexcept override { return "coropipe"; }

  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
    case errc::fork_in_threaded_process:
      return "refusing to fork a process that runs several threads "
             "(the child could inherit a lock held forever); use spawn(), "
             "or fork_options::allow_threads";
    case errc::no_child:
      return "no child process (the handle is empty, moved from or detached)";
    case errc::message_too_large:
      return "message larger than the receiver's limit";
    case errc::truncated_message:
      return "stream ended in the middle of a message";
    case errc::malformed_frame:
      return "malformed frame header";
    case errc::decode_failed:
      return "message does not decode as the expected type";
    case errc::invalid_argument:
      return "invalid argument";
    case errc::child_failed:
      return "a child process of the scope failed";
    case errc::scope_closed:
      return "the process scope has ended its body and takes no more children";
    case errc::worker_died:
      return "the pool worker handling the request died";
    case errc::pool_restart_budget_exhausted:
      return "the pool cannot keep its workers alive (restart budget exhausted)";
    case errc::pool_closed:
      return "the pool is shut down";
    }
    return "unknown coropipe error " + std::to_string(value);
  }
};

} // namespace

const std::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

namespace detail {

void throw_error(error_code ec, const char* function, const char* call) {
  std::string what = function;
  if (call != nullptr && *call != '\0') {
    what += ": ";
    what += call;
  }
  throw system_error(ec, what);
}

} // namespace detail

} // namespace coropipe
