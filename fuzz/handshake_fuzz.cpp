// SPDX-License-Identifier: BSL-1.0
// Fuzz target for the authentication handshake's message parsing
// (coropipe/handshake.hpp): what a peer sends before it is authenticated.
//
// Input layout: byte 0 is the key's length (mod 16), then the key, then the
// message. Checked properties:
//  - split_digest() accepts exactly the legacy lengths or a `{known}` prefix,
//    and its payload is a suffix of the message;
//  - answer() to a message it accepts yields a response that verify() accepts
//    for the same key, and that a different key rejects;
//  - verify() of the message as the answer to a fixed challenge never
//    succeeds (it would need the HMAC) and never crashes.
#include <coropipe/handshake.hpp>

#include <coropipe/error.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "handshake_fuzz: %s\n", what);
  std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t key_size = std::min<std::size_t>(data[0] % 16U, size - 1);
  const std::string_view key(reinterpret_cast<const char*>(data + 1), key_size);
  const std::string_view message(reinterpret_cast<const char*>(data + 1 + key_size), size - 1 - key_size);
  namespace hs = coropipe::handshake;

  std::string_view digest, payload;
  if (hs::split_digest(message, digest, payload)) {
    if (digest.empty() && message.size() != 16 && message.size() != 20) fail("legacy form of a wrong length");
    if (message.substr(message.size() - payload.size()) != payload) fail("payload is not a suffix");
    if (!digest.empty() && hs::hmac(digest, "k", "d").empty()) fail("accepted an unknown digest");
  }

  std::string response;
  if (!hs::answer(key, message, response)) {
    if (hs::verify(key, message, response)) fail("an answer its own verifier rejects");
    const std::string other = std::string(key) + "x";
    if (!hs::verify(other, message, response)) fail("an answer accepted under another key");
  }

  static const std::string challenge = hs::make_challenge(hs::challenge_form::modern, std::string(40, 'r'));
  if (!hs::verify(key, challenge, message)) {
    // Only the true HMAC may pass: check that it is one.
    std::string expected;
    if (hs::answer(key, challenge, expected) || (message != expected &&
        message != hs::hmac("md5", key, challenge.substr(hs::challenge_prefix.size())) &&
        message.substr(0, 1) != "{"))
      fail("verify accepted something that is not an HMAC of the challenge");
  }
  return 0;
}

#include "replay_main.hpp"  // main() of the replay build (COROPIPE_FUZZ_REPLAY)
