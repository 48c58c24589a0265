// SPDX-License-Identifier: BSL-1.0
// Private parts shared by src/pyobject.cpp and src/pickle.cpp.
#pragma once

#include <coropipe/pickle.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace coropipe::detail {

bool valid_utf8(std::string_view s) noexcept;
std::uint32_t node_depth(const pyobject& o) noexcept;
// The hash a frozenset of these items keeps (pyset_node::hash).
std::size_t frozenset_hash(const pyset& s) noexcept;

// Python's limit on int <-> decimal conversions (sys.get_int_max_str_digits()).
inline constexpr std::size_t max_int_digits = 4300;

// An optional sign and decimal digits (at most max_int_digits); nullopt and
// err set otherwise.
std::optional<pyobject> parse_decimal_int(std::string_view text, std::string& err);

struct pickle_access {
  static void unshare_after_copy(pyobject& o);
  static pyobject::storage& storage(pyobject& o) noexcept { return o.v_; }
  static const pyobject::storage& storage(const pyobject& o) noexcept { return o.v_; }
  static std::vector<pydict::value_type>& items(pydict& d) noexcept { return d.items_; }
  static pyhashed_index& index(pydict& d) noexcept { return d.index_; }
  using storage_t = pyobject::storage;
  using str_t = pyobject::str_t;
  using bytes_t = pyobject::bytes_t;
  using bytearray_t = pyobject::bytearray_t;
  using tuple_t = pyobject::tuple_t;
  using list_t = pyobject::list_t;
  using frozenset_t = pyobject::frozenset_t;
  using dict_p = std::shared_ptr<pydict_node>;
  using set_p = std::shared_ptr<pyset_node>;
  using bigint_p = std::shared_ptr<const pybigint>;

  // The node's nesting depth (0 for a scalar).
  static std::uint32_t depth(const pyobject& o) noexcept {
    const auto& v = o.v_;
    if (const auto* t = std::get_if<tuple_t>(&v)) return t->p->depth;
    if (const auto* l = std::get_if<list_t>(&v)) return l->p->depth;
    if (const auto* d = std::get_if<dict_p>(&v)) return (*d)->depth;
    if (const auto* s = std::get_if<set_p>(&v)) return (*s)->depth;
    if (const auto* f = std::get_if<frozenset_t>(&v)) return f->p->depth;
    return 0;
  }
  // Marks a container as referenced twice (memo GET, DUP); sets *copied to
  // the bytes a copy of a str/bytes costs.
  static void mark_shared(pyobject& o, std::size_t& copied) noexcept {
    auto& v = o.v_;
    if (auto* t = std::get_if<tuple_t>(&v)) t->p->shared = true;
    else if (auto* l = std::get_if<list_t>(&v)) l->p->shared = true;
    else if (auto* d = std::get_if<dict_p>(&v)) (*d)->shared = true;
    else if (auto* s = std::get_if<set_p>(&v)) (*s)->shared = true;
    else if (auto* f = std::get_if<frozenset_t>(&v)) f->p->shared = true;
    else if (auto* a = std::get_if<str_t>(&v)) copied = a->s.size();
    else if (auto* b = std::get_if<bytes_t>(&v)) copied = b->s.size();
    else if (auto* c = std::get_if<bytearray_t>(&v)) copied = c->s.size();
  }
};

} // namespace coropipe::detail
