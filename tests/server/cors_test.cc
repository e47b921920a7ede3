// The CORS rules (server/cors.h), case by case as Starlette's CORSMiddleware decides them for
// vLLM; the HTTP side is in server_test's CorsPreflightsAndResponseHeaders.
#include "server/cors.h"

#include <gtest/gtest.h>

#include <map>

#include "core/status.h"

namespace tessera {
namespace {

std::map<std::string, std::string> as_map(const HeaderList& headers) {
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : headers) {
    EXPECT_FALSE(out.count(name)) << "header twice: " << name;
    out[name] = value;
  }
  return out;
}

TEST(Cors, DefaultsAllowEveryOriginMethodAndHeader) {
  const CorsPolicy any;
  CorsPreflight pre = cors_preflight(any, "http://x", "PATCH", "X-A, x-b", true);
  EXPECT_EQ(pre.status, 200);
  EXPECT_EQ(pre.body, "OK");
  auto h = as_map(pre.headers);
  EXPECT_EQ(h["Access-Control-Allow-Origin"], "*");
  EXPECT_EQ(h["Access-Control-Allow-Headers"], "X-A, x-b");  // echoed as asked
  EXPECT_EQ(h.count("Vary"), 0u);
  // Nothing asked: no Allow-Headers.
  EXPECT_EQ(as_map(cors_preflight(any, "http://x", "GET", "", false).headers)
                .count("Access-Control-Allow-Headers"),
            0u);
  // A method name is matched as written (browsers send it upper-case).
  EXPECT_EQ(cors_preflight(any, "http://x", "post", "", false).status, 400);
  EXPECT_EQ(as_map(cors_response_headers(any, "http://x", false)),
            (std::map<std::string, std::string>{{"Access-Control-Allow-Origin", "*"}}));
}

TEST(Cors, CredentialsNameTheOrigin) {
  CorsPolicy p;
  p.allow_credentials = true;
  auto h = as_map(cors_preflight(p, "http://x", "POST", "", false).headers);
  EXPECT_EQ(h["Access-Control-Allow-Origin"], "http://x");
  EXPECT_EQ(h["Vary"], "Origin");
  EXPECT_EQ(h["Access-Control-Allow-Credentials"], "true");
  // A simple response keeps "*" unless the request carries a cookie.
  auto simple = as_map(cors_response_headers(p, "http://x", false));
  EXPECT_EQ(simple["Access-Control-Allow-Origin"], "*");
  EXPECT_EQ(simple["Access-Control-Allow-Credentials"], "true");
  auto cookie = as_map(cors_response_headers(p, "http://x", true));
  EXPECT_EQ(cookie["Access-Control-Allow-Origin"], "http://x");
  EXPECT_EQ(cookie["Vary"], "Origin");
}

TEST(Cors, ListsAreEnforcedAndFailuresNamed) {
  CorsPolicy p;
  p.allowed_origins = {"https://a.example", "https://b.example"};
  p.allowed_methods = {"POST"};
  p.allowed_headers = {"X-Api"};
  CorsPreflight ok = cors_preflight(p, "https://b.example", "POST", "x-api,Content-Type", true);
  EXPECT_EQ(ok.status, 200) << ok.body;
  auto h = as_map(ok.headers);
  EXPECT_EQ(h["Access-Control-Allow-Origin"], "https://b.example");
  EXPECT_EQ(h["Access-Control-Allow-Methods"], "POST");
  EXPECT_EQ(h["Access-Control-Allow-Headers"],
            "accept, accept-language, content-language, content-type, x-api");
  EXPECT_EQ(h["Access-Control-Max-Age"], "600");

  EXPECT_EQ(cors_preflight(p, "https://c.example", "POST", "", false).body,
            "Disallowed CORS origin");
  EXPECT_EQ(cors_preflight(p, "https://a.example", "GET", "", false).body,
            "Disallowed CORS method");
  CorsPreflight bad_header = cors_preflight(p, "https://a.example", "POST", "x-api, x-other", true);
  EXPECT_EQ(bad_header.status, 400);
  EXPECT_EQ(bad_header.body, "Disallowed CORS headers");
  // An origin is compared whole: no prefix or case games.
  EXPECT_EQ(cors_preflight(p, "https://a.example.evil", "POST", "", false).status, 400);
  EXPECT_EQ(cors_preflight(p, "HTTPS://A.EXAMPLE", "POST", "", false).status, 400);

  EXPECT_EQ(as_map(cors_response_headers(p, "https://a.example", false))["Vary"], "Origin");
  EXPECT_TRUE(cors_response_headers(p, "https://c.example", false).empty());
}

TEST(Cors, FlagValues) {
  EXPECT_EQ(parse_cors_list("--allowed-origins", R"(["https://a.example", "http://b:3000"])"),
            (std::vector<std::string>{"https://a.example", "http://b:3000"}));
  EXPECT_EQ(parse_cors_list("--allowed-methods", "GET, POST"),
            (std::vector<std::string>{"GET", "POST"}));
  EXPECT_EQ(parse_cors_list("--allowed-headers", "*"), (std::vector<std::string>{"*"}));
  EXPECT_EQ(parse_cors_list("--allowed-origins", "[]"), (std::vector<std::string>{}));
  EXPECT_EQ(parse_cors_list("--allowed-origins", R"("http://a")"),
            (std::vector<std::string>{"http://a"}));
  for (const char* bad : {"[1]", "[\"a\"", "  ", "{\"a\":1}"}) {
    try {
      parse_cors_list("--allowed-origins", bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--allowed-origins"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace tessera
