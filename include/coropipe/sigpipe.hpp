// SPDX-License-Identifier: BSL-1.0
/// @file
/// How coropipe keeps SIGPIPE from killing your process.
///
/// Writing to a pipe or socket whose reading end is closed makes the kernel
/// send SIGPIPE to the writing thread; its default action kills the process.
/// coropipe wants such a write to fail with `asio::error::broken_pipe`
/// (EPIPE) instead, but it does not change the process's SIGPIPE disposition
/// (that belongs to the application, and it is inherited by every program the
/// process execs). Instead:
///
/// - coropipe **blocks SIGPIPE in the signal mask of the calling thread** when
///   it attaches a descriptor to an executor (attach(), child_context::attach())
///   and in the single thread of every forked child. A blocked SIGPIPE is never
///   delivered, so the write returns EPIPE. The mask is per thread and the
///   disposition is untouched: handlers you install still run for a SIGPIPE
///   sent with kill(), and other threads keep their masks.
/// - Threads created after that inherit the mask. An io_context run on a
///   thread that existed before and never called attach() needs
///   block_sigpipe_in_this_thread() (or ignore_sigpipe() process-wide).
/// - A blocked SIGPIPE stays pending on the thread after an EPIPE. coropipe's
///   own write operations discard it; discard_pending_sigpipe() does it for
///   writes made by other code. coropipe::spawn() empties the signal mask of
///   the programs it starts (and a new process starts with nothing pending),
///   and resets an ignored SIGPIPE to the default there, so they see the
///   usual SIGPIPE.
#pragma once

namespace coropipe {

/// Blocks SIGPIPE in the calling thread's signal mask (one rt_sigprocmask
/// call). Never changes the disposition.
void block_sigpipe_in_this_thread() noexcept;

/// Sets SIGPIPE's process-wide disposition to SIG_IGN, as Python and Rust do
/// at start-up. Call it yourself if you prefer that; coropipe never does.
/// Note that ignored signals stay ignored in programs the process execs;
/// coropipe::spawn() resets SIGPIPE (and SIGXFSZ) to the default in the
/// programs it starts, as Python's subprocess does.
void ignore_sigpipe() noexcept;

/// True when a write that hits a closed pipe in this thread fails with EPIPE
/// instead of killing the process: SIGPIPE is blocked here, ignored, or
/// caught by a handler.
[[nodiscard]] bool sigpipe_is_harmless_in_this_thread() noexcept;

/// Removes pending SIGPIPEs, the thread's and the process's (a no-op when
/// there is none), so that unblocking SIGPIPE later does not deliver a stale
/// one. Only meaningful while SIGPIPE is blocked in this thread.
void discard_pending_sigpipe() noexcept;

} // namespace coropipe
