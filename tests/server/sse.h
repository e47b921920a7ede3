// The JSON chunks of a server-sent-events body ("data: {...}" lines; "data: [DONE]" skipped).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::testing {

inline std::vector<nlohmann::json> sse_chunks(const std::string& body) {
  std::vector<nlohmann::json> chunks;
  for (size_t at = 0; (at = body.find("data: {", at)) != std::string::npos;) {
    const size_t end = body.find("\n\n", at);
    chunks.push_back(nlohmann::json::parse(body.substr(at + 6, end - at - 6)));
    at = end;
  }
  return chunks;
}

}  // namespace tessera::testing
