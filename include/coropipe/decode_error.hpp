// SPDX-License-Identifier: BSL-1.0
/// @file
/// What went wrong when a structured message did not decode.
///
/// A codec reports a failed decode with an error_code (`errc::decode_failed`,
/// or `errc::nesting_too_deep` for a pickle nested beyond its limit); the
/// words that say *what* failed (`pickle: datetime.datetime is not supported`,
/// `[2]["name"]: expected int, got str`) are kept for the thread that decoded:
/// read them with last_decode_error(). The throwing functions of the pickle
/// and JSON codecs throw a decode_error whose what() carries them.
#pragma once

#include <coropipe/asio.hpp>
#include <coropipe/error.hpp>

#include <string>
#include <string_view>

namespace coropipe {

/// A decode failure: code() is `errc::decode_failed` (or
/// `errc::nesting_too_deep`), what() the detail.
class decode_error : public system_error {
public:
  /// @param ec the failure's code. @param detail what failed.
  decode_error(error_code ec, const std::string& detail) : system_error(ec, detail) {}
};

/// The detail of the last decode that failed on this thread (a pickle or JSON
/// codec, pickle_loads(), from_pyobject()); empty if none failed yet.
[[nodiscard]] std::string_view last_decode_error() noexcept;

namespace detail {
/// Records @p detail as this thread's last_decode_error() and returns @p ec.
error_code set_decode_error(error_code ec, std::string_view detail);
} // namespace detail

} // namespace coropipe
