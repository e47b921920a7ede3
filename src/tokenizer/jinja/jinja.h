// The Jinja subset that Hugging Face chat templates use, as an interpreter: parse a template once,
// render it many times with a JSON context. Our own implementation (Debian has no C++ Jinja); it
// knows nothing of tokenizers. Semantics follow Python Jinja2 as transformers configures it for
// apply_chat_template (trim_blocks, lstrip_blocks, loop controls, a non-escaping tojson).
// See docs/chat-templates.md for the supported constructs.
#pragma once

#include <cstddef>
#include <ctime>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace tessera::jinja {

using Json = nlohmann::ordered_json;

struct Options {
  bool trim_blocks = true;    // drop the first newline after a block tag
  bool lstrip_blocks = true;  // strip spaces and tabs before a block tag at line start
  // The clock strftime_now() reads (local time). Tests pin it; empty: std::time.
  std::function<std::time_t()> now;
  // Rendering fails (tessera::Error) rather than produce or build a string longer than this.
  size_t max_output_bytes = size_t{64} << 20;
  // Rendering fails rather than run longer than this many steps (statements, loop iterations,
  // list items and 64-byte pieces of strings built): a guard against runaway loops.
  int64_t max_steps = 20'000'000;
};

class Node;  // parsed template (jinja.cc)

class Template {
 public:
  // Parses `source`. Throws tessera::Error (kInvalidArgument) "template: line L: what is wrong".
  explicit Template(std::string_view source, Options options = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the variables of `context` (a JSON object) plus the globals raise_exception(msg),
  // strftime_now(fmt), namespace(...), range(...), dict(...). Thread-safe (const). Throws
  // tessera::Error: raise_exception's message as is; other render errors as
  // "template: line L: what is wrong". Never crashes on any template or context.
  std::string render(const Json& context) const;

 private:
  std::unique_ptr<Node> root_;
  Options options_;
};

}  // namespace tessera::jinja
