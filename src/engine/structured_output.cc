#include "engine/structured_output.h"

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include <fmt/format.h>

#include "core/status.h"
#include "engine/regex_dfa.h"
#include "tokenizer/utf8.h"

namespace tessera {

struct GrammarNode {
  enum class Kind { kObject, kArray, kString, kNumber, kInteger, kLiterals, kChoice, kRegex };
  Kind kind = Kind::kLiterals;
  // kObject: named properties (in schema order), which are required, and the schema of any
  // other key (null: no other keys).
  std::vector<std::string> prop_names;
  std::vector<const GrammarNode*> prop_nodes;
  std::vector<char> required;
  const GrammarNode* additional = nullptr;
  // kArray
  const GrammarNode* items = nullptr;
  int64_t min_items = 0, max_items = -1;
  // kString (in code points)
  int64_t min_length = 0, max_length = -1;
  // kString: the pattern its (unescaped) content must match whole; kRegex: the pattern the raw
  // output must match whole (guided_regex).
  std::shared_ptr<const RegexDfa> regex;
  // kLiterals: the exact texts (JSON texts for enum/const; raw texts for guided_choice, which
  // takes no surrounding whitespace).
  std::vector<std::string> literals;
  bool raw_text = false;
  // No whitespace between JSON tokens (structured_outputs.disable_any_whitespace).
  bool compact = false;
  // kChoice: by_byte[b] lists the alternatives a value starting with byte b may take (several:
  // the matcher follows each until the text tells them apart).
  std::vector<const GrammarNode*> alternatives;
  std::vector<std::vector<const GrammarNode*>> by_byte;
};

namespace {

bool is_ws(unsigned char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}
bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
bool is_hex(unsigned char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// The bytes a value of `node` can start with.
void first_bytes(const GrammarNode* node, std::vector<char>& out) {
  using K = GrammarNode::Kind;
  switch (node->kind) {
    case K::kObject:
      out['{'] = 1;
      break;
    case K::kArray:
      out['['] = 1;
      break;
    case K::kString:
      out['"'] = 1;
      break;
    case K::kNumber:
    case K::kInteger:
      out['-'] = 1;
      for (char c = '0'; c <= '9'; ++c) out[static_cast<unsigned char>(c)] = 1;
      break;
    case K::kLiterals:
      for (const auto& l : node->literals)
        if (!l.empty()) out[static_cast<unsigned char>(l[0])] = 1;
      break;
    case K::kChoice:
      for (const GrammarNode* alt : node->alternatives) first_bytes(alt, out);
      break;
    case K::kRegex:
      for (int b = 0; b < 256; ++b)
        if (node->regex->next(node->regex->start(), static_cast<unsigned char>(b)) !=
            RegexDfa::kDead)
          out[b] = 1;
      break;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Vocabulary

TokenVocabulary::TokenVocabulary(std::vector<std::string> texts, std::vector<int32_t> eos_ids)
    : texts_(std::move(texts)), eos_ids_(std::move(eos_ids)) {
  for (int32_t id = 0; id < static_cast<int32_t>(texts_.size()); ++id)
    if (!texts_[id].empty()) sorted_.push_back(id);
  std::sort(sorted_.begin(), sorted_.end(), [&](int32_t a, int32_t b) {
    return texts_[a] < texts_[b] || (texts_[a] == texts_[b] && a < b);
  });
  lcp_.assign(sorted_.size(), 0);
  for (size_t i = 1; i < sorted_.size(); ++i) {
    const std::string &a = texts_[sorted_[i - 1]], &b = texts_[sorted_[i]];
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    lcp_[i] = static_cast<int32_t>(n);
  }
  string_safe_.assign(texts_.size(), 0);
  for (int32_t id : sorted_) {
    const std::string& t = texts_[id];
    // Whole characters only: a token holding part of one is checked byte by byte.
    const bool safe = std::none_of(t.begin(), t.end(),
                                   [](char ch) {
                                     const auto c = static_cast<unsigned char>(ch);
                                     return c == '"' || c == '\\' || c < 0x20;
                                   }) &&
                      tokenizer::utf8_valid(t);
    if (safe)
      string_safe_[id] = 1;
    else
      string_unsafe_ids_.push_back(id);
  }
}

// ---------------------------------------------------------------------------------------------
// Schema compilation

Grammar::Grammar() = default;
Grammar::~Grammar() = default;

GrammarNode* Grammar::add() {
  nodes_.push_back(std::make_unique<GrammarNode>());
  return nodes_.back().get();
}

struct SchemaCompiler {
  Grammar& g;
  const nlohmann::json& root_schema;
  std::map<std::string, GrammarNode*> refs;  // $ref target -> node (recursion allowed)
  GrammarNode* any = nullptr;
  int depth = 0;

  [[noreturn]] static void unsupported(const std::string& what) {
    fail(ErrorKind::kInvalidArgument, "JSON schema: {}", what);
  }

  GrammarNode* literals(std::vector<std::string> texts) {
    GrammarNode* n = g.add();
    n->kind = GrammarNode::Kind::kLiterals;
    n->literals = std::move(texts);
    return n;
  }

  GrammarNode* any_value() {
    if (any) return any;
    any = g.add();
    GrammarNode* object = g.add();
    object->kind = GrammarNode::Kind::kObject;
    object->additional = any;
    GrammarNode* array = g.add();
    array->kind = GrammarNode::Kind::kArray;
    array->items = any;
    GrammarNode* string = g.add();
    string->kind = GrammarNode::Kind::kString;
    GrammarNode* number = g.add();
    number->kind = GrammarNode::Kind::kNumber;
    set_alternatives(any, {object, array, string, number, literals({"true", "false", "null"})});
    return any;
  }

  // Makes n a choice among alts, indexed by the bytes each can start with.
  static void set_alternatives(GrammarNode* n, std::vector<const GrammarNode*> alts) {
    n->kind = GrammarNode::Kind::kChoice;
    n->by_byte.assign(256, {});
    for (const GrammarNode* alt : alts) {
      std::vector<char> bytes(256, 0);
      first_bytes(alt, bytes);
      for (int b = 0; b < 256; ++b)
        if (bytes[b]) n->by_byte[b].push_back(alt);
    }
    n->alternatives = std::move(alts);
  }

  GrammarNode* choice(std::vector<const GrammarNode*> alts) {
    if (alts.size() == 1) return const_cast<GrammarNode*>(alts[0]);
    GrammarNode* n = g.add();
    set_alternatives(n, std::move(alts));
    return n;
  }

  const nlohmann::json& resolve(const std::string& ref) {
    if (ref == "#") return root_schema;
    if (ref.rfind("#/", 0) != 0) unsupported("only local $ref ('#/...') is supported: " + ref);
    const nlohmann::json* cur = &root_schema;
    size_t pos = 2;
    while (pos <= ref.size()) {
      size_t next = ref.find('/', pos);
      if (next == std::string::npos) next = ref.size();
      std::string part = ref.substr(pos, next - pos);
      for (size_t i; (i = part.find("~1")) != std::string::npos;) part.replace(i, 2, "/");
      for (size_t i; (i = part.find("~0")) != std::string::npos;) part.replace(i, 2, "~");
      if (!cur->is_object() || !cur->contains(part)) unsupported("$ref not found: " + ref);
      cur = &(*cur)[part];
      pos = next + 1;
    }
    return *cur;
  }

  GrammarNode* compile(const nlohmann::json& s) {
    if (++depth > 64) unsupported("nesting deeper than 64");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth};
    if (s.is_boolean()) {
      if (!s.get<bool>()) unsupported("the schema 'false' accepts nothing");
      return any_value();
    }
    if (!s.is_object()) unsupported("a schema must be an object or a boolean");
    if (auto it = s.find("$ref"); it != s.end()) {
      if (!it->is_string()) unsupported("$ref must be a string");
      const std::string ref = it->get<std::string>();
      if (auto r = refs.find(ref); r != refs.end()) return r->second;
      // A placeholder first, so that a recursive reference finds it; filled below.
      GrammarNode* node = g.add();
      refs[ref] = node;
      *node = *compile(resolve(ref));
      return node;
    }
    for (const char* key : {"patternProperties", "allOf", "not", "if", "dependentSchemas",
                            "propertyNames", "contains", "prefixItems", "uniqueItems"}) {
      if (s.contains(key)) unsupported(fmt::format("'{}' is not supported", key));
    }
    if (auto it = s.find("const"); it != s.end()) return literals({it->dump()});
    if (auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array() || it->empty()) unsupported("'enum' must be a non-empty list");
      std::vector<std::string> texts;
      for (const auto& v : *it) texts.push_back(v.dump());
      return literals(std::move(texts));
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (auto it = s.find(key); it != s.end()) {
        if (!it->is_array() || it->empty())
          unsupported(fmt::format("'{}' must be a non-empty list", key));
        std::vector<const GrammarNode*> alts;
        for (const auto& alt : *it) alts.push_back(compile(alt));
        return choice(std::move(alts));
      }
    }
    auto type_it = s.find("type");
    if (type_it == s.end()) {
      // No type: infer from the keywords present, else any value.
      if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties"))
        return compile_type("object", s);
      if (s.contains("items")) return compile_type("array", s);
      return any_value();
    }
    if (type_it->is_string()) return compile_type(type_it->get<std::string>(), s);
    if (type_it->is_array() && !type_it->empty()) {
      std::vector<const GrammarNode*> alts;
      for (const auto& t : *type_it) {
        if (!t.is_string()) unsupported("'type' entries must be strings");
        alts.push_back(compile_type(t.get<std::string>(), s));
      }
      return choice(std::move(alts));
    }
    unsupported("'type' must be a string or a non-empty list of strings");
  }

  static int64_t count_field(const nlohmann::json& s, const char* key, int64_t fallback) {
    auto it = s.find(key);
    if (it == s.end()) return fallback;
    if (!it->is_number_integer() || it->get<int64_t>() < 0)
      unsupported(fmt::format("'{}' must be a non-negative integer", key));
    return it->get<int64_t>();
  }

  GrammarNode* compile_type(const std::string& type, const nlohmann::json& s) {
    using K = GrammarNode::Kind;
    if (type == "null") return literals({"null"});
    if (type == "boolean") return literals({"true", "false"});
    GrammarNode* n = g.add();
    if (type == "string") {
      n->kind = K::kString;
      n->min_length = count_field(s, "minLength", 0);
      n->max_length = count_field(s, "maxLength", -1);
      if (n->max_length >= 0 && n->max_length < n->min_length)
        unsupported("maxLength is below minLength");
      if (auto pattern = s.find("pattern"); pattern != s.end()) {
        if (!pattern->is_string()) unsupported("'pattern' must be a string");
        try {
          n->regex = RegexDfa::compile(pattern->get<std::string>());
        } catch (const Error& e) {
          unsupported(fmt::format("'pattern': {}", e.what()));
        }
      }
    } else if (type == "number") {
      n->kind = K::kNumber;
    } else if (type == "integer") {
      n->kind = K::kInteger;
    } else if (type == "array") {
      n->kind = K::kArray;
      auto items = s.find("items");
      n->items = items == s.end() ? any_value() : compile(*items);
      n->min_items = count_field(s, "minItems", 0);
      n->max_items = count_field(s, "maxItems", -1);
      if (n->max_items >= 0 && n->max_items < n->min_items)
        unsupported("maxItems is below minItems");
    } else if (type == "object") {
      n->kind = K::kObject;
      if (auto props = s.find("properties"); props != s.end()) {
        if (!props->is_object()) unsupported("'properties' must be an object");
        for (const auto& [name, sub] : props->items()) {
          n->prop_names.push_back(name);
          n->prop_nodes.push_back(compile(sub));
        }
      }
      n->required.assign(n->prop_names.size(), 0);
      if (auto req = s.find("required"); req != s.end()) {
        if (!req->is_array()) unsupported("'required' must be a list");
        for (const auto& r : *req) {
          if (!r.is_string()) unsupported("'required' entries must be strings");
          auto at = std::find(n->prop_names.begin(), n->prop_names.end(), r.get<std::string>());
          if (at == n->prop_names.end()) {
            // A required key without a schema: any value under that name.
            n->prop_names.push_back(r.get<std::string>());
            n->prop_nodes.push_back(any_value());
            n->required.push_back(1);
          } else {
            n->required[at - n->prop_names.begin()] = 1;
          }
        }
      }
      auto add = s.find("additionalProperties");
      if (add == s.end()) {
        // JSON Schema allows other keys by default; with named properties we keep to them (as
        // vLLM's xgrammar backend does), so that the output has the asked-for shape.
        n->additional = n->prop_names.empty() ? any_value() : nullptr;
      } else if (add->is_boolean()) {
        n->additional = add->get<bool>() ? any_value() : nullptr;
      } else {
        n->additional = compile(*add);
      }
    } else {
      unsupported(fmt::format("unknown type '{}'", type));
    }
    return n;
  }
};

std::shared_ptr<const Grammar> Grammar::from_json_schema(const nlohmann::json& schema,
                                                         bool any_whitespace) {
  auto g = std::shared_ptr<Grammar>(new Grammar());
  SchemaCompiler compiler{*g, schema, {}, nullptr, 0};
  g->root_ = compiler.compile(schema);
  if (!any_whitespace)
    for (auto& node : g->nodes_) node->compact = true;
  return g;
}

std::shared_ptr<const Grammar> Grammar::any_json_object() {
  return from_json_schema(nlohmann::json{{"type", "object"}});
}

std::shared_ptr<const Grammar> Grammar::choice(const std::vector<std::string>& options) {
  if (options.empty()) fail(ErrorKind::kInvalidArgument, "guided_choice must not be empty");
  for (const auto& o : options)
    if (o.empty()) fail(ErrorKind::kInvalidArgument, "guided_choice entries must not be empty");
  auto g = std::shared_ptr<Grammar>(new Grammar());
  GrammarNode* n = g->add();
  n->kind = GrammarNode::Kind::kLiterals;
  n->literals = options;
  n->raw_text = true;
  g->root_ = n;
  return g;
}

std::shared_ptr<const Grammar> Grammar::regex(const std::string& pattern) {
  auto g = std::shared_ptr<Grammar>(new Grammar());
  GrammarNode* n = g->add();
  n->kind = GrammarNode::Kind::kRegex;
  n->regex = RegexDfa::compile(pattern);
  n->raw_text = true;
  g->root_ = n;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Matching

namespace {

enum class FrameKind : uint8_t {
  kValue,
  kObject,
  kArray,
  kString,
  kKey,
  kNumber,
  kLiteral,
  kRegex
};

// Object states
constexpr uint8_t kObjOpen = 0, kObjAfterKey = 1, kObjAfterValue = 2, kObjAfterComma = 3;
// Array states
constexpr uint8_t kArrOpen = 0, kArrAfterValue = 1, kArrAfterComma = 2;
// Number states (terminal: zero, int, frac, exp)
constexpr uint8_t kNumStart = 0, kNumMinus = 1, kNumZero = 2, kNumInt = 3, kNumDot = 4,
                  kNumFrac = 5, kNumE = 6, kNumESign = 7, kNumExp = 8;
constexpr int kMaxNumberChars = 32;

bool number_terminal(uint8_t s) {
  return s == kNumZero || s == kNumInt || s == kNumFrac || s == kNumExp;
}

struct Frame {
  FrameKind kind = FrameKind::kValue;
  uint8_t state = 0;
  uint8_t ws = 0;  // whitespace run so far
  const GrammarNode* node = nullptr;
  int64_t count = 0;     // array: items; string/key: code points; number: chars
  int32_t current = -1;  // object: the property of the value being read (-2: another key)
  int32_t dfa = 0;       // string with a pattern, or raw regex: the DFA's state
  // string/key: continuation bytes the current character still needs, and the range the next
  // one must fall in (tokens may end inside a character; the text must stay valid UTF-8).
  uint8_t utf8_left = 0, utf8_lo = 0x80, utf8_hi = 0xBF;
  std::string buf;   // key or literal so far
  std::string seen;  // object: 1 per property already given
};

// One way of reading the text so far: a stack of frames (innermost last); empty once the
// value is complete.
struct Path {
  std::vector<Frame> stack;
};

// anyOf alternatives that begin alike are followed side by side; more paths than this at once
// is refused rather than let the work per byte grow.
constexpr size_t kMaxPaths = 32;

}  // namespace

struct GrammarMatcher::State {
  std::vector<Path> paths;
};

namespace {

using State = GrammarMatcher::State;

// Whitespace between tokens in the shapes JSON writers produce: a run is at most one line break,
// first, then up to kMaxWhitespaceRun spaces or tabs (so "\n    " and ": " pass, and a model
// cannot pad its output with blank lines).
bool take_ws(Frame& f, unsigned char c) {
  if (f.node->compact) return false;
  if (c == '\n') {
    if (f.ws != 0) return false;
    f.ws = 1;
    return true;
  }
  if (c != ' ' && c != '\t') return false;
  return ++f.ws <= kMaxWhitespaceRun + 1;
}

bool can_start_key(const Frame& f) {
  if (f.node->additional) return true;
  return f.seen.find('\0') != std::string::npos;
}

bool required_done(const Frame& f) {
  for (size_t i = 0; i < f.node->required.size(); ++i)
    if (f.node->required[i] && !f.seen[i]) return false;
  return true;
}

// Whether some literal of `node` has `prefix` as a proper prefix / equals it.
bool literal_extends(const GrammarNode* node, const std::string& prefix) {
  for (const auto& l : node->literals)
    if (l.size() > prefix.size() && l.compare(0, prefix.size(), prefix) == 0) return true;
  return false;
}
bool literal_equals(const GrammarNode* node, const std::string& text) {
  return std::find(node->literals.begin(), node->literals.end(), text) != node->literals.end();
}

// A byte of a pattern string's content through its DFA.
bool pattern_byte(Frame& f, unsigned char c) {
  const int32_t next = f.node->regex->next(f.dfa, c);
  if (next == RegexDfa::kDead) return false;
  f.dfa = next;
  return true;
}

// Whether some one-letter JSON escape's byte continues the pattern from here.
bool escape_possible(const Frame& f) {
  for (unsigned char c : {'"', '\\', '/', '\b', '\f', '\n', '\r', '\t'})
    if (f.node->regex->next(f.dfa, c) != RegexDfa::kDead) return true;
  return false;
}

// The byte a one-letter JSON escape stands for.
unsigned char unescaped(unsigned char c) {
  switch (c) {
    case 'b':
      return '\b';
    case 'f':
      return '\f';
    case 'n':
      return '\n';
    case 'r':
      return '\r';
    case 't':
      return '\t';
    default:
      return c;  // " \ /
  }
}

Frame frame_for(FrameKind kind, const GrammarNode* node) {
  Frame f;
  f.kind = kind;
  f.node = node;
  return f;
}

// Replaces the Value frame on top by the frame that starts a value of `node` with byte c. A
// choice continues with its first alternative for c; each other one goes to `forks` as a copy
// of the path still to read c.
bool start_value(Path& s, const GrammarNode* node, unsigned char c, std::vector<Path>& forks) {
  using K = GrammarNode::Kind;
  switch (node->kind) {
    case K::kChoice: {
      const auto& alts = node->by_byte[c];
      if (alts.empty()) return false;
      for (size_t i = 1; i < alts.size(); ++i) {
        forks.push_back(s);
        forks.back().stack.back().node = alts[i];
      }
      return start_value(s, alts[0], c, forks);
    }
    case K::kObject: {
      if (c != '{') return false;
      Frame f = frame_for(FrameKind::kObject, node);
      f.state = kObjOpen;
      f.seen.assign(node->prop_names.size(), '\0');
      s.stack.back() = std::move(f);
      return true;
    }
    case K::kArray: {
      if (c != '[') return false;
      Frame f = frame_for(FrameKind::kArray, node);
      f.state = kArrOpen;
      s.stack.back() = std::move(f);
      return true;
    }
    case K::kString:
      if (c != '"') return false;
      s.stack.back() = frame_for(FrameKind::kString, node);
      if (node->regex) s.stack.back().dfa = node->regex->start();
      return true;
    case K::kRegex: {
      const int32_t next = node->regex->next(node->regex->start(), c);
      if (next == RegexDfa::kDead) return false;
      Frame f = frame_for(FrameKind::kRegex, node);
      f.dfa = next;
      s.stack.back() = std::move(f);
      if (!node->regex->can_continue(next)) s.stack.pop_back();  // complete: nothing may follow
      return true;
    }
    case K::kNumber:
    case K::kInteger: {
      Frame f = frame_for(FrameKind::kNumber, node);
      if (c == '-')
        f.state = kNumMinus;
      else if (c == '0')
        f.state = kNumZero;
      else if (is_digit(c))
        f.state = kNumInt;
      else
        return false;
      f.count = 1;
      s.stack.back() = std::move(f);
      return true;
    }
    case K::kLiterals: {
      Frame f = frame_for(FrameKind::kLiteral, node);
      f.buf.assign(1, static_cast<char>(c));
      if (!literal_extends(node, f.buf) && !literal_equals(node, f.buf)) return false;
      s.stack.back() = std::move(f);
      // A literal nothing extends is complete at once (a guided choice can end here).
      if (!literal_extends(node, s.stack.back().buf)) s.stack.pop_back();
      return true;
    }
  }
  return false;
}

// Feeds one byte; false if the grammar does not allow it (the state is then unspecified).
bool step_path(Path& s, unsigned char c, std::vector<Path>& forks) {
  while (true) {
    if (s.stack.empty()) return false;
    Frame& f = s.stack.back();
    switch (f.kind) {
      case FrameKind::kValue:
        if (!f.node->raw_text && is_ws(c)) return take_ws(f, c);
        return start_value(s, f.node, c, forks);

      case FrameKind::kObject:
        if (take_ws(f, c)) return true;
        if (is_ws(c)) return false;
        f.ws = 0;
        switch (f.state) {
          case kObjOpen:
          case kObjAfterComma:
            if (c == '"' && can_start_key(f)) {
              f.state = kObjAfterKey;
              s.stack.push_back(frame_for(FrameKind::kKey, f.node));
              return true;
            }
            if (c == '}' && f.state == kObjOpen && required_done(f)) {
              s.stack.pop_back();
              return true;
            }
            return false;
          case kObjAfterKey: {
            if (c != ':') return false;
            f.state = kObjAfterValue;
            const GrammarNode* value =
                f.current >= 0 ? f.node->prop_nodes[f.current] : f.node->additional;
            s.stack.push_back(frame_for(FrameKind::kValue, value));
            return true;
          }
          case kObjAfterValue:
            if (c == ',' && can_start_key(f)) {
              f.state = kObjAfterComma;
              return true;
            }
            if (c == '}' && required_done(f)) {
              s.stack.pop_back();
              return true;
            }
            return false;
        }
        return false;

      case FrameKind::kArray:
        if (take_ws(f, c)) return true;
        if (is_ws(c)) return false;
        f.ws = 0;
        if (f.state == kArrOpen || f.state == kArrAfterValue) {
          if (c == ']' && f.count >= f.node->min_items) {
            s.stack.pop_back();
            return true;
          }
          if (f.state == kArrAfterValue) {
            if (c == ',' && (f.node->max_items < 0 || f.count < f.node->max_items)) {
              f.state = kArrAfterComma;
              return true;
            }
            return false;
          }
        }
        // The first byte of an item.
        if (f.node->max_items >= 0 && f.count >= f.node->max_items) return false;
        ++f.count;
        f.state = kArrAfterValue;
        s.stack.push_back(frame_for(FrameKind::kValue, f.node->items));
        continue;  // the item's frame takes c

      case FrameKind::kString:
      case FrameKind::kKey: {
        const bool key = f.kind == FrameKind::kKey;
        const GrammarNode* obj = f.node;
        // A key of an object without other keys must be one of its unused names, spelled
        // without escapes.
        const bool named_only = key && obj->additional == nullptr;
        // A key's next byte: of a name still unused, when only the object's names may come.
        const auto add_key_byte = [&](int ch) {
          f.buf.push_back(static_cast<char>(ch));
          if (!named_only) return true;
          const Frame& parent = s.stack[s.stack.size() - 2];
          for (size_t i = 0; i < obj->prop_names.size(); ++i)
            if (!parent.seen[i] && obj->prop_names[i].size() >= f.buf.size() &&
                obj->prop_names[i].compare(0, f.buf.size(), f.buf) == 0)
              return true;
          return false;
        };
        if (f.state == 0 && f.utf8_left > 0) {  // inside a character
          if (c < f.utf8_lo || c > f.utf8_hi) return false;
          --f.utf8_left;
          f.utf8_lo = 0x80;
          f.utf8_hi = 0xBF;
          if (!key && f.node->regex && !pattern_byte(f, c)) return false;
          return !key || add_key_byte(c);
        }
        if (f.state == 0) {
          if (c == '"') {
            if (!key) {
              if (f.count < f.node->min_length) return false;
              if (f.node->regex && !f.node->regex->accepting(f.dfa)) return false;
              s.stack.pop_back();
              return true;
            }
            int32_t prop = -1;
            auto named = std::find(obj->prop_names.begin(), obj->prop_names.end(), f.buf);
            if (named != obj->prop_names.end())
              prop = static_cast<int32_t>(named - obj->prop_names.begin());
            Frame& parent = s.stack[s.stack.size() - 2];
            if (prop >= 0) {
              if (parent.seen[prop]) return false;  // no duplicate keys
              parent.seen[prop] = 1;
              parent.current = prop;
            } else {
              if (!obj->additional) return false;
              parent.current = -2;
            }
            s.stack.pop_back();
            return true;
          }
          if (c < 0x20) return false;
          if (c == '\\') {
            if (named_only) return false;
            if (!key && f.node->max_length >= 0 && f.count >= f.node->max_length) return false;
            // In a pattern string an escape must lead somewhere the pattern allows.
            if (!key && f.node->regex && !escape_possible(f)) return false;
            f.state = 1;
            if (key) f.buf.push_back(static_cast<char>(c));
            return true;
          }
          if (c >= 0x80) {
            // A character's first byte (a stray continuation byte or a lead byte UTF-8 never
            // uses would decode to U+FFFD). The ranges are Unicode's table 3-7.
            if (c < 0xC2 || c > 0xF4) return false;
            f.utf8_left = c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
            f.utf8_lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
            f.utf8_hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
          }
          ++f.count;  // a code point starts
          if (!key && f.node->max_length >= 0 && f.count > f.node->max_length) return false;
          if (!key && f.node->regex && !pattern_byte(f, c)) return false;
          return !key || add_key_byte(c);
        }
        if (key) f.buf.push_back(static_cast<char>(c));
        if (f.state == 1) {  // after a backslash
          if (c == 'u') {
            // Not in a pattern string: a code point's first hex digits could commit to one the
            // pattern refuses (the short escapes cover what JSON must escape).
            if (!key && f.node->regex) return false;
            f.state = 2;
            return true;
          }
          if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
              c == 't') {
            f.state = 0;
            ++f.count;
            if (!key && f.node->regex && !pattern_byte(f, unescaped(c))) return false;
            return true;
          }
          return false;
        }
        if (!is_hex(c)) return false;  // \uXXXX
        if (++f.state == 6) {
          f.state = 0;
          ++f.count;
        }
        return true;
      }

      case FrameKind::kNumber: {
        const bool integer = f.node->kind == GrammarNode::Kind::kInteger;
        uint8_t next = 255;
        switch (f.state) {
          case kNumMinus:
            next = c == '0' ? kNumZero : is_digit(c) ? kNumInt : 255;
            break;
          case kNumZero:
          case kNumInt:
            if (f.state == kNumInt && is_digit(c))
              next = kNumInt;
            else if (c == '.' && !integer)
              next = kNumDot;
            else if ((c == 'e' || c == 'E') && !integer)
              next = kNumE;
            break;
          case kNumDot:
            next = is_digit(c) ? kNumFrac : 255;
            break;
          case kNumFrac:
            next = is_digit(c) ? kNumFrac : (c == 'e' || c == 'E') ? kNumE : 255;
            break;
          case kNumE:
            next = (c == '+' || c == '-') ? kNumESign : is_digit(c) ? kNumExp : 255;
            break;
          case kNumESign:
          case kNumExp:
            next = is_digit(c) ? kNumExp : 255;
            break;
          default:
            break;
        }
        if (next != 255) {
          if (++f.count > kMaxNumberChars) return false;
          f.state = next;
          return true;
        }
        if (!number_terminal(f.state)) return false;
        s.stack.pop_back();  // the number ended; c belongs to what follows
        if (s.stack.empty()) return false;
        continue;
      }

      case FrameKind::kRegex: {
        const int32_t next = f.node->regex->next(f.dfa, c);
        if (next == RegexDfa::kDead) return false;
        f.dfa = next;
        if (!f.node->regex->can_continue(next)) s.stack.pop_back();  // complete
        return true;
      }

      case FrameKind::kLiteral: {
        std::string longer = f.buf + static_cast<char>(c);
        if (literal_extends(f.node, longer) || literal_equals(f.node, longer)) {
          f.buf = std::move(longer);
          if (!literal_extends(f.node, f.buf)) s.stack.pop_back();  // complete
          return true;
        }
        if (!literal_equals(f.node, f.buf)) return false;
        s.stack.pop_back();  // complete (e.g. 1 of the enum [1, 12]); c follows it
        if (s.stack.empty()) return false;
        continue;
      }
    }
    return false;
  }
}

// Feeds one byte to every path; false if no path allows it (the state is then unspecified).
// Paths advance in place; forks (alternatives that begin alike) are read after them.
bool step(State& s, unsigned char c) {
  std::vector<Path> forks;
  size_t kept = 0;
  for (size_t i = 0; i < s.paths.size(); ++i) {
    if (!step_path(s.paths[i], c, forks)) continue;
    if (kept != i) s.paths[kept] = std::move(s.paths[i]);
    ++kept;
  }
  s.paths.resize(kept);
  while (!forks.empty()) {
    Path p = std::move(forks.back());
    forks.pop_back();
    if (step_path(p, c, forks)) s.paths.push_back(std::move(p));
  }
  return !s.paths.empty() && s.paths.size() <= kMaxPaths;
}

bool path_can_end(const Path& s) {
  if (s.stack.empty()) return true;
  if (s.stack.size() != 1) return false;
  const Frame& f = s.stack.back();
  if (f.kind == FrameKind::kNumber) return number_terminal(f.state);
  if (f.kind == FrameKind::kLiteral) return literal_equals(f.node, f.buf);
  if (f.kind == FrameKind::kRegex) return f.node->regex->accepting(f.dfa);
  // A guided_regex that matches the empty text may end before its first byte.
  if (f.kind == FrameKind::kValue && f.node->kind == GrammarNode::Kind::kRegex)
    return f.node->regex->accepting(f.node->regex->start());
  return false;
}

bool state_can_end(const State& s) {
  return std::any_of(s.paths.begin(), s.paths.end(), path_can_end);
}

bool feed(State& s, const std::string& text) {
  for (const char ch : text)
    if (!step(s, static_cast<unsigned char>(ch))) return false;
  return true;
}

}  // namespace

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar,
                               std::shared_ptr<const TokenVocabulary> vocab)
    : grammar_(std::move(grammar)), vocab_(std::move(vocab)), state_(std::make_unique<State>()) {
  TESSERA_CHECK(grammar_ && vocab_);
  state_->paths.emplace_back();
  state_->paths.back().stack.push_back(frame_for(FrameKind::kValue, grammar_->root()));
}

GrammarMatcher::~GrammarMatcher() = default;

bool GrammarMatcher::can_end() const {
  return state_can_end(*state_);
}

bool GrammarMatcher::must_end() const {
  return std::all_of(state_->paths.begin(), state_->paths.end(),
                     [](const Path& p) { return p.stack.empty(); });
}

bool GrammarMatcher::accept_text(const std::string& text) {
  State next = *state_;
  if (!feed(next, text)) return false;
  *state_ = std::move(next);
  return true;
}

bool GrammarMatcher::accept(int32_t token) {
  const auto& eos = vocab_->eos_ids();
  if (std::find(eos.begin(), eos.end(), token) != eos.end()) return can_end();
  if (token < 0 || token >= vocab_->size() || vocab_->text(token).empty()) return false;
  return accept_text(vocab_->text(token));
}

void GrammarMatcher::fill_allowed(std::vector<char>& allowed) const {
  const TokenVocabulary& v = *vocab_;
  allowed.assign(static_cast<size_t>(v.size()), 0);
  if (can_end())
    for (int32_t id : v.eos_ids())
      if (id >= 0 && id < v.size()) allowed[id] = 1;
  if (must_end()) return;
  // Inside a string any token without a quote, backslash or control byte continues it: copy
  // that set and try only the others.
  const Frame* top = state_->paths.size() == 1 ? &state_->paths[0].stack.back() : nullptr;
  const bool plain_string =
      top && top->state == 0 && top->utf8_left == 0 &&
      ((top->kind == FrameKind::kString && top->node->max_length < 0 && !top->node->regex) ||
       (top->kind == FrameKind::kKey && top->node->additional != nullptr));
  if (plain_string) {
    for (size_t id = 0; id < allowed.size(); ++id) allowed[id] |= v.string_safe_[id];
    for (int32_t id : v.string_unsafe_ids_) {
      State s = *state_;
      if (feed(s, v.texts_[id])) allowed[id] = 1;
    }
    return;
  }
  // A raw regex (guided_regex) with one way of reading it: the same walk over DFA states alone,
  // without copying matcher states.
  const Path* only = state_->paths.size() == 1 ? &state_->paths[0] : nullptr;
  if (only && only->stack.size() == 1 && only->stack[0].node->kind == GrammarNode::Kind::kRegex) {
    const Frame& f = only->stack[0];
    const RegexDfa& dfa = *f.node->regex;
    std::vector<int32_t> dfa_states(1, f.kind == FrameKind::kRegex ? f.dfa : dfa.start());
    size_t good = 0;
    for (size_t i = 0; i < v.sorted_.size(); ++i) {
      const int32_t id = v.sorted_[i];
      const std::string& text = v.texts_[id];
      const size_t l = static_cast<size_t>(v.lcp_[i]);
      if (l > good) continue;
      good = l;
      bool ok = true;
      for (size_t k = good; k < text.size(); ++k) {
        if (dfa_states.size() < k + 2) dfa_states.resize(k + 2);
        const int32_t next = dfa.next(dfa_states[k], static_cast<unsigned char>(text[k]));
        if (next == RegexDfa::kDead) {
          ok = false;
          break;
        }
        dfa_states[k + 1] = next;
        good = k + 1;
      }
      if (ok) allowed[id] = 1;
    }
    return;
  }
  // Tokens in byte order: a token shares its first lcp bytes with the one before, so the
  // states after those bytes are reused, and a prefix that failed rules out every token after
  // it that shares it (a walk of the vocabulary's trie).
  std::vector<State> states(1, *state_);
  size_t good = 0;  // states[0..good] are valid for the previous token's prefix
  for (size_t i = 0; i < v.sorted_.size(); ++i) {
    const int32_t id = v.sorted_[i];
    const std::string& text = v.texts_[id];
    const size_t l = static_cast<size_t>(v.lcp_[i]);
    if (l > good) continue;  // shares the prefix that failed (lcp_[0] is 0)
    good = l;
    bool ok = true;
    for (size_t k = good; k < text.size(); ++k) {
      if (states.size() < k + 2) states.resize(k + 2);
      states[k + 1] = states[k];
      if (!step(states[k + 1], static_cast<unsigned char>(text[k]))) {
        ok = false;
        break;
      }
      good = k + 1;
    }
    if (ok) allowed[id] = 1;
  }
}

}  // namespace tessera
