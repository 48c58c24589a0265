// SPDX-License-Identifier: BSL-1.0
// What the tests' own posix_spawn() calls share (tests/support.hpp,
// tests/ssh_fixture.hpp): header-only, plain POSIX, no test framework, so the
// bench can include it too.
#pragma once

#include <signal.h>
#include <spawn.h>

#include <string>
#include <vector>

namespace coropipe_test {

/// Spawn attributes that start a program with default signal handling and
/// an empty signal mask, not with the test runner's.
struct clean_spawnattr {
  posix_spawnattr_t attr;
  clean_spawnattr() {
    posix_spawnattr_init(&attr);
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  }
  ~clean_spawnattr() { posix_spawnattr_destroy(&attr); }
  clean_spawnattr(const clean_spawnattr&) = delete;
  clean_spawnattr& operator=(const clean_spawnattr&) = delete;
};

/// @p argv as the null-terminated array posix_spawn() takes (it points into
/// @p argv, which must outlive it).
inline std::vector<char*> spawn_args(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  return args;
}

} // namespace coropipe_test
