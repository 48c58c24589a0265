// SPDX-License-Identifier: BSL-1.0
#include <coropipe/json.hpp>

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/attach.hpp>
#include <coropipe/channel.hpp>
#include <coropipe/decode_error.hpp>
#include <coropipe/error.hpp>
#include <coropipe/pipe.hpp>

#include <coropipe/asio.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

using coropipe::errc;
using nlohmann::json;

namespace shop {
// A class type with nlohmann's to_json/from_json: a channel carries it as JSON.
struct order {
  std::string item;
  int count = 0;
  std::vector<std::string> notes;
  friend bool operator==(const order&, const order&) = default;
};
void to_json(json& j, const order& o) { j = json{{"item", o.item}, {"count", o.count}, {"notes", o.notes}}; }
void from_json(const json& j, order& o) {
  j.at("item").get_to(o.item);
  j.at("count").get_to(o.count);
  j.at("notes").get_to(o.notes);
}

// Trivially copyable: bytes by default, JSON when wrapped in as_json.
struct point {
  int x = 0;
  int y = 0;
  friend bool operator==(const point&, const point&) = default;
};
void to_json(json& j, const point& p) { j = json::array({p.x, p.y}); }
void from_json(const json& j, point& p) {
  j.at(0).get_to(p.x);
  j.at(1).get_to(p.y);
}
} // namespace shop

namespace {

std::string text_of(const std::vector<std::byte>& b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

coropipe::message_view view_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

template <typename T>
std::string encode(const T& v) {
  std::vector<std::byte> out;
  coropipe::codec<T>::encode(v, out);
  return text_of(out);
}

} // namespace

static_assert(coropipe::codable<json>);
static_assert(coropipe::codable<shop::order>);
static_assert(coropipe::codable<coropipe::as_json<shop::point>>);
static_assert(coropipe::codable<coropipe::as_json<std::map<std::string, int>>>);
// Standard containers do not turn into JSON by themselves (wrap them in as_json).
static_assert(!coropipe::detail::json_adl_type<std::vector<std::string>>);
static_assert(!coropipe::detail::json_adl_type<std::map<std::string, int>>);
// Types coropipe already encodes keep their encoding.
static_assert(std::is_same_v<coropipe::codec<shop::point>, coropipe::codec<shop::point, void>>);

TEST_CASE("json: encodings") {
  CHECK(encode(json{{"a", 1}, {"b", {true, nullptr}}}) == R"({"a":1,"b":[true,null]})");
  CHECK(encode(shop::order{"spam", 3, {"x"}}) == R"({"count":3,"item":"spam","notes":["x"]})");
  CHECK(encode(coropipe::as_json<shop::point>({1, 2})) == "[1,2]");
  CHECK(encode(shop::point{1, 2}).size() == sizeof(shop::point));  // still its bytes
  CHECK(encode(std::string("{}")) == "{}");                         // still its bytes
}

TEST_CASE("json: what does not decode, with the library's message") {
  json j;
  CHECK(coropipe::codec<json>::decode(view_of(R"({"a": [1, 2.5, "x"]})"), j) == coropipe::error_code());
  CHECK(j["a"][1] == 2.5);

  CHECK(coropipe::codec<json>::decode(view_of("{\"a\": "), j) == errc::decode_failed);
  CHECK(coropipe::last_decode_error().find("parse error") != std::string_view::npos);

  shop::order o;
  CHECK(coropipe::codec<shop::order>::decode(view_of(R"({"item": 5, "count": 1, "notes": []})"), o) ==
        errc::decode_failed);
  CHECK(coropipe::last_decode_error().find("type must be string, but is number") != std::string_view::npos);
  CHECK(coropipe::codec<shop::order>::decode(view_of(R"({"item": "x"})"), o) == errc::decode_failed);
  CHECK(coropipe::last_decode_error().find("key 'count' not found") != std::string_view::npos);

  coropipe::as_json<std::map<std::string, int>> m;
  CHECK(coropipe::codec<decltype(m)>::decode(view_of(R"({"a": 1, "b": 2})"), m) == coropipe::error_code());
  CHECK(m->at("b") == 2);

  const std::string deep = std::string(1001, '[') + std::string(1001, ']');
  CHECK(coropipe::codec<json>::decode(view_of(deep), j) == errc::nesting_too_deep);
  const std::string ok = std::string(1000, '[') + std::string(1000, ']');
  CHECK(coropipe::codec<json>::decode(view_of(ok), j) == coropipe::error_code());
  // Brackets inside strings do not count.
  const std::string quoted = "[\"" + std::string(2000, '[') + "\\\"\"]";
  CHECK(coropipe::codec<json>::decode(view_of(quoted), j) == coropipe::error_code());
  // Invalid UTF-8 in a string is refused by the parser.
  CHECK(coropipe::codec<json>::decode(view_of("\"\xff\""), j) == errc::decode_failed);
}

TEST_CASE("json: channels of json and of a type with to_json/from_json") {
  asio::io_context io;
  auto d = coropipe::duplex_pair();
  coropipe::channel<json, shop::order> a(coropipe::attach(io, std::move(d.first)));
  coropipe::channel<shop::order, json> b(coropipe::attach(io, std::move(d.second)));
  coropipe_test::run(io, [&]() -> asio::awaitable<void> {
    const json ask = json::parse(R"({"want": "spam", "count": 2})");
    co_await a.async_send(ask, asio::use_awaitable);
    std::optional<json> got = co_await b.async_receive(asio::use_awaitable);
    REQUIRE(got);
    CHECK(*got == ask);
    const shop::order answer{(*got)["want"].get<std::string>(), (*got)["count"].get<int>(), {"hot"}};
    co_await b.async_send(answer, asio::use_awaitable);
    std::optional<shop::order> back = co_await a.async_receive(asio::use_awaitable);
    REQUIRE(back);
    CHECK(*back == answer);
    // Not JSON: decode_failed, and the channel goes on.
    const std::string bad = "not json";
    co_await a.framed().async_send(asio::buffer(bad), asio::use_awaitable);
    co_await a.async_send(ask, asio::use_awaitable);
    auto [ec, none] = co_await b.async_receive(coropipe::compat::as_tuple(asio::use_awaitable));
    CHECK(ec == errc::decode_failed);
    CHECK(!none);
    got = co_await b.async_receive(asio::use_awaitable);
    REQUIRE(got);
    CHECK(*got == ask);
  }());
}
