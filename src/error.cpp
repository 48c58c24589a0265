// SPDX-License-Identifier: BSL-1.0
#include <coropipe/error.hpp>

#include <string>

namespace coropipe {

namespace {

// boost::system::error_category has a non-virtual destructor by design (its
// categories are never deleted through a base pointer); neither is ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class category_impl final : public error_category {
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
    case errc::authentication_failed:
      return "authentication failed (wrong authkey, or a malformed or missing handshake message)";
    case errc::peer_not_allowed:
      return "connection refused: the peer's user id is not allowed";
    case errc::descriptor_passing_failed:
      return "descriptors did not arrive as sent (truncated control data, a count mismatch, or more than 253)";
    case errc::unauthenticated_remote_listener:
      return "refusing to listen on a non-loopback TCP address without an authkey "
             "(set one, or listen_options::allow_unauthenticated_remote)";
    case errc::nesting_too_deep:
      return "message nested deeper than the decoder's limit";
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
    case errc::remote_connection_failed:
      return "could not connect to the remote host (refused, timed out, no route, or closed before login)";
    case errc::remote_host_unknown:
      return "the remote host name does not resolve";
    case errc::remote_authentication_failed:
      return "the remote host refused the login (no accepted key)";
    case errc::remote_host_key_rejected:
      return "the remote host's key was rejected (not known while checking strictly, or changed)";
    case errc::remote_program_missing:
      return "the worker program is missing or not executable on the remote host";
    case errc::remote_start_failed:
      return "the launched worker ended before its first reply";
    case errc::worker_protocol_error:
      return "the worker's output is not a message frame (a banner or greeting on its stdout?)";
    }
    return "unknown coropipe error " + std::to_string(value);
  }
};
#pragma GCC diagnostic pop

} // namespace

const error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

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
