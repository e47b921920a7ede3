#include "server/tool_parser.h"

#include <fmt/format.h>

#include <cctype>
#include <stdexcept>

#include "core/status.h"
#include "server/text_markers.h"
#include "tokenizer/utf8.h"

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

// Formats whose calls must open the output (with `open`, or after the tag `tag`): all of the
// text is content once it cannot begin that way, none while it still can.
size_t settled_unless_call_start(const std::string& text, char open, std::string_view tag) {
  if (text.empty() || text[0] == open) return 0;
  const size_t n = std::min(text.size(), tag.size());
  return text.compare(0, n, tag.substr(0, n)) == 0 ? 0 : text.size();
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

  // The closed <tool_call> blocks, up to the first that does not parse.
  ToolCallParse completed_calls(const std::string& text) const override {
    ToolCallParse p;
    for (size_t pos = text.find(kStart); pos != std::string::npos; pos = text.find(kStart, pos)) {
      const size_t body = pos + kStart.size();
      const size_t close = text.find(kEnd, body);
      if (close == std::string::npos) break;
      try {
        p.calls.push_back(call_from(ojson::parse(text.substr(body, close - body)), "arguments"));
      } catch (const std::exception&) {
        break;
      }
      pos = close + kEnd.size();
    }
    p.called = !p.calls.empty();
    return p;
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
    return settled_unless_call_start(text, '{', kTag);
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
    if (calls_text.find("[ARGS]") != std::string::npos && calls_text.rfind('[', 0) != 0) {
      // Tokenizers v11 and later: [TOOL_CALLS]name[ARGS]{...} for each call.
      try {
        for (size_t pos = first + kBot.size(); pos != std::string::npos;) {
          const size_t next = text.find(kBot, pos);
          const std::string one =
              text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
          pos = next == std::string::npos ? next : next + kBot.size();
          const size_t args = one.find("[ARGS]");
          if (args == std::string::npos) throw std::runtime_error("a call without [ARGS]");
          ParsedToolCall call;
          const std::string name = one.substr(0, args);
          const size_t nb = name.find_first_not_of(" \t\n"), ne = name.find_last_not_of(" \t\n");
          if (nb == std::string::npos) throw std::runtime_error("a call without a name");
          call.name = name.substr(nb, ne - nb + 1);
          call.arguments = python_json_dumps(ojson::parse(one.substr(args + 6)));
          p.calls.push_back(std::move(call));
        }
      } catch (const std::exception&) {
        return content_only(calls_text);
      }
      p.called = true;
      if (first > 0) p.content = text.substr(0, first);
      return p;
    }
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

// Python's literal syntax, as much of it as tool calls use: strings, numbers, True/False/None,
// lists and dicts (vLLM's pythonic parser reads the same through Python's ast).
class PythonLiterals {
 public:
  explicit PythonLiterals(const std::string& text, size_t pos = 0) : t_(text), pos_(pos) {}

  // [name(key=value, ...), ...] and nothing after it; throws std::runtime_error otherwise.
  std::vector<ParsedToolCall> calls() {
    std::vector<ParsedToolCall> out;
    expect('[');
    skip_ws();
    if (peek() == ']') throw std::runtime_error("no calls");
    while (true) {
      ParsedToolCall call;
      call.name = identifier();
      expect('(');
      ojson args = ojson::object();
      skip_ws();
      if (peek() != ')') {
        while (true) {
          const std::string key = identifier();
          expect('=');
          args[key] = value();
          skip_ws();
          if (peek() == ',') {
            ++pos_;
            skip_ws();
            if (peek() == ')') break;  // a trailing comma
            continue;
          }
          break;
        }
      }
      expect(')');
      call.arguments = python_json_dumps(args);
      out.push_back(std::move(call));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']');
      skip_ws();
      if (pos_ != t_.size()) throw std::runtime_error("text after the calls");
      return out;
    }
  }

 private:
  char peek() const { return pos_ < t_.size() ? t_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < t_.size() && std::isspace(static_cast<unsigned char>(t_[pos_]))) ++pos_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) throw std::runtime_error(std::string("expected ") + c);
    ++pos_;
  }
  std::string identifier() {
    skip_ws();
    const size_t start = pos_;
    while (pos_ < t_.size() &&
           (std::isalnum(static_cast<unsigned char>(t_[pos_])) || t_[pos_] == '_'))
      ++pos_;
    if (pos_ == start || std::isdigit(static_cast<unsigned char>(t_[start])))
      throw std::runtime_error("expected a name");
    return t_.substr(start, pos_ - start);
  }
  ojson value() {
    skip_ws();
    const char c = peek();
    if (c == '"' || c == '\'') return string();
    if (c == '[') {
      ++pos_;
      ojson list = ojson::array();
      skip_ws();
      while (peek() != ']') {
        list.push_back(value());
        skip_ws();
        if (peek() != ',') break;
        ++pos_;
        skip_ws();
      }
      expect(']');
      return list;
    }
    if (c == '{') {
      ++pos_;
      ojson dict = ojson::object();
      skip_ws();
      while (peek() != '}') {
        const ojson key = value();
        if (!key.is_string()) throw std::runtime_error("dict keys must be strings");
        expect(':');
        dict[key.get<std::string>()] = value();
        skip_ws();
        if (peek() != ',') break;
        ++pos_;
        skip_ws();
      }
      expect('}');
      return dict;
    }
    if (c == '-' || c == '+' || c == '.' || std::isdigit(static_cast<unsigned char>(c)))
      return number();
    const std::string word = identifier();
    if (word == "True") return true;
    if (word == "False") return false;
    if (word == "None") return nullptr;
    throw std::runtime_error("not a literal: " + word);
  }
  ojson number() {
    const size_t start = pos_;
    if (peek() == '-' || peek() == '+') ++pos_;
    bool is_float = false;
    while (pos_ < t_.size()) {
      const char ch = t_[pos_];
      if (std::isdigit(static_cast<unsigned char>(ch)) || ch == '_') {
        ++pos_;
      } else if (ch == '.' || ch == 'e' || ch == 'E') {
        is_float = true;
        ++pos_;
        if ((ch == 'e' || ch == 'E') && (peek() == '-' || peek() == '+')) ++pos_;
      } else {
        break;
      }
    }
    std::string digits;
    for (size_t i = start; i < pos_; ++i)
      if (t_[i] != '_') digits += t_[i];
    if (digits[0] == '+') digits.erase(0, 1);
    size_t used = 0;
    if (is_float) {
      const double v = std::stod(digits, &used);
      if (used != digits.size()) throw std::runtime_error("bad number");
      return v;
    }
    const long long v = std::stoll(digits, &used);
    if (used != digits.size()) throw std::runtime_error("bad number");
    return v;
  }
  ojson string() {
    const char quote = t_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= t_.size() || t_[pos_] == '\n') throw std::runtime_error("unterminated string");
      const char ch = t_[pos_++];
      if (ch == quote) return out;
      if (ch != '\\') {
        out += ch;
        continue;
      }
      if (pos_ >= t_.size()) throw std::runtime_error("unterminated string");
      const char e = t_[pos_++];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '0':
          out += '\0';
          break;
        case '\\':
        case '\'':
        case '"':
          out += e;
          break;
        case 'u':
        case 'x': {
          const int n = e == 'u' ? 4 : 2;
          if (pos_ + n > t_.size()) throw std::runtime_error("bad escape");
          const uint32_t cp = static_cast<uint32_t>(std::stoul(t_.substr(pos_, n), nullptr, 16));
          pos_ += n;
          // As UTF-8 (a lone surrogate is refused: JSON text cannot carry it).
          if (cp >= 0xD800 && cp <= 0xDFFF) throw std::runtime_error("surrogate escape");
          tokenizer::utf8_append(out, static_cast<char32_t>(cp));
          break;
        }
        default:
          out += '\\';  // Python keeps unknown escapes as written
          out += e;
      }
    }
  }

  const std::string& t_;
  size_t pos_;
};

class PythonicParser : public ToolParser {
 public:
  std::string name() const override { return "pythonic"; }

  ToolCallParse parse(const std::string& text) const override {
    // Llama 4 wraps the list in <|python_start|> ... <|python_end|>.
    std::string body = text;
    if (body.rfind(kStart, 0) == 0) body.erase(0, kStart.size());
    for (size_t at; (at = body.find(kEnd)) != std::string::npos;) body.erase(at, kEnd.size());
    if (body.rfind('[', 0) != 0) return content_only(text);
    ToolCallParse p;
    try {
      p.calls = PythonLiterals(body).calls();
    } catch (const std::exception&) {
      return content_only(text);
    }
    p.called = true;
    return p;
  }

  size_t settled_content(const std::string& text) const override {
    return settled_unless_call_start(text, '[', kStart);
  }

 private:
  static constexpr std::string_view kStart = "<|python_start|>", kEnd = "<|python_end|>";
};

// DeepSeek's tool call blocks between <｜tool▁calls▁begin｜> and <｜tool▁calls▁end｜> (added tokens
// that are not special, so decoding keeps them):
//   deepseek_v3
//   <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
//                 (DeepSeek-V3, V3-0324, R1-0528)
//   deepseek_v31  <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜> (DeepSeek-V3.1)
// ARGS is passed on as the model wrote it, as vLLM's parsers do. One difference: vLLM's V3
// pattern stops at line ends, so pretty-printed arguments over several lines are lost there;
// here they are kept.
class DeepSeekParser : public ToolParser {
 public:
  explicit DeepSeekParser(bool v31) : v31_(v31) {}
  std::string name() const override { return v31_ ? "deepseek_v31" : "deepseek_v3"; }

  ToolCallParse parse(const std::string& text) const override {
    const size_t first = text.find(kCallsBegin);
    if (first == std::string::npos) return content_only(text);
    ToolCallParse p = calls_in(text, first);
    if (p.calls.empty()) return content_only(text);
    if (first > 0) p.content = text.substr(0, first);
    return p;
  }

  size_t settled_content(const std::string& text) const override {
    return bytes_before_marker(text, kCallsBegin);
  }

  ToolCallParse completed_calls(const std::string& text) const override {
    const size_t first = text.find(kCallsBegin);
    if (first == std::string::npos) return {};
    return calls_in(text, first);
  }

 private:
  // Every well-formed block closed by <｜tool▁call▁end｜> after `from`, in order.
  ToolCallParse calls_in(const std::string& text, size_t from) const {
    ToolCallParse p;
    for (size_t pos = text.find(kCallBegin, from); pos != std::string::npos;
         pos = text.find(kCallBegin, pos)) {
      const size_t body = pos + kCallBegin.size();
      const size_t end = text.find(kCallEnd, body);
      if (end == std::string::npos) break;
      pos = end + kCallEnd.size();
      const std::string block = text.substr(body, end - body);
      const size_t sep = block.find(kSep);
      if (sep == std::string::npos) continue;
      ParsedToolCall call;
      const std::string after = block.substr(sep + kSep.size());
      if (v31_) {
        call.name = block.substr(0, sep);
        call.arguments = after;
      } else {
        // type<｜tool▁sep｜>name\n```json\nargs\n```
        const size_t fence = after.find(kJsonFence);
        if (fence == std::string::npos || after.size() < fence + kJsonFence.size() + 4 ||
            after.compare(after.size() - 4, 4, "\n```") != 0)
          continue;
        call.name = after.substr(0, fence);
        const size_t args = fence + kJsonFence.size();
        call.arguments = after.substr(args, after.size() - 4 - args);
      }
      if (call.name.empty()) continue;
      p.calls.push_back(std::move(call));
    }
    p.called = !p.calls.empty();
    return p;
  }

  bool v31_;
  static constexpr std::string_view kCallsBegin = "<\uff5ctool\u2581calls\u2581begin\uff5c>";
  static constexpr std::string_view kCallBegin = "<\uff5ctool\u2581call\u2581begin\uff5c>";
  static constexpr std::string_view kCallEnd = "<\uff5ctool\u2581call\u2581end\uff5c>";
  static constexpr std::string_view kSep = "<\uff5ctool\u2581sep\uff5c>";
  static constexpr std::string_view kJsonFence = "\n```json\n";
};

}  // namespace

std::vector<std::string> ToolParser::names() {
  return {"deepseek_v3", "deepseek_v31",    "hermes",  "llama3_json",
          "llama4_json", "llama4_pythonic", "mistral", "pythonic"};
}

std::unique_ptr<ToolParser> ToolParser::create(const std::string& name) {
  if (name == "hermes") return std::make_unique<HermesParser>();
  // llama4_json and llama4_pythonic are vLLM's names for Llama 4's use of the same formats
  // (pythonic also reads Llama 4's <|python_start|> wrapper).
  if (name == "llama3_json" || name == "llama4_json") return std::make_unique<Llama3JsonParser>();
  if (name == "mistral") return std::make_unique<MistralParser>();
  if (name == "pythonic" || name == "llama4_pythonic") return std::make_unique<PythonicParser>();
  if (name == "deepseek_v3") return std::make_unique<DeepSeekParser>(false);
  if (name == "deepseek_v31") return std::make_unique<DeepSeekParser>(true);
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
