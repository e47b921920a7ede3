// Lexer and parser: Jinja2's tokenizer rules (whitespace control, trim_blocks, lstrip_blocks,
// raw blocks, bracket balancing inside tags) and its recursive-descent grammar.
#include <cstring>

#include "core/status.h"
#include "tokenizer/jinja/internal.h"

namespace tessera::jinja {
namespace {

enum class Tok : uint8_t {
  kData,
  kBlockBegin,
  kBlockEnd,
  kVarBegin,
  kVarEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof,
  kError  // a lexing error, raised when the parser reaches it (Jinja2 lexes lazily)
};

struct Token {
  Tok type;
  int line;
  std::string text;  // data, name, string value, operator
  int64_t ival = 0;
  double fval = 0;
};

[[noreturn]] void syntax_error(int line, const std::string& what) {
  fail_at(line, what);
}

// Length of the Python-whitespace code point at s[i], or 0.
size_t space_at(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return is_py_space(c) ? 1 : 0;
  size_t n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
  if (i + n > s.size()) return 0;
  const auto cps = decode_utf8(s.substr(i, n));
  return cps.size() == 1 && is_py_space(cps[0]) ? n : 0;
}

size_t skip_space(std::string_view s, size_t i) {
  while (i < s.size()) {
    const size_t n = space_at(s, i);
    if (!n) break;
    i += n;
  }
  return i;
}

bool all_space(std::string_view s) {
  return skip_space(s, 0) == s.size();
}

std::string rstrip_space(std::string_view s) {
  return py_strip(s, nullptr, false, true);
}

int count_lines(std::string_view s) {
  int n = 0;
  for (const char c : s) n += c == '\n';
  return n;
}

bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || (c >= '0' && c <= '9');
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

class Lexer {
 public:
  Lexer(std::string_view source, const Options& options) : options_(options) {
    // Newlines are normalized to \n and one trailing newline is dropped (keep_trailing_newline
    // is off in transformers).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    try {
      lex();
    } catch (const Error& e) {
      tokens_.push_back({Tok::kError, line_, e.what()});
      return std::move(tokens_);
    }
    tokens_.push_back({Tok::kEof, line_, {}});
    return std::move(tokens_);
  }

 private:
  void lex() {
    size_t pos = 0;
    bool line_starting = true;
    const std::string_view s(src_);
    while (pos < s.size()) {
      // The next tag start.
      size_t t = pos;
      while (true) {
        t = s.find('{', t);
        if (t == std::string_view::npos || t + 1 >= s.size()) {
          t = std::string_view::npos;
          break;
        }
        const char c = s[t + 1];
        if (c == '%' || c == '{' || c == '#') break;
        ++t;
      }
      if (t == std::string_view::npos) {
        data_line_ = line_;
        emit_data(s.substr(pos));
        line_ += count_lines(s.substr(pos));
        break;
      }
      const char kind = s[t + 1];
      char sign = 0;
      size_t after = t + 2;
      if (after < s.size() && (s[after] == '-' || s[after] == '+')) sign = s[after++];
      std::string text(s.substr(pos, t - pos));
      apply_left_strip(text, sign, kind != '{', line_starting);
      emit_data(text);
      line_ += count_lines(s.substr(pos, t - pos));
      if (kind == '%') {
        size_t raw_end = 0;
        if (match_raw_begin(s, after, raw_end)) {
          pos = lex_raw(s, raw_end, line_starting);
          continue;
        }
        tokens_.push_back({Tok::kBlockBegin, line_, {}});
        pos = lex_tag(s, after, true, line_starting);
      } else if (kind == '{') {
        tokens_.push_back({Tok::kVarBegin, line_, {}});
        pos = lex_tag(s, after, false, line_starting);
      } else {
        pos = lex_comment(s, after, line_starting);
      }
    }
  }

  void emit_data(std::string_view text) {
    if (!text.empty()) tokens_.push_back({Tok::kData, data_line_, std::string(text)});
  }

  // `{%-` strips all whitespace before the tag; otherwise lstrip_blocks strips the spaces and
  // tabs between the line start and a block or comment tag (not `{{`, not `{%+`).
  void apply_left_strip(std::string& text, char sign, bool block_or_comment, bool line_starting) {
    data_line_ = line_;
    if (sign == '-') {
      text = rstrip_space(text);
    } else if (sign != '+' && options_.lstrip_blocks && block_or_comment) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
          all_space(std::string_view(text).substr(l_pos)))
        text.resize(l_pos);
    }
  }

  // After a block end: `-%}` eats following whitespace, `+%}` nothing, `%}` one newline when
  // trim_blocks is on. Returns the new position and whether it ended on a newline.
  size_t after_block_end(std::string_view s, size_t p, char sign, bool& line_starting) {
    if (sign == '-') {
      const size_t q = skip_space(s, p);
      line_ += count_lines(s.substr(p, q - p));
      line_starting = q > p && s[q - 1] == '\n';
      return q;
    }
    if (sign == 0 && options_.trim_blocks && p < s.size() && s[p] == '\n') {
      ++line_;
      line_starting = true;
      return p + 1;
    }
    line_starting = false;
    return p;
  }

  bool match_raw_begin(std::string_view s, size_t p, size_t& end) {
    p = skip_space(s, p);
    if (s.compare(p, 3, "raw") != 0) return false;
    p += 3;
    if (p < s.size() && is_name_char(s[p])) return false;
    p = skip_space(s, p);
    if (s.compare(p, 3, "-%}") == 0) {
      end = skip_space(s, p + 3);
      return true;
    }
    if (s.compare(p, 2, "%}") == 0) {
      end = p + 2;
      return true;
    }
    return false;
  }

  size_t lex_raw(std::string_view s, size_t p, bool& line_starting) {
    line_ += count_lines(s.substr(0, p)) - count_lines(s.substr(0, p));  // no-op, kept simple
    const int start_line = line_;
    // line_ counts up to the tag start; add the lines inside the raw begin tag.
    for (size_t q = p; (q = s.find("{%", q)) != std::string_view::npos; ++q) {
      size_t r = q + 2;
      char sign = 0;
      if (r < s.size() && (s[r] == '-' || s[r] == '+')) sign = s[r++];
      r = skip_space(s, r);
      if (s.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      r = skip_space(s, r);
      char end_sign = 0;
      if (s.compare(r, 3, "+%}") == 0 || s.compare(r, 3, "-%}") == 0) {
        end_sign = s[r];
        r += 3;
      } else if (s.compare(r, 2, "%}") == 0) {
        r += 2;
      } else {
        continue;
      }
      std::string text(s.substr(p, q - p));
      // The raw begin tag has already been counted up to its start; count its own lines.
      apply_left_strip(text, sign, true, line_starting);
      data_line_ = start_line;
      emit_data(text);
      line_ += count_lines(s.substr(p, r - p));
      return after_block_end(s, r, end_sign, line_starting);
    }
    if (p >= s.size()) return p;  // nothing after the tag: Jinja2's lexer just stops
    syntax_error(start_line, "Missing end of raw directive");
  }

  size_t lex_comment(std::string_view s, size_t p, bool& line_starting) {
    const size_t q = s.find("#}", p);
    if (q == std::string_view::npos) {
      // Jinja2's lexer only complains when there is text after the unclosed tag.
      if (p >= s.size()) return p;
      syntax_error(line_, "Missing end of comment tag");
    }
    char sign = 0;
    if (q > p && (s[q - 1] == '-' || s[q - 1] == '+')) sign = s[q - 1];
    line_ += count_lines(s.substr(p, q - p));
    return after_block_end(s, q + 2, sign, line_starting);
  }

  size_t lex_tag(std::string_view s, size_t p, bool block, bool& line_starting) {
    std::vector<char> balance;
    while (true) {
      if (p >= s.size()) return p;  // the parser reports the missing end
      const char c0 = s[p];
      if (balance.empty() && (c0 == '+' || c0 == '-' || c0 == '%' || c0 == '}')) {
        if (block) {
          if (s.compare(p, 3, "+%}") == 0 || s.compare(p, 3, "-%}") == 0) {
            tokens_.push_back({Tok::kBlockEnd, line_, {}});
            return after_block_end(s, p + 3, s[p], line_starting);
          }
          if (s.compare(p, 2, "%}") == 0) {
            tokens_.push_back({Tok::kBlockEnd, line_, {}});
            return after_block_end(s, p + 2, 0, line_starting);
          }
        } else {
          if (s.compare(p, 3, "-}}") == 0) {
            tokens_.push_back({Tok::kVarEnd, line_, {}});
            return after_block_end(s, p + 3, '-', line_starting);
          }
          if (s.compare(p, 2, "}}") == 0) {
            tokens_.push_back({Tok::kVarEnd, line_, {}});
            line_starting = false;
            return p + 2;
          }
        }
      }
      if (const size_t n = space_at(s, p)) {
        if (s[p] == '\n') ++line_;
        p += n;
        continue;
      }
      const char c = s[p];
      if (is_digit(c)) {
        p = lex_number(s, p);
        continue;
      }
      if (is_name_start(c)) {
        size_t q = p;
        while (q < s.size() && is_name_char(s[q])) ++q;
        tokens_.push_back({Tok::kName, line_, std::string(s.substr(p, q - p))});
        p = q;
        continue;
      }
      if (c == '\'' || c == '"') {
        p = lex_string(s, p);
        continue;
      }
      static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                         "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                         "|",  ".",  ",",  ":",  ";",  "=",  "<", ">"};
      const char* op = nullptr;
      for (const char* candidate : kOps) {
        if (candidate[0] != c0) continue;
        if (s.compare(p, std::strlen(candidate), candidate) == 0) {
          op = candidate;
          break;
        }
      }
      if (!op) {
        const size_t n = std::min<size_t>(s.size() - p, std::max<size_t>(1, utf8_len(c)));
        syntax_error(line_, "unexpected char " + string_repr(s.substr(p, n)) + " at " +
                                std::to_string(utf8_length(s.substr(0, p))));
      }
      const std::string o(op);
      if (o == "{" || o == "(" || o == "[") {
        if (balance.size() > static_cast<size_t>(kMaxDepth))
          syntax_error(line_, "brackets nested too deeply");
        balance.push_back(o == "{" ? '}' : o == "(" ? ')' : ']');
      } else if (o == "}" || o == ")" || o == "]") {
        if (balance.empty()) syntax_error(line_, "unexpected '" + o + "'");
        if (balance.back() != o[0])
          syntax_error(line_, "unexpected '" + o + "', expected '" + balance.back() + "'");
        balance.pop_back();
      }
      tokens_.push_back({Tok::kOp, line_, o});
      p += o.size();
    }
  }

  static size_t utf8_len(char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x80             ? 1
           : (u & 0xE0) == 0xC0 ? 2
           : (u & 0xF0) == 0xE0 ? 3
           : (u & 0xF8) == 0xF0 ? 4
                                : 1;
  }

  // Python integer and float literals as Jinja2 lexes them (underscores allowed).
  size_t lex_number(std::string_view s, size_t p) {
    const auto digits_run = [&](size_t q, auto is_ok) {
      // (\d+_)*\d+ style: digits with single underscores between them.
      size_t r = q;
      if (r >= s.size() || !is_ok(s[r])) return q;
      while (r < s.size()) {
        if (is_ok(s[r])) {
          ++r;
        } else if (s[r] == '_' && r + 1 < s.size() && is_ok(s[r + 1])) {
          r += 2;
        } else {
          break;
        }
      }
      return r;
    };
    const auto dec = [](char c) { return is_digit(c); };
    const bool after_dot = p > 0 && s[p - 1] == '.';
    // Float first (as Jinja2's rule order).
    if (!after_dot) {
      const size_t int_end = digits_run(p, dec);
      size_t q = int_end;
      size_t frac_end = q;
      if (q < s.size() && s[q] == '.') {
        const size_t r = digits_run(q + 1, dec);
        if (r > q + 1) frac_end = r;
      }
      size_t exp_end = 0;
      {
        size_t r = frac_end;
        if (r < s.size() && (s[r] == 'e' || s[r] == 'E')) {
          ++r;
          if (r < s.size() && (s[r] == '+' || s[r] == '-')) ++r;
          const size_t e = digits_run(r, dec);
          if (e > r) exp_end = e;
        }
      }
      size_t end = 0;
      if (exp_end) {
        end = exp_end;
      } else if (frac_end > int_end) {
        end = frac_end;
      }
      if (end) {
        std::string text;
        for (size_t k = p; k < end; ++k)
          if (s[k] != '_') text += s[k];
        Token t{Tok::kFloat, line_, text};
        t.fval = std::strtod(text.c_str(), nullptr);
        tokens_.push_back(std::move(t));
        return end;
      }
    }
    // Integers: 0b / 0o / 0x prefixes, decimal without leading zeros, or zeros.
    int base = 10;
    size_t q = p;
    size_t end = p;
    if (s[p] == '0' && p + 1 < s.size() &&
        (s[p + 1] == 'b' || s[p + 1] == 'B' || s[p + 1] == 'o' || s[p + 1] == 'O' ||
         s[p + 1] == 'x' || s[p + 1] == 'X')) {
      const char k = static_cast<char>(s[p + 1] | 0x20);
      base = k == 'b' ? 2 : k == 'o' ? 8 : 16;
      const auto ok = [base](char c) {
        if (base == 2) return c == '0' || c == '1';
        if (base == 8) return c >= '0' && c <= '7';
        return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      };
      // 0x(_?[\da-f])+
      size_t r = p + 2;
      while (r < s.size()) {
        if (ok(s[r])) {
          ++r;
        } else if (s[r] == '_' && r + 1 < s.size() && ok(s[r + 1])) {
          r += 2;
        } else {
          break;
        }
      }
      if (r > p + 2) {
        q = p + 2;
        end = r;
      } else {
        base = 10;
      }
    }
    if (base == 10) {
      q = p;
      if (s[p] == '0') {
        size_t r = p + 1;
        while (r < s.size()) {
          if (s[r] == '0') {
            ++r;
          } else if (s[r] == '_' && r + 1 < s.size() && s[r + 1] == '0') {
            r += 2;
          } else {
            break;
          }
        }
        end = r;
      } else {
        end = digits_run(p, dec);
      }
    }
    int64_t value = 0;
    for (size_t k = q; k < end; ++k) {
      if (s[k] == '_') continue;
      const char c = static_cast<char>(s[k] | 0x20);
      const int d = is_digit(s[k]) ? s[k] - '0' : c - 'a' + 10;
      if (__builtin_mul_overflow(value, base, &value) || __builtin_add_overflow(value, d, &value))
        syntax_error(line_, "integer literal too large");
    }
    Token t{Tok::kInt, line_, std::string(s.substr(p, end - p))};
    t.ival = value;
    tokens_.push_back(std::move(t));
    return end;
  }

  // A quoted string with Python's unicode-escape decoding.
  size_t lex_string(std::string_view s, size_t p) {
    const char quote = s[p];
    size_t q = p + 1;
    while (q < s.size() && s[q] != quote) {
      if (s[q] == '\\') ++q;
      ++q;
    }
    if (q >= s.size())
      syntax_error(line_, "unexpected char " + string_repr(std::string(1, quote)) + " at " +
                              std::to_string(utf8_length(s.substr(0, p))));
    const std::string_view body = s.substr(p + 1, q - p - 1);
    std::string out;
    for (size_t k = 0; k < body.size(); ++k) {
      if (body[k] != '\\' || k + 1 >= body.size()) {
        out += body[k];
        continue;
      }
      const char e = body[++k];
      const auto hex_escape = [&](int n, const char* what) -> uint32_t {
        uint32_t v = 0;
        for (int m = 0; m < n; ++m) {
          const size_t at = k + 1 + m;
          if (at >= body.size() || !std::isxdigit(static_cast<unsigned char>(body[at])))
            syntax_error(line_, std::string("truncated ") + what + " escape");
          const char c = static_cast<char>(body[at] | 0x20);
          v = v * 16 + (is_digit(body[at]) ? body[at] - '0' : c - 'a' + 10);
        }
        k += n;
        return v;
      };
      switch (e) {
        case '\n':
          break;  // line continuation
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
          append_utf8(out, hex_escape(2, "\\xXX"));
          break;
        case 'u':
        case 'U': {
          const uint32_t cp = hex_escape(e == 'u' ? 4 : 8, e == 'u' ? "\\uXXXX" : "\\UXXXXXXXX");
          if (cp > 0x10FFFF) syntax_error(line_, "illegal Unicode character");
          if (cp >= 0xD800 && cp <= 0xDFFF)
            syntax_error(line_, "surrogate code points are not supported in strings");
          append_utf8(out, cp);
          break;
        }
        case 'N':
          syntax_error(line_, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = e - '0';
            for (int m = 0;
                 m < 2 && k + 1 < body.size() && body[k + 1] >= '0' && body[k + 1] <= '7'; ++m)
              v = v * 8 + (body[++k] - '0');
            append_utf8(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    tokens_.push_back({Tok::kString, line_, std::move(out)});
    line_ += count_lines(s.substr(p, q - p));
    return q + 1;
  }

  const Options& options_;
  std::string src_;
  std::vector<Token> tokens_;
  int line_ = 1;
  int data_line_ = 1;
};

// ---- parser ----

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {
    if (toks_[0].type == Tok::kError) throw Error(toks_[0].text);
  }

  Body parse() {
    Body body = subparse({});
    if (cur().type != Tok::kEof) fail_here("unexpected tag");
    return body;
  }

 private:
  struct DepthGuard {
    explicit DepthGuard(Parser& p) : p(p) {
      if (++p.depth_ > kMaxDepth) p.fail_here("template nested too deeply");
    }
    ~DepthGuard() { --p.depth_; }
    Parser& p;
  };

  const Token& cur() const { return toks_[pos_]; }
  // Reaching a lexing error raises it: Jinja2 lexes as the parser pulls tokens, so an error
  // in the template's syntax before it wins.
  const Token& peek(size_t n = 1) const {
    const Token& t = toks_[std::min(pos_ + n, toks_.size() - 1)];
    if (t.type == Tok::kError) throw Error(t.text);
    return t;
  }
  void advance() {
    if (pos_ + 1 < toks_.size()) ++pos_;
    if (toks_[pos_].type == Tok::kError) throw Error(toks_[pos_].text);
  }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::kName && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    advance();
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::kData:
        return "template data";
      case Tok::kBlockBegin:
        return "begin of statement block";
      case Tok::kBlockEnd:
        return "end of statement block";
      case Tok::kVarBegin:
        return "begin of print statement";
      case Tok::kVarEnd:
        return "end of print statement";
      case Tok::kEof:
        return "end of template";
      case Tok::kString:
        return "string";
      case Tok::kInt:
        return "integer";
      case Tok::kFloat:
        return "float";
      default:
        return t.text;
    }
  }
  [[noreturn]] void fail_here(const std::string& what) const { syntax_error(cur().line, what); }
  [[noreturn]] void fail_expected(const char* what) const {
    if (cur().type == Tok::kEof)
      fail_here(std::string("unexpected end of template, expected '") + what + "'.");
    fail_here(std::string("expected token '") + what + "', got '" + describe(cur()) + "'");
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail_expected(op);
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) fail_expected("name");
    std::string n = cur().text;
    advance();
    return n;
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail_expected(what);
    advance();
  }
  void expect_block_end() {
    skip_op(":");  // a colon is allowed for Python compatibility... only before block end
    expect(Tok::kBlockEnd, "end of statement block");
  }

  // Parses template data, prints and statements until a block whose tag name is in `ends`;
  // leaves the parser at that name.
  // Jinja2's message for an unknown tag (name) or an early end of template (name empty).
  [[noreturn]] void fail_unknown_tag(const std::string& name) const {
    std::string msg =
        name.empty() ? "Unexpected end of template." : "Encountered unknown tag '" + name + "'.";
    if (!end_stack_.empty() && !end_stack_.back().empty()) {
      std::string looking;
      for (const auto& e : end_stack_.back())
        looking += (looking.empty() ? "'" : " or '") + e + "'";
      bool expected = false;
      for (const auto& ends : end_stack_)
        for (const auto& e : ends) expected |= e == name;
      if (expected) {
        msg +=
            " You probably made a nesting mistake. Jinja is expecting this tag, but currently "
            "looking for " +
            looking + ".";
      } else {
        msg += " Jinja was looking for the following tags: " + looking + ".";
      }
    }
    if (!tag_stack_.empty())
      msg += " The innermost block that needs to be closed is '" + tag_stack_.back() + "'.";
    fail_here(msg);
  }

  Body subparse(const std::vector<std::string>& ends) {
    DepthGuard guard(*this);
    if (!ends.empty()) end_stack_.push_back(ends);
    Body body;
    while (cur().type != Tok::kEof) {
      const Token& t = cur();
      if (t.type == Tok::kData) {
        auto s = std::make_unique<Stmt>(Stmt::kText, t.line);
        s->text = t.text;
        body.push_back(std::move(s));
        advance();
      } else if (t.type == Tok::kVarBegin) {
        advance();
        auto s = std::make_unique<Stmt>(Stmt::kPrint, t.line);
        s->expr = parse_tuple(false, true, {});
        expect(Tok::kVarEnd, "end of print statement");
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        advance();
        if (cur().type == Tok::kName) {
          for (const auto& e : ends) {
            if (cur().text == e) {
              end_stack_.pop_back();
              return body;
            }
          }
        }
        parse_statement(body);
        expect(Tok::kBlockEnd, "end of statement block");
      } else {
        fail_here("unexpected '" + describe(t) + "'");
      }
    }
    if (!ends.empty()) fail_unknown_tag("");
    return body;
  }

  Body parse_statements(const std::vector<std::string>& ends) {
    expect_block_end();
    return subparse(ends);
  }

  void parse_statement(Body& out) {
    if (cur().type != Tok::kName) fail_here("tag name expected");
    const std::string tag = cur().text;
    const int line = cur().line;
    tag_stack_.push_back(tag);
    parse_tag(tag, line, out);
    tag_stack_.pop_back();
  }

  void parse_tag(const std::string& tag, int line, Body& out) {
    if (tag == "for") {
      out.push_back(parse_for());
    } else if (tag == "if") {
      out.push_back(parse_if());
    } else if (tag == "set") {
      out.push_back(parse_set());
    } else if (tag == "macro") {
      out.push_back(parse_macro());
    } else if (tag == "break" || tag == "continue") {
      advance();
      out.push_back(std::make_unique<Stmt>(tag == "break" ? Stmt::kBreak : Stmt::kContinue, line));
    } else if (tag == "filter") {
      advance();
      auto s = std::make_unique<Stmt>(Stmt::kFilterBlock, line);
      parse_filter_chain(s->filters, true);
      s->body = parse_statements({"endfilter"});
      advance();
      out.push_back(std::move(s));
    } else if (tag == "generation") {
      // transformers' AssistantTracker: marks assistant text; the body renders as is.
      advance();
      auto s = std::make_unique<Stmt>(Stmt::kScope, line);
      s->body = parse_statements({"endgeneration"});
      advance();
      out.push_back(std::move(s));
    } else if (tag == "with") {
      advance();
      auto s = std::make_unique<Stmt>(Stmt::kWith, line);
      while (cur().type != Tok::kBlockEnd) {
        if (!s->targets.empty()) expect_op(",");
        s->targets.push_back(expect_name());
        expect_op("=");
        s->exprs.push_back(parse_expression(true));
      }
      s->body = parse_statements({"endwith"});
      advance();
      out.push_back(std::move(s));
    } else if (tag == "print") {
      advance();
      auto s = std::make_unique<Stmt>(Stmt::kPrint, line);
      s->expr = parse_tuple(false, true, {});
      out.push_back(std::move(s));
    } else if (tag == "raw") {
      fail_here("raw tag is malformed");
    } else if (tag == "block" || tag == "extends" || tag == "include" || tag == "import" ||
               tag == "from" || tag == "call" || tag == "autoescape" || tag == "do") {
      fail_here("the '" + tag + "' tag is not supported in chat templates");
    } else {
      tag_stack_.pop_back();
      fail_unknown_tag(tag);
    }
  }

  void parse_targets(Stmt& s, const char* end_name) {
    // Names, optionally a tuple of names (with or without parentheses).
    const bool paren = skip_op("(");
    if (cur().type == Tok::kBlockEnd || cur().type == Tok::kVarEnd)
      fail_here("Expected an expression, got '" + describe(cur()) + "'");
    while (true) {
      s.targets.push_back(expect_name());
      if (!skip_op(",")) break;
      s.tuple_target = true;
      if (paren && is_op(")")) break;
      if (!paren && end_name && is_name(end_name)) break;
    }
    if (paren) {
      expect_op(")");
      s.tuple_target = true;
    }
    for (const auto& t : s.targets)
      if (t == "true" || t == "false" || t == "none" || t == "True" || t == "False" || t == "None")
        fail_here("can't assign to 'const'");
  }

  StmtPtr parse_for() {
    auto s = std::make_unique<Stmt>(Stmt::kFor, cur().line);
    advance();
    parse_targets(*s, "in");
    if (!skip_name("in")) fail_here("expected token 'in', got '" + describe(cur()) + "'");
    s->expr = parse_tuple(false, false, {"recursive"});
    if (skip_name("if")) s->cond = parse_expression(true);
    if (is_name("recursive")) fail_here("recursive loops are not supported");
    s->body = parse_statements({"endfor", "else"});
    if (cur().text == "else") {
      advance();
      s->else_body = parse_statements({"endfor"});
    }
    advance();
    return s;
  }

  StmtPtr parse_if() {
    auto s = std::make_unique<Stmt>(Stmt::kIf, cur().line);
    advance();
    while (true) {
      s->conds.push_back(parse_tuple(false, false, {}));
      s->bodies.push_back(parse_statements({"elif", "else", "endif"}));
      const std::string tag = cur().text;
      advance();
      if (tag == "elif") continue;
      if (tag == "else") {
        s->else_body = parse_statements({"endif"});
        advance();
      }
      break;
    }
    return s;
  }

  StmtPtr parse_set() {
    const int line = cur().line;
    advance();
    if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == ".") {
      auto s = std::make_unique<Stmt>(Stmt::kSetAttr, line);
      s->targets.push_back(expect_name());
      advance();
      s->attr = expect_name();
      expect_op("=");
      s->expr = parse_tuple(false, true, {});
      return s;
    }
    auto s = std::make_unique<Stmt>(Stmt::kSet, line);
    parse_targets(*s, nullptr);
    if (skip_op("=")) {
      s->expr = parse_tuple(false, true, {});
      return s;
    }
    if (s->tuple_target) fail_here("a block set assigns to one name");
    s->kind = Stmt::kSetBlock;
    if (is_op("|")) parse_filter_chain(s->filters, false);
    s->body = parse_statements({"endset"});
    advance();
    return s;
  }

  StmtPtr parse_macro() {
    auto s = std::make_unique<Stmt>(Stmt::kMacro, cur().line);
    advance();
    s->name = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) expect_op(",");
      s->params.push_back(expect_name());
      if (skip_op("=")) {
        s->defaults.push_back(parse_expression(true));
      } else if (!s->defaults.empty()) {
        fail_here("non-default argument follows default argument");
      }
    }
    expect_op(")");
    s->body = parse_statements({"endmacro"});
    advance();
    return s;
  }

  // ---- expressions ----

  ExprPtr make(Expr::Kind k, int line) { return std::make_unique<Expr>(k, line); }

  bool is_tuple_end(const std::vector<std::string>& extra) const {
    if (cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd) return true;
    if (cur().type == Tok::kOp && cur().text == ")") return true;
    if (cur().type == Tok::kName)
      for (const auto& e : extra)
        if (cur().text == e) return true;
    return false;
  }

  ExprPtr parse_tuple(bool explicit_parens, bool with_condexpr,
                      const std::vector<std::string>& extra_end) {
    DepthGuard guard(*this);
    const int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail_here("Expected an expression, got '" + describe(cur()) + "'");
    }
    auto e = make(Expr::kTuple, line);
    e->args = std::move(items);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    DepthGuard guard(*this);
    if (!with_condexpr) return parse_or();
    const int line = cur().line;
    ExprPtr expr = parse_or();
    while (skip_name("if")) {
      auto e = make(Expr::kCond, line);
      ExprPtr test = parse_or();
      ExprPtr other;
      if (skip_name("else")) other = parse_expression(true);
      e->args.push_back(std::move(expr));
      e->args.push_back(std::move(test));
      e->args.push_back(std::move(other));
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      auto e = make(Expr::kOr, cur().line);
      advance();
      e->args.push_back(std::move(left));
      e->args.push_back(parse_and());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      auto e = make(Expr::kAnd, cur().line);
      advance();
      e->args.push_back(std::move(left));
      e->args.push_back(parse_not());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(*this);
      auto e = make(Expr::kNot, cur().line);
      advance();
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr first = parse_math1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::kOp &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::kCompare, line);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr binary(std::string op, ExprPtr a, ExprPtr b, int line) {
    auto e = make(Expr::kBinary, line);
    e->op = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = cur().text;
      const int line = cur().line;
      advance();
      left = binary(op, std::move(left), parse_concat(), line);
    }
    return left;
  }

  ExprPtr parse_concat() {
    const int line = cur().line;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(Expr::kConcat, line);
    e->args.push_back(std::move(first));
    while (skip_op("~")) e->args.push_back(parse_math2());
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = cur().text;
      const int line = cur().line;
      advance();
      left = binary(op, std::move(left), parse_pow(), line);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const int line = cur().line;
      advance();
      left = binary("**", std::move(left), parse_unary(true), line);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      auto e = make(is_op("-") ? Expr::kNeg : Expr::kPos, cur().line);
      advance();
      e->args.push_back(parse_unary(false));
      node = std::move(e);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    DepthGuard guard(*this);
    const Token& t = cur();
    if (t.type == Tok::kName) {
      ExprPtr e;
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        e = make(Expr::kConst, t.line);
        e->value = Value::boolean(t.text == "true" || t.text == "True");
      } else if (t.text == "none" || t.text == "None") {
        e = make(Expr::kConst, t.line);
        e->value = Value::none();
      } else {
        e = make(Expr::kName, t.line);
        e->name = t.text;
      }
      advance();
      return e;
    }
    if (t.type == Tok::kString) {
      auto e = make(Expr::kConst, t.line);
      std::string text;
      while (cur().type == Tok::kString) {
        text += cur().text;
        advance();
      }
      e->value = Value::string(std::move(text));
      return e;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      auto e = make(Expr::kConst, t.line);
      e->value = t.type == Tok::kInt ? Value::integer(t.ival) : Value::real(t.fval);
      advance();
      return e;
    }
    if (is_op("(")) {
      advance();
      ExprPtr e = parse_tuple(true, true, {});
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      auto e = make(Expr::kList, t.line);
      advance();
      while (!is_op("]")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("]")) break;
        e->args.push_back(parse_expression(true));
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      auto e = make(Expr::kDict, t.line);
      advance();
      while (!is_op("}")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("}")) break;
        e->args.push_back(parse_expression(true));
        expect_op(":");
        e->args.push_back(parse_expression(true));
      }
      expect_op("}");
      return e;
    }
    fail_here("unexpected '" + describe(t) + "'");
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        std::vector<ExprPtr> chain;
        parse_filter_chain(chain, false);
        for (auto& f : chain) {
          f->args[0] = std::move(node);
          node = std::move(f);
        }
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    DepthGuard guard(*this);
    const int line = cur().line;
    if (skip_op(".")) {
      if (cur().type == Tok::kName) {
        auto e = make(Expr::kGetAttr, line);
        e->name = cur().text;
        advance();
        e->args.push_back(std::move(node));
        return e;
      }
      if (cur().type != Tok::kInt) fail_here("expected name or number");
      auto e = make(Expr::kGetItem, line);
      auto k = make(Expr::kConst, line);
      k->value = Value::integer(cur().ival);
      advance();
      e->args.push_back(std::move(node));
      e->args.push_back(std::move(k));
      return e;
    }
    expect_op("[");
    std::vector<ExprPtr> subs;
    while (!is_op("]")) {
      if (!subs.empty()) expect_op(",");
      subs.push_back(parse_subscribed());
    }
    expect_op("]");
    auto e = make(Expr::kGetItem, line);  // x[] subscripts with an empty tuple
    e->args.push_back(std::move(node));
    if (subs.size() == 1) {
      e->args.push_back(std::move(subs[0]));
    } else {
      auto t = make(Expr::kTuple, line);
      t->args = std::move(subs);
      e->args.push_back(std::move(t));
    }
    return e;
  }

  ExprPtr parse_subscribed() {
    const int line = cur().line;
    std::vector<ExprPtr> parts;
    if (is_op(":")) {
      advance();
      parts.push_back(nullptr);
    } else {
      ExprPtr node = parse_expression(true);
      if (!is_op(":")) return node;
      advance();
      parts.push_back(std::move(node));
    }
    if (is_op(":")) {
      parts.push_back(nullptr);
    } else if (!is_op("]") && !is_op(",")) {
      parts.push_back(parse_expression(true));
    } else {
      parts.push_back(nullptr);
    }
    if (is_op(":")) {
      advance();
      if (!is_op("]") && !is_op(",")) {
        parts.push_back(parse_expression(true));
      } else {
        parts.push_back(nullptr);
      }
    } else {
      parts.push_back(nullptr);
    }
    auto e = make(Expr::kSlice, line);
    e->args = std::move(parts);
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool require_comma = false;
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail_here("*args and **kwargs in calls are not supported");
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string key = cur().text;
        advance();
        advance();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail_here("invalid syntax for function call expression");
        e.args.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr node) {
    DepthGuard guard(*this);
    auto e = make(Expr::kCall, cur().line);
    e->args.push_back(std::move(node));
    parse_call_args(*e);
    return e;
  }

  // `| name(args)` repeated (or, for a filter block, starting at the name); each filter's
  // args[0] is left null for the caller to fill with the subject.
  void parse_filter_chain(std::vector<ExprPtr>& out, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) advance();
      start_inline = false;
      auto e = make(Expr::kFilter, cur().line);
      e->name = expect_name();
      while (skip_op(".")) e->name += "." + expect_name();
      e->filter = find_filter(e->name);
      if (!e->filter) {
        if (is_known_jinja_filter(e->name))
          fail_here("the filter '" + e->name + "' is not supported");
        fail_here("No filter named '" + e->name + "'.");
      }
      e->args.push_back(nullptr);
      if (is_op("(")) parse_call_args(*e);
      out.push_back(std::move(e));
    }
  }

  ExprPtr parse_test(ExprPtr node) {
    DepthGuard guard(*this);
    const int line = cur().line;
    advance();  // is
    const bool negated = skip_name("not");
    auto e = make(Expr::kTest, line);
    e->name = expect_name();
    while (skip_op(".")) e->name += "." + expect_name();
    e->test = find_test(e->name);
    if (!e->test) {
      if (is_known_jinja_test(e->name)) fail_here("the test '" + e->name + "' is not supported");
      fail_here("No test named '" + e->name + "'.");
    }
    e->args.push_back(std::move(node));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt ||
                cur().type == Tok::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail_here("You cannot chain multiple tests with is");
      e->args.push_back(parse_postfix(parse_primary()));
    }
    if (!negated) return e;
    auto n = make(Expr::kNot, line);
    n->args.push_back(std::move(e));
    return n;
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  std::vector<std::vector<std::string>> end_stack_;  // end tags each open block waits for
  std::vector<std::string> tag_stack_;               // the statements being parsed
};

}  // namespace

Body parse_template(std::string_view source, const Options& options) {
  Lexer lexer(source, options);
  Parser parser(lexer.run());
  return parser.parse();
}

}  // namespace tessera::jinja
