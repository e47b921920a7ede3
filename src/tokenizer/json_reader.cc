#include "tokenizer/json_reader.h"

#include <cstring>
#include <string>
#include <utility>

#include "core/status.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

void JsonReader::error(std::string_view message) const {
  fail("malformed: {} at byte {}", message, pos_);
}

void JsonReader::expect(char c) {
  if (!consume(c)) error(fmt::format("expected '{}'", c));
}

std::string_view JsonReader::read_string(std::string& scratch) {
  if (!consume('"')) error("expected a string");
  const size_t begin = pos_;
  bool non_ascii = false;
  // Fast path: no escapes, the string is a view of the text. Eight bytes at a time while none
  // of them is a quote, a backslash or a control character.
  constexpr uint64_t kOnes = 0x0101010101010101ULL, kHigh = 0x8080808080808080ULL;
  const auto has_zero = [](uint64_t x) { return (x - kOnes) & ~x & kHigh; };
  while (pos_ + 8 <= text_.size()) {
    uint64_t v;
    std::memcpy(&v, text_.data() + pos_, 8);
    const uint64_t special = has_zero(v ^ (kOnes * '"')) | has_zero(v ^ (kOnes * '\\')) |
                             ((v - kOnes * 0x20) & ~v & kHigh);
    if (special != 0) break;
    non_ascii |= (v & kHigh) != 0;
    pos_ += 8;
  }
  while (pos_ < text_.size()) {
    const auto c = static_cast<unsigned char>(text_[pos_]);
    if (c == '"') {
      const std::string_view s = text_.substr(begin, pos_ - begin);
      if (non_ascii && !utf8_valid(s)) error("invalid UTF-8 in a string");
      ++pos_;
      return s;
    }
    if (c == '\\') break;
    if (c < 0x20) error("control character in a string");
    non_ascii |= c >= 0x80;
    ++pos_;
  }
  scratch.assign(text_.substr(begin, pos_ - begin));
  while (true) {
    if (pos_ >= text_.size()) error("unterminated string");
    const auto c = static_cast<unsigned char>(text_[pos_]);
    if (c == '"') {
      ++pos_;
      break;
    }
    if (c < 0x20) error("control character in a string");
    if (c != '\\') {
      non_ascii |= c >= 0x80;
      scratch.push_back(static_cast<char>(c));
      ++pos_;
      continue;
    }
    if (pos_ + 1 >= text_.size()) error("unterminated string");
    const char e = text_[pos_ + 1];
    pos_ += 2;
    switch (e) {
      case '"':
        scratch.push_back('"');
        break;
      case '\\':
        scratch.push_back('\\');
        break;
      case '/':
        scratch.push_back('/');
        break;
      case 'b':
        scratch.push_back('\b');
        break;
      case 'f':
        scratch.push_back('\f');
        break;
      case 'n':
        scratch.push_back('\n');
        break;
      case 'r':
        scratch.push_back('\r');
        break;
      case 't':
        scratch.push_back('\t');
        break;
      case 'u': {
        const auto hex4 = [&]() -> char32_t {
          if (pos_ + 4 > text_.size()) error("truncated \\u escape");
          char32_t v = 0;
          for (int i = 0; i < 4; ++i) {
            const int h = hex_value(text_[pos_ + i]);
            if (h < 0) error("bad \\u escape");
            v = (v << 4) | static_cast<char32_t>(h);
          }
          pos_ += 4;
          return v;
        };
        char32_t cp = hex4();
        if (cp >= 0xDC00 && cp <= 0xDFFF) error("lone low surrogate in a \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (pos_ + 2 > text_.size() || text_[pos_] != '\\' || text_[pos_ + 1] != 'u')
            error("high surrogate not followed by a low surrogate");
          pos_ += 2;
          const char32_t low = hex4();
          if (low < 0xDC00 || low > 0xDFFF) error("high surrogate not followed by a low surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        utf8_append(scratch, cp);
        break;
      }
      default:
        error("bad escape in a string");
    }
  }
  if (non_ascii && !utf8_valid(scratch)) error("invalid UTF-8 in a string");
  return scratch;
}

std::optional<int64_t> JsonReader::read_integer() {
  skip_ws();
  const size_t begin = pos_;
  bool negative = false;
  if (pos_ < text_.size() && text_[pos_] == '-') {
    negative = true;
    ++pos_;
  }
  if (pos_ >= text_.size() || !is_digit(text_[pos_])) {
    pos_ = begin;
    return std::nullopt;
  }
  int64_t value = 0;
  size_t digits = 0;
  while (pos_ < text_.size() && is_digit(text_[pos_])) {
    if (digits == 1 && value == 0) error("leading zero in a number");
    if (++digits > 18) {
      pos_ = begin;
      return std::nullopt;
    }
    value = value * 10 + (text_[pos_] - '0');
    ++pos_;
  }
  if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
    pos_ = begin;
    return std::nullopt;
  }
  return negative ? -value : value;
}

void JsonReader::skip_number() {
  if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
  if (pos_ >= text_.size() || !is_digit(text_[pos_])) error("bad number");
  if (text_[pos_] == '0') {
    ++pos_;
  } else {
    while (pos_ < text_.size() && is_digit(text_[pos_])) ++pos_;
  }
  if (pos_ < text_.size() && text_[pos_] == '.') {
    ++pos_;
    if (pos_ >= text_.size() || !is_digit(text_[pos_])) error("bad number");
    while (pos_ < text_.size() && is_digit(text_[pos_])) ++pos_;
  }
  if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
    ++pos_;
    if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
    if (pos_ >= text_.size() || !is_digit(text_[pos_])) error("bad number");
    while (pos_ < text_.size() && is_digit(text_[pos_])) ++pos_;
  }
}

void JsonReader::skip_literal() {
  for (const std::string_view word : {"true", "false", "null"}) {
    if (text_.substr(pos_, word.size()) == word) {
      pos_ += word.size();
      return;
    }
  }
  error("unexpected character");
}

// Iterative (an explicit stack of closing brackets) so that deep nesting cannot overflow.
void JsonReader::skip_value() {
  std::string closers;
  std::string scratch;
  while (true) {
    const char c = peek();
    bool done = true;
    if (c == '{') {
      ++pos_;
      if (!consume('}')) {
        closers.push_back('}');
        read_string(scratch);
        expect(':');
        done = false;
      }
    } else if (c == '[') {
      ++pos_;
      if (!consume(']')) {
        closers.push_back(']');
        done = false;
      }
    } else if (c == '"') {
      read_string(scratch);
    } else if (c == '-' || is_digit(c)) {
      skip_number();
    } else {
      skip_literal();
    }
    if (!done) continue;
    // A value ended: close what it ends, up to the next sibling.
    while (!closers.empty()) {
      if (consume(',')) {
        if (closers.back() == '}') {
          read_string(scratch);
          expect(':');
        }
        break;
      }
      if (!consume(closers.back())) error("expected ',' or a closing bracket");
      closers.pop_back();
    }
    if (closers.empty()) return;
  }
}

void JsonReader::skip_value_unchecked() {
  const char c = peek();
  if (c != '{' && c != '[') {
    skip_value();
    return;
  }
  size_t depth = 0;
  const char* p = text_.data() + pos_;
  const char* const end = text_.data() + text_.size();
  while (p < end) {
    const char ch = *p++;
    if (ch == '"') {
      // To the closing quote: one not preceded by an odd run of backslashes.
      while (true) {
        const auto* q = static_cast<const char*>(std::memchr(p, '"', static_cast<size_t>(end - p)));
        if (q == nullptr) {
          pos_ = text_.size();
          error("unterminated string");
        }
        size_t backslashes = 0;
        while (q - backslashes > p && q[-1 - static_cast<ptrdiff_t>(backslashes)] == '\\')
          ++backslashes;
        p = q + 1;
        if (backslashes % 2 == 0) break;
      }
    } else if (ch == '{' || ch == '[') {
      ++depth;
    } else if (ch == '}' || ch == ']') {
      if (--depth == 0) {
        pos_ = static_cast<size_t>(p - text_.data());
        return;
      }
    }
  }
  pos_ = text_.size();
  error("unterminated value");
}

namespace {

// Parses the raw text of one value with nlohmann.
nlohmann::json parse_span(std::string_view text) {
  return nlohmann::json::parse(text.begin(), text.end());
}

// Checks a skipped-unchecked value that will not be read after all (its key repeats).
void check_span(std::string_view text) {
  if (text.empty()) return;
  JsonReader reader(text);
  reader.skip_value();
  if (!reader.at_end()) reader.error("unexpected text after a value");
}

}  // namespace

TokenizerJson split_tokenizer_json(std::string_view text) {
  TokenizerJson out;
  JsonReader reader(text);
  if (reader.peek() != '{') {  // not an object: nlohmann reports the error, or the caller does
    out.doc = parse_span(text);
    return out;
  }
  out.doc = nlohmann::json::object();
  std::string scratch;
  reader.expect('{');
  if (!reader.consume('}')) {
    do {
      const std::string key(reader.read_string(scratch));
      reader.expect(':');
      const size_t begin = (reader.skip_ws(), reader.pos());
      if (key == "model" && reader.peek() == '{') {
        // Keys repeat rarely; when they do the last one wins, as with nlohmann.
        nlohmann::json model = nlohmann::json::object();
        check_span(std::exchange(out.vocab, {}));
        check_span(std::exchange(out.merges, {}));
        reader.expect('{');
        if (!reader.consume('}')) {
          do {
            const std::string model_key(reader.read_string(scratch));
            reader.expect(':');
            const size_t value_begin = (reader.skip_ws(), reader.pos());
            // Bpe reads vocab and merges fully (and rejects what follows a value there).
            if (model_key == "vocab" || model_key == "merges") {
              reader.skip_value_unchecked();
            } else {
              reader.skip_value();
            }
            const std::string_view value = text.substr(value_begin, reader.pos() - value_begin);
            if (model_key == "vocab") {
              check_span(std::exchange(out.vocab, value));
              model.erase("vocab");
            } else if (model_key == "merges") {
              check_span(std::exchange(out.merges, value));
              model.erase("merges");
            } else {
              model[model_key] = parse_span(value);
            }
          } while (reader.consume(','));
          reader.expect('}');
        }
        out.doc[key] = std::move(model);
        continue;
      }
      reader.skip_value();
      out.doc[key] = parse_span(text.substr(begin, reader.pos() - begin));
      if (key == "model") {
        check_span(std::exchange(out.vocab, {}));
        check_span(std::exchange(out.merges, {}));
      }
    } while (reader.consume(','));
    reader.expect('}');
  }
  if (!reader.at_end()) reader.error("unexpected text after the top-level object");
  return out;
}

}  // namespace tessera::tokenizer
