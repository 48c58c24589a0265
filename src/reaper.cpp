// SPDX-License-Identifier: BSL-1.0
// The background reaper: a thread, started on the first child::detach(), that
// waits for detached children to end and reaps them, so that none is left a
// zombie. It sleeps in poll() on the children's pidfds (or polls waitpid every
// 50 ms for children without one) and on an eventfd that announces new ones.
// Whenever it is not asleep in poll() it holds its busy mutex, which
// fork_child takes around fork() (reaper_quiet_for_fork): a child is never
// forked while the thread is inside malloc or a sanitizer's allocator.
#include "sys.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace coropipe::detail {

namespace {

struct detached_child {
  pid_t pid;
  int pidfd;  // -1 without pidfds
};

class reaper {
public:
  explicit reaper(int wake_fd) : wake_(wake_fd) {}

  void add(pid_t pid, int pidfd) {
    {
      std::lock_guard lock(mutex_);
      children_.push_back({pid, pidfd});
    }
    const std::uint64_t one = 1;
    (void)!::write(wake_, &one, sizeof one);
  }

  int wake_fd() const noexcept { return wake_; }

  std::mutex& busy() noexcept { return busy_; }

  // Returns once the thread runs and holds busy_: what the thread's start
  // allocated and freed (in libc, in a sanitizer's runtime) is over by then.
  void wait_started() const noexcept { started_.wait(false); }

  [[noreturn]] void run() {
    std::unique_lock busy(busy_);
    started_.store(true);
    started_.notify_all();
    std::vector<pollfd> fds;
    for (;;) {
      bool polling = false;
      fds.assign(1, pollfd{wake_, POLLIN, 0});
      {
        std::lock_guard lock(mutex_);
        for (const auto& c : children_) {
          if (c.pidfd >= 0) fds.push_back(pollfd{c.pidfd, POLLIN, 0});
          else polling = true;
        }
      }
      busy.unlock();
      ::poll(fds.data(), fds.size(), polling ? 50 : -1);
      busy.lock();
      std::uint64_t count;
      (void)!::read(wake_, &count, sizeof count);
      reap_ended();
    }
  }

private:
  void reap_ended() {
    std::lock_guard lock(mutex_);
    std::erase_if(children_, [](const detached_child& c) {
      siginfo_t info{};
      const int r = ::waitid(P_PID, static_cast<id_t>(c.pid), &info, WEXITED | WNOHANG);
      if (r == 0 && info.si_pid == 0) return false;  // still running
      // Reaped, or no longer ours (ECHILD): either way nothing is left to do.
      if (c.pidfd >= 0) ::close(c.pidfd);
      return true;
    });
  }

  int wake_;
  std::mutex busy_;
  std::atomic<bool> started_{false};
  std::mutex mutex_;
  std::vector<detached_child> children_;
};

std::mutex start_mutex;
reaper* instance = nullptr;  // intentionally leaked: it outlives main()
std::atomic<int> threads{0};

reaper* get_reaper(error_code& ec, const char*& failed_call) {
  std::lock_guard lock(start_mutex);
  if (instance != nullptr) return instance;
  const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    ec = last_error();
    failed_call = "eventfd";
    return nullptr;
  }
  auto* r = new reaper(wake);
  // The thread must never take a process-directed signal meant for the
  // application's own threads.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    std::thread([r] { r->run(); }).detach();
  } catch (const system_error& e) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    delete r;
    ::close(wake);
    ec = e.code();
    failed_call = "pthread_create";
    return nullptr;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  r->wait_started();
  threads.store(1);
  instance = r;
  return r;
}

} // namespace

void reap_in_background(pid_t pid, int pidfd, error_code& ec, const char*& failed_call) {
  ec.clear();
  if (reaper* r = get_reaper(ec, failed_call)) r->add(pid, pidfd);
}

int internal_thread_count() noexcept { return threads.load(); }

void reaper_reset_after_fork(bool other_threads) noexcept {
  // Nothing to forget when no reaper was started and no other thread could
  // hold start_mutex: then nothing is written (a child copies each page it
  // writes).
  if (!other_threads && instance == nullptr && threads.load(std::memory_order_relaxed) == 0) return;
  // The child has none of the parent's threads; its copy of the reaper
  // (perhaps with a locked mutex) is abandoned, and the mutexes re-made.
  new (&start_mutex) std::mutex();
  instance = nullptr;
  threads.store(0);
}

reaper_quiet_for_fork::reaper_quiet_for_fork() noexcept : busy_(nullptr) {
  reaper* r;
  {
    std::lock_guard lock(start_mutex);
    r = instance;  // once started, never destroyed
  }
  if (r == nullptr) return;
  r->busy().lock();
  busy_ = &r->busy();
}

reaper_quiet_for_fork::~reaper_quiet_for_fork() {
  if (busy_ != nullptr) busy_->unlock();
}

} // namespace coropipe::detail

namespace coropipe::detail {

// For the tests' descriptor accounting: the reaper's eventfd, or -1.
int background_reaper_fd() noexcept {
  std::lock_guard lock(start_mutex);
  return instance != nullptr ? instance->wake_fd() : -1;
}

} // namespace coropipe::detail
