// SPDX-License-Identifier: BSL-1.0
// The pickle decoder (protocols 0-5, data only) and encoder (protocol 4).
//
// The decoder is a loop over opcodes with an explicit stack: nothing in it
// recurses on the input. Containers on its stack are shared with the memo
// (as Python's objects are), so a memo reference costs no copy; a container
// that was referenced a second time (GET, DUP) and is then changed would be
// recursive and is refused, which also rules out cycles. Every container
// records its nesting depth as it is filled, against pickle_options::max_depth.
// Allocation stays proportional to the input: lengths are checked against
// what is left before anything is reserved, the memo grows densely only up
// to the input's size, and copies of memoized str/bytes are charged against
// a budget proportional to the input.
#include <coropipe/pickle.hpp>

#include "pickle_internal.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>

namespace coropipe {

namespace detail {

std::optional<pyobject> parse_decimal_int(std::string_view text, std::string& err) {
  bool negative = false;
  if (!text.empty() && (text.front() == '-' || text.front() == '+')) {
    negative = text.front() == '-';
    text.remove_prefix(1);
  }
  if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    err = "not a decimal integer";
    return std::nullopt;
  }
  if (text.size() > max_int_digits) {
    err = "integer of " + std::to_string(text.size()) + " digits exceeds the limit (" +
          std::to_string(max_int_digits) + " digits, as Python's int())";
    return std::nullopt;
  }
  std::vector<std::uint32_t> m;  // magnitude, base 2^32
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t n = std::min<std::size_t>(9, text.size() - pos);
    std::uint32_t chunk = 0;
    std::uint32_t scale = 1;
    for (std::size_t k = 0; k < n; ++k) {
      chunk = chunk * 10 + static_cast<std::uint32_t>(text[pos + k] - '0');
      scale *= 10;
    }
    pos += n;
    std::uint64_t carry = chunk;
    for (auto& limb : m) {
      const std::uint64_t cur = std::uint64_t{limb} * scale + carry;
      limb = static_cast<std::uint32_t>(cur);
      carry = cur >> 32;
    }
    if (carry != 0) m.push_back(static_cast<std::uint32_t>(carry));
  }
  return pyobject::int_from_magnitude(negative, std::move(m));
}

} // namespace detail

namespace {

using access = detail::pickle_access;

// Opcode names, for the errors that name what was met.
const char* opcode_name(unsigned char op) {
  switch (op) {
  case '(': return "MARK";
  case '.': return "STOP";
  case '0': return "POP";
  case '1': return "POP_MARK";
  case '2': return "DUP";
  case 'F': return "FLOAT";
  case 'I': return "INT";
  case 'J': return "BININT";
  case 'K': return "BININT1";
  case 'L': return "LONG";
  case 'M': return "BININT2";
  case 'N': return "NONE";
  case 'P': return "PERSID";
  case 'Q': return "BINPERSID";
  case 'R': return "REDUCE";
  case 'S': return "STRING";
  case 'T': return "BINSTRING";
  case 'U': return "SHORT_BINSTRING";
  case 'V': return "UNICODE";
  case 'X': return "BINUNICODE";
  case 'a': return "APPEND";
  case 'b': return "BUILD";
  case 'c': return "GLOBAL";
  case 'd': return "DICT";
  case '}': return "EMPTY_DICT";
  case 'e': return "APPENDS";
  case 'g': return "GET";
  case 'h': return "BINGET";
  case 'i': return "INST";
  case 'j': return "LONG_BINGET";
  case 'l': return "LIST";
  case ']': return "EMPTY_LIST";
  case 'o': return "OBJ";
  case 'p': return "PUT";
  case 'q': return "BINPUT";
  case 'r': return "LONG_BINPUT";
  case 's': return "SETITEM";
  case 't': return "TUPLE";
  case ')': return "EMPTY_TUPLE";
  case 'u': return "SETITEMS";
  case 'G': return "BINFLOAT";
  case 0x80: return "PROTO";
  case 0x81: return "NEWOBJ";
  case 0x82: return "EXT1";
  case 0x83: return "EXT2";
  case 0x84: return "EXT4";
  case 0x85: return "TUPLE1";
  case 0x86: return "TUPLE2";
  case 0x87: return "TUPLE3";
  case 0x88: return "NEWTRUE";
  case 0x89: return "NEWFALSE";
  case 0x8a: return "LONG1";
  case 0x8b: return "LONG4";
  case 'B': return "BINBYTES";
  case 'C': return "SHORT_BINBYTES";
  case 0x8c: return "SHORT_BINUNICODE";
  case 0x8d: return "BINUNICODE8";
  case 0x8e: return "BINBYTES8";
  case 0x8f: return "EMPTY_SET";
  case 0x90: return "ADDITEMS";
  case 0x91: return "FROZENSET";
  case 0x92: return "NEWOBJ_EX";
  case 0x93: return "STACK_GLOBAL";
  case 0x94: return "MEMOIZE";
  case 0x95: return "FRAME";
  case 0x96: return "BYTEARRAY8";
  case 0x97: return "NEXT_BUFFER";
  case 0x98: return "READONLY_BUFFER";
  default: return nullptr;
  }
}

// The globals CPython writes for data types in older protocols.
enum class global : std::uint8_t { none, codecs_encode, bytes, bytearray, set, frozenset };

struct entry {
  pyobject obj;
  global g = global::none;
};

struct failure {
  errc code;
  std::string what;
};

// Printable ASCII for an error message (a global's name comes from the input).
std::string sanitize(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 200)) out += (c >= 0x20 && c < 0x7F) ? c : '?';
  if (s.size() > 200) out += "...";
  return out;
}

class decoder {
public:
  decoder(std::span<const std::byte> data, const pickle_options& opts)
      : p_(reinterpret_cast<const unsigned char*>(data.data())), end_(p_ + data.size()), opts_(opts),
        copy_budget_(16 * data.size() + (std::size_t{1} << 20)) {}

  pyobject run();

private:
  [[noreturn]] void fail(std::string what, errc code = errc::decode_failed) {
    throw failure{code, "pickle: " + std::move(what)};
  }

  std::size_t left() const noexcept { return static_cast<std::size_t>(end_ - p_); }

  const unsigned char* take(std::size_t n, const char* what) {
    if (left() < n) fail(std::string("truncated ") + what);
    const unsigned char* at = p_;
    p_ += n;
    return at;
  }

  std::uint64_t take_le(std::size_t n, const char* what) {
    const unsigned char* at = take(n, what);
    std::uint64_t v = 0;
    for (std::size_t k = n; k-- > 0;) v = (v << 8) | at[k];
    return v;
  }

  std::string_view take_line(const char* what) {
    const auto* nl = static_cast<const unsigned char*>(std::memchr(p_, '\n', left()));
    if (nl == nullptr) fail(std::string("truncated ") + what + " (no newline)");
    std::string_view line(reinterpret_cast<const char*>(p_), static_cast<std::size_t>(nl - p_));
    p_ = nl + 1;
    return line;
  }

  std::string_view take_counted(std::uint64_t n, const char* what) {
    if (n > left()) fail(std::string(what) + " of " + std::to_string(n) + " bytes, but only " +
                         std::to_string(left()) + " are left");
    const auto* at = take(static_cast<std::size_t>(n), what);
    return {reinterpret_cast<const char*>(at), static_cast<std::size_t>(n)};
  }

  void push(pyobject o) { stack_.push_back(entry{std::move(o), global::none}); }

  entry& top(const char* op) {
    if (stack_.size() <= fence()) fail(std::string(op) + " on an empty stack");
    return stack_.back();
  }

  std::size_t fence() const noexcept { return marks_.empty() ? 0 : marks_.back(); }

  pyobject pop_value(const char* op) {
    entry& e = top(op);
    if (e.g != global::none) fail(std::string(op) + ": a global used as a value is not supported");
    pyobject o = std::move(e.obj);
    stack_.pop_back();
    return o;
  }

  // The items since the last MARK, which is removed.
  std::size_t pop_mark(const char* op) {
    if (marks_.empty()) fail(std::string(op) + " without MARK");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    for (std::size_t i = m; i < stack_.size(); ++i)
      if (stack_[i].g != global::none) fail(std::string(op) + ": a global used as a value is not supported");
    return m;
  }

  void check_depth(std::uint32_t d) {
    if (d > opts_.max_depth)
      fail("containers nested deeper than " + std::to_string(opts_.max_depth) + " levels", errc::nesting_too_deep);
  }

  void require_hashable(const pyobject& k, const char* what) {
    if (!k.is_hashable())
      fail(std::string(what) + ": unhashable type: '" + std::string(pykind_name(k.kind())) + "'");
  }

  template <typename Node>
  Node& open_container(Node& n, const char* op) {
    if (n.shared) fail(std::string(op) + " on a container already referenced: recursive structures are not supported");
    return n;
  }

  pyobject make_tuple(std::size_t from) {
    std::vector<pyobject> items;
    items.reserve(stack_.size() - from);
    std::uint32_t d = 1;
    for (std::size_t i = from; i < stack_.size(); ++i) {
      d = std::max(d, detail::node_depth(stack_[i].obj) + 1);
      items.push_back(std::move(stack_[i].obj));
    }
    stack_.resize(from);
    check_depth(d);
    pyobject t = pyobject::tuple(std::move(items));
    std::get<access::tuple_t>(access::storage(t)).p->depth = d;
    return t;
  }

  void append_items(const char* op, std::size_t from) {
    if (from == 0 || from > stack_.size() || from - 1 < fence()) fail(std::string(op) + " without a list");
    entry& target = stack_[from - 1];
    auto* l = std::get_if<access::list_t>(&access::storage(target.obj));
    if (l == nullptr || target.g != global::none)
      fail(std::string(op) + " to a " + std::string(pykind_name(target.obj.kind())) + " is not supported");
    detail::pyseq_node& n = open_container(*l->p, op);
    for (std::size_t i = from; i < stack_.size(); ++i) {
      n.depth = std::max(n.depth, detail::node_depth(stack_[i].obj) + 1);
      check_depth(n.depth);
      n.items.push_back(std::move(stack_[i].obj));
    }
    stack_.resize(from);
  }

  void set_items(const char* op, std::size_t from) {
    if (from == 0 || from > stack_.size() || from - 1 < fence()) fail(std::string(op) + " without a dict");
    if ((stack_.size() - from) % 2 != 0) fail(std::string(op) + " with an odd number of items");
    entry& target = stack_[from - 1];
    auto* d = std::get_if<access::dict_p>(&access::storage(target.obj));
    if (d == nullptr || target.g != global::none)
      fail(std::string(op) + " on a " + std::string(pykind_name(target.obj.kind())) + " is not supported");
    detail::pydict_node& n = open_container(**d, op);
    n.dict.reserve(n.dict.size() + (stack_.size() - from) / 2);
    for (std::size_t i = from; i < stack_.size(); i += 2) {
      require_hashable(stack_[i].obj, op);
      n.depth = std::max({n.depth, detail::node_depth(stack_[i].obj) + 1, detail::node_depth(stack_[i + 1].obj) + 1});
      check_depth(n.depth);
      n.dict.insert_or_assign(std::move(stack_[i].obj), std::move(stack_[i + 1].obj));
    }
    stack_.resize(from);
  }

  // Adds items to a set node (ADDITEMS, FROZENSET, set(list)).
  void fill_set(detail::pyset_node& n, std::vector<pyobject>&& items, const char* op) {
    for (auto& k : items) {
      require_hashable(k, op);
      n.depth = std::max(n.depth, detail::node_depth(k) + 1);
      check_depth(n.depth);
      n.set.insert(std::move(k));
    }
  }

  pyobject* memo_find(std::uint64_t idx) {
    if (idx < memo_.size()) return memo_present_[static_cast<std::size_t>(idx)] ? &memo_[static_cast<std::size_t>(idx)] : nullptr;
    auto it = memo_sparse_.find(idx);
    return it == memo_sparse_.end() ? nullptr : &it->second.obj;
  }

  void memo_put(std::uint64_t idx, const char* op) {
    entry& e = top(op);
    charge(e.obj);
    // A dense table up to the input's size; beyond, a sparse one (so a huge
    // index cannot make the table huge).
    if (idx <= memo_.size()) {  // an overwrite, or the next index
      const auto i = static_cast<std::size_t>(idx);
      if (i >= memo_.size()) {
        memo_.resize(i + 1);
        memo_present_.resize(i + 1, 0);
        memo_globals_.resize(i + 1, global::none);
      }
      if (!memo_present_[i]) ++memo_count_;
      memo_[i] = e.obj;
      memo_present_[i] = 1;
      memo_globals_[i] = e.g;
    } else {
      auto [it, added] = memo_sparse_.insert_or_assign(idx, e);
      if (added) ++memo_count_;
      (void)it;
    }
  }

  void memo_get(std::uint64_t idx, const char* op) {
    global g = global::none;
    pyobject* o = nullptr;
    if (idx < memo_.size()) {
      if (memo_present_[static_cast<std::size_t>(idx)]) {
        o = &memo_[static_cast<std::size_t>(idx)];
        g = memo_globals_[static_cast<std::size_t>(idx)];
      }
    } else if (auto it = memo_sparse_.find(idx); it != memo_sparse_.end()) {
      o = &it->second.obj;
      g = it->second.g;
    }
    if (o == nullptr) fail(std::string(op) + ": memo key " + std::to_string(idx) + " was never stored");
    share(*o);
    stack_.push_back(entry{*o, g});
  }

  void share(pyobject& o) {
    std::size_t copied = 0;
    access::mark_shared(o, copied);
    spend(copied);
  }

  // A memo entry copies a str/bytes: charged against the budget.
  void charge(const pyobject& o) {
    const auto& v = access::storage(o);
    if (const auto* a = std::get_if<access::str_t>(&v)) spend(a->s.size());
    else if (const auto* b = std::get_if<access::bytes_t>(&v)) spend(b->s.size());
    else if (const auto* c = std::get_if<access::bytearray_t>(&v)) spend(c->s.size());
  }

  void spend(std::size_t copied) {
    if (copied > copy_budget_) fail("references to str/bytes copy far more than the message's size");
    copy_budget_ -= copied;
  }

  std::uint64_t parse_index(std::string_view line, const char* op) {
    std::uint64_t v = 0;
    const auto r = std::from_chars(line.data(), line.data() + line.size(), v);
    if (r.ec != std::errc() || r.ptr != line.data() + line.size()) fail(std::string(op) + ": bad index");
    return v;
  }

  pyobject int_from_le(std::string_view bytes) {
    const std::size_t n = bytes.size();
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
    if (n == 0) return pyobject(0);
    if (n <= 8) {
      std::uint64_t v = 0;
      for (std::size_t k = n; k-- > 0;) v = (v << 8) | b[k];
      if (n < 8 && (b[n - 1] & 0x80) != 0) v |= ~std::uint64_t{0} << (8 * n);  // sign-extend
      return pyobject(static_cast<std::int64_t>(v));
    }
    const bool negative = (b[n - 1] & 0x80) != 0;
    std::vector<std::uint32_t> m((n + 3) / 4, 0);
    for (std::size_t k = 0; k < n; ++k) m[k / 4] |= std::uint32_t{b[k]} << (8 * (k % 4));
    if (negative) {
      // Sign-extend the top limb, then negate (two's complement).
      if (n % 4 != 0) m.back() |= ~std::uint32_t{0} << (8 * (n % 4));
      std::uint64_t carry = 1;
      for (auto& limb : m) {
        const std::uint64_t cur = std::uint64_t{static_cast<std::uint32_t>(~limb)} + carry;
        limb = static_cast<std::uint32_t>(cur);
        carry = cur >> 32;
      }
    }
    return pyobject::int_from_magnitude(negative, std::move(m));
  }

  pyobject int_from_text(std::string_view line, const char* op) {
    if (!line.empty() && line.back() == 'L') line.remove_suffix(1);
    std::string err;
    auto v = detail::parse_decimal_int(line, err);
    if (!v) fail(std::string(op) + ": " + err);
    return std::move(*v);
  }

  pyobject make_str(std::string_view s, const char* op) {
    if (!detail::valid_utf8(s)) fail(std::string(op) + ": str is not valid UTF-8 (or holds surrogates)");
    pyobject o;
    access::storage(o) = access::str_t{std::string(s)};
    return o;
  }

  // Protocol 0's UNICODE: raw-unicode-escape (latin-1, plus \uXXXX and
  // \UXXXXXXXX after an odd number of backslashes).
  pyobject raw_unicode_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    auto put = [&](std::uint32_t cp) {
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        fail("UNICODE: code point outside Unicode or a surrogate");
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
    };
    std::size_t i = 0;
    while (i < s.size()) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c != '\\') {
        put(c);
        ++i;
        continue;
      }
      std::size_t j = i;
      while (j < s.size() && s[j] == '\\') ++j;
      const std::size_t run = j - i;
      if (run % 2 == 0 || j >= s.size() || (s[j] != 'u' && s[j] != 'U')) {
        for (std::size_t k = 0; k < run; ++k) put('\\');
        i = j;
        continue;
      }
      for (std::size_t k = 0; k + 1 < run; ++k) put('\\');
      const std::size_t digits = s[j] == 'u' ? 4 : 8;
      if (s.size() - j - 1 < digits) fail("UNICODE: truncated \\u escape");
      std::uint32_t cp = 0;
      for (std::size_t k = 0; k < digits; ++k) {
        const char h = s[j + 1 + k];
        std::uint32_t v = 0;
        if (h >= '0' && h <= '9') v = static_cast<std::uint32_t>(h - '0');
        else if (h >= 'a' && h <= 'f') v = static_cast<std::uint32_t>(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v = static_cast<std::uint32_t>(h - 'A' + 10);
        else fail("UNICODE: bad \\u escape");
        if (cp > 0x10FFFF) fail("UNICODE: code point outside Unicode");
        cp = (cp << 4) | v;
      }
      put(cp);
      i = j + 1 + digits;
    }
    pyobject o;
    access::storage(o) = access::str_t{std::move(out)};
    return o;
  }

  void on_global(std::string_view module, std::string_view name) {
    const bool builtins = module == "builtins" || module == "__builtin__";
    global g = global::none;
    if (module == "_codecs" && name == "encode") g = global::codecs_encode;
    else if (builtins && name == "bytes") g = global::bytes;
    else if (builtins && name == "bytearray") g = global::bytearray;
    else if (builtins && name == "set") g = global::set;
    else if (builtins && name == "frozenset") g = global::frozenset;
    if (g == global::none) fail(sanitize(module) + "." + sanitize(name) + " is not supported");
    stack_.push_back(entry{pyobject(), g});
  }

  // REDUCE: only the calls CPython writes for data types, evaluated here.
  void on_reduce() {
    pyobject args = pop_value("REDUCE");
    entry& callable = top("REDUCE");
    const global g = callable.g;
    if (g == global::none) fail("REDUCE of a " + std::string(pykind_name(callable.obj.kind())) + " is not supported");
    stack_.pop_back();
    if (!args.is_tuple()) fail("REDUCE with arguments that are not a tuple");
    const auto& a = args.items();
    auto latin1 = [&](const pyobject& s, const char* who) {
      if (!s.is_str()) fail(std::string(who) + " of a non-str");
      std::string out;
      const std::string& u = s.as_str();
      for (std::size_t i = 0; i < u.size();) {
        const auto c = static_cast<unsigned char>(u[i]);
        if (c < 0x80) {
          out += static_cast<char>(c);
          ++i;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < u.size()) {
          const unsigned cp = ((c & 0x1FU) << 6) | (static_cast<unsigned char>(u[i + 1]) & 0x3FU);
          if (cp > 0xFF) fail(std::string(who) + ": character beyond latin-1");
          out += static_cast<char>(cp);
          i += 2;
        } else {
          fail(std::string(who) + ": character beyond latin-1");
        }
      }
      return out;
    };
    auto is_latin1_name = [](const pyobject& e) {
      if (!e.is_str()) return false;
      std::string n = e.as_str();
      std::transform(n.begin(), n.end(), n.begin(), [](char c) { return c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c))); });
      return n == "latin1" || n == "latin-1" || n == "iso-8859-1" || n == "iso8859-1" || n == "l1";
    };
    switch (g) {
    case global::codecs_encode:
      if (a.size() != 2 || !is_latin1_name(a[1])) fail("_codecs.encode is supported only as CPython writes bytes (latin1)");
      push(pyobject::bytes(latin1(a[0], "_codecs.encode")));
      return;
    case global::bytes:
      if (!a.empty()) fail("builtins.bytes is supported only with no arguments");
      push(pyobject::bytes(std::string_view()));
      return;
    case global::bytearray:
      if (a.empty()) push(pyobject::bytearray(std::string_view()));
      else if (a.size() == 1 && (a[0].is_bytes() || a[0].is_bytearray())) push(pyobject::bytearray(a[0].as_bytes()));
      else if (a.size() == 2 && is_latin1_name(a[1])) push(pyobject::bytearray(latin1(a[0], "bytearray")));
      else fail("builtins.bytearray is supported only as CPython writes a bytearray");
      return;
    case global::set:
    case global::frozenset: {
      const char* name = g == global::set ? "builtins.set" : "builtins.frozenset";
      if (a.size() > 1 || (a.size() == 1 && !a[0].is_list() && !a[0].is_tuple()))
        fail(std::string(name) + " is supported only of a list");
      auto node = std::make_shared<detail::pyset_node>();
      if (a.size() == 1) {
        std::vector<pyobject> items = a[0].items();
        fill_set(*node, std::move(items), name);
      }
      pyobject o;
      if (g == global::set) {
        access::storage(o) = node;
      } else {
        node->hash = detail::frozenset_hash(node->set);
        access::storage(o) = access::frozenset_t{std::move(node)};
      }
      push(std::move(o));
      return;
    }
    case global::none: break;
    }
  }

  const unsigned char* begin_ = nullptr;
  const unsigned char* p_;
  const unsigned char* end_;
  const pickle_options& opts_;
  std::size_t copy_budget_;
  // The working storage, reused by the thread's next decode (no allocation
  // in steady state); emptied when a decode ends, however it ends.
  struct scratch {
    std::vector<entry> stack;
    std::vector<std::size_t> marks;
    std::vector<pyobject> memo;
    std::vector<unsigned char> memo_present;
    std::vector<global> memo_globals;
    void reset() noexcept {
      stack.clear();
      marks.clear();
      memo.clear();
      memo_present.clear();
      memo_globals.clear();
      if (stack.capacity() > 4096) stack = {};
      if (memo.capacity() > 4096) {
        memo = {};
        memo_present = {};
        memo_globals = {};
      }
    }
  };
  static scratch& thread_scratch() {
    thread_local scratch s;
    return s;
  }
  struct reset_at_exit {
    scratch& s;
    ~reset_at_exit() { s.reset(); }
  };
  scratch& scratch_ = thread_scratch();
  reset_at_exit reset_{scratch_};
  std::vector<entry>& stack_ = scratch_.stack;
  std::vector<std::size_t>& marks_ = scratch_.marks;
  std::vector<pyobject>& memo_ = scratch_.memo;
  std::vector<unsigned char>& memo_present_ = scratch_.memo_present;
  std::vector<global>& memo_globals_ = scratch_.memo_globals;
  std::unordered_map<std::uint64_t, entry> memo_sparse_;
  std::size_t memo_count_ = 0;
};

pyobject decoder::run() {
  begin_ = p_;
  for (;;) {
    if (p_ == end_) fail(stack_.empty() && begin_ == end_ ? "empty message" : "truncated (no STOP)");
    const unsigned char op = *p_++;
    switch (op) {
    case 0x80: {  // PROTO
      const unsigned v = *take(1, "PROTO");
      if (v > 5) fail("protocol " + std::to_string(v) + " is not supported");
      break;
    }
    case 0x95: {  // FRAME: only checked; frames do not change the meaning
      const std::uint64_t n = take_le(8, "FRAME");
      if (n > left()) fail("FRAME of " + std::to_string(n) + " bytes, but only " + std::to_string(left()) + " are left");
      break;
    }
    case '.': {  // STOP
      if (!marks_.empty()) fail("STOP with an open MARK");
      if (stack_.size() != 1) fail("STOP with " + std::to_string(stack_.size()) + " objects on the stack");
      if (p_ != end_) fail(std::to_string(left()) + " bytes after STOP");
      return pop_value("STOP");
    }
    case '(':
      marks_.push_back(stack_.size());
      break;
    case '0':
      top("POP");
      stack_.pop_back();
      break;
    case '1':
      stack_.resize(pop_mark("POP_MARK"));
      break;
    case '2': {
      share(top("DUP").obj);
      entry e = stack_.back();
      stack_.push_back(std::move(e));
      break;
    }
    case 'N': push(pyobject()); break;
    case 0x88: push(pyobject(true)); break;
    case 0x89: push(pyobject(false)); break;
    case 'I': {
      const std::string_view line = take_line("INT");
      if (line == "00") push(pyobject(false));
      else if (line == "01") push(pyobject(true));
      else push(int_from_text(line, "INT"));
      break;
    }
    case 'J': push(pyobject(static_cast<std::int32_t>(static_cast<std::uint32_t>(take_le(4, "BININT"))))); break;
    case 'K': push(pyobject(static_cast<std::int64_t>(take_le(1, "BININT1")))); break;
    case 'M': push(pyobject(static_cast<std::int64_t>(take_le(2, "BININT2")))); break;
    case 'L': push(int_from_text(take_line("LONG"), "LONG")); break;
    case 0x8a: {
      const std::uint64_t n = take_le(1, "LONG1");
      push(int_from_le(take_counted(n, "LONG1")));
      break;
    }
    case 0x8b: {
      const auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(take_le(4, "LONG4")));
      if (n < 0) fail("LONG4 with a negative length");
      push(int_from_le(take_counted(static_cast<std::uint64_t>(n), "LONG4")));
      break;
    }
    case 'F': {
      const std::string_view line = take_line("FLOAT");
      double d = 0;
      const auto r = std::from_chars(line.data(), line.data() + line.size(), d);
      if (r.ec != std::errc() || r.ptr != line.data() + line.size()) fail("FLOAT: not a number");
      push(pyobject(d));
      break;
    }
    case 'G': {
      const std::uint64_t bits = take_le(8, "BINFLOAT");
      push(pyobject(std::bit_cast<double>(__builtin_bswap64(bits))));
      break;
    }
    case 'V': push(raw_unicode_escape(take_line("UNICODE"))); break;
    case 'X': push(make_str(take_counted(take_le(4, "BINUNICODE"), "BINUNICODE"), "BINUNICODE")); break;
    case 0x8c: push(make_str(take_counted(take_le(1, "SHORT_BINUNICODE"), "SHORT_BINUNICODE"), "SHORT_BINUNICODE")); break;
    case 0x8d: push(make_str(take_counted(take_le(8, "BINUNICODE8"), "BINUNICODE8"), "BINUNICODE8")); break;
    case 'B': push(pyobject::bytes(take_counted(take_le(4, "BINBYTES"), "BINBYTES"))); break;
    case 'C': push(pyobject::bytes(take_counted(take_le(1, "SHORT_BINBYTES"), "SHORT_BINBYTES"))); break;
    case 0x8e: push(pyobject::bytes(take_counted(take_le(8, "BINBYTES8"), "BINBYTES8"))); break;
    case 0x96: push(pyobject::bytearray(take_counted(take_le(8, "BYTEARRAY8"), "BYTEARRAY8"))); break;
    case ')': push(pyobject::tuple(std::vector<pyobject>{})); break;
    case 't': push(make_tuple(pop_mark("TUPLE"))); break;
    case 0x85:
    case 0x86:
    case 0x87: {
      const std::size_t n = op - 0x84U;
      if (stack_.size() < fence() + n) fail(std::string(opcode_name(op)) + " on a stack of fewer items");
      for (std::size_t i = stack_.size() - n; i < stack_.size(); ++i)
        if (stack_[i].g != global::none) fail(std::string(opcode_name(op)) + ": a global used as a value is not supported");
      push(make_tuple(stack_.size() - n));
      break;
    }
    case ']': push(pyobject::list()); break;
    case 'l': {
      const std::size_t from = pop_mark("LIST");
      pyobject l = pyobject::list();
      stack_.insert(stack_.begin() + static_cast<std::ptrdiff_t>(from), entry{std::move(l), global::none});
      append_items("LIST", from + 1);
      break;
    }
    case 'a': append_items("APPEND", stack_.size() >= fence() + 2 ? stack_.size() - 1 : 0); break;
    case 'e': append_items("APPENDS", pop_mark("APPENDS")); break;
    case '}': push(pyobject::dict(pydict{})); break;
    case 'd': {
      const std::size_t from = pop_mark("DICT");
      stack_.insert(stack_.begin() + static_cast<std::ptrdiff_t>(from), entry{pyobject::dict(pydict{}), global::none});
      set_items("DICT", from + 1);
      break;
    }
    case 's': set_items("SETITEM", stack_.size() >= fence() + 3 ? stack_.size() - 2 : 0); break;
    case 'u': set_items("SETITEMS", pop_mark("SETITEMS")); break;
    case 0x8f: push(pyobject::set(pyset{})); break;
    case 0x90: {
      const std::size_t from = pop_mark("ADDITEMS");
      if (from == 0 || from - 1 < fence()) fail("ADDITEMS without a set");
      entry& target = stack_[from - 1];
      auto* s = std::get_if<access::set_p>(&access::storage(target.obj));
      if (s == nullptr || target.g != global::none)
        fail("ADDITEMS to a " + std::string(pykind_name(target.obj.kind())) + " is not supported");
      std::vector<pyobject> items;
      items.reserve(stack_.size() - from);
      for (std::size_t i = from; i < stack_.size(); ++i) items.push_back(std::move(stack_[i].obj));
      stack_.resize(from);
      fill_set(open_container(**s, "ADDITEMS"), std::move(items), "ADDITEMS");
      break;
    }
    case 0x91: {
      const std::size_t from = pop_mark("FROZENSET");
      std::vector<pyobject> items;
      items.reserve(stack_.size() - from);
      for (std::size_t i = from; i < stack_.size(); ++i) items.push_back(std::move(stack_[i].obj));
      stack_.resize(from);
      auto node = std::make_shared<detail::pyset_node>();
      fill_set(*node, std::move(items), "FROZENSET");
      node->hash = detail::frozenset_hash(node->set);
      pyobject o;
      access::storage(o) = access::frozenset_t{std::move(node)};
      push(std::move(o));
      break;
    }
    case 'g': memo_get(parse_index(take_line("GET"), "GET"), "GET"); break;
    case 'h': memo_get(take_le(1, "BINGET"), "BINGET"); break;
    case 'j': memo_get(take_le(4, "LONG_BINGET"), "LONG_BINGET"); break;
    case 'p': memo_put(parse_index(take_line("PUT"), "PUT"), "PUT"); break;
    case 'q': memo_put(take_le(1, "BINPUT"), "BINPUT"); break;
    case 'r': memo_put(take_le(4, "LONG_BINPUT"), "LONG_BINPUT"); break;
    case 0x94: memo_put(memo_count_, "MEMOIZE"); break;
    case 'c': {
      const std::string_view module = take_line("GLOBAL");
      const std::string_view name = take_line("GLOBAL");
      on_global(module, name);
      break;
    }
    case 0x93: {
      pyobject name = pop_value("STACK_GLOBAL");
      pyobject module = pop_value("STACK_GLOBAL");
      if (!name.is_str() || !module.is_str()) fail("STACK_GLOBAL of a non-str");
      on_global(module.as_str(), name.as_str());
      break;
    }
    case 'R': on_reduce(); break;
    default: {
      const char* name = opcode_name(op);
      if (name == nullptr) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        fail(std::string("unknown opcode ") + hex);
      }
      std::string what = std::string("opcode ") + name;
      if (op == 'P' || op == 'Q') what += " (persistent id)";
      else if (op == 0x97 || op == 0x98) what += " (out-of-band buffer)";
      else if (op == 'S' || op == 'T' || op == 'U') what += " (Python 2 str)";
      else if (op == 'b' || op == 'i' || op == 'o' || op == 0x81 || op == 0x92) what += " (builds an object)";
      else if (op == 0x82 || op == 0x83 || op == 0x84) what += " (extension registry)";
      fail(what + " is not supported");
    }
    }
  }
}

// --- encoder ----------------------------------------------------------------------------

// memcpy for short strings without a call: two overlapping fixed-size
// copies, each within the n bytes.
[[gnu::always_inline]] inline void copy_short(char* d, const char* s, std::size_t n) noexcept {
  if (n > 16) {
    std::memcpy(d, s, n);
  } else if (n >= 8) {
    std::memcpy(d, s, 8);
    std::memcpy(d + n - 8, s + n - 8, 8);
  } else if (n >= 4) {
    std::memcpy(d, s, 4);
    std::memcpy(d + n - 4, s + n - 4, 4);
  } else if (n >= 2) {
    std::memcpy(d, s, 2);
    std::memcpy(d + n - 2, s + n - 2, 2);
  } else if (n == 1) {
    d[0] = s[0];
  }
}

class encoder {
public:
  // Writes through a cursor into @p out, grown ahead (no per-byte
  // push_back); @p out is cut to what was written when run() ends.
  encoder(std::vector<std::byte>& out, const pickle_options& opts)
      : out_(out), opts_(opts), cur_(out.data() + out.size()), lim_(cur_) {}

  void run(const pyobject& v) {
    put(0x80);
    put(4);
    const std::size_t frame_at = written();
    put(0x95);
    put_le(0, 8);
    const std::size_t body = written();
    save(v, 0);
    put('.');
    out_.resize(written());
    const std::size_t n = out_.size() - body;
    if (n < 4) {
      out_.erase(out_.begin() + static_cast<std::ptrdiff_t>(frame_at), out_.begin() + static_cast<std::ptrdiff_t>(body));
    } else {
      for (std::size_t i = 0; i < 8; ++i) out_[frame_at + 1 + i] = static_cast<std::byte>((n >> (8 * i)) & 0xFF);
    }
  }

private:
  // Room for @p n bytes at the cursor; returns where they go, the cursor moved past them.
  std::byte* room(std::size_t n) {
    if (static_cast<std::size_t>(lim_ - cur_) < n) grow(n);
    std::byte* at = cur_;
    cur_ += n;
    return at;
  }
  [[gnu::noinline]] void grow(std::size_t n) {
    const std::size_t pos = written();
    out_.resize(std::max(pos + n + 256, 2 * out_.size()));
    cur_ = out_.data() + pos;
    lim_ = out_.data() + out_.size();
  }
  std::size_t written() const noexcept { return static_cast<std::size_t>(cur_ - out_.data()); }
  void put(unsigned v) { *room(1) = static_cast<std::byte>(v); }
  void put_le(std::uint64_t v, int n) {
    std::byte* at = room(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) at[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
  }
  void put_bytes(std::string_view s) {
    if (!s.empty()) std::memcpy(room(s.size()), s.data(), s.size());
  }
  void put_counted(std::string_view s, unsigned short1, unsigned long4, unsigned long8) {
    if (s.size() < 256) {
      std::byte* at = room(2 + s.size());
      at[0] = static_cast<std::byte>(short1);
      at[1] = static_cast<std::byte>(s.size());
      copy_short(reinterpret_cast<char*>(at + 2), s.data(), s.size());
      return;
    }
    if (s.size() <= 0xFFFFFFFFULL) {
      put(long4);
      put_le(s.size(), 4);
    } else {
      put(long8);
      put_le(s.size(), 8);
    }
    put_bytes(s);
  }

  void save_int(const pyobject& v) {
    if (auto i = v.to_int64()) {
      const std::int64_t x = *i;
      if (x >= 0 && x < 256) {
        put('K');
        put(static_cast<unsigned>(x));
        return;
      }
      if (x >= 0 && x < 65536) {
        put('M');
        put_le(static_cast<std::uint64_t>(x), 2);
        return;
      }
      if (x >= std::numeric_limits<std::int32_t>::min() && x <= std::numeric_limits<std::int32_t>::max()) {
        put('J');
        put_le(static_cast<std::uint64_t>(x), 4);
        return;
      }
    }
    // LONG1/LONG4: the shortest two's complement, little-endian.
    const pybigint b = v.to_bigint();
    std::vector<unsigned char> bytes;
    for (std::uint32_t limb : b.magnitude)
      for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<unsigned char>(limb >> (8 * k)));
    if (b.negative) {
      unsigned carry = 1;
      for (auto& c : bytes) {
        const unsigned cur = static_cast<unsigned char>(~c) + carry;
        c = static_cast<unsigned char>(cur);
        carry = cur >> 8;
      }
      while (bytes.size() > 1 && bytes.back() == 0xFF && (bytes[bytes.size() - 2] & 0x80) != 0) bytes.pop_back();
      if ((bytes.back() & 0x80) == 0) bytes.push_back(0xFF);
    } else {
      while (!bytes.empty() && bytes.back() == 0) bytes.pop_back();
      if (!bytes.empty() && (bytes.back() & 0x80) != 0) bytes.push_back(0);
    }
    if (bytes.size() < 256) {
      put(0x8a);
      put(static_cast<unsigned>(bytes.size()));
    } else {
      put(0x8b);
      put_le(bytes.size(), 4);
    }
    for (unsigned char c : bytes) put(c);
  }

  // Shared nodes are memoized, so a DAG stays as small as it is.
  bool try_get(const void* node, long use_count) {
    if (use_count <= 1) return false;
    auto it = memo_.find(node);
    if (it == memo_.end()) return false;
    if (it->second < 256) {
      put('h');
      put(it->second);
    } else {
      put('j');
      put_le(it->second, 4);
    }
    return true;
  }
  void memoize(const void* node, long use_count) {
    if (use_count <= 1) return;
    put(0x94);
    memo_.emplace(node, static_cast<std::uint32_t>(memo_.size()));
  }

  void save_items(const std::vector<pyobject>& items, std::size_t depth) {
    for (const auto& x : items) save(x, depth);
  }

  void save(const pyobject& v, std::size_t depth) {
    const auto& s = access::storage(v);
    // The common scalars first, straight from the storage.
    if (const auto* str = std::get_if<access::str_t>(&s)) return put_counted(str->s, 0x8c, 'X', 0x8d);
    if (const auto* i = std::get_if<std::int64_t>(&s)) {
      const std::int64_t x = *i;
      if (x >= 0 && x < 256) {
        std::byte* at = room(2);
        at[0] = std::byte{'K'};
        at[1] = static_cast<std::byte>(x);
        return;
      }
      return save_int(v);
    }
    if (const auto* d = std::get_if<double>(&s)) {
      std::byte* at = room(9);
      at[0] = std::byte{'G'};
      const std::uint64_t be = __builtin_bswap64(std::bit_cast<std::uint64_t>(*d));
      std::memcpy(at + 1, &be, 8);
      return;
    }
    switch (v.kind()) {
    case pykind::none: put('N'); return;
    case pykind::bool_: put(v.as_bool() ? 0x88 : 0x89); return;
    case pykind::int_: save_int(v); return;
    case pykind::float_: {
      put('G');
      const auto bits = std::bit_cast<std::uint64_t>(v.as_float());
      put_le(__builtin_bswap64(bits), 8);
      return;
    }
    case pykind::str: put_counted(v.as_str(), 0x8c, 'X', 0x8d); return;
    case pykind::bytes: put_counted(v.as_bytes(), 'C', 'B', 0x8e); return;
    default: break;
    }
    if (depth + 1 > opts_.max_depth)
      throw system_error(make_error_code(errc::nesting_too_deep), "pickle_dumps: nested deeper than " + std::to_string(opts_.max_depth) + " levels");
    switch (v.kind()) {
    case pykind::bytearray:
      // builtins.bytearray(b'...'), as Python 3.11 writes it in protocol 4.
      put_counted("builtins", 0x8c, 'X', 0x8d);
      put_counted("bytearray", 0x8c, 'X', 0x8d);
      put(0x93);
      put_counted(v.as_bytes(), 'C', 'B', 0x8e);
      put(0x85);
      put('R');
      return;
    case pykind::tuple: {
      const auto& node = std::get<access::tuple_t>(s).p;
      if (try_get(node.get(), node.use_count())) return;
      const auto& items = node->items;
      if (items.empty()) {
        put(')');
        return;
      }
      if (items.size() > 3) put('(');
      save_items(items, depth + 1);
      put(items.size() == 1 ? 0x85 : items.size() == 2 ? 0x86 : items.size() == 3 ? 0x87 : 't');
      memoize(node.get(), node.use_count());
      return;
    }
    case pykind::list: {
      const auto& node = std::get<access::list_t>(s).p;
      if (try_get(node.get(), node.use_count())) return;
      put(']');
      memoize(node.get(), node.use_count());
      if (!node->items.empty()) {
        put('(');
        save_items(node->items, depth + 1);
        put('e');
      }
      return;
    }
    case pykind::dict: {
      const auto& node = std::get<access::dict_p>(s);
      if (try_get(node.get(), node.use_count())) return;
      put('}');
      memoize(node.get(), node.use_count());
      if (!node->dict.empty()) {
        put('(');
        for (const auto& [k, x] : node->dict) {
          save(k, depth + 1);
          save(x, depth + 1);
        }
        put('u');
      }
      return;
    }
    case pykind::set: {
      const auto& node = std::get<access::set_p>(s);
      if (try_get(node.get(), node.use_count())) return;
      put(0x8f);
      memoize(node.get(), node.use_count());
      if (!node->set.empty()) {
        put('(');
        save_items(node->set.items(), depth + 1);
        put(0x90);
      }
      return;
    }
    case pykind::frozenset: {
      const auto& node = std::get<access::frozenset_t>(s).p;
      if (try_get(node.get(), node.use_count())) return;
      put('(');
      save_items(node->set.items(), depth + 1);
      put(0x91);
      memoize(node.get(), node.use_count());
      return;
    }
    default: return;
    }
  }

  std::vector<std::byte>& out_;
  const pickle_options& opts_;
  std::byte* cur_;  // the cursor in out_
  std::byte* lim_;  // the end of out_'s bytes
  std::unordered_map<const void*, std::uint32_t> memo_;
};

} // namespace

namespace {

// --- the fast path: a flat dict of str keys ----------------------------------------------
//
// The usual message, `{'id': 7, 'name': 'x', ...}` as Python's pickle
// writes it in protocols 1 to 5: PROTO, FRAME, EMPTY_DICT, then MARK, pairs
// of a str key and a scalar, str or bytes value, SETITEMS (or one pair and
// SETITEM), memo stores after any object, STOP. Decoded straight into the
// dict @p out holds, keys and strs assigned in place (no allocation once
// warm, short strings inline). Anything else, or anything this path is not
// sure of (a memo fetch, a duplicate key, a non-ASCII byte that might be
// invalid UTF-8, more than 16 items, truncation), returns false and the
// general decoder starts over: it accepts or refuses exactly what it always
// did, with its error messages. What this path accepts, the general decoder
// decodes to an equal value.

constexpr std::size_t fast_max_items = 16;  // pydict scans up to this many keys: no hash index

std::uint64_t load_le(const unsigned char* p, std::size_t n) noexcept {
  std::uint64_t v = 0;
  for (std::size_t k = n; k-- > 0;) v = (v << 8) | p[k];
  return v;
}

template <std::size_t N>
std::uint64_t load_le(const unsigned char* p) noexcept {
  if constexpr (N == 1) {
    return p[0];
  } else if constexpr (std::endian::native == std::endian::little) {
    std::uint64_t v = 0;
    std::memcpy(&v, p, N);
    return v;
  } else {
    std::uint64_t v = 0;
    for (std::size_t k = N; k-- > 0;) v = (v << 8) | p[k];
    return v;
  }
}

// A counted str or bytes at @p p (opcode included): its text, and p moved past it.
template <std::size_t Width>
bool fast_counted(const unsigned char*& p, const unsigned char* end, std::string_view& out) {
  if (static_cast<std::size_t>(end - p) < 1 + Width) return false;
  const std::uint64_t n = load_le<Width>(p + 1);
  const unsigned char* at = p + 1 + Width;
  if (n > static_cast<std::uint64_t>(end - at)) return false;
  out = {reinterpret_cast<const char*>(at), static_cast<std::size_t>(n)};
  p = at + n;
  return true;
}

bool fast_counted(const unsigned char*& p, const unsigned char* end, std::size_t width, std::string_view& out) {
  switch (width) {
  case 1: return fast_counted<1>(p, end, out);
  case 4: return fast_counted<4>(p, end, out);
  case 8: return fast_counted<8>(p, end, out);
  default: return false;
  }
}

std::size_t str_width(unsigned char op) noexcept {
  switch (op) {
  case 0x8c: return 1;  // SHORT_BINUNICODE
  case 'X': return 4;   // BINUNICODE
  case 0x8d: return 8;  // BINUNICODE8
  default: return 0;
  }
}

std::size_t bytes_width(unsigned char op) noexcept {
  switch (op) {
  case 'C': return 1;   // SHORT_BINBYTES
  case 'B': return 4;   // BINBYTES
  case 0x8e: return 8;  // BINBYTES8
  default: return 0;
  }
}

// MEMOIZE, BINPUT or LONG_BINPUT after an object: nothing fetches from the
// memo on this path, so the stores are skipped.
bool fast_skip_memo(const unsigned char*& p, const unsigned char* end) {
  if (p == end) return true;
  const std::size_t skip = *p == 0x94 ? 1 : *p == 'q' ? 2 : *p == 'r' ? 5 : 0;
  if (static_cast<std::size_t>(end - p) < skip) return false;
  p += skip;
  return true;
}

// Assigns in place: the same length again (the usual case, message after
// message) is one copy into the string's own storage.
template <typename T>
[[gnu::always_inline]] inline void assign_text(access::storage_t& v, std::string_view text) {
  if (auto* s = std::get_if<T>(&v)) {
    if (s->s.size() != text.size()) s->s.assign(text.data(), text.size());
    else copy_short(s->s.data(), text.data(), text.size());
  } else {
    v = T{std::string(text)};
  }
}

// ASCII is valid UTF-8: eight bytes at a time (a short string in one load
// when the message holds eight bytes from its start); anything else is
// checked in full.
bool fast_valid_utf8(std::string_view s, const unsigned char* end) noexcept {
  if (s.size() <= 8 && end - reinterpret_cast<const unsigned char*>(s.data()) >= 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data(), 8);
    const std::uint64_t bits = s.size() == 8 ? 0x8080808080808080ULL : (std::uint64_t{1} << (8 * s.size())) - 1;
    if constexpr (std::endian::native == std::endian::little)
      if ((w & bits & 0x8080808080808080ULL) == 0) return true;
    return detail::valid_utf8(s);
  }
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if ((w & 0x8080808080808080ULL) != 0) return detail::valid_utf8(s);
  }
  for (; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0x80) != 0) return detail::valid_utf8(s);
  return true;
}

// A key's length and its first eight bytes: equal keys have equal
// fingerprints, and keys of up to eight bytes are equal when theirs are.
struct key_print {
  std::uint64_t head;
  std::size_t size;
  friend bool operator==(const key_print&, const key_print&) = default;
};

key_print fingerprint(std::string_view k, const unsigned char* end) noexcept {
  std::uint64_t head = 0;
  if constexpr (std::endian::native == std::endian::little) {
    if (end - reinterpret_cast<const unsigned char*>(k.data()) >= 8) {
      std::memcpy(&head, k.data(), 8);
      if (k.size() < 8) head &= (std::uint64_t{1} << (8 * k.size())) - 1;  // the first k.size() bytes
      return {head, k.size()};
    }
  }
  std::memcpy(&head, k.data(), std::min<std::size_t>(k.size(), 8));
  return {head, k.size()};
}

bool fast_value(const unsigned char*& p, const unsigned char* end, access::storage_t& v) {
  if (p == end) return false;
  const unsigned char op = *p;
  const std::size_t left = static_cast<std::size_t>(end - p) - 1;
  switch (op) {
  case 'N': v = std::monostate{}; p += 1; return true;
  case 0x88: v = true; p += 1; return true;
  case 0x89: v = false; p += 1; return true;
  case 'K':
    if (left < 1) return false;
    v = static_cast<std::int64_t>(p[1]);
    p += 2;
    return true;
  case 'M':
    if (left < 2) return false;
    v = static_cast<std::int64_t>(load_le<2>(p + 1));
    p += 3;
    return true;
  case 'J':
    if (left < 4) return false;
    v = static_cast<std::int64_t>(static_cast<std::int32_t>(static_cast<std::uint32_t>(load_le<4>(p + 1))));
    p += 5;
    return true;
  case 0x8a: {  // LONG1 of up to 8 bytes: an int64, as the general decoder makes it
    if (left < 1) return false;
    const std::size_t n = p[1];
    if (n > 8 || left - 1 < n) return false;
    std::uint64_t x = load_le(p + 2, n);
    if (n > 0 && n < 8 && (p[1 + n] & 0x80) != 0) x |= ~std::uint64_t{0} << (8 * n);
    v = static_cast<std::int64_t>(x);
    p += 2 + n;
    return true;
  }
  case 'G':
    if (left < 8) return false;
    v = std::bit_cast<double>(__builtin_bswap64(load_le<8>(p + 1)));
    p += 9;
    return true;
  default: break;
  }
  std::string_view text;
  if (const std::size_t w = str_width(op)) {
    if (!fast_counted(p, end, w, text) || !fast_valid_utf8(text, end)) return false;
    assign_text<access::str_t>(v, text);
    return true;
  }
  if (const std::size_t w = bytes_width(op)) {
    if (!fast_counted(p, end, w, text)) return false;
    assign_text<access::bytes_t>(v, text);
    return true;
  }
  return false;
}

class fast_dict {
public:
  fast_dict(std::vector<pydict::value_type>& items) : items_(items) {}

  // One key and its value, memo stores included.
  bool pair(const unsigned char*& p, const unsigned char* end) {
    if (p == end || n_ == fast_max_items) return false;
    std::string_view key;
    const bool counted = *p == 0x8c ? fast_counted<1>(p, end, key) : fast_counted(p, end, str_width(*p), key);
    if (!counted) return false;
    const key_print print = fingerprint(key, end);
    // A key of up to eight bytes is ASCII, hence valid, when its fingerprint
    // (those bytes, the rest zero) has no high bit.
    const bool ascii = key.size() <= 8 && (print.head & 0x8080808080808080ULL) == 0 &&
                       std::endian::native == std::endian::little;
    if ((!ascii && !fast_valid_utf8(key, end)) || !fast_skip_memo(p, end)) return false;
    // One bit per fingerprint in a 64-bit filter: a key whose bit is new is
    // new; otherwise the keys so far are compared.
    const std::uint64_t bit = std::uint64_t{1} << (((print.head ^ print.size) * 0x9E3779B97F4A7C15ULL) >> 58);
    if ((seen_ & bit) != 0) {
      for (std::size_t i = 0; i < n_; ++i)
        if (prints_[i] == print && (key.size() <= 8 || keys_[i] == key))
          return false;  // a duplicate: Python keeps the first position, the general path does that
    }
    seen_ |= bit;
    keys_[n_] = key;
    prints_[n_] = print;
    if (n_ == items_.size()) items_.emplace_back();
    auto& [k, x] = items_[n_];
    assign_text<access::str_t>(access::storage(k), key);
    if (!fast_value(p, end, access::storage(x)) || !fast_skip_memo(p, end)) return false;
    ++n_;
    return true;
  }

  void finish() { items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(n_), items_.end()); }

private:
  std::vector<pydict::value_type>& items_;
  std::array<std::string_view, fast_max_items> keys_;
  std::array<key_print, fast_max_items> prints_;
  std::uint64_t seen_ = 0;
  std::size_t n_ = 0;
};

bool decode_fast(std::span<const std::byte> data, pyobject& out, const pickle_options& options) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const auto* end = p + data.size();
  if (options.max_depth < 1) return false;
  if (end - p >= 2 && p[0] == 0x80) {
    if (p[1] > 5) return false;
    p += 2;
  }
  if (end - p >= 9 && p[0] == 0x95) {
    if (load_le<8>(p + 1) > static_cast<std::uint64_t>(end - p - 9)) return false;
    p += 9;
  }
  if (p == end || *p != '}') return false;
  ++p;
  if (!fast_skip_memo(p, end)) return false;
  auto& v = access::storage(out);
  auto* node = std::get_if<access::dict_p>(&v);
  if (node == nullptr || node->use_count() != 1) {
    v = std::make_shared<detail::pydict_node>();
    node = std::get_if<access::dict_p>(&v);
  }
  detail::pydict_node& n = **node;
  n.depth = 1;
  n.shared = false;
  n.unshareable = false;
  access::index(n.dict).slots.clear();
  fast_dict d(access::items(n.dict));
  for (;;) {
    if (p == end) return false;
    if (*p == '.') {
      if (++p != end) return false;
      break;
    }
    if (*p == '(') {
      ++p;
      for (;;) {
        if (p == end) return false;
        if (*p == 'u') {
          ++p;
          break;
        }
        if (!d.pair(p, end)) return false;
      }
      continue;
    }
    if (!d.pair(p, end) || p == end || *p != 's') return false;
    ++p;
  }
  d.finish();
  return true;
}

} // namespace

void pickle_load(std::span<const std::byte> data, pyobject& out, error_code& ec, const pickle_options& options) {
  if (decode_fast(data, out, options)) {
    ec = {};
    return;
  }
  out = pickle_loads(data, ec, options);
}

void pickle_load(std::span<const std::byte> data, pyobject& out, const pickle_options& options) {
  error_code ec;
  pickle_load(data, out, ec, options);
  if (ec) throw decode_error(ec, std::string(last_decode_error()));
}

pyobject pickle_loads(std::span<const std::byte> data, error_code& ec, const pickle_options& options) {
  try {
    decoder d(data, options);
    pyobject o = d.run();
    ec = {};
    return o;
  } catch (failure& f) {
    ec = detail::set_decode_error(make_error_code(f.code), f.what);
    return {};
  }
}

pyobject pickle_loads(std::span<const std::byte> data, const pickle_options& options) {
  error_code ec;
  pyobject o = pickle_loads(data, ec, options);
  if (ec) throw decode_error(ec, std::string(last_decode_error()));
  return o;
}

void pickle_dump(const pyobject& value, std::vector<std::byte>& out, const pickle_options& options) {
  const std::size_t start = out.size();
  try {
    encoder(out, options).run(value);
  } catch (...) {
    out.resize(start);
    throw;
  }
}

std::vector<std::byte> pickle_dumps(const pyobject& value, const pickle_options& options) {
  std::vector<std::byte> out;
  pickle_dump(value, out, options);
  return out;
}

std::vector<std::byte> pickle_reencode(std::span<const std::byte> data, const pickle_options& options) {
  return pickle_dumps(pickle_loads(data, options), options);
}

} // namespace coropipe
