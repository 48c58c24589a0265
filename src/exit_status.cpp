// SPDX-License-Identifier: BSL-1.0
#include <coropipe/exit_status.hpp>

#include <sys/wait.h>

#include <cstring>
#include <string>

namespace coropipe {

exit_status exit_status::from_wait_status(int wstatus) noexcept {
  if (WIFSIGNALED(wstatus)) return killed(WTERMSIG(wstatus), WCOREDUMP(wstatus));
  return from_code(WEXITSTATUS(wstatus));
}

std::string exit_status::to_string() const {
  if (exited()) return "exited with " + std::to_string(value_);
  std::string text = "killed by ";
  if (const char* abbrev = ::sigabbrev_np(value_)) {
    text += "SIG";
    text += abbrev;
  } else {
    text += "signal " + std::to_string(value_);
  }
  if (core_dumped()) text += " (core dumped)";
  return text;
}

} // namespace coropipe
