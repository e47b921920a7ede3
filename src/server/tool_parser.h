// Tool calls parsed out of a model's free text, for tool_choice "auto" with vLLM's
// --enable-auto-tool-choice --tool-call-parser NAME. Our own code (vLLM's parsers are Python);
// each parser follows the format its model family writes and what vLLM's parser of that name
// returns (docs/serving.md, "Tool calls"):
//   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call> ... (Qwen 2.5/3, Hermes)
//   llama3_json  {"name": ..., "parameters": {...}}; {...} at the start of the output, optionally
//                after <|python_tag|> (Llama 3.1-3.3)
//   mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] (Mistral, Mixtral)
//   pythonic     [name(key=value, ...), ...] with Python literals (Llama 3.2, Llama 4)
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera {

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // JSON text, as Python's json.dumps(ensure_ascii=False) writes it
};

struct ToolCallParse {
  bool called = false;
  std::optional<std::string> content;  // text outside the calls (null when there is none)
  std::vector<ParsedToolCall> calls;
};

class ToolParser {
 public:
  virtual ~ToolParser() = default;
  // Throws tessera::Error naming the known parsers when `name` is not one of them.
  static std::unique_ptr<ToolParser> create(const std::string& name);
  static std::vector<std::string> names();

  virtual std::string name() const = 0;
  // The whole output, once finished.
  virtual ToolCallParse parse(const std::string& text) const = 0;
  // Streaming: how many leading bytes of `text` (the output so far) are content whatever comes
  // next, so that the server can send them; the rest may turn out to be a tool call.
  virtual size_t settled_content(const std::string& text) const = 0;
  // Streaming: the calls of a partial output that are complete whatever comes next, in order
  // (none by default: the calls are known when the output ends).
  virtual ToolCallParse completed_calls(const std::string& text) const { return {}; }
  // Whether the format's markers are special tokens that decoding must keep (vLLM's parsers set
  // skip_special_tokens false for these).
  virtual bool keeps_special_tokens() const { return false; }
  // Mistral's templates require tool call ids of exactly 9 letters and digits.
  virtual bool short_call_ids() const { return false; }
};

// json.dumps(v, ensure_ascii=False) as Python writes it (", " and ": " separators).
std::string python_json_dumps(const nlohmann::ordered_json& v);

}  // namespace tessera
