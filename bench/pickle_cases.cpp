// SPDX-License-Identifier: BSL-1.0
// Case 8 (structured messages): the pickle codec against Python's own
// pickle.dumps/pickle.loads of the same message, measured in the same run
// (a python3 -c timeit each sample); the JSON codec's rate beside them.
#include "pickle_cases.hpp"

#include <coropipe/pickle.hpp>

#if defined(COROPIPE_BENCH_JSON)
#include <coropipe/json.hpp>
#endif

#include "harness.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

namespace {

// The typical message: {'k0': 0, 'k1': 0.5, 'k2': 's2', ..., 'k9': 9}.
constexpr const char* python_message =
    "{f'k{i}': (i if i % 3 == 0 else (i * 0.5 if i % 3 == 1 else f's{i}')) for i in range(10)}";

coropipe::pyobject message() {
  coropipe::pydict d;
  for (int i = 0; i < 10; ++i) {
    // Appended, not "k" + ...: GCC 12 warns (-Wrestrict, a false positive) at -O2.
    std::string key = "k";
    key += std::to_string(i);
    std::string text = "s";
    text += std::to_string(i);
    if (i % 3 == 0) d.insert_or_assign(key, i);
    else if (i % 3 == 1) d.insert_or_assign(key, i * 0.5);
    else d.insert_or_assign(key, text);
  }
  return coropipe::pyobject::dict(std::move(d));
}

// What Python 3.11's pickle.dumps(message, 4) writes (memo, frame and all).
std::vector<std::byte> python_bytes() {
  static constexpr const char* hex =
      "80049569000000000000007d94288c026b30944b008c026b3194473fe00000000000008c026b32948c027332948c026b33944b03"
      "8c026b34944740000000000000008c026b35948c027335948c026b36944b068c026b379447400c0000000000008c026b38948c02"
      "7338948c026b39944b09752e";
  std::vector<std::byte> out;
  for (const char* p = hex; p[0] != 0 && p[1] != 0; p += 2)
    out.push_back(static_cast<std::byte>(std::stoi(std::string(p, 2), nullptr, 16)));
  return out;
}

template <typename F>
double rate(int count, F&& f) {
  const auto t0 = clock::now();
  for (int i = 0; i < count; ++i) f();
  return count / seconds_since(t0);
}

double python_rate(const std::string& stmt, int count) {
  const std::string script = "import pickle, timeit\n"
                             "d = " + std::string(python_message) + "\n"
                             "b = pickle.dumps(d, 4)\n"
                             "n = " + std::to_string(count) + "\n"
                             "g = {'dumps': pickle.dumps, 'loads': pickle.loads, 'd': d, 'b': b}\n"
                             "timeit.timeit('" + stmt + "', globals=g, number=n // 10)\n"
                             "print(n / timeit.timeit('" + stmt + "', globals=g, number=n))\n";
  // Debian's python3 (3.11) when it is there, else the PATH's.
  const std::string python = ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  const std::string cmd = python + " -c \"$COROPIPE_BENCH_SCRIPT\"";
  ::setenv("COROPIPE_BENCH_SCRIPT", script.c_str(), 1);
  std::unique_ptr<FILE, int (*)(FILE*)> p(::popen(cmd.c_str(), "r"), ::pclose);
  if (!p) throw std::runtime_error("cannot run python3");
  char buf[128] = {};
  if (std::fgets(buf, sizeof buf, p.get()) == nullptr) throw std::runtime_error("python3 printed no rate");
  return std::stod(buf);
}

} // namespace

double pickle_encode_rate(int count) {
  const coropipe::pyobject m = message();
  std::vector<std::byte> out;
  return rate(count, [&] {
    out.clear();
    coropipe::codec<coropipe::pyobject>::encode(m, out);
  });
}

double pickle_decode_rate(int count) {
  const std::vector<std::byte> in = python_bytes();
  coropipe::pyobject out;
  return rate(count, [&] {
    if (coropipe::codec<coropipe::pyobject>::decode(in, out)) throw std::runtime_error("decode failed");
  });
}

double python_dumps_rate(int count) { return python_rate("dumps(d, 4)", count); }
double python_loads_rate(int count) { return python_rate("loads(b)", count); }

#if defined(COROPIPE_BENCH_JSON)
namespace {
nlohmann::json json_message() {
  nlohmann::json j = nlohmann::json::object();
  for (int i = 0; i < 10; ++i) {
    std::string key = "k";  // appended: see message()
    key += std::to_string(i);
    std::string text = "s";
    text += std::to_string(i);
    if (i % 3 == 0) j[key] = i;
    else if (i % 3 == 1) j[key] = i * 0.5;
    else j[key] = text;
  }
  return j;
}
} // namespace

double json_encode_rate(int count) {
  const nlohmann::json m = json_message();
  std::vector<std::byte> out;
  return rate(count, [&] {
    out.clear();
    coropipe::codec<nlohmann::json>::encode(m, out);
  });
}

double json_decode_rate(int count) {
  std::vector<std::byte> in;
  coropipe::codec<nlohmann::json>::encode(json_message(), in);
  nlohmann::json out;
  return rate(count, [&] {
    if (coropipe::codec<nlohmann::json>::decode(in, out)) throw std::runtime_error("decode failed");
  });
}
#endif

} // namespace bench
