// Cross-origin resource sharing, as vLLM's server does it (Starlette's CORSMiddleware with
// --allowed-origins, --allowed-methods, --allowed-headers and --allow-credentials; every list
// defaults to ["*"]). Pure functions over header values, so the rules are testable without a
// socket; openai_server.cc applies them to every request that carries an Origin header.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace tessera {

struct CorsPolicy {
  std::vector<std::string> allowed_origins = {"*"};
  std::vector<std::string> allowed_methods = {"*"};
  std::vector<std::string> allowed_headers = {"*"};
  bool allow_credentials = false;
};

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct CorsPreflight {
  int status = 200;  // 400 when the origin, method or a requested header is not allowed
  std::string body;  // "OK", or "Disallowed CORS origin, method" naming what failed
  HeaderList headers;
};

// The answer to a preflight: an OPTIONS request with Origin and Access-Control-Request-Method.
// `requested_headers` is Access-Control-Request-Headers (empty: the request sent none).
CorsPreflight cors_preflight(const CorsPolicy& policy, const std::string& origin,
                             const std::string& requested_method,
                             const std::string& requested_headers, bool has_requested_headers);

// Headers added to any other response to a request with an Origin header. A disallowed origin
// gets none, and the browser keeps the response from the page.
HeaderList cors_response_headers(const CorsPolicy& policy, const std::string& origin,
                                 bool request_has_cookie);

// A flag's value: a JSON list of strings (vLLM's form, e.g. '["https://a.example"]'), or one
// plain string, or strings separated by commas. Throws tessera::Error naming `flag` otherwise.
std::vector<std::string> parse_cors_list(const std::string& flag, const std::string& value);

}  // namespace tessera
