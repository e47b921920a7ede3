// tokenizer.json "pre_tokenizer": ByteLevel, Split, Digits, Metaspace, Sequence.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

// Pieces of the normalized text on their way to the model: spans of one buffer, so that
// splitting moves no text and only rewriting steps (ByteLevel, Metaspace) copy it.
struct Pieces {
  struct Span {
    size_t begin, end;
    bool at_origin;  // starts at offset 0 of the input (Metaspace prepend_scheme "first")
  };
  std::string text;
  std::vector<Span> spans;

  Pieces() = default;
  // One piece: all of `text`.
  Pieces(std::string_view whole, bool at_origin)
      : text(whole), spans{{0, text.size(), at_origin}} {}
  std::string_view view(const Span& s) const {
    return std::string_view(text).substr(s.begin, s.end - s.begin);
  }
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may rewrite) every piece. Empty pieces are dropped.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};

// Returns nullptr for a JSON null. Throws tessera::Error for unsupported types.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& json);

// The GPT-2 regex that ByteLevel uses when use_regex is true.
extern const char kGpt2Pattern[];

}  // namespace tessera::tokenizer
