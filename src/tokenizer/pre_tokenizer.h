// tokenizer.json "pre_tokenizer": ByteLevel, Split, Digits, Metaspace, Sequence.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

// A piece of the normalized text on its way to the model.
struct Piece {
  std::string text;
  bool at_origin = false;  // starts at offset 0 of the input (Metaspace prepend_scheme "first")
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may rewrite) every piece. Empty pieces are dropped.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

// Returns nullptr for a JSON null. Throws tessera::Error for unsupported types.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& json);

// The GPT-2 regex that ByteLevel uses when use_regex is true.
extern const char kGpt2Pattern[];

}  // namespace tessera::tokenizer
