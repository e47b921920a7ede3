#include "server/cors.h"

#include <algorithm>
#include <cctype>
#include <set>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace tessera {
namespace {

// What "*" in --allowed-methods stands for (Starlette's ALL_METHODS).
const std::vector<std::string> kAllMethods = {"DELETE", "GET",  "HEAD", "OPTIONS",
                                              "PATCH",  "POST", "PUT"};
// Headers a browser may always send (the CORS safelist); listed with the allowed ones.
const std::vector<std::string> kSafelistedHeaders = {"accept", "accept-language",
                                                     "content-language", "content-type"};

bool contains(const std::vector<std::string>& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

bool all_origins(const CorsPolicy& p) {
  return contains(p.allowed_origins, "*");
}

bool origin_allowed(const CorsPolicy& p, const std::string& origin) {
  return all_origins(p) || contains(p.allowed_origins, origin);
}

std::vector<std::string> methods_of(const CorsPolicy& p) {
  return contains(p.allowed_methods, "*") ? kAllMethods : p.allowed_methods;
}

}  // namespace

CorsPreflight cors_preflight(const CorsPolicy& policy, const std::string& origin,
                             const std::string& requested_method,
                             const std::string& requested_headers, bool has_requested_headers) {
  CorsPreflight out;
  // With credentials, or with a list of origins, the answer names the one origin it allows,
  // so caches must keep answers apart by Origin.
  const bool explicit_origin = !all_origins(policy) || policy.allow_credentials;
  std::vector<std::string> failures;
  if (origin_allowed(policy, origin)) {
    out.headers.emplace_back("Access-Control-Allow-Origin", explicit_origin ? origin : "*");
  } else {
    failures.push_back("origin");
  }
  if (explicit_origin) out.headers.emplace_back("Vary", "Origin");
  const std::vector<std::string> methods = methods_of(policy);
  out.headers.emplace_back("Access-Control-Allow-Methods", join(methods));
  out.headers.emplace_back("Access-Control-Max-Age", "600");
  if (!contains(methods, requested_method)) failures.push_back("method");

  const bool all_headers = contains(policy.allowed_headers, "*");
  std::set<std::string> allowed(kSafelistedHeaders.begin(), kSafelistedHeaders.end());
  for (const std::string& h : policy.allowed_headers) allowed.insert(lower(h));
  if (all_headers) {
    // Any header is allowed: echo what the browser asked for.
    if (has_requested_headers)
      out.headers.emplace_back("Access-Control-Allow-Headers", requested_headers);
  } else {
    out.headers.emplace_back("Access-Control-Allow-Headers",
                             join(std::vector<std::string>(allowed.begin(), allowed.end())));
    if (has_requested_headers) {
      size_t start = 0;
      while (start <= requested_headers.size()) {
        size_t comma = requested_headers.find(',', start);
        if (comma == std::string::npos) comma = requested_headers.size();
        const std::string h = lower(trim(requested_headers.substr(start, comma - start)));
        if (!allowed.count(h)) {
          failures.push_back("headers");
          break;
        }
        start = comma + 1;
      }
    }
  }
  if (policy.allow_credentials)
    out.headers.emplace_back("Access-Control-Allow-Credentials", "true");
  if (failures.empty()) {
    out.body = "OK";
  } else {
    out.status = 400;
    out.body = "Disallowed CORS " + join(failures);
  }
  return out;
}

HeaderList cors_response_headers(const CorsPolicy& policy, const std::string& origin,
                                 bool request_has_cookie) {
  HeaderList out;
  // "*" does not cover a request with cookies: the browser needs the origin named.
  if (all_origins(policy) && !request_has_cookie) {
    out.emplace_back("Access-Control-Allow-Origin", "*");
  } else if (origin_allowed(policy, origin)) {
    out.emplace_back("Access-Control-Allow-Origin", origin);
    out.emplace_back("Vary", "Origin");
  }
  if (policy.allow_credentials) out.emplace_back("Access-Control-Allow-Credentials", "true");
  return out;
}

std::vector<std::string> parse_cors_list(const std::string& flag, const std::string& value) {
  const std::string text = trim(value);
  std::vector<std::string> out;
  if (!text.empty() && (text.front() == '[' || text.front() == '{' || text.front() == '"')) {
    nlohmann::json parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_string()) return {parsed.get<std::string>()};
    if (parsed.is_discarded() || !parsed.is_array())
      fail("{}: '{}' is not a JSON list of strings", flag, value);
    for (const nlohmann::json& item : parsed) {
      if (!item.is_string()) fail("{}: '{}' is not a JSON list of strings", flag, value);
      out.push_back(item.get<std::string>());
    }
    return out;
  }
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = trim(text.substr(start, comma - start));
    if (!item.empty()) out.push_back(item);
    start = comma + 1;
  }
  if (out.empty()) fail("{}: give a JSON list such as '[\"*\"]'", flag);
  return out;
}

}  // namespace tessera
