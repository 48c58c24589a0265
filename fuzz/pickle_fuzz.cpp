// SPDX-License-Identifier: BSL-1.0
// Fuzz target for the pickle decoder.
//
// Any input either decodes or fails with decode_failed / nesting_too_deep
// (never a crash, a hang, or memory far beyond the input's size), the same
// through pickle_load() (fast path, storage reused) as through pickle_loads(). What
// decodes must survive the rest of the value's life: repr(), hashing,
// equality, conversion to C++ types, and encoding, whose output decodes to
// an equal value and encodes again to the same bytes.
#include <coropipe/pickle.hpp>

#include <coropipe/error.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace {
// Whether printing @p v stays small: repr() prints a shared container each
// time it is referenced, so a small pickle can print exponentially much.
bool small_expansion(const coropipe::pyobject& v, std::size_t& budget) {
  if (budget == 0) return false;
  --budget;
  switch (v.kind()) {
  case coropipe::pykind::tuple:
  case coropipe::pykind::list:
    for (const auto& x : v.items())
      if (!small_expansion(x, budget)) return false;
    return true;
  case coropipe::pykind::dict:
    for (const auto& [k, x] : v.as_dict())
      if (!small_expansion(k, budget) || !small_expansion(x, budget)) return false;
    return true;
  case coropipe::pykind::set:
  case coropipe::pykind::frozenset:
    for (const auto& x : v.as_set())
      if (!small_expansion(x, budget)) return false;
    return true;
  default: return true;
  }
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  coropipe::error_code ec;
  const coropipe::pyobject v = coropipe::pickle_loads(in, ec);
  // pickle_load() into a value kept from the previous input (its fast path
  // reuses that value's dict) must agree with pickle_loads().
  static coropipe::pyobject reused;
  coropipe::error_code reused_ec;
  coropipe::pickle_load(in, reused, reused_ec);
  if (reused_ec != ec || (ec && !reused.is_none()) || (!ec && !(reused == v))) {
    std::fprintf(stderr, "pickle_load and pickle_loads disagree\n");
    std::abort();
  }
  if (ec) {
    if (ec != coropipe::errc::decode_failed && ec != coropipe::errc::nesting_too_deep) std::abort();
    if (coropipe::last_decode_error().rfind("pickle: ", 0) != 0) std::abort();
    return 0;
  }
  std::size_t budget = 100000;
  if (small_expansion(v, budget)) (void)v.repr();
  (void)hash_value(v);
  if (!(v == v)) std::abort();

  std::vector<std::variant<std::int64_t, double, std::string, std::vector<std::byte>>> as_list;
  coropipe::from_pyobject(v, as_list, ec, 64 * size + 4096);
  std::map<std::string, std::vector<std::int32_t>> as_map;
  coropipe::from_pyobject(v, as_map, ec, 64 * size + 4096);

  const std::vector<std::byte> once = coropipe::pickle_dumps(v);
  const coropipe::pyobject back = coropipe::pickle_loads(once, ec);
  if (ec || !(back == v)) {
    std::fprintf(stderr, "re-encoded value differs: %s\n", std::string(coropipe::last_decode_error()).c_str());
    std::abort();
  }
  if (coropipe::pickle_dumps(back) != once) std::abort();
  return 0;
}

#include "replay_main.hpp"  // main() of the replay build (COROPIPE_FUZZ_REPLAY)
