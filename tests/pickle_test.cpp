// SPDX-License-Identifier: BSL-1.0
#include <coropipe/pickle.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/channel.hpp>
#include <coropipe/decode_error.hpp>
#include <coropipe/error.hpp>
#include <coropipe/spawn.hpp>

#include <coropipe/asio.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <unordered_map>
#include <variant>
#include <vector>

using namespace std::chrono_literals;
using coropipe::errc;
using coropipe::pickled;
using coropipe::pyobject;

namespace {

std::vector<std::byte> unhex(std::string_view h) {
  std::vector<std::byte> out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<std::byte>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  return out;
}

std::string hex(std::span<const std::byte> b) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (std::byte x : b) {
    out += digits[std::to_integer<unsigned>(x) >> 4];
    out += digits[std::to_integer<unsigned>(x) & 15];
  }
  return out;
}

std::vector<std::byte> bytes_of(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

// The failure's code and detail, for a pickle that must be refused.
std::pair<coropipe::error_code, std::string> refuse(std::span<const std::byte> data,
                                                    const coropipe::pickle_options& o = {}) {
  coropipe::error_code ec;
  const pyobject v = coropipe::pickle_loads(data, ec, o);
  CHECK(v.is_none());
  return {ec, std::string(coropipe::last_decode_error())};
}

std::string corpus_script() { return std::string(COROPIPE_SOURCE_DIR) + "/tests/pickle/corpus.py"; }

std::vector<std::string> interpreters() {
  std::vector<std::string> out;
  const std::string_view found[] = {COROPIPE_PYTHON311, COROPIPE_PYTHON312, COROPIPE_PYTHON313};
  for (std::string_view p : found) {
    if (p.empty()) continue;
    out.emplace_back(p);
  }
  if (std::string_view(COROPIPE_PYTHON312).empty()) MESSAGE("Python 3.12 not found at configure time: skipped");
  if (std::string_view(COROPIPE_PYTHON313).empty()) MESSAGE("Python 3.13 not found at configure time: skipped");
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

} // namespace

TEST_CASE("pyobject: repr as Python prints it") {
  CHECK(pyobject().repr() == "None");
  CHECK(pyobject(true).repr() == "True");
  CHECK(pyobject(-5).repr() == "-5");
  CHECK(pyobject(std::numeric_limits<std::uint64_t>::max()).repr() == "18446744073709551615");
  CHECK(pyobject(0.1).repr() == "0.1");
  CHECK(pyobject(1e16).repr() == "1e+16");
  CHECK(pyobject(1e15).repr() == "1000000000000000.0");
  CHECK(pyobject(1e-5).repr() == "1e-05");
  CHECK(pyobject(0.0001).repr() == "0.0001");
  CHECK(pyobject(-0.0).repr() == "-0.0");
  CHECK(pyobject(5e-324).repr() == "5e-324");
  CHECK(pyobject(std::nan("")).repr() == "nan");
  CHECK(pyobject(-INFINITY).repr() == "-inf");
  CHECK(pyobject(1.5e300).repr() == "1.5e+300");
  CHECK(pyobject("it's").repr() == "\"it's\"");
  CHECK(pyobject("a'\"b").repr() == "'a\\'\"b'");
  CHECK(pyobject(std::string("a\0\n\x7f", 4)).repr() == "'a\\x00\\n\\x7f'");
  CHECK(pyobject("\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80").repr() == "'\xc3\xa9\\u2028\xf0\x9f\x98\x80'");
  CHECK(pyobject::bytes(std::string_view("a'\xff")).repr() == "b\"a'\\xff\"");
  CHECK(pyobject::bytearray("").repr() == "bytearray(b'')");
  CHECK(pyobject::tuple({1}).repr() == "(1,)");
  CHECK(pyobject::tuple({}).repr() == "()");
  CHECK(pyobject::set().repr() == "set()");
  CHECK(pyobject::frozenset({1, 2}).repr() == "frozenset({1, 2})");
  CHECK(pyobject::dict({{"a", pyobject::list({1, 2.5, pyobject()})}}).repr() == "{'a': [1, 2.5, None]}");
  CHECK(pyobject::int_from_decimal("-123456789012345678901234567890").repr() == "-123456789012345678901234567890");
}

TEST_CASE("pyobject: values, equality and copy on write") {
  CHECK_THROWS_AS(pyobject("\xff"), coropipe::system_error);
  CHECK_THROWS_AS(pyobject("\xed\xa0\x80"), coropipe::system_error);  // a surrogate
  CHECK(pyobject(1) != pyobject(1.0));
  CHECK(pyobject(1) != pyobject(true));
  CHECK(pyobject(std::nan("")) == pyobject(std::nan("")));
  CHECK(pyobject(0.0) != pyobject(-0.0));
  CHECK(pyobject::dict({{"a", 1}, {"b", 2}}) == pyobject::dict({{"b", 2}, {"a", 1}}));
  CHECK(pyobject::set({1, 2}) == pyobject::set({2, 1}));
  CHECK(pyobject::set({1, 2}) != pyobject::frozenset({2, 1}));
  CHECK_THROWS_AS((void)pyobject::dict({{pyobject::list(), 1}}), coropipe::system_error);
  CHECK(pyobject::dict({{pyobject::tuple({1, "a"}), 1}}).as_dict().at(pyobject::tuple({1, "a"})) == pyobject(1));

  pyobject a = pyobject::list({1, 2});
  pyobject b = a;
  b.as_list().push_back(3);
  CHECK(a.items().size() == 2);
  CHECK(b.items().size() == 3);
  // A list cannot come to hold itself.
  b.as_list().push_back(b);
  CHECK(b.repr() == "[1, 2, 3, [1, 2, 3]]");

  // A dict of many keys: hashed lookup, insertion order kept.
  pyobject d = pyobject::dict();
  for (int i = 0; i < 100; ++i) d.as_dict().insert_or_assign(100 - i, i);
  d.as_dict()[pyobject(50)] = "x";
  CHECK(d.as_dict().size() == 100);
  CHECK(d.as_dict().at(50) == pyobject("x"));
  CHECK(d.as_dict().items().front().first == pyobject(100));

  pyobject big = pyobject::int_from_decimal("18446744073709551616");
  CHECK(!big.to_int64());
  CHECK(!big.to_uint64());
  CHECK(pyobject::int_from_decimal("-9223372036854775808").to_int64() == std::numeric_limits<std::int64_t>::min());
  CHECK(big.to_bigint().magnitude == std::vector<std::uint32_t>{0, 0, 1});
}

TEST_CASE("pickle: encode and decode round trip in C++") {
  const std::vector<pyobject> values = {
      pyobject(), pyobject(false), pyobject(0), pyobject(-1), pyobject(255), pyobject(256), pyobject(65536),
      pyobject(std::int64_t{1} << 40), pyobject(std::numeric_limits<std::int64_t>::min()),
      pyobject::int_from_decimal("-340282366920938463463374607431768211456"), pyobject(-0.0), pyobject(3.25),
      pyobject(std::string(300, 'x')), pyobject::bytes(std::string_view("\0\1", 2)), pyobject::bytearray("abc"),
      pyobject::tuple({1, 2, 3, 4}), pyobject::list({pyobject::list(), pyobject::dict()}),
      pyobject::dict({{pyobject::frozenset({1}), pyobject::set({"a"})}})};
  for (const auto& v : values) {
    CAPTURE(v.repr());
    const auto bytes = coropipe::pickle_dumps(v);
    CHECK(coropipe::pickle_loads(bytes) == v);
    CHECK(coropipe::pickle_reencode(bytes) == bytes);
  }
  // A shared list stays shared in the encoding (memo), and decodes equal.
  const pyobject shared = pyobject::list({1, 2});
  const pyobject outer = pyobject::list({shared, shared, shared});
  CHECK(coropipe::pickle_loads(coropipe::pickle_dumps(outer)) == outer);
  CHECK(coropipe::pickle_dumps(outer).size() < 40);
}

TEST_CASE("pickle: what the decoder refuses, and why") {
  using namespace std::string_view_literals;
  auto check = [](std::string_view data, errc code, std::string_view words) {
    const auto [ec, what] = refuse(bytes_of(data));
    CAPTURE(data);
    CHECK(ec == code);
    CHECK(what.find(words) != std::string::npos);
    if (what.find(words) == std::string::npos) MESSAGE(what);
  };
  check("", errc::decode_failed, "empty");
  check("\x80\x04N", errc::decode_failed, "truncated");
  check("\x80\x06N.", errc::decode_failed, "protocol 6");
  check("cos\nsystem\n(S'x'\ntR.", errc::decode_failed, "os.system is not supported");
  check("\x8c\x02os\x8c\x06system\x93.", errc::decode_failed, "os.system is not supported");
  check("X\xff\xff\xff\xff", errc::decode_failed, "BINUNICODE of 4294967295 bytes");
  check("\x8c\x01\xff.", errc::decode_failed, "not valid UTF-8");
  check("\x8c\x03\xed\xa0\x80.", errc::decode_failed, "not valid UTF-8");
  check("]h\x05.", errc::decode_failed, "memo key 5");
  check("]\x94h\x00" "a."sv, errc::decode_failed, "recursive");          // l.append(l)
  check("]\x94(h\x00" "e."sv, errc::decode_failed, "recursive");         // APPENDS of itself
  check("}]K\x01s.", errc::decode_failed, "unhashable type: 'list'");
  check("N}.", errc::decode_failed, "2 objects on the stack");
  check("N.N", errc::decode_failed, "after STOP");
  check("P1\n.", errc::decode_failed, "PERSID (persistent id)");
  check("\x97.", errc::decode_failed, "NEXT_BUFFER (out-of-band buffer)");
  check("S'a'\n.", errc::decode_failed, "STRING (Python 2 str)");
  check("\xff", errc::decode_failed, "unknown opcode 0xff");
  check("a", errc::decode_failed, "APPEND without a list");
  check("]((e", errc::decode_failed, "without a list");  // APPENDS target across a mark
  check("c__builtin__\nset\n(S'x'\ntR.", errc::decode_failed, "STRING");
  check("c__builtin__\nset\n)R]a.", errc::decode_failed, "APPEND to a set");
  check("\x8c\x08" "builtins\x8c\x04" "eval\x93.", errc::decode_failed, "builtins.eval is not supported");
  check("\x8c\x08" "builtins\x8c\x03set\x93.", errc::decode_failed, "a global used as a value");
  check("L" + std::string(5000, '9') + "L\n.", errc::decode_failed, "exceeds the limit");
  check("I12x\n.", errc::decode_failed, "not a decimal integer");

  // Depth: containers nested beyond the limit.
  std::string deep;
  for (int i = 0; i < 1001; ++i) deep += "]\x94";
  for (int i = 0; i < 1000; ++i) deep += "a";
  deep += ".";
  check(deep, errc::nesting_too_deep, "deeper than 1000");
  // Memo references do not get around it: x = [x] 2000 times, without marks.
  std::string chain(std::string_view("]q\x00"sv));
  for (int i = 0; i < 2000; ++i) chain += "]h\x00" "aq\x00" "0"sv;
  chain += "0h\x00."sv;
  CHECK(refuse(bytes_of(chain)).first == errc::nesting_too_deep);
  // A shallow limit of one's own.
  coropipe::pickle_options shallow;
  shallow.max_depth = 2;
  CHECK(refuse(bytes_of("](](]eee."), shallow).first == errc::nesting_too_deep);
  CHECK(coropipe::pickle_loads(bytes_of("](]e."), shallow).repr() == "[[]]");

  // A million references to one list cost nothing; to one big str, refused.
  std::string many = "]\x94" "0(";
  for (int i = 0; i < 100000; ++i) many += "h\x00"sv;
  many += "t.";
  CHECK(coropipe::pickle_loads(bytes_of(many)).items().size() == 100000);
  std::string big_str = std::string("X\x00\x00\x10\x00", 5) + std::string(1 << 20, 'a') + "\x94(";
  for (int i = 0; i < 1000; ++i) big_str += "h\x00"sv;
  big_str += "t.";
  CHECK(refuse(bytes_of(big_str)).second.find("far more") != std::string::npos);

  // A tuple that holds one shared tuple twice, 200 levels deep (2^200 leaves
  // expanded), as a dict key: decoding, hashing, comparing and re-encoding
  // take time proportional to the message, not to the expansion.
  std::string dag = "}K\x01";
  for (int i = 0; i < 200; ++i) dag += "q\x00h\x00\x86"sv;
  dag += "Ns.";
  const pyobject d = coropipe::pickle_loads(bytes_of(dag));
  const pyobject again = coropipe::pickle_loads(coropipe::pickle_dumps(d));
  CHECK(again == d);
  CHECK(hash_value(again.as_dict().items().front().first) == hash_value(d.as_dict().items().front().first));
  CHECK(coropipe::pickle_dumps(d).size() < 2000);

  // The throwing form carries the detail.
  try {
    (void)coropipe::pickle_loads(bytes_of("cdatetime\ndatetime\n."));
    FAIL("no throw");
  } catch (const coropipe::decode_error& e) {
    CHECK(e.code() == errc::decode_failed);
    CHECK(std::string(e.what()).find("pickle: datetime.datetime is not supported") != std::string::npos);
  }
}

TEST_CASE("pickle: Python's pickles of every type, all protocols, decode to Python's repr") {
  for (const auto& python : interpreters()) {
    CAPTURE(python);
    const auto r = coropipe_test::run_program({python, corpus_script(), "dump"});
    REQUIRE(r.wait_status == 0);
    std::size_t count = 0;
    std::string reply;
    pyobject reused;
    for (const auto& line : split(r.out, '\n')) {
      const auto f = split(line, ' ');
      REQUIRE(f.size() == 4);
      CAPTURE(f[0]);
      CAPTURE(f[1]);
      const auto data = unhex(f[2]);
      const auto repr_bytes = unhex(f[3]);
      const std::string want(reinterpret_cast<const char*>(repr_bytes.data()), repr_bytes.size());
      coropipe::error_code ec;
      const pyobject v = coropipe::pickle_loads(data, ec);
      REQUIRE_MESSAGE(!ec, coropipe::last_decode_error());
      if (want.size() < 100000) CHECK(v.repr() == want);
      // pickle_load() into the value of the line before (its storage reused
      // when both are flat dicts) gives the same value.
      coropipe::pickle_load(data, reused, ec);
      CHECK_FALSE(ec);
      CHECK(reused == v);
      if (f[1] == "4") reply += f[0] + " " + hex(coropipe::pickle_dumps(v)) + "\n";
      ++count;
    }
    CHECK(count > 500);
    // And back: Python loads what coropipe wrote as the equal object.
    const auto back = coropipe_test::run_program_with_input({python, corpus_script(), "check"}, reply);
    CHECK_MESSAGE(back.wait_status == 0, (back.out + back.err));
    CHECK(back.out.find("FAIL") == std::string::npos);
  }
}

TEST_CASE("pickle_load: a flat dict decodes into the dict it is given; copies are untouched; anything else as pickle_loads") {
  // Written by Python 3.11's pickle.dumps(..., 4) (memo and frame included).
  const auto typical = unhex(
      "80049569000000000000007d94288c026b30944b008c026b3194473fe00000000000008c026b32948c027332948c026b33944b03"
      "8c026b34944740000000000000008c026b35948c027335948c026b36944b068c026b379447400c0000000000008c026b38948c02"
      "7338948c026b39944b09752e");
  // {'é': 1, 'k😀': 2.5, 'n': None, 't': True, 'f': False, 'big': 2**40, 'neg': -2**63, 'm': 65535, 'j': -7, 'b': b'by'}
  const auto kinds = unhex(
      "80049563000000000000007d94288c02c3a9944b018c056bf09f9880944740040000000000008c016e944e8c017494888c016694"
      "898c03626967948a060000000000018c036e6567948a0800000000000000808c016d944dffff8c016a944af9ffffff8c01629443"
      "02627994752e");
  const auto one_item = unhex("8004950c000000000000007d948c036f6e65944b01732e");  // {'one': 1}: SETITEM
  const auto protocol1 = unhex("7d710058030000006f6e6571014b01732e");              // {'one': 1}, protocol 1
  const auto shared_str = unhex("80049515000000000000007d94288c0161948c0378797a948c0162946802752e");  // memo GET
  const auto seventeen = unhex(
      "80049583000000000000007d94288c026b30944b008c026b31944b018c026b32944b028c026b33944b038c026b34944b048c026b"
      "35944b058c026b36944b068c026b37944b078c026b38944b088c026b39944b098c036b3130944b0a8c036b3131944b0b8c036b31"
      "32944b0c8c036b3133944b0d8c036b3134944b0e8c036b3135944b0f8c036b3136944b10752e");
  const auto duplicate = unhex("80047d94288c016b4b018c016a4b028c016b4b03752e");  // {'k': 1, 'j': 2, 'k': 3}
  const auto empty = unhex("80047d942e");
  const auto list = unhex("80045d94284b014b02652e");

  pyobject out;
  for (const auto* data : {&typical, &kinds, &one_item, &protocol1, &shared_str, &seventeen, &duplicate, &empty,
                           &list, &typical, &empty, &kinds, &typical}) {
    CAPTURE(hex(*data));
    const pyobject want = coropipe::pickle_loads(*data);
    const pyobject before = out;  // a copy shares out's storage: it must not change
    const std::string before_repr = before.repr();
    coropipe::pickle_load(*data, out);
    CHECK(out == want);
    CHECK(out.repr() == want.repr());
    CHECK(before.repr() == before_repr);
  }
  CHECK(coropipe::pickle_loads(duplicate).repr() == "{'k': 3, 'j': 2}");
  CHECK(coropipe::pickle_loads(kinds).repr() ==
        "{'é': 1, 'k😀': 2.5, 'n': None, 't': True, 'f': False, 'big': 1099511627776, "
        "'neg': -9223372036854775808, 'm': 65535, 'j': -7, 'b': b'by'}");

  // Reused storage: decoding the same message again keeps the dict's node.
  coropipe::pickle_load(typical, out);
  const coropipe::pydict* node = &out.as_dict();
  coropipe::pickle_load(typical, out);
  CHECK(&std::as_const(out).as_dict() == node);

  // Every truncation, and a key that is not UTF-8: the error pickle_loads
  // gives, and None left in out.
  for (std::size_t n = 0; n < typical.size(); ++n) {
    CAPTURE(n);
    const std::span<const std::byte> cut(typical.data(), n);
    coropipe::error_code want_ec;
    (void)coropipe::pickle_loads(cut, want_ec);
    coropipe::pickle_load(typical, out);
    coropipe::error_code ec;
    coropipe::pickle_load(cut, out, ec);
    CHECK(ec == want_ec);
    CHECK(ec == errc::decode_failed);
    CHECK(out.is_none());
  }
  auto bad_key = one_item;
  bad_key[15] = std::byte{0xff};  // the key's first byte
  coropipe::error_code ec;
  coropipe::pickle_load(bad_key, out, ec);
  CHECK(ec == errc::decode_failed);
  CHECK(std::string(coropipe::last_decode_error()).find("UTF-8") != std::string::npos);
  CHECK(out.is_none());
  CHECK_THROWS_AS(coropipe::pickle_load(bad_key, out), coropipe::decode_error);
  // Depth limit 0: even a flat dict is too deep, as pickle_loads says.
  coropipe::pickle_options shallow;
  shallow.max_depth = 0;
  coropipe::pickle_load(typical, out, ec, shallow);
  CHECK(ec == errc::nesting_too_deep);
}

TEST_CASE("pickle: Python's pickles of unsupported objects are refused by name, and do nothing") {
  const auto python = interpreters().front();
  const auto r = coropipe_test::run_program({python, corpus_script(), "refused"});
  REQUIRE(r.wait_status == 0);
  ::unlink("/tmp/coropipe-pickle-pwned");
  const std::map<std::string, std::string> names = {{"datetime", "datetime.datetime"},
                                                    {"instance", "is not supported"},
                                                    {"exploit", "posix.system is not supported"},
                                                    {"complex", "complex is not supported"},
                                                    {"lambda", "builtins.eval is not supported"}};
  std::size_t count = 0;
  for (const auto& line : split(r.out, '\n')) {
    const auto f = split(line, ' ');
    REQUIRE(f.size() == 3);
    CAPTURE(line);
    const auto [ec, what] = refuse(unhex(f[2]));
    CHECK(ec == errc::decode_failed);
    CHECK(what.find(names.at(f[0])) != std::string::npos);
    if (f[0] == "instance") CHECK((what.find("copy_reg._reconstructor") != std::string::npos ||
                                   what.find("__main__.Thing") != std::string::npos));
    ++count;
  }
  CHECK(count == 25);
  struct stat st{};
  CHECK(::stat("/tmp/coropipe-pickle-pwned", &st) != 0);
}

// --- conversions ------------------------------------------------------------------------

TEST_CASE("pickle: C++ types convert, mismatches say where") {
  using record = std::map<std::string, std::variant<std::int64_t, double, std::string>>;
  const std::vector<record> rs = {{{"id", std::int64_t{1}}, {"w", 0.5}}, {{"name", std::string("x")}}};
  const pyobject o = coropipe::to_pyobject(rs);
  CHECK(o.repr() == "[{'id': 1, 'w': 0.5}, {'name': 'x'}]");
  CHECK(coropipe::from_pyobject<std::vector<record>>(o) == rs);

  const auto t = std::tuple<int, std::optional<std::string>, std::vector<std::byte>, bool>{
      7, std::nullopt, {std::byte{1}}, true};
  CHECK(coropipe::to_pyobject(t).repr() == "(7, None, b'\\x01', True)");
  CHECK((coropipe::from_pyobject<std::remove_const_t<decltype(t)>>(coropipe::to_pyobject(t)) == t));
  CHECK(coropipe::to_pyobject(std::set<int>{3, 1}).repr() == "{1, 3}");
  CHECK(coropipe::to_pyobject(std::unordered_map<int, float>{{1, 0.5f}}).repr() == "{1: 0.5}");
  CHECK(coropipe::to_pyobject(std::pair<std::uint64_t, double>{~0ULL, 1}).repr() == "(18446744073709551615, 1.0)");

  auto mismatch = [](const pyobject& v, auto type_tag) {
    using T = typename decltype(type_tag)::type;
    T out{};
    coropipe::error_code ec;
    coropipe::from_pyobject(v, out, ec);
    CHECK(ec == errc::decode_failed);
    return std::string(coropipe::last_decode_error());
  };
  using rows = std::vector<std::map<std::string, int>>;
  const pyobject bad = pyobject::list({pyobject::dict(), pyobject::dict(), pyobject::dict({{"name", "Bob"}})});
  CHECK(mismatch(bad, std::type_identity<rows>{}) == "[2]['name']: expected int, got str");
  CHECK(mismatch(pyobject(300), std::type_identity<std::uint8_t>{}) == "value: int 300 does not fit in uint8");
  CHECK(mismatch(pyobject::tuple({1}), std::type_identity<std::pair<int, int>>{}) ==
        "value: expected a tuple of 2 items, got 1");
  CHECK(mismatch(pyobject::list({pyobject()}), std::type_identity<std::vector<std::variant<int, std::string>>>{}) ==
        "[0]: expected int or str, got NoneType");
}

// --- channels ---------------------------------------------------------------------------

namespace {

// Python, unmodified: Connection(0).recv() / Connection(1).send().
constexpr const char* echo_peer = R"(
import sys
from multiprocessing.connection import Connection
inp, out = Connection(0), Connection(1)
while True:
    try:
        obj = inp.recv()
    except EOFError:
        break
    if obj == "make":
        out.send({"from": "python", "n": 2**70, "f": float("-inf"), "set": {1, 2}, "t": (b"x", bytearray(b"y"))})
    else:
        out.send(obj)
)";

pyobject sample_message() {
  return pyobject::dict({{"id", 7},
                         {"big", pyobject::int_from_decimal("-123456789012345678901234567890")},
                         {"nan", std::nan("")},
                         {"list", pyobject::list({"\xf0\x9f\x98\x80", pyobject::bytes(std::string_view("\0", 1))})},
                         {pyobject::tuple({1, 2}), pyobject::frozenset({"a"})}});
}

const std::string python_made =
    "{'from': 'python', 'n': 1180591620717411303424, 'f': -inf, 'set': {1, 2}, 't': (b'x', bytearray(b'y'))}";
const std::string expected_error = "['a'][0]: expected str, got int";

std::map<std::string, std::vector<int>> typed_message(int which = 0) {
  if (which == 1) return {{"a", {1}}};
  return {{"a", {1, 2}}, {"b", {}}};
}

asio::awaitable<void> talk_to_python(asio::io_context& io, std::string python) {
  coropipe::spawn_options opts;
  opts.argv = {python, std::string("-c"), std::string(echo_peer)};
  opts.in = coropipe::stdio::pipe();
  opts.out = coropipe::stdio::pipe();
  coropipe::process p = coropipe::spawn(io, std::move(opts));
  coropipe::channel<pyobject> to(std::move(p.stdin_pipe()));
  coropipe::channel<pyobject> from(std::move(p.stdout_pipe()));

  const pyobject msg = sample_message();
  co_await to.async_send(msg, asio::use_awaitable);
  std::optional<pyobject> back = co_await from.async_receive(asio::use_awaitable);
  REQUIRE(back);
  CHECK(*back == msg);

  co_await to.async_send(pyobject(std::string("make")), asio::use_awaitable);
  back = co_await from.async_receive(asio::use_awaitable);
  REQUIRE(back);
  CHECK(back->repr() == python_made);

  // Typed: the same channel's bytes, read as a C++ type.
  coropipe::channel<pickled<std::map<std::string, std::vector<int>>>> typed_to(std::move(to.framed().next_layer()));
  coropipe::channel<pickled<std::map<std::string, std::vector<int>>>> typed_from(
      std::move(from.framed().next_layer()));
  const std::map<std::string, std::vector<int>> m = typed_message();
  co_await typed_to.async_send(m, asio::use_awaitable);
  auto got = co_await typed_from.async_receive(asio::use_awaitable);
  REQUIRE(got);
  CHECK(got->value == m);

  // A message that does not convert: decode_failed with the path, and the
  // channel goes on.
  co_await typed_to.async_send(typed_message(1), asio::use_awaitable);
  coropipe::channel<pickled<std::map<std::string, std::vector<std::string>>>> strict(
      std::move(typed_from.framed().next_layer()));
  auto [ec, wrong] = co_await strict.async_receive(coropipe::compat::as_tuple(asio::use_awaitable));
  CHECK(ec == errc::decode_failed);
  CHECK(coropipe::last_decode_error() == expected_error);
  co_await typed_to.async_send(std::map<std::string, std::vector<int>>{}, asio::use_awaitable);
  auto [ec2, right] = co_await strict.async_receive(coropipe::compat::as_tuple(asio::use_awaitable));
  CHECK(!ec2);
  CHECK(right);

  typed_to.framed().next_layer().close();
  const auto end = co_await strict.async_receive(asio::use_awaitable);
  CHECK(!end);
  const coropipe::exit_status st = co_await p.async_wait(asio::use_awaitable);
  CHECK(st.exited());
  CHECK(st.exit_code() == 0);
}

} // namespace

TEST_CASE("pickle: a Python program's Connection.send/recv talks to channel<pyobject>") {
  for (const auto& python : interpreters()) {
    CAPTURE(python);
    asio::io_context io;
    coropipe_test::run(io, talk_to_python(io, python));
  }
}
