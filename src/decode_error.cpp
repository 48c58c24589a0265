// SPDX-License-Identifier: BSL-1.0
#include <coropipe/decode_error.hpp>

#include <string>
#include <string_view>

namespace coropipe {

namespace {
std::string& last_error_storage() noexcept {
  thread_local std::string s;
  return s;
}
} // namespace

std::string_view last_decode_error() noexcept { return last_error_storage(); }

namespace detail {
error_code set_decode_error(error_code ec, std::string_view detail) {
  last_error_storage().assign(detail);
  return ec;
}
} // namespace detail

} // namespace coropipe
