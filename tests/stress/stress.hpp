/// Shared by the stress scenarios: the size switch and small helpers.
#pragma once

#include <cstdlib>
#include <cstring>

namespace coropipe_stress {

/// True when COROPIPE_STRESS=large: the scenario runs at its large size.
inline bool large() noexcept {
  const char* v = std::getenv("COROPIPE_STRESS");
  return v != nullptr && std::strcmp(v, "large") == 0;
}

/// @p small normally, @p big with COROPIPE_STRESS=large.
template <typename T>
T size(T small, T big) noexcept {
  return large() ? big : small;
}

} // namespace coropipe_stress
