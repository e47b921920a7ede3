#include "server/api_error.h"

namespace tessera {

const char* error_type_for_status(int status) {
  switch (status) {
    case 400:
      return "BadRequestError";
    case 401:
      return "AuthenticationError";
    case 404:
      return "NotFoundError";
    case 405:
      return "MethodNotAllowed";
    case 413:
      return "RequestTooLargeError";
    case 503:
      return "ServiceUnavailableError";
    default:
      return status >= 500 ? "InternalServerError" : "BadRequestError";
  }
}

int status_for_error_kind(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kUnsupported:
      return 400;
    case ErrorKind::kNotFound:
      return 404;
    case ErrorKind::kResourceExhausted:
    case ErrorKind::kUnavailable:
      return 503;
    case ErrorKind::kInternal:
      return 500;
  }
  return 500;
}

nlohmann::json error_json(int status, const std::string& message, const std::string& param) {
  nlohmann::json e = {{"message", message},
                      {"type", error_type_for_status(status)},
                      {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
                      {"code", status}};
  return {{"error", e}};
}

nlohmann::json ApiError::to_json() const {
  return error_json(status_, what(), param_);
}

}  // namespace tessera
