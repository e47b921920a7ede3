#include "server/tool_parser.h"

#include <fmt/format.h>

#include "core/status.h"
#include "server/text_markers.h"

namespace tessera {

namespace {

using ojson = nlohmann::ordered_json;

// Arguments as vLLM writes them: the model's JSON re-serialised by json.dumps, keys in the
// model's order. Throws nlohmann's exceptions where Python would raise (missing keys).
ParsedToolCall call_from(const ojson& obj, const char* args_key, const char* alt_key = nullptr) {
  ParsedToolCall call;
  call.name = obj.at("name").get<std::string>();
  const auto args = obj.find(args_key);
  if (args != obj.end())
    call.arguments = python_json_dumps(*args);
  else
    call.arguments = python_json_dumps(obj.at(alt_key ? alt_key : args_key));  // throws
  return call;
}

ToolCallParse content_only(std::string text) {
  ToolCallParse p;
  p.content = std::move(text);
  return p;
}

// Where the JSON object starting at text[begin] ends (one past its closing brace), or npos.
size_t object_end(const std::string& text, size_t begin) {
  if (begin >= text.size() || text[begin] != '{') return std::string::npos;
  int depth = 0;
  bool in_string = false;
  for (size_t i = begin; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\')
        ++i;
      else if (ch == '"')
        in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '{' || ch == '[') {
      ++depth;
    } else if (ch == '}' || ch == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string::npos;
}

class HermesParser : public ToolParser {
 public:
  std::string name() const override { return "hermes"; }
  bool keeps_special_tokens() const override { return true; }

  ToolCallParse parse(const std::string& text) const override {
    const size_t first = text.find(kStart);
    if (first == std::string::npos) return content_only(text);
    ToolCallParse p;
    try {
      // Each <tool_call> up to its </tool_call>, or to the end of the text.
      for (size_t pos = first; pos != std::string::npos; pos = text.find(kStart, pos)) {
        const size_t body = pos + kStart.size();
        const size_t close = text.find(kEnd, body);
        const std::string inner =
            text.substr(body, close == std::string::npos ? std::string::npos : close - body);
        p.calls.push_back(call_from(ojson::parse(inner), "arguments"));
        if (close == std::string::npos) break;
        pos = close + kEnd.size();
      }
    } catch (const std::exception&) {
      return content_only(text);
    }
    p.called = true;
    if (first > 0) p.content = text.substr(0, first);
    return p;
  }

  size_t settled_content(const std::string& text) const override {
    return bytes_before_marker(text, kStart);
  }

 private:
  static constexpr std::string_view kStart = "<tool_call>", kEnd = "</tool_call>";
};

class Llama3JsonParser : public ToolParser {
 public:
  std::string name() const override { return "llama3_json"; }

  ToolCallParse parse(const std::string& text) const override {
    const bool tagged = text.rfind(kTag, 0) == 0;
    if (!tagged && text.rfind('{', 0) != 0) return content_only(text);
    ToolCallParse p;
    try {
      // JSON objects separated by "; " (the separator is skipped unread, as vLLM does).
      for (size_t start = tagged ? kTag.size() : 0; start < text.size();) {
        const size_t end = object_end(text, start);
        if (end == std::string::npos) return content_only(text);
        p.calls.push_back(
            call_from(ojson::parse(text.substr(start, end - start)), "arguments", "parameters"));
        start = end + 2;
      }
    } catch (const std::exception&) {
      return content_only(text);
    }
    p.called = true;
    return p;
  }

  size_t settled_content(const std::string& text) const override {
    if (text.empty() || text[0] == '{') return 0;
    const size_t n = std::min(text.size(), kTag.size());
    return text.compare(0, n, kTag.substr(0, n)) == 0 ? 0 : text.size();
  }

 private:
  static constexpr std::string_view kTag = "<|python_tag|>";
};

class MistralParser : public ToolParser {
 public:
  std::string name() const override { return "mistral"; }
  bool keeps_special_tokens() const override { return true; }
  bool short_call_ids() const override { return true; }

  ToolCallParse parse(const std::string& text) const override {
    const size_t first = text.find(kBot);
    if (first == std::string::npos) return content_only(text);
    // The calls: the text without its [TOOL_CALLS] markers, stripped.
    std::string rest;
    for (size_t pos = 0;;) {
      const size_t next = text.find(kBot, pos);
      rest += text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
      if (next == std::string::npos) break;
      pos = next + kBot.size();
    }
    const size_t b = rest.find_first_not_of(" \t\n\r\f\v");
    const size_t e = rest.find_last_not_of(" \t\n\r\f\v");
    const std::string calls_text = b == std::string::npos ? "" : rest.substr(b, e - b + 1);
    ToolCallParse p;
    try {
      ojson list = ojson::parse(calls_text, nullptr, false);
      if (list.is_discarded()) {
        // The widest [{ ... }] in it, as vLLM's fallback regex takes.
        const size_t open = calls_text.find("[{"), close = calls_text.rfind("}]");
        if (open == std::string::npos || close == std::string::npos || close < open)
          return content_only(calls_text);
        list = ojson::parse(calls_text.substr(open, close + 2 - open));
      }
      if (!list.is_array()) return content_only(calls_text);
      for (const ojson& call : list) p.calls.push_back(call_from(call, "arguments"));
    } catch (const std::exception&) {
      return content_only(calls_text);
    }
    p.called = true;
    if (first > 0) p.content = text.substr(0, first);
    return p;
  }

  size_t settled_content(const std::string& text) const override {
    return bytes_before_marker(text, kBot);
  }

 private:
  static constexpr std::string_view kBot = "[TOOL_CALLS]";
};

}  // namespace

std::vector<std::string> ToolParser::names() {
  return {"hermes", "llama3_json", "mistral"};
}

std::unique_ptr<ToolParser> ToolParser::create(const std::string& name) {
  if (name == "hermes") return std::make_unique<HermesParser>();
  if (name == "llama3_json") return std::make_unique<Llama3JsonParser>();
  if (name == "mistral") return std::make_unique<MistralParser>();
  fail(ErrorKind::kUnsupported, "invalid tool call parser: {} (choose from {})", name,
       fmt::join(names(), ", "));
}

std::string python_json_dumps(const nlohmann::ordered_json& v) {
  auto plain = [](const nlohmann::ordered_json& x) {
    return x.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  };
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, x] : v.items()) {
      if (!first) out += ", ";
      first = false;
      out += plain(nlohmann::ordered_json(k)) + ": " + python_json_dumps(x);
    }
    return out + "}";
  }
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + python_json_dumps(v[i]);
    return out + "]";
  }
  return plain(v);
}

}  // namespace tessera
