// SentencePiece tokenizer.model files: a reader for the model proto and the conversion to the
// tokenizer.json that transformers builds from one (its LlamaConverter / GemmaConverter), for
// model folders that ship only tokenizer.model. Our own reader: Debian's libsentencepiece-dev
// has no headers for the model proto, so the trainer spec (model type) and the piece types the
// conversion needs cannot be reached through it. See docs/tokenizer.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

// The fields of sentencepiece_model.proto's ModelProto that the conversion reads, with the
// proto's defaults.
struct SentencePieceModel {
  enum class PieceType : int {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6
  };
  enum class ModelType : int { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };
  struct Piece {
    std::string text;
    float score = 0.0f;
    PieceType type = PieceType::kNormal;
  };
  std::vector<Piece> pieces;  // in id order
  ModelType model_type = ModelType::kUnigram;
  bool byte_fallback = false;
  std::string unk_piece = "<unk>";
  std::string normalizer_name;
  bool add_dummy_prefix = true;
};

// Parses a serialized ModelProto. Malformed input is a tessera::Error naming what is wrong.
SentencePieceModel parse_sentencepiece_model(std::string_view bytes);

// Serializes the fields above (the inverse of parse_sentencepiece_model; for tests and tools).
std::string serialize_sentencepiece_model(const SentencePieceModel& model);

// The tokenizer.json text transformers' converter makes of `model` for the tokenizer class
// that `config` (tokenizer_config.json, or an empty object) names: LlamaTokenizer and its kin
// (also when no class is named) or GemmaTokenizer; BPE models only.
std::string sentencepiece_tokenizer_json(const SentencePieceModel& model,
                                         const nlohmann::json& config);

// tokenizer.json "added_tokens" entries by id from tokenizer_config.json: its
// added_tokens_decoder with their flags, then the special tokens it names (bos, eos, unk, pad)
// that `id_of` finds, as special tokens normalized as `named_normalized` says. Used by the
// conversions of files without a tokenizer.json.
std::map<int64_t, nlohmann::json> config_added_tokens(
    const nlohmann::json& config,
    const std::function<std::optional<int64_t>(const std::string&)>& id_of, bool named_normalized);

}  // namespace tessera::tokenizer
