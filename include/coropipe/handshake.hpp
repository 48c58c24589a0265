// SPDX-License-Identifier: BSL-1.0
/// @file
/// The messages of Python's `multiprocessing.connection` authentication
/// handshake, built and checked without any I/O (listener.hpp runs them over
/// a connection; a fuzz target feeds them arbitrary bytes).
///
/// Each side proves it knows the shared authkey by answering a random
/// challenge with an HMAC of it; the server challenges first, then the
/// client challenges the server. Two generations exist:
///
/// - **legacy** (Python 3.11 and older): the challenge is `#CHALLENGE#`
///   followed by 20 random bytes; the answer is the raw 16-byte HMAC-MD5 of
///   those bytes.
/// - **modern** (Python 3.12 and newer): the challenge is `#CHALLENGE#`
///   followed by `{sha256}` and 40 random bytes; the answer is `{sha256}`
///   followed by the HMAC-SHA256 of the whole challenge body, prefix
///   included (so the digest cannot be downgraded).
///
/// A body or answer of exactly 16 or 20 bytes is the legacy form, as
/// CPython 3.12 decides; otherwise it must start with `{name}` where name is
/// one of md5, sha256, sha384, sha3_256, sha3_384. Both roles here accept
/// both generations, so every pairing of coropipe, Python 3.11 and 3.12+
/// authenticates. HMACs come from OpenSSL's libcrypto and are compared in
/// constant time.
#pragma once

#include <coropipe/asio.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace coropipe::handshake {

/// The prefix of every challenge message.
inline constexpr std::string_view challenge_prefix = "#CHALLENGE#";
/// The verifier's reply to a correct answer.
inline constexpr std::string_view welcome = "#WELCOME#";
/// The verifier's reply to a wrong answer (then it closes the connection).
inline constexpr std::string_view failure = "#FAILURE#";
/// The largest handshake message either side accepts, as Python's `recv_bytes(256)`.
inline constexpr std::size_t max_message_size = 256;

/// Which challenge a side sends (every side answers both).
enum class challenge_form : unsigned char {
  modern,  ///< `{sha256}` + 40 random bytes: Python 3.12's form (the default)
  legacy,  ///< 20 random bytes: Python 3.11's form
};

/// The challenge message for @p form: `#CHALLENGE#` then the body; the body
/// (what the answer's HMAC covers) is the message minus `challenge_prefix`.
/// Random bytes come from getrandom(2).
/// @throws coropipe::system_error when the kernel gives no random bytes.
[[nodiscard]] std::string make_challenge(challenge_form form);
/// The same with caller-given random bytes (tests, fuzzing): @p random must be
/// 20 bytes for legacy and 40 for modern.
[[nodiscard]] std::string make_challenge(challenge_form form, std::string_view random);

/// The answer to a received challenge message @p message (with its
/// `#CHALLENGE#` prefix), as Python 3.12's `answer_challenge` computes it.
/// @returns clear, or `errc::authentication_failed` for a message that is no
/// valid challenge (no prefix, a body shorter than 20 bytes, an unknown digest).
[[nodiscard]] error_code answer(std::string_view authkey, std::string_view message, std::string& response);

/// Checks @p response against the challenge message @p challenge that this
/// side sent, as Python 3.12's `_verify_challenge` does (a legacy 16-byte
/// answer is HMAC-MD5; a prefixed one names its digest). Constant-time compare.
/// @returns clear when the peer knows the key, else `errc::authentication_failed`.
[[nodiscard]] error_code verify(std::string_view authkey, std::string_view challenge, std::string_view response);

/// Splits a body or answer into digest name and payload, the way CPython
/// 3.12's `_get_digest_name_and_payload` does: 16 or 20 bytes give an empty
/// name (legacy), otherwise `{name}` must lead with an allowed name.
/// @returns false for anything else.
[[nodiscard]] bool split_digest(std::string_view message, std::string_view& digest, std::string_view& payload) noexcept;

/// HMAC of @p data under @p key with the digest named @p digest (Python's
/// names: md5, sha256, sha384, sha3_256, sha3_384); empty for an unknown name.
[[nodiscard]] std::string hmac(std::string_view digest, std::string_view key, std::string_view data);

} // namespace coropipe::handshake
