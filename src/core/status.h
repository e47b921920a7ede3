// Two kinds of error (see docs/architecture.md):
//  - tessera::Error: bad user input (a flag, a request, a model folder). Thrown, caught at the
//    boundary (CLI exits non-zero, server answers 4xx) with a message that names the problem.
//  - TESSERA_CHECK: a broken internal invariant. Prints file:line and aborts.
#pragma once

#include <fmt/format.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera {

// Classifies a user-facing error so that front ends can map it (HTTP status, exit code).
enum class ErrorKind {
  kInvalidArgument,  // malformed or out-of-range input
  kNotFound,         // a file, model or resource that does not exist
  kUnsupported,      // valid input we do not handle (architecture, dtype, option)
  kResourceExhausted,
  kUnavailable,  // not ready or shutting down
  kInternal,     // an engine fault reported without aborting (e.g. a dead rank)
};

class Error : public std::runtime_error {
 public:
  explicit Error(std::string message, ErrorKind kind = ErrorKind::kInvalidArgument)
      : std::runtime_error(std::move(message)), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Throws tessera::Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...), kind);
}

namespace detail {

// Collects the streamed message of a failed CHECK and aborts in its destructor.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  template <typename T>
  CheckFailure& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  std::ostringstream stream_;
};

// Lets `TESSERA_CHECK(x) << "..."` compile as a void expression.
struct Voidify {
  void operator&(const CheckFailure&) {}
};

}  // namespace detail
}  // namespace tessera

#define TESSERA_CHECK(condition)                        \
  (__builtin_expect(static_cast<bool>(condition), 1)) \
      ? (void)0                                         \
      : ::tessera::detail::Voidify() &                  \
            ::tessera::detail::CheckFailure(__FILE__, __LINE__, #condition)

#define TESSERA_CHECK_OP(a, op, b) \
  TESSERA_CHECK((a)op(b)) << "(" << (a) << " vs " << (b) << ") "
#define TESSERA_CHECK_EQ(a, b) TESSERA_CHECK_OP(a, ==, b)
#define TESSERA_CHECK_NE(a, b) TESSERA_CHECK_OP(a, !=, b)
#define TESSERA_CHECK_LT(a, b) TESSERA_CHECK_OP(a, <, b)
#define TESSERA_CHECK_LE(a, b) TESSERA_CHECK_OP(a, <=, b)
#define TESSERA_CHECK_GT(a, b) TESSERA_CHECK_OP(a, >, b)
#define TESSERA_CHECK_GE(a, b) TESSERA_CHECK_OP(a, >=, b)
