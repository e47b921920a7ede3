// tokenizer.json "decoder": ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

struct DecodeContext {
  // False when the first token is not the first token of the text (a streaming window): the
  // Metaspace and Strip decoders then keep the leading space they would remove at the start.
  bool at_text_start = true;
  bool fused = false;  // tokens have been joined into one string (Fuse, ByteLevel)
  // Keep byte runs that are not whole UTF-8 characters as they are, instead of U+FFFD (the
  // bytes one token adds, for structured outputs).
  bool raw_bytes = false;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens, DecodeContext& context) const = 0;
};

// Returns nullptr for a JSON null. Throws tessera::Error for unsupported types.
std::unique_ptr<Decoder> parse_decoder(const nlohmann::json& json);

}  // namespace tessera::tokenizer
