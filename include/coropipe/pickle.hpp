// SPDX-License-Identifier: BSL-1.0
/// @file
/// Python's pickle, restricted to data: a value type for Python data
/// (`coropipe::pyobject`), a decoder that never runs code, an encoder, and
/// channel codecs so that a Python program's `Connection.send(obj)` /
/// `Connection.recv()` meet C++ values.
///
/// ```
/// coropipe::pyobject msg = coropipe::pyobject::dict({{"id", 7}, {"tags", coropipe::pyobject::list({"a", "b"})}});
/// std::vector<std::byte> bytes = coropipe::pickle_dumps(msg);   // what Python's recv() loads
/// coropipe::pyobject back = coropipe::pickle_loads(bytes);      // == msg
/// std::string text = back.repr();                               // {'id': 7, 'tags': ['a', 'b']}
/// ```
///
/// ### Types
/// None, bool, int (any size, exact), float (NaN, infinities and -0.0
/// exact), str (valid UTF-8, no surrogates), bytes, bytearray, tuple, list,
/// dict (keys of any hashable kind, insertion order kept), set and frozenset
/// (insertion order kept: Python's own order depends on its hashes).
///
/// Containers share their contents between copies until one is changed
/// (copy on write), so a pickle that refers to one list many times decodes
/// in memory proportional to its size, and copies of a pyobject are cheap.
///
/// ### What the decoder accepts
/// Protocols 0 to 5 as CPython writes the types above, memo references and
/// frames included. Older protocols write bytes, bytearray, set and frozenset
/// through a few globals (`_codecs.encode`, `builtins.bytes`,
/// `builtins.bytearray`, `builtins.set`, `builtins.frozenset`, spelled
/// `__builtin__` in protocols 0 to 2): the decoder recognises exactly those
/// names and builds the value itself; it never looks a name up or calls
/// anything. Any other global (`pickle: os.system is not supported`),
/// objects built by REDUCE/BUILD/NEWOBJ, persistent ids, out-of-band buffers,
/// Python 2 strings and recursive structures are refused with
/// `errc::decode_failed`; containers nested deeper than
/// `pickle_options::max_depth` with `errc::nesting_too_deep`. The detail is
/// in last_decode_error() (or the decode_error thrown).
///
/// ### Channels
/// `channel<pyobject>` sends and receives pickles. Other C++ types opt in by
/// being wrapped: `channel<pickled<std::map<std::string, int>>>`; see
/// `pickled` for the types that convert.
#pragma once

#include <coropipe/asio.hpp>
#include <coropipe/channel.hpp>
#include <coropipe/decode_error.hpp>
#include <coropipe/error.hpp>
#include <coropipe/framed_stream.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace coropipe {

class pyobject;

/// The kinds of Python value a pyobject holds.
enum class pykind : std::uint8_t { none, bool_, int_, float_, str, bytes, bytearray, tuple, list, dict, set, frozenset };

/// Python's name for a kind: "NoneType", "bool", "int", "float", "str", ...
[[nodiscard]] std::string_view pykind_name(pykind k) noexcept;

/// An int beyond 64 bits: sign and magnitude (32-bit limbs, least
/// significant first, no leading zero limb).
struct pybigint {
  bool negative = false;
  std::vector<std::uint32_t> magnitude;
  friend bool operator==(const pybigint&, const pybigint&) = default;
};

namespace detail {
struct pyhashed_index {
  std::vector<std::uint32_t> slots;  // item index + 1; 0 is empty
};
struct pickle_access;
struct pyseq_node;
struct pydict_node;
struct pyset_node;
} // namespace detail

/// A dict's items, in insertion order, with lookup by key (hashed beyond a
/// few items). Keys must be hashable (not list, dict, set or bytearray, nor a
/// tuple holding one).
class pydict {
public:
  using value_type = std::pair<pyobject, pyobject>;
  using const_iterator = std::vector<value_type>::const_iterator;

  [[nodiscard]] std::size_t size() const noexcept;
  [[nodiscard]] bool empty() const noexcept;
  [[nodiscard]] const_iterator begin() const noexcept;
  [[nodiscard]] const_iterator end() const noexcept;
  /// The items in insertion order.
  [[nodiscard]] const std::vector<value_type>& items() const noexcept;

  /// The value under @p key, or nullptr.
  [[nodiscard]] const pyobject* find(const pyobject& key) const;
  /// The value under @p key, or nullptr.
  [[nodiscard]] pyobject* find(const pyobject& key);
  /// The value under @p key. @throws system_error (errc::invalid_argument) if absent.
  [[nodiscard]] const pyobject& at(const pyobject& key) const;
  /// Sets @p key to @p value (a new key goes last, as in Python).
  /// @throws system_error (errc::invalid_argument) if @p key is unhashable.
  void insert_or_assign(pyobject key, pyobject value);
  /// The value under @p key, inserted as None if absent.
  pyobject& operator[](const pyobject& key);
  /// Removes all items.
  void clear() noexcept;
  /// Makes room for @p n items in all.
  void reserve(std::size_t n);

  friend bool operator==(const pydict& a, const pydict& b);

private:
  friend class pyobject;
  friend struct detail::pydict_node;
  friend struct detail::pickle_access;
  std::ptrdiff_t lookup(const pyobject& key, std::size_t hash) const;
  void add_new(pyobject key, pyobject value, std::size_t hash);

  std::vector<value_type> items_;
  detail::pyhashed_index index_;
};

/// A set's (or frozenset's) items, in insertion order, with hashed lookup.
class pyset {
public:
  using const_iterator = std::vector<pyobject>::const_iterator;

  [[nodiscard]] std::size_t size() const noexcept;
  [[nodiscard]] bool empty() const noexcept;
  [[nodiscard]] const_iterator begin() const noexcept;
  [[nodiscard]] const_iterator end() const noexcept;
  /// The items in insertion order.
  [[nodiscard]] const std::vector<pyobject>& items() const noexcept;
  [[nodiscard]] bool contains(const pyobject& key) const;
  /// Adds @p key unless present; true if added.
  /// @throws system_error (errc::invalid_argument) if @p key is unhashable.
  bool insert(pyobject key);
  void clear() noexcept;

  friend bool operator==(const pyset& a, const pyset& b);

private:
  friend class pyobject;
  std::ptrdiff_t lookup(const pyobject& key, std::size_t hash) const;
  std::vector<pyobject> items_;
  detail::pyhashed_index index_;
};

/// A Python value: None, bool, int, float, str, bytes, bytearray, tuple,
/// list, dict, set or frozenset. A regular value type: copies are
/// independent (containers are shared until one copy changes).
///
/// Equality is exact, unlike Python's: the kinds must match (`1`, `1.0` and
/// `True` differ), floats are equal when their values are, except that NaN
/// equals NaN and -0.0 differs from 0.0; dicts and sets compare without
/// regard to order, as in Python.
class pyobject {
public:
  /// None.
  pyobject() noexcept = default;
  pyobject(const pyobject& o);
  pyobject(pyobject&&) noexcept = default;
  pyobject& operator=(const pyobject& o);
  pyobject& operator=(pyobject&&) noexcept = default;
  ~pyobject() = default;
  /// None.
  pyobject(std::nullptr_t) noexcept {}
  /// A bool.
  template <typename B>
    requires std::is_same_v<B, bool>
  pyobject(B b) noexcept : v_(b) {}
  /// An int.
  template <typename I>
    requires(std::is_integral_v<I> && !std::is_same_v<I, bool> && !std::is_same_v<I, char>)
  pyobject(I i) {
    if constexpr (std::is_unsigned_v<I> && sizeof(I) >= sizeof(std::int64_t)) {
      if (i > static_cast<I>(std::numeric_limits<std::int64_t>::max())) {
        *this = from_uint64(static_cast<std::uint64_t>(i));
        return;
      }
    }
    v_ = static_cast<std::int64_t>(i);
  }
  /// A float.
  template <typename F>
    requires std::is_floating_point_v<F>
  pyobject(F f) noexcept : v_(static_cast<double>(f)) {}
  /// A str. @throws system_error (errc::invalid_argument) unless valid UTF-8.
  pyobject(std::string_view s);
  /// A str. @throws system_error (errc::invalid_argument) unless valid UTF-8.
  pyobject(const char* s) : pyobject(std::string_view(s)) {}
  /// A str. @throws system_error (errc::invalid_argument) unless valid UTF-8.
  pyobject(const std::string& s) : pyobject(std::string_view(s)) {}
  /// A str. @throws system_error (errc::invalid_argument) unless valid UTF-8.
  pyobject(std::string&& s);

  /// None.
  [[nodiscard]] static pyobject none() noexcept { return {}; }
  /// An int from its decimal digits (an optional sign, then digits).
  /// @throws system_error (errc::invalid_argument) if @p text is not one.
  [[nodiscard]] static pyobject int_from_decimal(std::string_view text);
  /// An int from sign and magnitude.
  [[nodiscard]] static pyobject int_from_magnitude(bool negative, std::vector<std::uint32_t> magnitude);
  /// An int from an unsigned 64-bit value.
  [[nodiscard]] static pyobject from_uint64(std::uint64_t v);
  /// bytes.
  [[nodiscard]] static pyobject bytes(std::string_view b);
  /// bytes.
  [[nodiscard]] static pyobject bytes(std::span<const std::byte> b);
  /// bytearray.
  [[nodiscard]] static pyobject bytearray(std::string_view b);
  /// A tuple.
  [[nodiscard]] static pyobject tuple(std::vector<pyobject> items);
  /// A tuple.
  [[nodiscard]] static pyobject tuple(std::initializer_list<pyobject> items) { return tuple(std::vector(items)); }
  /// A list.
  [[nodiscard]] static pyobject list(std::vector<pyobject> items = {});
  /// A list.
  [[nodiscard]] static pyobject list(std::initializer_list<pyobject> items) { return list(std::vector(items)); }
  /// A dict (a later duplicate key replaces the value, as in Python).
  /// @throws system_error (errc::invalid_argument) if a key is unhashable.
  [[nodiscard]] static pyobject dict(std::initializer_list<std::pair<pyobject, pyobject>> items = {});
  /// A dict. @throws as above.
  [[nodiscard]] static pyobject dict(pydict items);
  /// A set. @throws system_error (errc::invalid_argument) if an item is unhashable.
  [[nodiscard]] static pyobject set(std::initializer_list<pyobject> items = {});
  /// A set.
  [[nodiscard]] static pyobject set(pyset items);
  /// A frozenset. @throws as set().
  [[nodiscard]] static pyobject frozenset(std::initializer_list<pyobject> items = {});
  /// A frozenset.
  [[nodiscard]] static pyobject frozenset(pyset items);

  /// What this holds.
  [[nodiscard]] pykind kind() const noexcept;
  [[nodiscard]] bool is_none() const noexcept { return kind() == pykind::none; }
  [[nodiscard]] bool is_bool() const noexcept { return kind() == pykind::bool_; }
  [[nodiscard]] bool is_int() const noexcept { return kind() == pykind::int_; }
  [[nodiscard]] bool is_float() const noexcept { return kind() == pykind::float_; }
  [[nodiscard]] bool is_str() const noexcept { return kind() == pykind::str; }
  [[nodiscard]] bool is_bytes() const noexcept { return kind() == pykind::bytes; }
  [[nodiscard]] bool is_bytearray() const noexcept { return kind() == pykind::bytearray; }
  [[nodiscard]] bool is_tuple() const noexcept { return kind() == pykind::tuple; }
  [[nodiscard]] bool is_list() const noexcept { return kind() == pykind::list; }
  [[nodiscard]] bool is_dict() const noexcept { return kind() == pykind::dict; }
  [[nodiscard]] bool is_set() const noexcept { return kind() == pykind::set; }
  [[nodiscard]] bool is_frozenset() const noexcept { return kind() == pykind::frozenset; }
  /// Whether Python could use it as a dict key or set item.
  [[nodiscard]] bool is_hashable() const noexcept;

  // Accessors: each @throws system_error (errc::invalid_argument) naming
  // both kinds when this holds another kind.

  /// The bool.
  [[nodiscard]] bool as_bool() const;
  /// The int if it fits in 64 signed bits.
  [[nodiscard]] std::optional<std::int64_t> to_int64() const;
  /// The int if it fits in 64 unsigned bits.
  [[nodiscard]] std::optional<std::uint64_t> to_uint64() const;
  /// The int's sign and magnitude, whatever its size.
  [[nodiscard]] pybigint to_bigint() const;
  /// The int in decimal.
  [[nodiscard]] std::string int_to_decimal() const;
  /// The float.
  [[nodiscard]] double as_float() const;
  /// The str (UTF-8).
  [[nodiscard]] const std::string& as_str() const;
  /// The bytes, or the bytearray's bytes.
  [[nodiscard]] const std::string& as_bytes() const;
  /// The bytearray's bytes, to change.
  [[nodiscard]] std::string& as_bytearray();
  /// The items of a tuple or a list.
  [[nodiscard]] const std::vector<pyobject>& items() const;
  /// The list, to change.
  [[nodiscard]] std::vector<pyobject>& as_list();
  /// The dict.
  [[nodiscard]] const pydict& as_dict() const;
  /// The dict, to change.
  [[nodiscard]] pydict& as_dict();
  /// The set or frozenset.
  [[nodiscard]] const pyset& as_set() const;
  /// The set (not a frozenset), to change.
  [[nodiscard]] pyset& as_set();

  /// What Python's `repr()` prints for the equal object (sets and dicts in
  /// insertion order; ints of any size in full).
  [[nodiscard]] std::string repr() const;

  friend bool operator==(const pyobject& a, const pyobject& b);
  /// A hash consistent with ==, in constant time for containers (tuples
  /// and frozensets keep theirs; list, dict and set hash by kind and size).
  friend std::size_t hash_value(const pyobject& o) noexcept;

private:
  friend struct detail::pickle_access;
  struct str_t {
    std::string s;
  };
  struct bytes_t {
    std::string s;
  };
  struct bytearray_t {
    std::string s;
  };
  struct tuple_t {
    std::shared_ptr<detail::pyseq_node> p;
  };
  struct list_t {
    std::shared_ptr<detail::pyseq_node> p;
  };
  struct frozenset_t {
    std::shared_ptr<detail::pyset_node> p;
  };
  using storage = std::variant<std::monostate, bool, std::int64_t, std::shared_ptr<const pybigint>, double, str_t,
                               bytes_t, bytearray_t, tuple_t, list_t, std::shared_ptr<detail::pydict_node>,
                               std::shared_ptr<detail::pyset_node>, frozenset_t>;
  [[noreturn]] void wrong_kind(pykind expected) const;
  storage v_;
};

inline std::size_t pydict::size() const noexcept { return items_.size(); }
inline bool pydict::empty() const noexcept { return items_.empty(); }
inline pydict::const_iterator pydict::begin() const noexcept { return items_.begin(); }
inline pydict::const_iterator pydict::end() const noexcept { return items_.end(); }
inline const std::vector<pydict::value_type>& pydict::items() const noexcept { return items_; }
inline void pydict::reserve(std::size_t n) { items_.reserve(n); }
inline std::size_t pyset::size() const noexcept { return items_.size(); }
inline bool pyset::empty() const noexcept { return items_.empty(); }
inline pyset::const_iterator pyset::begin() const noexcept { return items_.begin(); }
inline pyset::const_iterator pyset::end() const noexcept { return items_.end(); }
inline const std::vector<pyobject>& pyset::items() const noexcept { return items_; }

namespace detail {
// A container's contents, shared by copies until one changes. A node handed
// out for change (as_list(), ...) is never shared again: copies of it copy
// the contents, so no container can come to hold itself.
struct pyseq_node {
  std::vector<pyobject> items;
  std::size_t hash = 0;      // a tuple's hash, computed when it is made
  bool hashable = true;      // a tuple: whether every item is hashable
  std::uint32_t depth = 1;   // the decoder's nesting bookkeeping
  bool shared = false;       // the decoder handed out a second reference
  bool unshareable = false;  // handed out for change
};
struct pydict_node {
  pydict dict;
  std::uint32_t depth = 1;
  bool shared = false;
  bool unshareable = false;
};
struct pyset_node {
  pyset set;
  std::size_t hash = 0;  // a frozenset's hash, computed when it is made
  std::uint32_t depth = 1;
  bool shared = false;
  bool unshareable = false;
};
} // namespace detail

/// Limits of the pickle decoder.
struct pickle_options {
  /// The deepest nesting of containers accepted (`[[1]]` is 2 deep); deeper
  /// is `errc::nesting_too_deep`. Python itself cannot pickle much deeper
  /// than 1000 levels.
  std::size_t max_depth = 1000;
};

/// Decodes a pickle (protocols 0 to 5, the data subset).
/// @throws decode_error (errc::decode_failed or errc::nesting_too_deep) with the detail.
[[nodiscard]] pyobject pickle_loads(std::span<const std::byte> data, const pickle_options& options = {});
/// Decodes a pickle; on failure sets @p ec (the detail in last_decode_error())
/// and returns None.
[[nodiscard]] pyobject pickle_loads(std::span<const std::byte> data, error_code& ec,
                                    const pickle_options& options = {});
/// Decodes a pickle into @p out, reusing the memory @p out holds where it
/// can: a flat dict of str keys (at most 16) to scalars, strs and bytes,
/// the usual shape of a message, is decoded into the dict @p out already
/// holds (when no copy of @p out shares it), its keys and strs assigned in
/// place, without allocating once warm. Anything else is decoded as by
/// pickle_loads() and assigned. On failure sets @p ec (the detail in
/// last_decode_error()) and leaves None in @p out.
void pickle_load(std::span<const std::byte> data, pyobject& out, error_code& ec, const pickle_options& options = {});
/// As above. @throws decode_error as pickle_loads().
void pickle_load(std::span<const std::byte> data, pyobject& out, const pickle_options& options = {});
/// Decodes a pickle held in a string.
/// @throws decode_error as above.
[[nodiscard]] inline pyobject pickle_loads(std::string_view data, const pickle_options& options = {}) {
  return pickle_loads(std::as_bytes(std::span(data.data(), data.size())), options);
}

/// Appends the pickle of @p value (protocol 4, what Python 3.11 writes by
/// default) to @p out. @throws system_error (errc::nesting_too_deep) if
/// nested deeper than pickle_options::max_depth.
void pickle_dump(const pyobject& value, std::vector<std::byte>& out, const pickle_options& options = {});
/// The pickle of @p value (protocol 4). @throws as pickle_dump().
[[nodiscard]] std::vector<std::byte> pickle_dumps(const pyobject& value, const pickle_options& options = {});

/// Decodes any data pickle and encodes it again in protocol 4: what an echo
/// server of objects does with each message.
/// @throws decode_error as pickle_loads().
[[nodiscard]] std::vector<std::byte> pickle_reencode(std::span<const std::byte> data,
                                                     const pickle_options& options = {});

// ---------------------------------------------------------------------------
// Conversion between pyobject and C++ types.

/// How a C++ type becomes a pyobject and back; specialize for your own
/// types (`static pyobject to(const T&)` and
/// `static bool from(const pyobject&, T&, detail::pypath&)`).
template <typename T, typename Enable = void>
struct pyconvert;

namespace detail {

// Where a conversion is, for its error message: `[2]["name"]`.
class pypath {
public:
  void push_index(std::size_t i) { segments_.push_back('[' + std::to_string(i) + ']'); }
  void push_key(const pyobject& k);
  void pop() { segments_.pop_back(); }
  // Records "<path>: expected <what>, got <kind>" and returns false.
  bool mismatch(std::string_view expected, const pyobject& got);
  // Records "<path>: <message>" and returns false.
  bool fail(std::string_view message);
  std::string error;  // the message, once failed
  std::size_t budget = 0;  // items left to convert (shared references expand)
  bool spend(std::size_t n);

private:
  std::vector<std::string> segments_;
};

template <typename T>
struct is_pyconvertible : std::false_type {};

template <typename T>
concept has_pyconvert = requires(const T& v, T& out, const pyobject& o, pypath& p) {
  { pyconvert<T>::to(v) } -> std::same_as<pyobject>;
  { pyconvert<T>::from(o, out, p) } -> std::same_as<bool>;
};

std::string_view integer_type_name(bool is_signed, std::size_t bytes) noexcept;

} // namespace detail

/// pyobject itself.
template <>
struct pyconvert<pyobject> {
  static pyobject to(const pyobject& v) { return v; }
  static bool from(const pyobject& o, pyobject& out, detail::pypath&) {
    out = o;
    return true;
  }
};

/// bool: Python's bool.
template <>
struct pyconvert<bool> {
  static pyobject to(bool v) { return pyobject(v); }
  static bool from(const pyobject& o, bool& out, detail::pypath& p) {
    if (!o.is_bool()) return p.mismatch("bool", o);
    out = o.as_bool();
    return true;
  }
};

/// Integers: Python's int (a value that does not fit is a mismatch).
template <typename I>
struct pyconvert<I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>>> {
  static pyobject to(I v) {
    if constexpr (std::is_signed_v<I>) return pyobject(static_cast<std::int64_t>(v));
    else return pyobject(static_cast<std::uint64_t>(v));
  }
  static bool from(const pyobject& o, I& out, detail::pypath& p) {
    if (!o.is_int()) return p.mismatch("int", o);
    if constexpr (std::is_signed_v<I>) {
      const auto v = o.to_int64();
      if (!v || *v < std::numeric_limits<I>::min() || *v > std::numeric_limits<I>::max())
        return p.fail("int " + o.repr() + " does not fit in " +
                      std::string(detail::integer_type_name(true, sizeof(I))));
      out = static_cast<I>(*v);
    } else {
      const auto v = o.to_uint64();
      if (!v || *v > std::numeric_limits<I>::max())
        return p.fail("int " + o.repr() + " does not fit in " +
                      std::string(detail::integer_type_name(false, sizeof(I))));
      out = static_cast<I>(*v);
    }
    return true;
  }
};

/// Floating point: Python's float (an int is accepted too when exact).
template <typename F>
struct pyconvert<F, std::enable_if_t<std::is_floating_point_v<F>>> {
  static pyobject to(F v) { return pyobject(static_cast<double>(v)); }
  static bool from(const pyobject& o, F& out, detail::pypath& p) {
    if (o.is_float()) {
      out = static_cast<F>(o.as_float());
      return true;
    }
    if (o.is_int()) {
      if (auto v = o.to_int64(); v && *v >= -(std::int64_t{1} << 53) && *v <= (std::int64_t{1} << 53)) {
        out = static_cast<F>(*v);
        return true;
      }
    }
    return p.mismatch("float", o);
  }
};

/// std::string: Python's str.
template <>
struct pyconvert<std::string> {
  static pyobject to(const std::string& v) { return pyobject(v); }
  static bool from(const pyobject& o, std::string& out, detail::pypath& p) {
    if (!o.is_str()) return p.mismatch("str", o);
    if (!p.spend(o.as_str().size() / 64)) return false;
    out = o.as_str();
    return true;
  }
};

/// std::vector<std::byte>: Python's bytes (a bytearray is accepted too).
template <>
struct pyconvert<std::vector<std::byte>> {
  static pyobject to(const std::vector<std::byte>& v) { return pyobject::bytes(std::span(v)); }
  static bool from(const pyobject& o, std::vector<std::byte>& out, detail::pypath& p) {
    if (!o.is_bytes() && !o.is_bytearray()) return p.mismatch("bytes", o);
    const std::string& b = o.as_bytes();
    if (!p.spend(b.size() / 64)) return false;
    const auto* d = reinterpret_cast<const std::byte*>(b.data());
    out.assign(d, d + b.size());
    return true;
  }
};

/// std::optional: None when empty.
template <typename T>
struct pyconvert<std::optional<T>> {
  static pyobject to(const std::optional<T>& v) { return v ? pyconvert<T>::to(*v) : pyobject(); }
  static bool from(const pyobject& o, std::optional<T>& out, detail::pypath& p) {
    if (o.is_none()) {
      out.reset();
      return true;
    }
    T v{};
    if (!pyconvert<T>::from(o, v, p)) return false;
    out = std::move(v);
    return true;
  }
};

/// std::vector (other than of std::byte): Python's list (a tuple is accepted too).
template <typename T, typename A>
struct pyconvert<std::vector<T, A>, std::enable_if_t<!std::is_same_v<T, std::byte>>> {
  static pyobject to(const std::vector<T, A>& v) {
    std::vector<pyobject> items;
    items.reserve(v.size());
    for (const auto& x : v) items.push_back(pyconvert<T>::to(x));
    return pyobject::list(std::move(items));
  }
  static bool from(const pyobject& o, std::vector<T, A>& out, detail::pypath& p) {
    if (!o.is_list() && !o.is_tuple()) return p.mismatch("list", o);
    const auto& items = o.items();
    if (!p.spend(items.size())) return false;
    out.clear();
    out.reserve(items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      p.push_index(i);
      T v{};
      if (!pyconvert<T>::from(items[i], v, p)) return false;
      out.push_back(std::move(v));
      p.pop();
    }
    return true;
  }
};

namespace detail {
template <typename Map>
struct pyconvert_map {
  using K = typename Map::key_type;
  using V = typename Map::mapped_type;
  static pyobject to(const Map& m) {
    pydict d;
    for (const auto& [k, v] : m) d.insert_or_assign(pyconvert<K>::to(k), pyconvert<V>::to(v));
    return pyobject::dict(std::move(d));
  }
  static bool from(const pyobject& o, Map& out, pypath& p) {
    if (!o.is_dict()) return p.mismatch("dict", o);
    const pydict& d = o.as_dict();
    if (!p.spend(d.size())) return false;
    out.clear();
    for (const auto& [k, v] : d) {
      p.push_key(k);
      K key{};
      V value{};
      if (!pyconvert<K>::from(k, key, p) || !pyconvert<V>::from(v, value, p)) return false;
      out.insert_or_assign(std::move(key), std::move(value));
      p.pop();
    }
    return true;
  }
};
} // namespace detail

/// std::map: Python's dict.
template <typename K, typename V, typename C, typename A>
struct pyconvert<std::map<K, V, C, A>> : detail::pyconvert_map<std::map<K, V, C, A>> {};
/// std::unordered_map: Python's dict.
template <typename K, typename V, typename H, typename E, typename A>
struct pyconvert<std::unordered_map<K, V, H, E, A>> : detail::pyconvert_map<std::unordered_map<K, V, H, E, A>> {};

/// std::set: Python's set (a frozenset, list or tuple is accepted too).
template <typename K, typename C, typename A>
struct pyconvert<std::set<K, C, A>> {
  static pyobject to(const std::set<K, C, A>& s) {
    pyset out;
    for (const auto& k : s) out.insert(pyconvert<K>::to(k));
    return pyobject::set(std::move(out));
  }
  static bool from(const pyobject& o, std::set<K, C, A>& out, detail::pypath& p) {
    const std::vector<pyobject>* items = nullptr;
    if (o.is_set() || o.is_frozenset()) items = &o.as_set().items();
    else if (o.is_list() || o.is_tuple()) items = &o.items();
    else return p.mismatch("set", o);
    if (!p.spend(items->size())) return false;
    out.clear();
    for (std::size_t i = 0; i < items->size(); ++i) {
      p.push_index(i);
      K k{};
      if (!pyconvert<K>::from((*items)[i], k, p)) return false;
      out.insert(std::move(k));
      p.pop();
    }
    return true;
  }
};

namespace detail {
template <typename Tuple, std::size_t... I>
pyobject tuple_to(const Tuple& t, std::index_sequence<I...>) {
  return pyobject::tuple(std::vector<pyobject>{pyconvert<std::remove_cvref_t<std::tuple_element_t<I, Tuple>>>::to(
      std::get<I>(t))...});
}
template <typename Tuple, std::size_t... I>
bool tuple_from(const pyobject& o, Tuple& out, pypath& p, std::index_sequence<I...>) {
  if (!o.is_tuple() && !o.is_list()) return p.mismatch("tuple", o);
  const auto& items = o.items();
  if (items.size() != sizeof...(I))
    return p.fail("expected a tuple of " + std::to_string(sizeof...(I)) + " items, got " +
                  std::to_string(items.size()));
  bool ok = true;
  ((ok = ok && (p.push_index(I),
                pyconvert<std::remove_cvref_t<std::tuple_element_t<I, Tuple>>>::from(items[I], std::get<I>(out), p)) &&
         (p.pop(), true)),
   ...);
  return ok;
}
} // namespace detail

/// std::pair: Python's tuple of two.
template <typename A, typename B>
struct pyconvert<std::pair<A, B>> {
  static pyobject to(const std::pair<A, B>& v) { return detail::tuple_to(v, std::index_sequence_for<A, B>{}); }
  static bool from(const pyobject& o, std::pair<A, B>& out, detail::pypath& p) {
    return detail::tuple_from(o, out, p, std::index_sequence_for<A, B>{});
  }
};

/// std::tuple: Python's tuple.
template <typename... T>
struct pyconvert<std::tuple<T...>> {
  static pyobject to(const std::tuple<T...>& v) { return detail::tuple_to(v, std::index_sequence_for<T...>{}); }
  static bool from(const pyobject& o, std::tuple<T...>& out, detail::pypath& p) {
    return detail::tuple_from(o, out, p, std::index_sequence_for<T...>{});
  }
};

/// std::variant: the first alternative the value converts to (std::monostate is None).
template <typename... T>
struct pyconvert<std::variant<T...>> {
  static pyobject to(const std::variant<T...>& v) {
    return std::visit([](const auto& x) { return pyconvert<std::remove_cvref_t<decltype(x)>>::to(x); }, v);
  }
  static bool from(const pyobject& o, std::variant<T...>& out, detail::pypath& p) {
    bool done = false;
    const std::size_t budget = p.budget;
    ((done = done || try_one<T>(o, out, p, budget)), ...);
    if (done) return true;
    p.error.clear();
    std::string names;
    ((names += (names.empty() ? "" : " or ") + describe<T>()), ...);
    return p.mismatch(names, o);
  }

private:
  template <typename U>
  static bool try_one(const pyobject& o, std::variant<T...>& out, detail::pypath& p, std::size_t budget) {
    detail::pypath attempt;
    attempt.budget = budget;
    U v{};
    if (!pyconvert<U>::from(o, v, attempt)) return false;
    p.budget = attempt.budget;
    out = std::move(v);
    return true;
  }
  template <typename U>
  static std::string describe() {
    if constexpr (std::is_same_v<U, bool>) return "bool";
    else if constexpr (std::is_integral_v<U>) return "int";
    else if constexpr (std::is_floating_point_v<U>) return "float";
    else if constexpr (std::is_same_v<U, std::string>) return "str";
    else if constexpr (std::is_same_v<U, std::vector<std::byte>>) return "bytes";
    else if constexpr (std::is_same_v<U, std::monostate>) return "None";
    else return "a container";
  }
};

/// std::monostate: None.
template <>
struct pyconvert<std::monostate> {
  static pyobject to(std::monostate) { return {}; }
  static bool from(const pyobject& o, std::monostate&, detail::pypath& p) {
    return o.is_none() || p.mismatch("None", o);
  }
};

/// The pyobject for @p v.
template <detail::has_pyconvert T>
[[nodiscard]] pyobject to_pyobject(const T& v) {
  return pyconvert<T>::to(v);
}

/// Converts @p o into @p out; on a mismatch sets @p ec to
/// `errc::decode_failed` and last_decode_error() to where and what
/// (`[2]["name"]: expected int, got str`).
template <detail::has_pyconvert T>
void from_pyobject(const pyobject& o, T& out, error_code& ec, std::size_t budget = std::size_t{1} << 20) {
  detail::pypath p;
  p.budget = budget;
  if (pyconvert<T>::from(o, out, p)) {
    ec = {};
  } else {
    ec = detail::set_decode_error(errc::decode_failed, p.error);
  }
}

/// Converts @p o to a `T`. @throws decode_error on a mismatch.
template <detail::has_pyconvert T>
[[nodiscard]] T from_pyobject(const pyobject& o) {
  T out{};
  error_code ec;
  from_pyobject(o, out, ec);
  if (ec) throw decode_error(ec, std::string(last_decode_error()));
  return out;
}

// ---------------------------------------------------------------------------
// Channels.

/// A `T` that travels as a pickle: `channel<pickled<T>>` sends what
/// Python's `recv()` loads as the corresponding Python value and receives
/// what Python's `send()` wrote. T is any type pyconvert knows: integers,
/// floating point, bool, std::string (str), std::vector<std::byte> (bytes),
/// std::optional (None), std::vector (list), std::map/std::unordered_map
/// (dict), std::set (set), std::pair/std::tuple (tuple), std::variant of
/// those, pyobject, and your own pyconvert specializations.
///
/// A message that does not convert is `errc::decode_failed`, the detail in
/// last_decode_error().
template <typename T>
struct pickled {
  T value{};

  pickled() = default;
  /// Wraps @p v (implicitly, so `ch.async_send(my_map, ...)` works).
  pickled(T v) : value(std::move(v)) {}
  // User-provided copies keep this type out of the byte-copying codec
  // (which takes trivially copyable types).
  pickled(const pickled& o) : value(o.value) {}
  pickled(pickled&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : value(std::move(o.value)) {}
  pickled& operator=(const pickled& o) {
    value = o.value;
    return *this;
  }
  pickled& operator=(pickled&& o) noexcept(std::is_nothrow_move_assignable_v<T>) {
    value = std::move(o.value);
    return *this;
  }
  ~pickled() = default;

  T& operator*() noexcept { return value; }
  const T& operator*() const noexcept { return value; }
  T* operator->() noexcept { return &value; }
  const T* operator->() const noexcept { return &value; }
  friend bool operator==(const pickled& a, const pickled& b) { return a.value == b.value; }
};

/// pyobject: a pickle (protocol 4) each way.
template <>
struct codec<pyobject> {
  static void encode(const pyobject& v, std::vector<std::byte>& out) { pickle_dump(v, out); }
  static error_code decode(message_view in, pyobject& out) {
    error_code ec;
    pickle_load(in, out, ec);
    return ec;
  }
};

/// pickled<T>: the pickle of T's Python counterpart.
template <typename T>
struct codec<pickled<T>> {
  static void encode(const pickled<T>& v, std::vector<std::byte>& out) { pickle_dump(pyconvert<T>::to(v.value), out); }
  static error_code decode(message_view in, pickled<T>& out) {
    error_code ec;
    const pyobject o = pickle_loads(in, ec);
    if (ec) return ec;
    from_pyobject(o, out.value, ec, 64 * in.size() + 4096);
    return ec;
  }
};

} // namespace coropipe

template <>
struct std::hash<coropipe::pyobject> {
  std::size_t operator()(const coropipe::pyobject& o) const noexcept { return hash_value(o); }
};
