// SPDX-License-Identifier: BSL-1.0
/// @file
/// Creating pipes and socket pairs, and sizing pipes.
///
/// Every descriptor made here is close-on-exec (so a program exec'd by anyone
/// does not inherit it) and blocking until it is attached to an executor.
#pragma once

#include <coropipe/unique_fd.hpp>

#include <cstddef>
#include <system_error>

namespace coropipe {

/// The two ends of a pipe: bytes written to write_end are read from read_end.
/// Use with structured bindings: `auto [in, out] = coropipe::pipe();`
struct pipe_ends {
  unique_fd read_end;   ///< the end to read from
  unique_fd write_end;  ///< the end to write to
};

/// Creates a pipe with pipe2(O_CLOEXEC).
/// @throws system_error naming "pipe2" (EMFILE, ENFILE, ...).
[[nodiscard]] pipe_ends pipe();
/// As pipe(), reporting the error in @p ec (both ends are then empty).
[[nodiscard]] pipe_ends pipe(error_code& ec) noexcept;

/// The two ends of a duplex stream: each end reads what the other writes.
struct duplex_ends {
  unique_fd first;
  unique_fd second;
};

/// Creates a connected pair of AF_UNIX stream sockets
/// (socketpair(SOCK_STREAM | SOCK_CLOEXEC)), the duplex counterpart of pipe(),
/// like Python's `multiprocessing.Pipe(duplex=True)`.
/// @throws system_error naming "socketpair".
[[nodiscard]] duplex_ends duplex_pair();
/// As duplex_pair(), reporting the error in @p ec.
[[nodiscard]] duplex_ends duplex_pair(error_code& ec) noexcept;

/// The capacity coropipe recommends for bulk transfers: 1 MiB.
///
/// A larger pipe lets a writer run further ahead of its reader, so fewer
/// context switches are needed per byte (the benchmarks in docs/performance.md
/// show what it buys). It costs kernel memory that counts against the user's
/// pipe limits (/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default, and
/// /proc/sys/fs/pipe-max-size, 1 MiB by default, for unprivileged users).
inline constexpr std::size_t recommended_pipe_capacity = std::size_t{1} << 20;

/// The capacity of the pipe @p fd refers to (fcntl F_GETPIPE_SZ), in bytes.
/// @throws system_error naming "fcntl(F_GETPIPE_SZ)"; EBADF for a
/// descriptor that is not a pipe.
[[nodiscard]] std::size_t pipe_capacity(int fd);
/// As pipe_capacity(int), reporting the error in @p ec (the result is then 0).
[[nodiscard]] std::size_t pipe_capacity(int fd, error_code& ec) noexcept;

/// Sets the capacity of the pipe @p fd refers to (fcntl F_SETPIPE_SZ); the
/// kernel rounds @p bytes up to a power-of-two number of pages. Either end may
/// be used; the capacity belongs to the pipe.
/// @returns the capacity actually set.
/// @throws system_error naming "fcntl(F_SETPIPE_SZ)": EPERM above
/// /proc/sys/fs/pipe-max-size or over the user's pipe limits without
/// CAP_SYS_RESOURCE, EBUSY when shrinking below the bytes queued in the pipe,
/// EINVAL for a size the kernel cannot represent, EBADF for a non-pipe.
std::size_t set_pipe_capacity(int fd, std::size_t bytes);
/// As set_pipe_capacity(int, std::size_t), reporting the error in @p ec
/// (the result is then 0).
std::size_t set_pipe_capacity(int fd, std::size_t bytes, error_code& ec) noexcept;

} // namespace coropipe
