// SPDX-License-Identifier: BSL-1.0
// coropipe::pyobject: the value type, its equality, hashing and repr().
#include <coropipe/pickle.hpp>

#include "pickle_internal.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <system_error>

namespace coropipe {

namespace {

[[noreturn]] void invalid(const std::string& what) {
  throw system_error(make_error_code(errc::invalid_argument), what);
}

struct unprintable_range {
  std::uint32_t first;
  std::uint32_t last;
};
constexpr unprintable_range unprintable[] = {
#include "pickle_unprintable.inc"
};

bool is_printable(std::uint32_t cp) noexcept {
  const auto* it = std::upper_bound(std::begin(unprintable), std::end(unprintable), cp,
                                    [](std::uint32_t c, const unprintable_range& r) { return c < r.first; });
  if (it == std::begin(unprintable)) return true;
  --it;
  return cp > it->last;
}

std::size_t mix(std::size_t h, std::size_t v) noexcept {
  return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
}

void append_hex(std::string& out, std::uint32_t v, int digits) {
  static constexpr char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) out += hex[(v >> (4 * i)) & 0xF];
}

// The digits Python's repr(float) prints.
void append_float_repr(std::string& out, double d) {
  if (std::isnan(d)) {
    out += "nan";
    return;
  }
  if (std::isinf(d)) {
    out += d < 0 ? "-inf" : "inf";
    return;
  }
  if (d == 0) {
    out += std::signbit(d) ? "-0.0" : "0.0";
    return;
  }
  std::array<char, 64> buf{};
  const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), d, std::chars_format::scientific);
  std::string_view s(buf.data(), static_cast<std::size_t>(r.ptr - buf.data()));
  if (s.front() == '-') {
    out += '-';
    s.remove_prefix(1);
  }
  const std::size_t e = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e))
    if (c != '.') digits += c;
  int exp = 0;
  std::string_view es = s.substr(e + 1);
  if (!es.empty() && es.front() == '+') es.remove_prefix(1);
  std::from_chars(es.data(), es.data() + es.size(), exp);
  const int decpt = exp + 1;
  const int n = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (n > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += 'e';
    out += exp < 0 ? '-' : '+';
    const int a = exp < 0 ? -exp : exp;
    if (a < 10) out += '0';
    out += std::to_string(a);
  } else if (decpt <= 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-decpt), '0');
    out += digits;
  } else if (decpt >= n) {
    out += digits;
    out.append(static_cast<std::size_t>(decpt - n), '0');
    out += ".0";
  } else {
    out.append(digits, 0, static_cast<std::size_t>(decpt));
    out += '.';
    out.append(digits, static_cast<std::size_t>(decpt));
  }
}

char pick_quote(std::string_view s) {
  const bool single = s.find('\'') != std::string_view::npos;
  const bool dbl = s.find('"') != std::string_view::npos;
  return single && !dbl ? '"' : '\'';
}

void append_str_repr(std::string& out, std::string_view s) {
  const char q = pick_quote(s);
  out += q;
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::uint32_t cp = c;
    std::size_t len = 1;
    if (c >= 0x80) {  // valid UTF-8 by construction
      len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
      cp = c & (len == 4 ? 0x07U : len == 3 ? 0x0FU : 0x1FU);
      for (std::size_t k = 1; k < len && i + k < s.size(); ++k)
        cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3FU);
    }
    if (cp == static_cast<unsigned char>(q) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (!is_printable(cp)) {
      if (cp <= 0xFF) {
        out += "\\x";
        append_hex(out, cp, 2);
      } else if (cp <= 0xFFFF) {
        out += "\\u";
        append_hex(out, cp, 4);
      } else {
        out += "\\U";
        append_hex(out, cp, 8);
      }
    } else {
      out.append(s, i, len);
    }
    i += len;
  }
  out += q;
}

void append_bytes_repr(std::string& out, std::string_view s) {
  const char q = pick_quote(s);
  out += "b";
  out += q;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7F) {
      out += "\\x";
      append_hex(out, c, 2);
    } else {
      out += ch;
    }
  }
  out += q;
}

} // namespace

namespace detail {

bool valid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
      min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
      min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
      min = 0x10000;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[k] & 0x3FU);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    p += len;
  }
  return true;
}

std::uint32_t node_depth(const pyobject& o) noexcept { return pickle_access::depth(o); }

} // namespace detail

std::string_view pykind_name(pykind k) noexcept {
  switch (k) {
  case pykind::none: return "NoneType";
  case pykind::bool_: return "bool";
  case pykind::int_: return "int";
  case pykind::float_: return "float";
  case pykind::str: return "str";
  case pykind::bytes: return "bytes";
  case pykind::bytearray: return "bytearray";
  case pykind::tuple: return "tuple";
  case pykind::list: return "list";
  case pykind::dict: return "dict";
  case pykind::set: return "set";
  case pykind::frozenset: return "frozenset";
  }
  return "?";
}

// --- pydict / pyset ---------------------------------------------------------------------

namespace detail {

// Open addressing over item indexes, built once a container passes a few
// items (below that a scan is faster than hashing).
constexpr std::size_t index_threshold = 16;

template <typename KeyOf>
std::ptrdiff_t index_lookup(const pyhashed_index& idx, std::size_t n, const pyobject& key, std::size_t hash,
                            KeyOf key_of) {
  if (idx.slots.empty()) {
    for (std::size_t i = 0; i < n; ++i)
      if (key_of(i) == key) return static_cast<std::ptrdiff_t>(i);
    return -1;
  }
  const std::size_t mask = idx.slots.size() - 1;
  for (std::size_t s = hash & mask;; s = (s + 1) & mask) {
    const std::uint32_t v = idx.slots[s];
    if (v == 0) return -1;
    if (key_of(v - 1) == key) return static_cast<std::ptrdiff_t>(v - 1);
  }
}

template <typename KeyOf>
void index_add(pyhashed_index& idx, std::size_t n_after, std::size_t hash, KeyOf key_of) {
  if (n_after <= index_threshold) return;
  if (idx.slots.size() < 2 * n_after) {
    idx.slots.assign(std::bit_ceil(4 * n_after), 0);
    const std::size_t mask = idx.slots.size() - 1;
    for (std::size_t i = 0; i < n_after; ++i) {
      std::size_t s = hash_value(key_of(i)) & mask;
      while (idx.slots[s] != 0) s = (s + 1) & mask;
      idx.slots[s] = static_cast<std::uint32_t>(i + 1);
    }
    return;
  }
  const std::size_t mask = idx.slots.size() - 1;
  std::size_t s = hash & mask;
  while (idx.slots[s] != 0) s = (s + 1) & mask;
  idx.slots[s] = static_cast<std::uint32_t>(n_after);
}

} // namespace detail

std::ptrdiff_t pydict::lookup(const pyobject& key, std::size_t hash) const {
  return detail::index_lookup(index_, items_.size(), key, hash,
                              [this](std::size_t i) -> const pyobject& { return items_[i].first; });
}

void pydict::add_new(pyobject key, pyobject value, std::size_t hash) {
  items_.emplace_back(std::move(key), std::move(value));
  detail::index_add(index_, items_.size(), hash,
                    [this](std::size_t i) -> const pyobject& { return items_[i].first; });
}

const pyobject* pydict::find(const pyobject& key) const {
  const std::size_t h = index_.slots.empty() ? 0 : hash_value(key);
  const auto i = lookup(key, h);
  return i < 0 ? nullptr : &items_[static_cast<std::size_t>(i)].second;
}

pyobject* pydict::find(const pyobject& key) {
  return const_cast<pyobject*>(static_cast<const pydict&>(*this).find(key));
}

const pyobject& pydict::at(const pyobject& key) const {
  if (const pyobject* v = find(key)) return *v;
  invalid("pydict::at: no key " + key.repr());
}

void pydict::insert_or_assign(pyobject key, pyobject value) {
  if (!key.is_hashable()) invalid("unhashable type: '" + std::string(pykind_name(key.kind())) + "'");
  // Small dicts are scanned: no hash needed until the index is built.
  const std::size_t h =
      index_.slots.empty() && items_.size() + 1 <= detail::index_threshold ? 0 : hash_value(key);
  const auto i = lookup(key, h);
  if (i >= 0) items_[static_cast<std::size_t>(i)].second = std::move(value);
  else add_new(std::move(key), std::move(value), h);
}

pyobject& pydict::operator[](const pyobject& key) {
  if (pyobject* v = find(key)) return *v;
  insert_or_assign(key, pyobject());
  return items_.back().second;
}

void pydict::clear() noexcept {
  items_.clear();
  index_.slots.clear();
}

bool operator==(const pydict& a, const pydict& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a) {
    const pyobject* o = b.find(k);
    if (o == nullptr || !(*o == v)) return false;
  }
  return true;
}

std::ptrdiff_t pyset::lookup(const pyobject& key, std::size_t hash) const {
  return detail::index_lookup(index_, items_.size(), key, hash,
                              [this](std::size_t i) -> const pyobject& { return items_[i]; });
}

bool pyset::contains(const pyobject& key) const {
  return lookup(key, index_.slots.empty() ? 0 : hash_value(key)) >= 0;
}

bool pyset::insert(pyobject key) {
  if (!key.is_hashable()) invalid("unhashable type: '" + std::string(pykind_name(key.kind())) + "'");
  const std::size_t h =
      index_.slots.empty() && items_.size() + 1 <= detail::index_threshold ? 0 : hash_value(key);
  if (lookup(key, h) >= 0) return false;
  items_.push_back(std::move(key));
  detail::index_add(index_, items_.size(), h, [this](std::size_t i) -> const pyobject& { return items_[i]; });
  return true;
}

void pyset::clear() noexcept {
  items_.clear();
  index_.slots.clear();
}

bool operator==(const pyset& a, const pyset& b) {
  if (a.size() != b.size()) return false;
  return std::all_of(a.begin(), a.end(), [&](const pyobject& k) { return b.contains(k); });
}

// --- pyobject ---------------------------------------------------------------------------

namespace detail {
void pickle_access::unshare_after_copy(pyobject& o) {
  std::visit(
      [](auto& x) {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, pyobject::list_t>) {
          if (x.p->unshareable) x.p = std::make_shared<pyseq_node>(pyseq_node{x.p->items});
        } else if constexpr (std::is_same_v<X, std::shared_ptr<pydict_node>>) {
          if (x->unshareable) x = std::make_shared<pydict_node>(pydict_node{x->dict});
        } else if constexpr (std::is_same_v<X, std::shared_ptr<pyset_node>>) {
          if (x->unshareable) x = std::make_shared<pyset_node>(pyset_node{x->set});
        }
      },
      o.v_);
}
} // namespace detail

pyobject::pyobject(const pyobject& o) : v_(o.v_) { detail::pickle_access::unshare_after_copy(*this); }

pyobject& pyobject::operator=(const pyobject& o) {
  if (this != &o) {
    pyobject copy(o);
    v_ = std::move(copy.v_);
  }
  return *this;
}

pyobject::pyobject(std::string_view s) {
  if (!detail::valid_utf8(s)) invalid("pyobject: str is not valid UTF-8");
  v_ = str_t{std::string(s)};
}

pyobject::pyobject(std::string&& s) {
  if (!detail::valid_utf8(s)) invalid("pyobject: str is not valid UTF-8");
  v_ = str_t{std::move(s)};
}

pyobject pyobject::from_uint64(std::uint64_t v) {
  if (v <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return pyobject(static_cast<std::int64_t>(v));
  return int_from_magnitude(false, {static_cast<std::uint32_t>(v), static_cast<std::uint32_t>(v >> 32)});
}

pyobject pyobject::int_from_magnitude(bool negative, std::vector<std::uint32_t> magnitude) {
  while (!magnitude.empty() && magnitude.back() == 0) magnitude.pop_back();
  if (magnitude.size() <= 2) {
    std::uint64_t m = 0;
    if (!magnitude.empty()) m = magnitude[0];
    if (magnitude.size() == 2) m |= std::uint64_t{magnitude[1]} << 32;
    if (!negative && m <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      return pyobject(static_cast<std::int64_t>(m));
    if (negative && m <= (std::uint64_t{1} << 63)) return pyobject(static_cast<std::int64_t>(0 - m));
  }
  pyobject o;
  o.v_ = std::make_shared<const pybigint>(pybigint{negative, std::move(magnitude)});
  return o;
}

pyobject pyobject::int_from_decimal(std::string_view text) {
  std::string err;
  auto r = detail::parse_decimal_int(text, err);
  if (!r) invalid("pyobject::int_from_decimal: " + err);
  return std::move(*r);
}

pyobject pyobject::bytes(std::string_view b) {
  pyobject o;
  o.v_ = bytes_t{std::string(b)};
  return o;
}

pyobject pyobject::bytes(std::span<const std::byte> b) {
  return bytes(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

pyobject pyobject::bytearray(std::string_view b) {
  pyobject o;
  o.v_ = bytearray_t{std::string(b)};
  return o;
}

pyobject pyobject::tuple(std::vector<pyobject> items) {
  pyobject o;
  auto node = std::make_shared<detail::pyseq_node>(detail::pyseq_node{std::move(items)});
  // Tuples never change: their hash and hashability are computed once, from
  // their items' (so nested and shared tuples cost constant time each).
  std::size_t h = 8 * 0x100000001b3ULL;
  for (const auto& item : node->items) {
    node->hashable = node->hashable && item.is_hashable();
    h = mix(h, hash_value(item));
  }
  node->hash = h;
  o.v_ = tuple_t{std::move(node)};
  return o;
}

pyobject pyobject::list(std::vector<pyobject> items) {
  pyobject o;
  o.v_ = list_t{std::make_shared<detail::pyseq_node>(detail::pyseq_node{std::move(items)})};
  return o;
}

pyobject pyobject::dict(std::initializer_list<std::pair<pyobject, pyobject>> items) {
  pydict d;
  for (const auto& [k, v] : items) d.insert_or_assign(k, v);
  return dict(std::move(d));
}

pyobject pyobject::dict(pydict items) {
  pyobject o;
  o.v_ = std::make_shared<detail::pydict_node>(detail::pydict_node{std::move(items)});
  return o;
}

pyobject pyobject::set(std::initializer_list<pyobject> items) {
  pyset s;
  for (const auto& k : items) s.insert(k);
  return set(std::move(s));
}

pyobject pyobject::set(pyset items) {
  pyobject o;
  o.v_ = std::make_shared<detail::pyset_node>(detail::pyset_node{std::move(items)});
  return o;
}

pyobject pyobject::frozenset(std::initializer_list<pyobject> items) {
  pyset s;
  for (const auto& k : items) s.insert(k);
  return frozenset(std::move(s));
}

std::size_t detail::frozenset_hash(const pyset& s) noexcept {
  std::size_t h = 0;
  for (const auto& k : s) h += mix(0x51ed27, hash_value(k));
  return mix(12 * 0x100000001b3ULL, h);
}

pyobject pyobject::frozenset(pyset items) {
  pyobject o;
  auto node = std::make_shared<detail::pyset_node>(detail::pyset_node{std::move(items)});
  node->hash = detail::frozenset_hash(node->set);
  o.v_ = frozenset_t{std::move(node)};
  return o;
}

pykind pyobject::kind() const noexcept {
  switch (v_.index()) {
  case 0: return pykind::none;
  case 1: return pykind::bool_;
  case 2:
  case 3: return pykind::int_;
  case 4: return pykind::float_;
  case 5: return pykind::str;
  case 6: return pykind::bytes;
  case 7: return pykind::bytearray;
  case 8: return pykind::tuple;
  case 9: return pykind::list;
  case 10: return pykind::dict;
  case 11: return pykind::set;
  default: return pykind::frozenset;
  }
}

bool pyobject::is_hashable() const noexcept {
  switch (kind()) {
  case pykind::bytearray:
  case pykind::list:
  case pykind::dict:
  case pykind::set: return false;
  case pykind::tuple: return std::get<tuple_t>(v_).p->hashable;
  default: return true;
  }
}

void pyobject::wrong_kind(pykind expected) const {
  invalid("pyobject: expected " + std::string(pykind_name(expected)) + ", got " +
          std::string(pykind_name(kind())));
}

bool pyobject::as_bool() const {
  if (const bool* b = std::get_if<bool>(&v_)) return *b;
  wrong_kind(pykind::bool_);
}

std::optional<std::int64_t> pyobject::to_int64() const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return *i;
  if (std::holds_alternative<std::shared_ptr<const pybigint>>(v_)) return std::nullopt;
  wrong_kind(pykind::int_);
}

std::optional<std::uint64_t> pyobject::to_uint64() const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) {
    if (*i < 0) return std::nullopt;
    return static_cast<std::uint64_t>(*i);
  }
  if (const auto* b = std::get_if<std::shared_ptr<const pybigint>>(&v_)) {
    const pybigint& big = **b;
    if (big.negative || big.magnitude.size() > 2) return std::nullopt;
    std::uint64_t m = big.magnitude.empty() ? 0 : big.magnitude[0];
    if (big.magnitude.size() == 2) m |= std::uint64_t{big.magnitude[1]} << 32;
    return m;
  }
  wrong_kind(pykind::int_);
}

pybigint pyobject::to_bigint() const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) {
    pybigint b;
    b.negative = *i < 0;
    const std::uint64_t m = b.negative ? 0 - static_cast<std::uint64_t>(*i) : static_cast<std::uint64_t>(*i);
    if (m != 0) b.magnitude.push_back(static_cast<std::uint32_t>(m));
    if ((m >> 32) != 0) b.magnitude.push_back(static_cast<std::uint32_t>(m >> 32));
    return b;
  }
  if (const auto* b = std::get_if<std::shared_ptr<const pybigint>>(&v_)) return **b;
  wrong_kind(pykind::int_);
}

std::string pyobject::int_to_decimal() const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return std::to_string(*i);
  pybigint b = to_bigint();
  std::vector<std::uint32_t> m = b.magnitude;
  std::vector<std::uint32_t> chunks;  // base 10^9, least significant first
  while (!m.empty()) {
    std::uint64_t rem = 0;
    for (std::size_t k = m.size(); k-- > 0;) {
      const std::uint64_t cur = (rem << 32) | m[k];
      m[k] = static_cast<std::uint32_t>(cur / 1000000000U);
      rem = cur % 1000000000U;
    }
    chunks.push_back(static_cast<std::uint32_t>(rem));
    while (!m.empty() && m.back() == 0) m.pop_back();
  }
  std::string out = b.negative ? "-" : "";
  if (chunks.empty()) return "0";
  out += std::to_string(chunks.back());
  for (std::size_t k = chunks.size() - 1; k-- > 0;) {
    std::string part = std::to_string(chunks[k]);
    out.append(9 - part.size(), '0');
    out += part;
  }
  return out;
}

double pyobject::as_float() const {
  if (const double* d = std::get_if<double>(&v_)) return *d;
  wrong_kind(pykind::float_);
}

const std::string& pyobject::as_str() const {
  if (const auto* s = std::get_if<str_t>(&v_)) return s->s;
  wrong_kind(pykind::str);
}

const std::string& pyobject::as_bytes() const {
  if (const auto* s = std::get_if<bytes_t>(&v_)) return s->s;
  if (const auto* s = std::get_if<bytearray_t>(&v_)) return s->s;
  wrong_kind(pykind::bytes);
}

std::string& pyobject::as_bytearray() {
  if (auto* s = std::get_if<bytearray_t>(&v_)) return s->s;
  wrong_kind(pykind::bytearray);
}

const std::vector<pyobject>& pyobject::items() const {
  if (const auto* t = std::get_if<tuple_t>(&v_)) return t->p->items;
  if (const auto* l = std::get_if<list_t>(&v_)) return l->p->items;
  wrong_kind(pykind::list);
}

std::vector<pyobject>& pyobject::as_list() {
  auto* l = std::get_if<list_t>(&v_);
  if (l == nullptr) wrong_kind(pykind::list);
  if (l->p.use_count() > 1) l->p = std::make_shared<detail::pyseq_node>(detail::pyseq_node{l->p->items});
  l->p->unshareable = true;
  return l->p->items;
}

const pydict& pyobject::as_dict() const {
  if (const auto* d = std::get_if<std::shared_ptr<detail::pydict_node>>(&v_)) return (*d)->dict;
  wrong_kind(pykind::dict);
}

pydict& pyobject::as_dict() {
  auto* d = std::get_if<std::shared_ptr<detail::pydict_node>>(&v_);
  if (d == nullptr) wrong_kind(pykind::dict);
  if (d->use_count() > 1) *d = std::make_shared<detail::pydict_node>(detail::pydict_node{(*d)->dict});
  (*d)->unshareable = true;
  return (*d)->dict;
}

const pyset& pyobject::as_set() const {
  if (const auto* s = std::get_if<std::shared_ptr<detail::pyset_node>>(&v_)) return (*s)->set;
  if (const auto* f = std::get_if<frozenset_t>(&v_)) return f->p->set;
  wrong_kind(pykind::set);
}

pyset& pyobject::as_set() {
  auto* s = std::get_if<std::shared_ptr<detail::pyset_node>>(&v_);
  if (s == nullptr) wrong_kind(pykind::set);
  if (s->use_count() > 1) *s = std::make_shared<detail::pyset_node>(detail::pyset_node{(*s)->set});
  (*s)->unshareable = true;
  return (*s)->set;
}

namespace {

// Pairs of shared nodes already found equal in one comparison: a value in
// which one container is referenced many times (a DAG) compares in time
// proportional to its size, not to its expansion.
using equal_pairs = std::set<std::pair<const void*, const void*>>;

bool equal(const pyobject& a, const pyobject& b, equal_pairs& seen);

bool equal_items(const std::vector<pyobject>& x, const std::vector<pyobject>& y, equal_pairs& seen) {
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!equal(x[i], y[i], seen)) return false;
  return true;
}

template <typename Ptr, typename Compare>
bool equal_nodes(const Ptr& x, const Ptr& y, equal_pairs& seen, Compare compare) {
  if (x == y) return true;
  const bool shared = x.use_count() > 1 || y.use_count() > 1;
  const std::pair<const void*, const void*> key{x.get(), y.get()};
  if (shared && seen.count(key) != 0) return true;
  if (!compare()) return false;
  if (shared) seen.insert(key);
  return true;
}

bool equal(const pyobject& a, const pyobject& b, equal_pairs& seen) {
  const auto& av = detail::pickle_access::storage(a);
  const auto& bv = detail::pickle_access::storage(b);
  if (av.index() != bv.index()) return false;
  using A = detail::pickle_access;
  return std::visit(
      [&](const auto& x) -> bool {
        using X = std::decay_t<decltype(x)>;
        const X& y = std::get<X>(bv);
        if constexpr (std::is_same_v<X, std::monostate>) {
          return true;
        } else if constexpr (std::is_same_v<X, bool> || std::is_same_v<X, std::int64_t>) {
          return x == y;
        } else if constexpr (std::is_same_v<X, double>) {
          if (std::isnan(x)) return std::isnan(y);
          return x == y && std::signbit(x) == std::signbit(y);
        } else if constexpr (std::is_same_v<X, A::bigint_p>) {
          return *x == *y;
        } else if constexpr (std::is_same_v<X, A::str_t> || std::is_same_v<X, A::bytes_t> ||
                             std::is_same_v<X, A::bytearray_t>) {
          return x.s == y.s;
        } else if constexpr (std::is_same_v<X, A::tuple_t> || std::is_same_v<X, A::list_t>) {
          return equal_nodes(x.p, y.p, seen, [&] { return equal_items(x.p->items, y.p->items, seen); });
        } else if constexpr (std::is_same_v<X, A::dict_p>) {
          return equal_nodes(x, y, seen, [&] {
            if (x->dict.size() != y->dict.size()) return false;
            for (const auto& [k, v] : x->dict) {
              const pyobject* o = y->dict.find(k);
              if (o == nullptr || !equal(v, *o, seen)) return false;
            }
            return true;
          });
        } else if constexpr (std::is_same_v<X, A::set_p>) {
          return equal_nodes(x, y, seen, [&] { return x->set == y->set; });
        } else {
          return equal_nodes(x.p, y.p, seen, [&] { return x.p->set == y.p->set; });
        }
      },
      av);
}

} // namespace

bool operator==(const pyobject& a, const pyobject& b) {
  equal_pairs seen;
  return equal(a, b, seen);
}

std::size_t hash_value(const pyobject& o) noexcept {
  using P = pyobject;
  const std::size_t seed = o.v_.index() * 0x100000001b3ULL;
  return std::visit(
      [seed](const auto& x) -> std::size_t {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, std::monostate>) {
          return seed;
        } else if constexpr (std::is_same_v<X, bool> || std::is_same_v<X, std::int64_t>) {
          return mix(seed, std::hash<std::int64_t>{}(static_cast<std::int64_t>(x)) * 0x9E3779B97F4A7C15ULL);
        } else if constexpr (std::is_same_v<X, double>) {
          if (std::isnan(x)) return mix(seed, 0x7ff8);
          return mix(seed, std::hash<std::uint64_t>{}(std::bit_cast<std::uint64_t>(x)) * 0x9E3779B97F4A7C15ULL);
        } else if constexpr (std::is_same_v<X, std::shared_ptr<const pybigint>>) {
          std::size_t h = mix(seed, x->negative ? 1 : 0);
          for (std::uint32_t limb : x->magnitude) h = mix(h, limb);
          return h;
        } else if constexpr (std::is_same_v<X, P::str_t> || std::is_same_v<X, P::bytes_t> ||
                             std::is_same_v<X, P::bytearray_t>) {
          return mix(seed, std::hash<std::string_view>{}(x.s));
        } else if constexpr (std::is_same_v<X, P::tuple_t> || std::is_same_v<X, P::frozenset_t>) {
          return x.p->hash;
        } else if constexpr (std::is_same_v<X, P::list_t>) {
          return mix(seed, x.p->items.size());
        } else if constexpr (std::is_same_v<X, std::shared_ptr<detail::pydict_node>>) {
          return mix(seed, x->dict.size());
        } else {
          return mix(seed, x->set.size());
        }
      },
      o.v_);
}

namespace {
void append_repr(std::string& out, const pyobject& o);

void append_items(std::string& out, const std::vector<pyobject>& items) {
  bool first = true;
  for (const auto& item : items) {
    if (!first) out += ", ";
    first = false;
    append_repr(out, item);
  }
}

void append_repr(std::string& out, const pyobject& o) {
  switch (o.kind()) {
  case pykind::none: out += "None"; return;
  case pykind::bool_: out += o.as_bool() ? "True" : "False"; return;
  case pykind::int_: {
    // Python's repr() refuses ints beyond 4300 digits (the decimal conversion
    // is quadratic); coropipe prints those in hexadecimal, a literal Python
    // reads back as the same int.
    if (!o.to_int64()) {
      const pybigint b = o.to_bigint();
      if (b.magnitude.size() > 440) {
        static constexpr char hex[] = "0123456789abcdef";
        out += b.negative ? "-0x" : "0x";
        bool leading = true;
        for (std::size_t k = b.magnitude.size(); k-- > 0;)
          for (int shift = 28; shift >= 0; shift -= 4) {
            const auto nibble = (b.magnitude[k] >> shift) & 0xFU;
            if (leading && nibble == 0) continue;
            leading = false;
            out += hex[nibble];
          }
        return;
      }
    }
    out += o.int_to_decimal();
    return;
  }
  case pykind::float_: append_float_repr(out, o.as_float()); return;
  case pykind::str: append_str_repr(out, o.as_str()); return;
  case pykind::bytes: append_bytes_repr(out, o.as_bytes()); return;
  case pykind::bytearray:
    out += "bytearray(";
    append_bytes_repr(out, o.as_bytes());
    out += ')';
    return;
  case pykind::tuple:
    out += '(';
    append_items(out, o.items());
    if (o.items().size() == 1) out += ',';
    out += ')';
    return;
  case pykind::list:
    out += '[';
    append_items(out, o.items());
    out += ']';
    return;
  case pykind::dict: {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : o.as_dict()) {
      if (!first) out += ", ";
      first = false;
      append_repr(out, k);
      out += ": ";
      append_repr(out, v);
    }
    out += '}';
    return;
  }
  case pykind::set:
  case pykind::frozenset: {
    const bool frozen = o.kind() == pykind::frozenset;
    const auto& items = o.as_set().items();
    if (items.empty()) {
      out += frozen ? "frozenset()" : "set()";
      return;
    }
    if (frozen) out += "frozenset(";
    out += '{';
    append_items(out, items);
    out += '}';
    if (frozen) out += ')';
    return;
  }
  }
}
} // namespace

std::string pyobject::repr() const {
  std::string out;
  append_repr(out, *this);
  return out;
}

// --- conversion helpers -----------------------------------------------------------------

namespace detail {

void pypath::push_key(const pyobject& k) {
  // A scalar key as Python prints it; a container by its kind only (its repr
  // can be as large as the expansion of everything it shares).
  switch (k.kind()) {
  case pykind::tuple:
  case pykind::frozenset: segments_.push_back("[<" + std::string(pykind_name(k.kind())) + ">]"); return;
  default: break;
  }
  std::string r = k.repr();
  if (r.size() > 80) r = r.substr(0, 77) + "...";
  segments_.push_back('[' + r + ']');
}

bool pypath::mismatch(std::string_view expected, const pyobject& got) {
  return fail("expected " + std::string(expected) + ", got " + std::string(pykind_name(got.kind())));
}

bool pypath::fail(std::string_view message) {
  std::string where;
  for (const auto& s : segments_) where += s;
  if (where.empty()) where = "value";
  error = where + ": " + std::string(message);
  return false;
}

bool pypath::spend(std::size_t n) {
  if (n + 1 > budget) return fail("shared references expand beyond the conversion's limit");
  budget -= n + 1;
  return true;
}

std::string_view integer_type_name(bool is_signed, std::size_t bytes) noexcept {
  switch (bytes) {
  case 1: return is_signed ? "int8" : "uint8";
  case 2: return is_signed ? "int16" : "uint16";
  case 4: return is_signed ? "int32" : "uint32";
  default: return is_signed ? "int64" : "uint64";
  }
}

} // namespace detail

} // namespace coropipe
