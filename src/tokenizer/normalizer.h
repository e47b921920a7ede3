// tokenizer.json "normalizer": NFC/NFD/NFKC/NFKD, Replace, Prepend, Lowercase, Strip, Sequence.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `text` is valid UTF-8; so is the result.
  virtual std::string normalize(std::string text) const = 0;
};

// Returns nullptr for a JSON null. Throws tessera::Error for unsupported types.
std::unique_ptr<Normalizer> parse_normalizer(const nlohmann::json& json);

}  // namespace tessera::tokenizer
