// Fuzz target: arbitrary bytes as a tokenizer.model (SentencePiece ModelProto). Any
// tessera::Error is an accepted answer; a crash, hang or sanitizer report is a bug. A model that
// parses is converted as a Llama and as a Gemma tokenizer, and what loads encodes and decodes.
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/sentencepiece.h"
#include "tokenizer/tokenizer.h"

using tessera::tokenizer::SentencePieceModel;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  SentencePieceModel model;
  try {
    model = tessera::tokenizer::parse_sentencepiece_model(bytes);
  } catch (const tessera::Error&) {
    return 0;
  }
  for (const char* config : {R"({})", R"({"tokenizer_class": "GemmaTokenizer"})",
                             R"({"legacy": false, "add_eos_token": true})"}) {
    try {
      const auto json =
          tessera::tokenizer::sentencepiece_tokenizer_json(model, nlohmann::json::parse(config));
      auto tokenizer = tessera::tokenizer::Tokenizer::from_json(json, config);
      const auto ids = tokenizer->encode("Hello <s> w\xC3\xB6rld 123 \t\xF0\x9F\x98\x80");
      (void)tokenizer->decode(ids, false);
    } catch (const tessera::Error&) {
    }
  }
  return 0;
}

// Seeds: a small BPE model with every piece type, and a Unigram one.
std::vector<std::string> fuzz_default_seeds() {
  using Type = SentencePieceModel::PieceType;
  SentencePieceModel m;
  m.model_type = SentencePieceModel::ModelType::kBpe;
  m.byte_fallback = true;
  m.pieces = {{"<unk>", 0, Type::kUnknown},
              {"<s>", 0, Type::kControl},
              {"</s>", 0, Type::kControl},
              {"<0x09>", 0, Type::kByte},
              {"\xE2\x96\x81H", -1, Type::kNormal},
              {"el", -2, Type::kNormal},
              {"<tool>", 0, Type::kUserDefined},
              {"\xE2\x96\x81", -3, Type::kNormal},
              {"H", -4, Type::kNormal},
              {"e", -5, Type::kNormal},
              {"l", -6, Type::kNormal},
              {"x", 0, Type::kUnused}};
  std::vector<std::string> seeds = {tessera::tokenizer::serialize_sentencepiece_model(m)};
  m.model_type = SentencePieceModel::ModelType::kUnigram;
  seeds.push_back(tessera::tokenizer::serialize_sentencepiece_model(m));
  return seeds;
}
