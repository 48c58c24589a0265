// SPDX-License-Identifier: BSL-1.0
#include <coropipe/handshake.hpp>

#include <coropipe/error.hpp>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <sys/random.h>

#include <cerrno>
#include <cstring>

namespace coropipe::handshake {

namespace {

constexpr std::size_t legacy_body_size = 20;  // Python <= 3.11's MESSAGE_LENGTH
constexpr std::size_t md5_size = 16;
constexpr std::size_t modern_random_size = 40;  // Python 3.12's MESSAGE_LENGTH
constexpr std::size_t max_digest_name = 8;      // len("sha3_384")

const ::EVP_MD* digest_by_name(std::string_view name) noexcept {
  if (name == "md5") return ::EVP_md5();
  if (name == "sha256") return ::EVP_sha256();
  if (name == "sha384") return ::EVP_sha384();
  if (name == "sha3_256") return ::EVP_sha3_256();
  if (name == "sha3_384") return ::EVP_sha3_384();
  return nullptr;
}

error_code failed() { return make_error_code(errc::authentication_failed); }

} // namespace

std::string hmac(std::string_view digest, std::string_view key, std::string_view data) {
  const ::EVP_MD* md = digest_by_name(digest);
  if (md == nullptr) return {};
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  static const unsigned char empty = 0;
  const void* k = key.empty() ? static_cast<const void*>(&empty) : key.data();
  const auto* d = data.empty() ? &empty : reinterpret_cast<const unsigned char*>(data.data());
  if (::HMAC(md, k, static_cast<int>(key.size()), d, data.size(), out, &n) == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(out), n);
}

bool split_digest(std::string_view message, std::string_view& digest, std::string_view& payload) noexcept {
  if (message.size() == legacy_body_size || message.size() == md5_size) {
    digest = {};
    payload = message;
    return true;
  }
  if (message.empty() || message.front() != '{') return false;
  // Python: message.find(b'}', 1, _MAX_DIGEST_LEN + 2)
  const auto close = message.substr(0, max_digest_name + 2).find('}', 1);
  if (close == std::string_view::npos) return false;
  const auto name = message.substr(1, close - 1);
  if (digest_by_name(name) == nullptr) return false;
  digest = name;
  payload = message.substr(close + 1);
  return true;
}

std::string make_challenge(challenge_form form, std::string_view random) {
  std::string m(challenge_prefix);
  if (form == challenge_form::modern) m += "{sha256}";
  m += random;
  return m;
}

std::string make_challenge(challenge_form form) {
  char random[modern_random_size];
  const std::size_t want = form == challenge_form::modern ? modern_random_size : legacy_body_size;
  std::size_t got = 0;
  while (got < want) {
    const ::ssize_t r = ::getrandom(random + got, want - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw system_error(detail::errno_code(errno), "coropipe::handshake::make_challenge: getrandom");
    }
    got += static_cast<std::size_t>(r);
  }
  return make_challenge(form, std::string_view(random, want));
}

error_code answer(std::string_view authkey, std::string_view message, std::string& response) {
  response.clear();
  if (message.substr(0, challenge_prefix.size()) != challenge_prefix) return failed();
  const auto body = message.substr(challenge_prefix.size());
  if (body.size() < legacy_body_size) return failed();
  std::string_view digest, payload;
  if (!split_digest(body, digest, payload)) return failed();
  if (digest.empty()) {
    // Legacy challenge: the raw HMAC-MD5 of the body.
    response = hmac("md5", authkey, body);
  } else {
    // Modern: the named HMAC over the whole body (prefix included), prefixed.
    // (Appended piece by piece: `"{" + std::string(...)` trips GCC 12's
    // -Wrestrict false positive at -O2, GCC bug 105329.)
    const std::string mac = hmac(digest, authkey, body);
    response.clear();
    response.reserve(digest.size() + 2 + mac.size());
    response.append("{").append(digest).append("}").append(mac);
  }
  return {};
}

error_code verify(std::string_view authkey, std::string_view challenge, std::string_view response) {
  if (challenge.substr(0, challenge_prefix.size()) != challenge_prefix) return failed();
  const auto body = challenge.substr(challenge_prefix.size());
  std::string_view digest, mac;
  if (!split_digest(response, digest, mac)) return failed();
  const std::string expected = hmac(digest.empty() ? "md5" : digest, authkey, body);
  if (expected.empty() || expected.size() != mac.size()) return failed();
  if (::CRYPTO_memcmp(expected.data(), mac.data(), mac.size()) != 0) return failed();
  return {};
}

} // namespace coropipe::handshake
