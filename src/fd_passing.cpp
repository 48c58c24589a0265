// SPDX-License-Identifier: BSL-1.0
#include <coropipe/fd_passing.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace coropipe::detail {

namespace {
// Room for the most descriptors one message carries, plus credentials.
constexpr std::size_t control_size =
    CMSG_SPACE(sizeof(int) * max_fds_per_message) + CMSG_SPACE(sizeof(::ucred));
} // namespace

bool try_send_fds(int sock, std::span<const int> fds, error_code& ec) noexcept {
  ec = {};
  unsigned char byte = static_cast<unsigned char>(fds.size() % 256);
  ::iovec iov{&byte, 1};
  alignas(::cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * max_fds_per_message)];
  ::msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    const std::size_t bytes = sizeof(int) * fds.size();
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(bytes);
    ::cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(bytes);
    std::memcpy(CMSG_DATA(c), fds.data(), bytes);
  }
  for (;;) {
    const ::ssize_t r = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r == 1) return true;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    ec = r < 0 ? errno_code(errno) : error_code(make_error_code(errc::descriptor_passing_failed));
    return true;
  }
}

bool try_receive_fds(int sock, std::size_t count, std::vector<unique_fd>& fds, error_code& ec) {
  ec = {};
  fds.clear();
  if (count > max_fds_per_message) {
    ec = make_error_code(errc::descriptor_passing_failed);
    return true;
  }
  unsigned char byte = 0;
  ::iovec iov{&byte, 1};
  alignas(::cmsghdr) unsigned char control[control_size];
  ::msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ::ssize_t r;
  do {
    r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  if (r < 0) {
    ec = errno_code(errno);
    return true;
  }
  // Take ownership of every descriptor that arrived, whatever else is wrong.
  for (::cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.emplace_back(fd);
    }
  }
  if (r == 0) {
    ec = asio::error::eof;
  } else if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() != count || byte != count % 256) {
    ec = make_error_code(errc::descriptor_passing_failed);
  }
  if (ec) fds.clear();  // closes them
  return true;
}

} // namespace coropipe::detail
