// Errors answered to an HTTP client in OpenAI's shape: {"error": {"message", "type", "param",
// "code"}} with the matching status.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "core/status.h"

namespace tessera {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "")
      : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  nlohmann::json to_json() const;

 private:
  int status_;
  std::string param_;
};

// The OpenAI error type for an HTTP status ("BadRequestError", "NotFoundError", ...).
const char* error_type_for_status(int status);
// The HTTP status for a tessera::Error raised while serving a request.
int status_for_error_kind(ErrorKind kind);
nlohmann::json error_json(int status, const std::string& message, const std::string& param = "");

}  // namespace tessera
