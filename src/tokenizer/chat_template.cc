#include "tokenizer/chat_template.h"

#include <algorithm>
#include <deque>
#include <fstream>
#include <set>
#include <sstream>

#include "core/status.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {

namespace {

// ---------------------------------------------------------------------------------------------
// Content-format detection. vLLM walks the Jinja AST; the interpreter does not expose one, so
// this reads the template's {% for %} and {% set %} statements with a small lexer and a parser
// for the one expression shape that matters: a variable with attribute/item accesses, slices,
// filters and tests.

struct Tok {
  enum Kind { kName, kString, kNumber, kOp } kind;
  std::string text;
};

bool is_name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}
bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

// Index just past the string literal starting at `i` (a quote).
size_t skip_string(std::string_view s, size_t i) {
  const char quote = s[i++];
  while (i < s.size() && s[i] != quote) i += s[i] == '\\' ? 2 : 1;
  return std::min(i + 1, s.size());
}

// Index of `close` ("}}", "%}") after `i`, outside string literals; npos if none.
size_t find_tag_end(std::string_view s, size_t i, std::string_view close) {
  while (i + 1 < s.size()) {
    if (s[i] == '\'' || s[i] == '"') {
      i = skip_string(s, i);
    } else if (s.compare(i, close.size(), close) == 0) {
      return i;
    } else {
      ++i;
    }
  }
  return std::string_view::npos;
}

std::vector<Tok> lex(std::string_view s) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (is_name_start(c)) {
      size_t j = i;
      while (j < s.size() && is_name_char(s[j])) ++j;
      out.push_back({Tok::kName, std::string(s.substr(i, j - i))});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (is_name_char(s[j]) || s[j] == '.')) ++j;
      out.push_back({Tok::kNumber, std::string(s.substr(i, j - i))});
      i = j;
    } else if (c == '\'' || c == '"') {
      const size_t j = skip_string(s, i);
      std::string value;
      for (size_t k = i + 1; k + 1 < j; ++k) {
        if (s[k] == '\\' && k + 2 < j) ++k;
        value += s[k];
      }
      out.push_back({Tok::kString, value});
      i = j;
    } else {
      static const char* const kTwo[] = {"**", "//", "==", "!=", "<=", ">="};
      std::string op(1, c);
      for (const char* two : kTwo)
        if (s.compare(i, 2, two) == 0) op = two;
      out.push_back({Tok::kOp, op});
      i += op.size();
    }
  }
  return out;
}

// The {% ... %} statements of a template, lexed, in document order (comments, {{ }} and raw
// blocks skipped).
std::vector<std::vector<Tok>> statements(std::string_view src) {
  std::vector<std::vector<Tok>> out;
  size_t i = 0;
  while ((i = src.find('{', i)) != std::string_view::npos) {
    if (i + 1 >= src.size()) break;
    const char kind = src[i + 1];
    if (kind == '#') {
      const size_t end = src.find("#}", i + 2);
      if (end == std::string_view::npos) break;
      i = end + 2;
    } else if (kind == '{') {
      const size_t end = find_tag_end(src, i + 2, "}}");
      if (end == std::string_view::npos) break;
      i = end + 2;
    } else if (kind == '%') {
      const size_t end = find_tag_end(src, i + 2, "%}");
      if (end == std::string_view::npos) break;
      std::string_view body = src.substr(i + 2, end - i - 2);
      if (!body.empty() && (body.front() == '-' || body.front() == '+')) body.remove_prefix(1);
      if (!body.empty() && (body.back() == '-' || body.back() == '+')) body.remove_suffix(1);
      std::vector<Tok> toks = lex(body);
      i = end + 2;
      if (!toks.empty() && toks[0].kind == Tok::kName && toks[0].text == "raw") {
        // Skip to {% endraw %}.
        size_t j = i;
        while ((j = src.find("{%", j)) != std::string_view::npos) {
          const size_t e = find_tag_end(src, j + 2, "%}");
          if (e == std::string_view::npos) return out;
          std::vector<Tok> t = lex(src.substr(j + 2, e - j - 2));
          j = e + 2;
          auto named = [&](size_t k) { return k < t.size() && t[k].text == "endraw"; };
          if (named(0) || (!t.empty() && t[0].kind == Tok::kOp && named(1))) break;
        }
        i = j == std::string_view::npos ? src.size() : j;
        continue;
      }
      out.push_back(std::move(toks));
    } else {
      ++i;
    }
  }
  return out;
}

// The expression shapes vLLM's detection distinguishes; anything else is kOther.
struct Expr {
  enum Kind { kName, kGetattr, kGetitemString, kGetitemOther, kSlice, kFilter, kTest, kOther };
  Kind kind = kOther;
  std::string text;  // kName: the variable; kGetattr: the attribute; kGetitemString: the key
  std::shared_ptr<Expr> node;
};

using ExprPtr = std::shared_ptr<Expr>;

ExprPtr other() {
  return std::make_shared<Expr>();
}

bool is_op(const std::vector<Tok>& t, size_t i, std::string_view op) {
  return i < t.size() && t[i].kind == Tok::kOp && t[i].text == op;
}
bool is_name(const std::vector<Tok>& t, size_t i, std::string_view name) {
  return i < t.size() && t[i].kind == Tok::kName && t[i].text == name;
}

// Index of the bracket closing the one at `i` (before `end`), or npos.
size_t matching(const std::vector<Tok>& t, size_t i, size_t end) {
  int depth = 0;
  for (size_t k = i; k < end; ++k) {
    if (t[k].kind != Tok::kOp) continue;
    const std::string& s = t[k].text;
    if (s == "(" || s == "[" || s == "{") ++depth;
    if (s == ")" || s == "]" || s == "}") {
      if (--depth == 0) return k;
    }
  }
  return std::string::npos;
}

bool has_top_level(const std::vector<Tok>& t, size_t begin, size_t end, std::string_view op) {
  int depth = 0;
  for (size_t k = begin; k < end; ++k) {
    if (t[k].kind != Tok::kOp) continue;
    const std::string& s = t[k].text;
    if (s == "(" || s == "[" || s == "{") ++depth;
    if (s == ")" || s == "]" || s == "}") --depth;
    if (depth == 0 && s == op) return true;
  }
  return false;
}

ExprPtr parse_expr(const std::vector<Tok>& t, size_t begin, size_t end, int depth = 0) {
  // Deeper parentheses than any template writes: not worth the stack (templates may come from
  // requests).
  if (begin >= end || depth > 64) return other();
  size_t i = begin;
  ExprPtr node;
  static const std::set<std::string> kKeywords = {"not",  "and",   "or",   "in",    "is",
                                                  "if",   "else",  "true", "false", "none",
                                                  "True", "False", "None"};
  if (t[i].kind == Tok::kName && !kKeywords.count(t[i].text)) {
    node = std::make_shared<Expr>(Expr{Expr::kName, t[i].text, nullptr});
    ++i;
  } else if (is_op(t, i, "(")) {
    const size_t close = matching(t, i, end);
    if (close == std::string::npos) return other();
    node = parse_expr(t, i + 1, close, depth + 1);  // parentheses make no node
    i = close + 1;
  } else {
    return other();
  }
  // Postfix: .attr, [item], [slice], (call).
  while (i < end) {
    if (is_op(t, i, ".") && i + 1 < end) {
      if (t[i + 1].kind == Tok::kName)
        node = std::make_shared<Expr>(Expr{Expr::kGetattr, t[i + 1].text, node});
      else
        node = std::make_shared<Expr>(Expr{Expr::kGetitemOther, "", node});
      i += 2;
    } else if (is_op(t, i, "[")) {
      const size_t close = matching(t, i, end);
      if (close == std::string::npos) return other();
      if (has_top_level(t, i + 1, close, ":"))
        node = std::make_shared<Expr>(Expr{Expr::kSlice, "", node});
      else if (close == i + 2 && t[i + 1].kind == Tok::kString)
        node = std::make_shared<Expr>(Expr{Expr::kGetitemString, t[i + 1].text, node});
      else
        node = std::make_shared<Expr>(Expr{Expr::kGetitemOther, "", node});
      i = close + 1;
    } else if (is_op(t, i, "(")) {
      return other();  // a call
    } else {
      break;
    }
  }
  // Filters and tests.
  while (i < end) {
    if (is_op(t, i, "|") && i + 1 < end && t[i + 1].kind == Tok::kName) {
      i += 2;
      while (is_op(t, i, ".") && i + 1 < end && t[i + 1].kind == Tok::kName) i += 2;
      if (is_op(t, i, "(")) {
        const size_t close = matching(t, i, end);
        if (close == std::string::npos) return other();
        i = close + 1;
      }
      node = std::make_shared<Expr>(Expr{Expr::kFilter, "", node});
    } else if (is_name(t, i, "is") && i + 1 < end) {
      if (is_name(t, i + 1, "not")) return other();  // Not(Test(...))
      if (t[i + 1].kind != Tok::kName) return other();
      i += 2;
      if (is_op(t, i, "(")) {
        const size_t close = matching(t, i, end);
        if (close == std::string::npos) return other();
        i = close + 1;
      }
      node = std::make_shared<Expr>(Expr{Expr::kTest, "", node});
    } else {
      break;
    }
  }
  return i == end ? node : other();  // anything left: a binary operator or a conditional
}

// vLLM's _is_var_or_elems_access: `var` itself (key empty) or `var.key` / `var['key']`, under
// any filters, tests and slices.
bool is_var_or_elems_access(const Expr& e, const std::string& var, const std::string& key) {
  if (e.kind == Expr::kFilter || e.kind == Expr::kTest || e.kind == Expr::kSlice)
    return e.node && is_var_or_elems_access(*e.node, var, key);
  if (key.empty()) return e.kind == Expr::kName && e.text == var;
  return (e.kind == Expr::kGetattr || e.kind == Expr::kGetitemString) && e.text == key && e.node &&
         e.node->kind == Expr::kName && e.node->text == var;
}

struct Assign {
  std::optional<std::string> target;  // empty: not a plain name (a tuple, ns.attr)
  ExprPtr value;
};
struct Loop {
  std::optional<std::string> target;
  ExprPtr iter;
};

// Finds the first top-level name `word` in [begin, end).
size_t find_top_level_name(const std::vector<Tok>& t, size_t begin, size_t end,
                           std::string_view word) {
  int depth = 0;
  for (size_t k = begin; k < end; ++k) {
    if (t[k].kind == Tok::kOp) {
      const std::string& s = t[k].text;
      if (s == "(" || s == "[" || s == "{") ++depth;
      if (s == ")" || s == "]" || s == "}") --depth;
    } else if (depth == 0 && t[k].kind == Tok::kName && t[k].text == word) {
      return k;
    }
  }
  return std::string::npos;
}

std::optional<std::string> plain_name(const std::vector<Tok>& t, size_t begin, size_t end) {
  if (end == begin + 1 && t[begin].kind == Tok::kName) return t[begin].text;
  return std::nullopt;
}

}  // namespace

ContentFormat detect_content_format(std::string_view source) {
  std::vector<Assign> assigns;
  std::vector<Loop> loops;
  for (const std::vector<Tok>& t : statements(source)) {
    if (is_name(t, 0, "for")) {
      const size_t in = find_top_level_name(t, 1, t.size(), "in");
      if (in == std::string::npos) continue;
      size_t end = t.size();
      end = std::min(end, find_top_level_name(t, in + 1, t.size(), "if"));
      end = std::min(end, find_top_level_name(t, in + 1, t.size(), "recursive"));
      loops.push_back({plain_name(t, 1, in), parse_expr(t, in + 1, end)});
    } else if (is_name(t, 0, "set")) {
      size_t eq = std::string::npos;
      for (size_t k = 1; k < t.size(); ++k)
        if (is_op(t, k, "=")) {
          eq = k;
          break;
        }
      if (eq == std::string::npos) continue;  // {% set x %}...{% endset %}
      assigns.push_back({plain_name(t, 1, eq), parse_expr(t, eq + 1, t.size())});
    }
  }
  // Variables holding the messages (or a slice or filtered view of them), breadth first.
  std::vector<std::string> messages_vars = {"messages"};
  std::deque<std::string> queue = {"messages"};
  std::set<std::string> seen = {"messages"};
  while (!queue.empty()) {
    const std::string var = queue.front();
    queue.pop_front();
    for (const Assign& a : assigns) {
      if (!is_var_or_elems_access(*a.value, var, "")) continue;
      if (!a.target) return ContentFormat::kString;  // vLLM's assertion fails: its default
      if (seen.insert(*a.target).second) {
        messages_vars.push_back(*a.target);
        queue.push_back(*a.target);
      }
    }
  }
  // Loop variables over the messages.
  std::vector<std::string> message_vars;
  for (const Loop& l : loops) {
    for (const std::string& var : messages_vars) {
      if (!is_var_or_elems_access(*l.iter, var, "")) continue;
      if (!l.target) return ContentFormat::kString;
      message_vars.push_back(*l.target);
      break;
    }
  }
  // A loop over one message's content, or (newer vLLM) over a variable named `content`, which
  // templates that pass the content to a macro write.
  for (const Loop& l : loops) {
    for (const std::string& var : message_vars) {
      if (!is_var_or_elems_access(*l.iter, var, "content")) continue;
      return l.target ? ContentFormat::kOpenAI : ContentFormat::kString;
    }
    if (l.iter->kind == Expr::kName && l.iter->text == "content")
      return l.target ? ContentFormat::kOpenAI : ContentFormat::kString;
  }
  return ContentFormat::kString;
}

namespace {

// Python truthiness of a JSON value.
bool truthy(const Json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  return !v.empty();
}

bool is_media_part(const std::string& type) {
  static const std::set<std::string> kMedia = {
      "image_url",   "image_embeds", "image_pil", "input_image", "image", "audio_url",
      "input_audio", "audio",        "video_url", "video",       "file"};
  return kMedia.count(type) > 0;
}

// One content part as vLLM's part parsers give it: for kOpenAI a {"type": "text", "text"} (or
// {"type": "tool_reference", "name"}) object, for kString the text; null when it has none.
Json parse_part(const Json& part, ContentFormat format, size_t m, size_t p) {
  const bool wrap = format == ContentFormat::kOpenAI;
  if (part.is_string()) return wrap ? Json{{"type", "text"}, {"text", part}} : part;
  if (!part.is_object())
    fail("messages[{}].content[{}] must be a string or an object with a 'type'", m, p);
  const auto type = part.find("type");
  if (type == part.end() || type->is_null()) {
    for (const char* key : {"image_url", "image_pil", "image_embeds", "audio_embeds",
                            "prompt_embeds", "audio_url", "input_audio", "video_url"})
      if (part.contains(key))
        fail("messages[{}].content[{}]: {} parts are not supported: this model takes text only", m,
             p, key);
    fail("messages[{}].content[{}] has no 'type'", m, p);
  }
  if (!type->is_string()) fail("messages[{}].content[{}]: 'type' must be a string", m, p);
  const std::string& t = type->get_ref<const std::string&>();
  const char* key = t == "text" || t == "input_text" || t == "output_text" ? "text"
                    : t == "refusal"                                       ? "refusal"
                    : t == "thinking"                                      ? "thinking"
                    : t == "tool_reference"                                ? "name"
                                                                           : nullptr;
  if (!key) {
    if (is_media_part(t))
      fail(
          "messages[{}].content[{}]: content parts of type '{}' are not supported: this model "
          "takes text only",
          m, p, t);
    fail("messages[{}].content[{}]: unsupported content part type '{}'", m, p, t);
  }
  const auto found = part.find(key);
  const Json value = found == part.end() ? Json() : *found;
  if (!value.is_null() && !value.is_string())
    fail("messages[{}].content[{}].{} must be a string", m, p, key);
  // vLLM skips text and refusal parts without content; the others keep a null.
  if (value.is_null() && (t == "text" || t == "refusal")) return nullptr;
  if (!wrap) return value;
  if (t == "tool_reference") return Json{{"type", "tool_reference"}, {"name", value}};
  return Json{{"type", "text"}, {"text", value}};
}

}  // namespace

Json prepare_messages(const Json& messages, ContentFormat format) {
  if (!messages.is_array()) fail("'messages' must be a list");
  Json out = Json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& msg = messages[i];
    if (!msg.is_object()) fail("messages[{}] must be an object", i);
    const auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) fail("messages[{}] needs a string 'role'", i);
    const std::string& r = role->get_ref<const std::string&>();
    // Content as a list of parts (a string is one text part, null none), each parsed; vLLM drops
    // the parts that come out empty ("" or null).
    Json parts = Json::array();
    if (const auto c = msg.find("content"); c != msg.end() && !c->is_null()) {
      if (c->is_string()) {
        parts.push_back(parse_part(Json{{"type", "text"}, {"text", *c}}, format, i, 0));
      } else if (c->is_array()) {
        for (size_t p = 0; p < c->size(); ++p) parts.push_back(parse_part((*c)[p], format, i, p));
      } else {
        fail("messages[{}].content must be a string, a list of parts or null", i);
      }
    }
    Json kept = Json::array();
    for (Json& part : parts)
      if (truthy(part)) kept.push_back(std::move(part));
    Json m = Json::object();
    m["role"] = *role;
    if (format == ContentFormat::kOpenAI) {
      m["content"] = kept;
    } else {
      std::string joined;
      for (size_t k = 0; k < kept.size(); ++k) {
        if (k) joined += '\n';
        joined += kept[k].get_ref<const std::string&>();
      }
      m["content"] = joined;
    }
    if (r == "assistant") {
      if (const auto calls = msg.find("tool_calls"); calls != msg.end() && !calls->is_null())
        m["tool_calls"] = *calls;
      // vLLM reads `reasoning`; `reasoning_content` (its older name) is accepted too.
      for (const char* key : {"reasoning", "reasoning_content"}) {
        const auto it = msg.find(key);
        if (it != msg.end() && it->is_string()) {
          m["reasoning"] = *it;
          m["reasoning_content"] = *it;
          break;
        }
      }
    } else if (r == "tool") {
      if (const auto id = msg.find("tool_call_id"); id != msg.end()) m["tool_call_id"] = *id;
      // Tool results given as text parts become one string (most templates expect one).
      Json& content = m["content"];
      if (content.is_array()) {
        bool text_only = true;
        for (const Json& part : content)
          if (part.is_object() && part.value("type", "") != "text") text_only = false;
        if (text_only) {
          std::string joined;
          bool first = true;
          for (const Json& part : content) {
            if (!part.is_object()) continue;
            if (!first) joined += '\n';
            const Json text = part.value("text", Json(""));
            if (text.is_string()) joined += text.get<std::string>();
            first = false;
          }
          content = joined;
        }
      }
    }
    if (const auto name = msg.find("name"); name != msg.end() && name->is_string())
      m["name"] = *name;
    if (const auto task = msg.find("task"); task != msg.end() && task->is_string())
      m["task"] = *task;
    if (r == "developer") m["tools"] = msg.value("tools", Json());
    out.push_back(std::move(m));
  }
  // Tool-call arguments: OpenAI clients send a JSON string; templates expect an object (vLLM
  // parses it, as transformers asks). What is not valid JSON becomes {}, as in vLLM.
  for (size_t i = 0; i < out.size(); ++i) {
    Json& m = out[i];
    if (m["role"] != "assistant" || !m.contains("tool_calls") || !m["tool_calls"].is_array())
      continue;
    Json& calls = m["tool_calls"];
    if (calls.empty()) {
      m.erase("tool_calls");  // keeps templates on the plain assistant path
      continue;
    }
    for (size_t k = 0; k < calls.size(); ++k) {
      Json& call = calls[k];
      if (!call.is_object() || !call.contains("function") || !call["function"].is_object())
        fail("messages[{}].tool_calls[{}] needs a 'function' object", i, k);
      Json& function = call["function"];
      const Json args = function.value("arguments", Json());
      if (args.is_string()) {
        Json parsed = Json::parse(args.get_ref<const std::string&>(), nullptr, false);
        function["arguments"] = parsed.is_discarded() ? Json::object() : std::move(parsed);
      } else if (!args.is_object() && !args.is_array()) {
        function["arguments"] = Json::object();
      }
    }
  }
  return out;
}

Json prepare_tools(const Json& tools) {
  if (tools.is_null()) return nullptr;
  if (!tools.is_array()) fail("'tools' must be a list");
  Json out = Json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& tool = tools[i];
    if (!tool.is_object()) fail("tools[{}] must be an object", i);
    if (tool.contains("type") && tool["type"] != "function")
      fail("tools[{}].type must be \"function\"", i);
    const auto fn = tool.find("function");
    if (fn == tool.end() || !fn->is_object()) fail("tools[{}] needs a 'function' object", i);
    const auto name = fn->find("name");
    if (name == fn->end() || !name->is_string())
      fail("tools[{}].function needs a string 'name'", i);
    Json f = Json::object();
    f["name"] = *name;
    f["description"] = fn->value("description", Json());
    if (!f["description"].is_null() && !f["description"].is_string())
      fail("tools[{}].function.description must be a string", i);
    f["parameters"] = fn->value("parameters", Json());
    if (!f["parameters"].is_null() && !f["parameters"].is_object())
      fail("tools[{}].function.parameters must be an object", i);
    for (const auto& [k, v] : fn->items())
      if (k != "name" && k != "description" && k != "parameters") f[k] = v;
    Json t = Json::object();
    t["type"] = "function";
    t["function"] = std::move(f);
    for (const auto& [k, v] : tool.items())
      if (k != "type" && k != "function") t[k] = v;
    out.push_back(std::move(t));
  }
  return out;
}

namespace {

// A special token as transformers stores it: a string, or an AddedToken object's content.
std::optional<std::string> token_string(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

Json special_tokens_map(const nlohmann::json& config, const nlohmann::json& file) {
  Json out = Json::object();
  auto lookup = [&](const std::string& key) -> const nlohmann::json* {
    if (file.is_object() && file.contains(key)) return &file[key];
    if (config.is_object() && config.contains(key)) return &config[key];
    return nullptr;
  };
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    if (const nlohmann::json* v = lookup(key))
      if (auto s = token_string(*v); s && !s->empty()) out[key] = *s;
  }
  if (const nlohmann::json* v = lookup("additional_special_tokens"); v && v->is_array()) {
    Json list = Json::array();
    for (const auto& t : *v)
      if (auto s = token_string(t)) list.push_back(*s);
    if (!list.empty()) out["additional_special_tokens"] = list;
  }
  if (const nlohmann::json* v = lookup("extra_special_tokens"); v && v->is_object()) {
    for (const auto& [k, t] : v->items())
      if (auto s = token_string(t); s && !s->empty()) out[k] = *s;
  }
  return out;
}

namespace {

// Python's str.isspace() for the code point starting at s[i] (its length in `len`).
bool py_space_at(std::string_view s, size_t i, size_t& len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  len = 1;
  if (c < 0x80) return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20);
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
    cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    len = 2;
  } else if ((c & 0xF0) == 0xE0 && i + 2 < s.size()) {
    cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    len = 3;
  } else {
    return false;
  }
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string_view py_lstrip(std::string_view s) {
  size_t len = 0;
  while (!s.empty() && py_space_at(s, 0, len)) s.remove_prefix(len);
  return s;
}

std::string_view py_rstrip(std::string_view s) {
  while (!s.empty()) {
    // Start of the last code point.
    size_t start = s.size() - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t len = 0;
    if (!py_space_at(s, start, len) || start + len != s.size()) break;
    s.remove_suffix(len);
  }
  return s;
}

constexpr std::string_view kContinueTag = "CONTINUE_FINAL_MESSAGE_TAG ";

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorKind::kNotFound, "cannot read {}", path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, Json special_tokens, jinja::Options options)
    : source_(std::move(source)),
      special_tokens_(std::move(special_tokens)),
      format_(detect_content_format(source_)),
      template_(source_, std::move(options)) {}

namespace {

// chat_template_kwargs may set apply_chat_template's own arguments (vLLM merges them into the
// same dictionary); the rest become template variables.
ChatInputs apply_kwargs(const ChatInputs& in, Json& variables) {
  ChatInputs out = in;
  variables = Json::object();
  if (!in.kwargs.is_object()) fail("'chat_template_kwargs' must be an object");
  for (const auto& [key, value] : in.kwargs.items()) {
    if (key == "add_generation_prompt" || key == "continue_final_message") {
      if (!value.is_boolean()) fail("chat_template_kwargs.{} must be a boolean", key);
      (key == "add_generation_prompt" ? out.add_generation_prompt : out.continue_final_message) =
          value.get<bool>();
    } else if (key == "tools") {
      out.tools = value;
    } else if (key == "documents") {
      out.documents = value;
    } else if (key == "tokenize" || key == "messages" || key == "conversation") {
      fail("chat_template_kwargs may not set '{}'", key);
    } else if (key == "chat_template" || key == "padding" || key == "truncation" ||
               key == "max_length" || key == "return_tensors" || key == "return_dict" ||
               key == "return_assistant_tokens_mask" || key == "tokenizer_kwargs") {
      // apply_chat_template's own arguments: they never reach the template.
    } else {
      variables[key] = value;
    }
  }
  return out;
}

}  // namespace

Json ChatTemplate::context(const ChatInputs& inputs) const {
  Json variables;
  const ChatInputs in = apply_kwargs(inputs, variables);
  Json ctx = special_tokens_;
  for (const auto& [k, v] : variables.items()) ctx[k] = v;  // kwargs win over special tokens
  ctx["messages"] = prepare_messages(in.messages, format_);
  ctx["tools"] = prepare_tools(in.tools);
  if (!in.documents.is_null() && !in.documents.is_array()) fail("'documents' must be a list");
  ctx["documents"] = in.documents;
  ctx["add_generation_prompt"] = in.add_generation_prompt;
  return ctx;
}

std::string ChatTemplate::render(const ChatInputs& inputs) const {
  Json variables;
  const ChatInputs in = apply_kwargs(inputs, variables);
  Json ctx = context(inputs);
  std::string final_text;
  if (in.continue_final_message) {
    if (in.add_generation_prompt)
      fail(
          "continue_final_message and add_generation_prompt are not compatible: use "
          "continue_final_message to continue the final message, add_generation_prompt to start "
          "a new assistant message");
    Json& messages = ctx["messages"];
    if (messages.empty()) fail("continue_final_message needs a final message to continue");
    // Mark the end of the final message's text, render, and cut there (transformers).
    Json& content = messages.back()["content"];
    if (content.is_array()) {
      bool found = false;
      for (auto it = content.rbegin(); it != content.rend(); ++it) {
        if (it->is_object() && it->contains("text") && (*it)["text"].is_string()) {
          final_text = (*it)["text"].get<std::string>();
          (*it)["text"] = final_text + std::string(kContinueTag);
          found = true;
          break;
        }
      }
      if (!found)
        fail(
            "continue_final_message is set but we could not find any text to continue in the "
            "final message");
    } else {
      final_text = content.get<std::string>();
      content = final_text + std::string(kContinueTag);
    }
  }
  std::string out = template_.render(ctx);
  if (in.continue_final_message) {
    const std::string_view tag = py_rstrip(kContinueTag);
    const std::string_view final_stripped = py_rstrip(py_lstrip(final_text));
    if (out.find(final_stripped) == std::string::npos || out.find(tag) == std::string::npos)
      fail(
          "continue_final_message is set but the final message does not appear in the chat after "
          "applying the chat template (the template changes it)");
    const size_t loc = out.rfind(tag);
    const bool spacing_kept = out.compare(loc, kContinueTag.size(), kContinueTag) == 0;
    out.resize(loc);
    if (!spacing_kept) out.resize(py_rstrip(out).size());
  }
  return out;
}

ChatTemplates::ChatTemplates(const Json& templates, Json special_tokens, jinja::Options options)
    : special_tokens_(std::move(special_tokens)), options_(std::move(options)) {
  auto add = [&](const std::string& name, const Json& source) {
    if (!source.is_string()) fail("chat template \"{}\" must be a string", name);
    try {
      templates_[name] = std::make_shared<const ChatTemplate>(source.get<std::string>(),
                                                              special_tokens_, options_);
    } catch (const Error& e) {
      fail("chat template \"{}\": {}", name, e.what());
    }
  };
  if (templates.is_null()) return;
  if (templates.is_string()) {
    add("default", templates);
    return;
  }
  named_ = true;
  if (templates.is_array()) {
    for (const Json& t : templates) {
      if (!t.is_object() || !t.contains("name") || !t["name"].is_string() ||
          !t.contains("template"))
        fail("chat_template: a list of templates must hold {{\"name\", \"template\"}} objects");
      add(t["name"].get<std::string>(), t["template"]);
    }
  } else if (templates.is_object()) {
    for (const auto& [name, source] : templates.items()) add(name, source);
  } else {
    fail("chat_template must be a string or a list of {{\"name\", \"template\"}}");
  }
}

std::vector<std::string> ChatTemplates::names() const {
  std::vector<std::string> out;
  for (const auto& [name, t] : templates_) out.push_back(name);
  return out;
}

std::string load_chat_template_arg(const std::string& arg) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(arg, ec)) {
    std::ifstream in(arg, std::ios::binary);
    if (in) {
      std::ostringstream s;
      s << in.rdbuf();
      return s.str();
    }
  }
  // vLLM: what cannot be opened is inline Jinja, unless it looks like a path.
  if (arg.find_first_of("{}\n") == std::string::npos)
    fail(ErrorKind::kNotFound,
         "--chat-template: {} looks like a file path, but it cannot be opened (inline templates "
         "contain '{{', '}}' or a newline)",
         arg);
  return arg;
}

ChatTemplates ChatTemplates::load(const std::filesystem::path& dir, const std::string& override_arg,
                                  jinja::Options options) {
  auto read_json = [](const std::filesystem::path& path) -> nlohmann::json {
    if (!std::filesystem::exists(path)) return nullptr;
    nlohmann::json j = nlohmann::json::parse(read_file(path), nullptr, false);
    if (j.is_discarded()) fail("{} is not valid JSON", path.string());
    return j;
  };
  const nlohmann::json config = read_json(dir / "tokenizer_config.json");
  const nlohmann::json special_file = read_json(dir / "special_tokens_map.json");
  Json special = special_tokens_map(config, special_file);

  // The newer layout keeps the template in chat_template.jinja (it wins over the config's).
  Json templates;
  if (std::filesystem::exists(dir / "chat_template.jinja")) {
    Json named = Json::object();
    named["default"] = read_file(dir / "chat_template.jinja");
    const auto extra = dir / "additional_chat_templates";
    if (std::filesystem::is_directory(extra)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(extra))
        if (e.path().extension() == ".jinja") files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) named[f.stem().string()] = read_file(f);
    }
    templates = named.size() == 1 ? named["default"] : named;
  } else if (config.is_object() && config.contains("chat_template")) {
    templates = Json::parse(config["chat_template"].dump());
  }
  ChatTemplates out(templates, special, options);
  if (!override_arg.empty()) {
    try {
      out.override_ = std::make_shared<const ChatTemplate>(load_chat_template_arg(override_arg),
                                                           out.special_tokens_, out.options_);
    } catch (const Error& e) {
      throw Error(fmt::format("--chat-template: {}", e.what()), e.kind());
    }
  }
  return out;
}

std::shared_ptr<const ChatTemplate> ChatTemplates::select(bool has_tools,
                                                          std::string_view request) const {
  if (!request.empty()) {
    // A name picks one of the model's templates (transformers); anything else is Jinja.
    if (named_)
      if (auto it = templates_.find(std::string(request)); it != templates_.end())
        return it->second;
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (auto it = cache_->templates.find(request); it != cache_->templates.end()) return it->second;
    auto t = std::make_shared<const ChatTemplate>(std::string(request), special_tokens_, options_);
    if (cache_->templates.size() >= 16) cache_->templates.clear();
    cache_->templates.emplace(std::string(request), t);
    return t;
  }
  if (override_) return override_;
  if (templates_.empty())
    fail(
        "this model has no chat template (no chat_template in tokenizer_config.json and no "
        "chat_template.jinja): pass one with --chat-template");
  if (!named_) return templates_.begin()->second;
  if (has_tools)
    if (auto it = templates_.find("tool_use"); it != templates_.end()) return it->second;
  if (auto it = templates_.find("default"); it != templates_.end()) return it->second;
  std::string list;
  for (const auto& [name, t] : templates_) list += (list.empty() ? "" : ", ") + name;
  fail(
      "this model has several chat templates and none is named \"default\": name one in the "
      "request's chat_template ({})",
      list);
}

std::string ChatTemplates::render(const ChatInputs& inputs, std::string_view request) const {
  std::string from_kwargs;
  if (inputs.kwargs.is_object() && inputs.kwargs.contains("chat_template")) {
    if (!inputs.kwargs["chat_template"].is_string())
      fail("chat_template_kwargs.chat_template must be a string");
    from_kwargs = inputs.kwargs["chat_template"].get<std::string>();
    request = from_kwargs;
  }
  bool has_tools = !inputs.tools.is_null();
  if (inputs.kwargs.is_object() && inputs.kwargs.contains("tools"))
    has_tools = !inputs.kwargs["tools"].is_null();
  return select(has_tools, request)->render(inputs);
}

}  // namespace tessera::tokenizer
