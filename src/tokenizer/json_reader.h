// A small strict JSON reader for the bulky parts of tokenizer.json (model.vocab and
// model.merges: 260 000 tokens and 500 000 merges for Gemma 3), which it reads straight into the
// model's tables; building a nlohmann DOM for them took most of a second. Everything else in
// the file is still parsed by nlohmann (see split_tokenizer_json).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

class JsonReader {
 public:
  explicit JsonReader(std::string_view text) : text_(text) {}

  void skip_ws() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\t'))
      ++pos_;
  }
  // The next non-blank character, or '\0' at the end.
  char peek() {
    skip_ws();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  bool at_end() {
    skip_ws();
    return pos_ >= text_.size();
  }
  // Consumes `c` when it is the next non-blank character.
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c);
  // A string: a view of the text when it has no escapes, else of `scratch`. Checks UTF-8.
  std::string_view read_string(std::string& scratch);
  // An integer of at most 18 digits; nullopt (nothing read) for any other value.
  std::optional<int64_t> read_integer();
  // Skips (and checks) any value.
  void skip_value();
  // Skips a value without checking more than its brackets and strings' ends: for text that is
  // checked fully afterwards.
  void skip_value_unchecked();
  size_t pos() const { return pos_; }
  std::string_view text() const { return text_; }
  [[noreturn]] void error(std::string_view message) const;

 private:
  void skip_number();
  void skip_literal();
  std::string_view text_;
  size_t pos_ = 0;
};

// tokenizer.json with its model's "vocab" and "merges" left as raw JSON text (views into the
// input) and everything else parsed by nlohmann.
struct TokenizerJson {
  nlohmann::json doc;
  std::string_view vocab, merges;  // empty when absent
};
TokenizerJson split_tokenizer_json(std::string_view text);

}  // namespace tessera::tokenizer
