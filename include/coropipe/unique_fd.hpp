// SPDX-License-Identifier: BSL-1.0
/// @file
/// coropipe::unique_fd, the move-only owner of a file descriptor.
#pragma once

#include <coropipe/error.hpp>

#include <system_error>
#include <utility>

namespace coropipe {

/// Owns one file descriptor and closes it exactly once.
///
/// A unique_fd is what coropipe hands out before a descriptor is attached to
/// an executor (see attach()) or handed to a child (see fork_child()). It is
/// move-only, like std::unique_ptr; a moved-from or default-constructed
/// unique_fd holds nothing (get() == -1).
class unique_fd {
public:
  /// An empty owner.
  constexpr unique_fd() noexcept = default;

  /// Takes ownership of @p fd (which may be -1 for "nothing").
  constexpr explicit unique_fd(int fd) noexcept : fd_(fd) {}

  constexpr unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

  unique_fd& operator=(unique_fd&& other) noexcept {
    reset(other.release());
    return *this;
  }

  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;

  /// Closes the descriptor, if any. Errors from close() are ignored here; call
  /// close() explicitly to see them.
  ~unique_fd() { reset(); }

  /// The descriptor, or -1.
  [[nodiscard]] constexpr int get() const noexcept { return fd_; }

  /// True when a descriptor is held.
  [[nodiscard]] constexpr bool valid() const noexcept { return fd_ >= 0; }
  constexpr explicit operator bool() const noexcept { return valid(); }

  /// Gives up ownership without closing; returns the descriptor (or -1).
  [[nodiscard]] constexpr int release() noexcept { return std::exchange(fd_, -1); }

  /// Closes the held descriptor (ignoring errors) and takes @p fd instead.
  void reset(int fd = -1) noexcept;

  /// Closes the held descriptor now and reports close()'s error.
  /// On Linux the descriptor is released even when close() fails, so the
  /// owner is empty afterwards either way.
  /// @throws system_error naming "close".
  void close();
  /// As close(), reporting the error in @p ec.
  void close(error_code& ec) noexcept;

  /// A second descriptor for the same open file (fcntl F_DUPFD_CLOEXEC).
  /// @throws system_error naming "fcntl(F_DUPFD_CLOEXEC)".
  [[nodiscard]] unique_fd duplicate() const;
  /// As duplicate(), reporting the error in @p ec (the result is then empty).
  [[nodiscard]] unique_fd duplicate(error_code& ec) const noexcept;

  friend void swap(unique_fd& a, unique_fd& b) noexcept { std::swap(a.fd_, b.fd_); }

private:
  int fd_ = -1;
};

} // namespace coropipe
