// SentencePiece model proto reader and the tokenizer.json conversion (see sentencepiece.h).
#include "tokenizer/sentencepiece.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>
#include <unordered_map>

#include "core/status.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

// Protocol-buffer wire format (varints, fixed32, length-delimited fields), only what
// sentencepiece_model.proto uses. Groups (wire types 3 and 4) do not occur there.
class WireReader {
 public:
  WireReader(std::string_view data, const char* what) : data_(data), what_(what) {}
  bool done() const { return pos_ >= data_.size(); }

  // The next field's number and wire type.
  std::pair<uint64_t, int> key() {
    const uint64_t k = varint();
    const int wire = static_cast<int>(k & 7);
    if ((k >> 3) == 0) fail("tokenizer.model: field number 0 in {}", what_);
    return {k >> 3, wire};
  }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail("tokenizer.model: truncated varint in {}", what_);
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (byte < 0x80) return value;
    }
    fail("tokenizer.model: varint longer than 10 bytes in {}", what_);
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > data_.size() - pos_) fail("tokenizer.model: truncated field in {}", what_);
    const std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  float fixed32_float() {
    if (data_.size() - pos_ < 4) fail("tokenizer.model: truncated float in {}", what_);
    float value;
    std::memcpy(&value, data_.data() + pos_, 4);  // little-endian on every supported host
    pos_ += 4;
    return value;
  }
  void skip(int wire) {
    switch (wire) {
      case 0:
        varint();
        return;
      case 1:
        if (data_.size() - pos_ < 8) fail("tokenizer.model: truncated field in {}", what_);
        pos_ += 8;
        return;
      case 2:
        bytes();
        return;
      case 5:
        fixed32_float();
        return;
      default:
        fail("tokenizer.model: unsupported wire type {} in {}", wire, what_);
    }
  }
  // Checks the wire type of a known field.
  void expect(int wire, int expected, const char* field) const {
    if (wire != expected)
      fail("tokenizer.model: {}.{} has wire type {}, expected {}", what_, field, wire, expected);
  }

 private:
  std::string_view data_;
  const char* what_;
  size_t pos_ = 0;
};

SentencePieceModel::Piece parse_piece(std::string_view bytes) {
  SentencePieceModel::Piece piece;
  WireReader r(bytes, "SentencePiece");
  while (!r.done()) {
    const auto [field, wire] = r.key();
    if (field == 1) {
      r.expect(wire, 2, "piece");
      piece.text = std::string(r.bytes());
    } else if (field == 2) {
      r.expect(wire, 5, "score");
      piece.score = r.fixed32_float();
    } else if (field == 3) {
      r.expect(wire, 0, "type");
      const uint64_t type = r.varint();
      if (type < 1 || type > 6) fail("tokenizer.model: piece \"{}\" has type {}", piece.text, type);
      piece.type = static_cast<SentencePieceModel::PieceType>(type);
    } else {
      r.skip(wire);
    }
  }
  return piece;
}

void parse_trainer_spec(std::string_view bytes, SentencePieceModel& model) {
  WireReader r(bytes, "TrainerSpec");
  while (!r.done()) {
    const auto [field, wire] = r.key();
    if (field == 3) {
      r.expect(wire, 0, "model_type");
      const uint64_t type = r.varint();
      if (type < 1 || type > 4) fail("tokenizer.model: unknown model_type {}", type);
      model.model_type = static_cast<SentencePieceModel::ModelType>(type);
    } else if (field == 35) {
      r.expect(wire, 0, "byte_fallback");
      model.byte_fallback = r.varint() != 0;
    } else if (field == 45) {
      r.expect(wire, 2, "unk_piece");
      model.unk_piece = std::string(r.bytes());
    } else {
      r.skip(wire);
    }
  }
}

void parse_normalizer_spec(std::string_view bytes, SentencePieceModel& model) {
  WireReader r(bytes, "NormalizerSpec");
  while (!r.done()) {
    const auto [field, wire] = r.key();
    if (field == 1) {
      r.expect(wire, 2, "name");
      model.normalizer_name = std::string(r.bytes());
    } else if (field == 3) {
      r.expect(wire, 0, "add_dummy_prefix");
      model.add_dummy_prefix = r.varint() != 0;
    } else {
      r.skip(wire);
    }
  }
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, uint64_t field, int wire) {
  put_varint(out, field << 3 | wire);
}
void put_bytes(std::string& out, uint64_t field, std::string_view bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

size_t code_points(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += utf8_char_len(static_cast<unsigned char>(s[i]))) ++n;
  return n;
}

// The tokenizer classes whose conversion is written here.
enum class Family { kLlama, kGemma };

Family family_of(const nlohmann::json& config) {
  std::string name = config.value("tokenizer_class", std::string());
  if (name.size() > 4 && name.ends_with("Fast")) name.resize(name.size() - 4);
  // Classes that transformers converts with its LlamaConverter.
  static const std::set<std::string> kLlama = {"",
                                               "LlamaTokenizer",
                                               "CodeLlamaTokenizer",
                                               "MistralTokenizer",
                                               "BaichuanTokenizer",
                                               "YiTokenizer",
                                               "InternLMTokenizer"};
  if (kLlama.contains(name)) return Family::kLlama;
  if (name == "GemmaTokenizer") return Family::kGemma;
  fail(ErrorKind::kUnsupported,
       "tokenizer.model with tokenizer_class \"{}\" cannot be converted (supported: "
       "LlamaTokenizer and GemmaTokenizer SentencePiece models); add the model's tokenizer.json",
       name);
}

std::optional<std::string> config_token(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const nlohmann::json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return std::nullopt;
}

using MergeList = std::vector<std::pair<std::string_view, std::string_view>>;

// transformers' generate_merges: every split of every piece into two pieces of the model,
// ordered by the piece's score (highest first), then by the lengths of the two halves (longest
// first), then by the halves' ids.
MergeList generate_merges(const std::vector<std::pair<std::string, float>>& scored,
                          const std::unordered_map<std::string_view, int64_t>& vocab) {
  struct Merge {
    std::string_view left, right;
    float score;
    size_t left_len, right_len;
    int64_t left_id, right_id;
  };
  std::vector<Merge> merges;
  std::vector<Merge> local;
  for (const auto& [piece, score] : scored) {
    local.clear();
    const std::string_view p = piece;
    size_t index = 0;
    for (size_t i = utf8_char_len(p.empty() ? 0 : static_cast<unsigned char>(p[0])); i < p.size();
         i += utf8_char_len(static_cast<unsigned char>(p[i]))) {
      ++index;
      const auto l = vocab.find(p.substr(0, i));
      if (l == vocab.end()) continue;
      const auto r = vocab.find(p.substr(i));
      if (r == vocab.end()) continue;
      local.push_back({l->first, r->first, score, index, 0, l->second, r->second});
    }
    const size_t total = code_points(p);
    for (Merge& m : local) m.right_len = total - m.left_len;
    std::sort(local.begin(), local.end(), [](const Merge& a, const Merge& b) {
      return std::pair(a.left_id, a.right_id) < std::pair(b.left_id, b.right_id);
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tuple(a.score, a.left_len, a.right_len) >
           std::tuple(b.score, b.left_len, b.right_len);
  });
  MergeList out;
  out.reserve(merges.size());
  for (const Merge& m : merges) out.emplace_back(m.left, m.right);
  return out;
}

// A JSON string literal (UTF-8 passes through; quotes, backslashes and control bytes escaped).
// The vocabulary and merges are written as text: through nlohmann::json objects, Gemma's 262k
// pieces and 515k merges took several times longer.
void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
}

nlohmann::json template_processing(const std::optional<std::string>& bos, int64_t bos_id,
                                   const std::optional<std::string>& eos, int64_t eos_id) {
  const auto special = [](const std::string& token, int type_id) {
    return nlohmann::json{{"SpecialToken", {{"id", token}, {"type_id", type_id}}}};
  };
  const auto sequence = [](const char* id, int type_id) {
    return nlohmann::json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  nlohmann::json single = nlohmann::json::array(), pair = nlohmann::json::array();
  nlohmann::json tokens = nlohmann::json::object();
  for (int type_id : {0, 1}) {
    nlohmann::json& out = type_id == 0 ? single : pair;
    if (type_id == 1) out = single;
    if (bos) out.push_back(special(*bos, type_id));
    out.push_back(sequence(type_id == 0 ? "A" : "B", type_id));
    if (eos) out.push_back(special(*eos, type_id));
  }
  if (bos) tokens[*bos] = {{"id", *bos}, {"ids", {bos_id}}, {"tokens", {*bos}}};
  if (eos) tokens[*eos] = {{"id", *eos}, {"ids", {eos_id}}, {"tokens", {*eos}}};
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", pair},
          {"special_tokens", tokens}};
}

}  // namespace

SentencePieceModel parse_sentencepiece_model(std::string_view bytes) {
  SentencePieceModel model;
  WireReader r(bytes, "ModelProto");
  while (!r.done()) {
    const auto [field, wire] = r.key();
    if (field == 1) {
      r.expect(wire, 2, "pieces");
      model.pieces.push_back(parse_piece(r.bytes()));
    } else if (field == 2) {
      r.expect(wire, 2, "trainer_spec");
      parse_trainer_spec(r.bytes(), model);
    } else if (field == 3) {
      r.expect(wire, 2, "normalizer_spec");
      parse_normalizer_spec(r.bytes(), model);
    } else {
      r.skip(wire);
    }
  }
  if (model.pieces.empty()) fail("tokenizer.model: the model has no pieces");
  for (size_t i = 0; i < model.pieces.size(); ++i) {
    if (!utf8_valid(model.pieces[i].text)) fail("tokenizer.model: piece {} is not valid UTF-8", i);
  }
  if (!utf8_valid(model.unk_piece)) fail("tokenizer.model: unk_piece is not valid UTF-8");
  return model;
}

std::string serialize_sentencepiece_model(const SentencePieceModel& model) {
  std::string out;
  for (const SentencePieceModel::Piece& piece : model.pieces) {
    std::string p;
    put_bytes(p, 1, piece.text);
    put_key(p, 2, 5);
    char score[4];
    std::memcpy(score, &piece.score, 4);
    p.append(score, 4);
    put_key(p, 3, 0);
    put_varint(p, static_cast<uint64_t>(piece.type));
    put_bytes(out, 1, p);
  }
  std::string trainer;
  put_key(trainer, 3, 0);
  put_varint(trainer, static_cast<uint64_t>(model.model_type));
  put_key(trainer, 35, 0);
  put_varint(trainer, model.byte_fallback ? 1 : 0);
  put_bytes(trainer, 45, model.unk_piece);
  put_bytes(out, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, model.normalizer_name);
  put_key(normalizer, 3, 0);
  put_varint(normalizer, model.add_dummy_prefix ? 1 : 0);
  put_bytes(out, 3, normalizer);
  return out;
}

std::map<int64_t, nlohmann::json> config_added_tokens(
    const nlohmann::json& config,
    const std::function<std::optional<int64_t>(const std::string&)>& id_of, bool named_normalized) {
  std::map<int64_t, nlohmann::json> added;
  if (config.contains("added_tokens_decoder") && config.at("added_tokens_decoder").is_object()) {
    for (const auto& [id_text, token] : config.at("added_tokens_decoder").items()) {
      if (!token.is_object() || !token.contains("content")) continue;
      int64_t id = 0;
      try {
        id = std::stoll(id_text);
      } catch (const std::exception&) {
        fail("added_tokens_decoder: \"{}\" is not a token id", id_text);
      }
      added[id] = {{"id", id},
                   {"content", token.at("content")},
                   {"single_word", token.value("single_word", false)},
                   {"lstrip", token.value("lstrip", false)},
                   {"rstrip", token.value("rstrip", false)},
                   {"normalized", token.value("normalized", true)},
                   {"special", token.value("special", false)}};
    }
  }
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    const std::optional<std::string> text = config_token(config, key);
    if (!text) continue;
    const std::optional<int64_t> id = id_of(*text);
    if (!id || added.contains(*id)) continue;
    added[*id] = {{"id", *id},       {"content", *text}, {"single_word", false},
                  {"lstrip", false}, {"rstrip", false},  {"normalized", named_normalized},
                  {"special", true}};
  }
  return added;
}

std::string sentencepiece_tokenizer_json(const SentencePieceModel& model,
                                         const nlohmann::json& config) {
  using PieceType = SentencePieceModel::PieceType;
  const Family family = family_of(config);
  if (model.model_type != SentencePieceModel::ModelType::kBpe) {
    fail(ErrorKind::kUnsupported,
         "tokenizer.model is a SentencePiece {} model; only BPE models (Llama, Mistral, Gemma) "
         "are converted; add the model's tokenizer.json",
         model.model_type == SentencePieceModel::ModelType::kUnigram ? "Unigram"
         : model.model_type == SentencePieceModel::ModelType::kWord  ? "word"
                                                                     : "character");
  }
  const auto& pieces = model.pieces;
  // The model's own vocabulary (what the merges may combine).
  std::unordered_map<std::string_view, int64_t> sp_vocab;
  for (size_t i = 0; i < pieces.size(); ++i) sp_vocab[pieces[i].text] = static_cast<int64_t>(i);

  // The converter's vocabulary: the pieces with their scores, the first three (the special
  // pieces) scored 0. transformers' GemmaConverter names those three after tokenizer_config's
  // pad, eos and bos tokens; we keep the model's own pieces, which are the same in Gemma 1 and 2
  // (Gemma 3's eos_token is <end_of_turn>, which would take id 1 from <eos>). Gemma also writes
  // a tab as "\t" when the model has no such piece.
  std::vector<std::pair<std::string, float>> scored;
  scored.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i)
    scored.emplace_back(pieces[i].text, i < 3 ? 0.0f : pieces[i].score);
  const std::string tab = "\t";
  if (family == Family::kGemma && !sp_vocab.contains(tab)) {
    if (const auto it = sp_vocab.find("<0x09>"); it != sp_vocab.end()) {
      scored[it->second] = {tab, 0.0f};
      sp_vocab[tab] = it->second;
    }
  }
  // dict(vocab_scores): one entry per piece text, in first-seen order with the last score.
  std::vector<std::pair<std::string, float>> unique_scored;
  {
    std::unordered_map<std::string, size_t> at;
    for (const auto& [piece, score] : scored) {
      const auto [it, inserted] = at.emplace(piece, unique_scored.size());
      if (inserted) {
        unique_scored.emplace_back(piece, score);
      } else {
        unique_scored[it->second].second = score;
      }
    }
  }
  const MergeList merges = generate_merges(unique_scored, sp_vocab);
  // The BPE vocabulary: a piece text that occurs twice keeps its last id, as the converter's
  // dict does.
  std::unordered_map<std::string_view, int64_t> vocab;
  for (size_t i = 0; i < scored.size(); ++i) vocab[scored[i].first] = static_cast<int64_t>(i);

  // Added tokens: the model's control pieces (special) and user-defined pieces, then what
  // tokenizer_config.json adds or flags.
  static const std::set<std::string> kGemmaSpecial = {"<start_of_turn>", "<end_of_turn>"};
  std::map<int64_t, nlohmann::json> added;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const PieceType type = pieces[i].type;
    if (type != PieceType::kControl && type != PieceType::kUserDefined) continue;
    const bool special = type == PieceType::kControl ||
                         (family == Family::kGemma && kGemmaSpecial.contains(pieces[i].text));
    const auto id = static_cast<int64_t>(i);
    added[id] = {{"id", id},          {"content", pieces[i].text}, {"single_word", false},
                 {"lstrip", false},   {"rstrip", false},           {"normalized", false},
                 {"special", special}};
  }
  const auto id_of = [&](const std::string& token) -> std::optional<int64_t> {
    const auto it = vocab.find(token);
    if (it == vocab.end()) return std::nullopt;
    return it->second;
  };
  for (auto& [id, token] : config_added_tokens(config, id_of, false)) added[id] = token;
  nlohmann::json added_tokens = nlohmann::json::array();
  for (auto& [id, token] : added) added_tokens.push_back(std::move(token));

  // Normalizer, pre-tokenizer and decoder as the converter writes them.
  const auto replace = [](const std::string& from, const std::string& to) {
    return nlohmann::json{{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
  };
  const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  nlohmann::json normalizer = nullptr, pre_tokenizer = nullptr;
  nlohmann::json decoders =
      nlohmann::json::array({replace(kSpace, " "), {{"type", "ByteFallback"}}, {{"type", "Fuse"}}});
  const auto flag = [&](const char* key, bool fallback) {
    return config.contains(key) && config.at(key).is_boolean() ? config.at(key).get<bool>()
                                                               : fallback;
  };
  if (family == Family::kLlama) {
    const bool legacy = flag("legacy", true);
    const bool prefix_space = flag("add_prefix_space", true);
    if (legacy) {
      nlohmann::json steps = nlohmann::json::array();
      if (prefix_space) steps.push_back({{"type", "Prepend"}, {"prepend", kSpace}});
      steps.push_back(replace(" ", kSpace));
      normalizer = {{"type", "Sequence"}, {"normalizers", steps}};
    } else {
      pre_tokenizer = {{"type", "Metaspace"},
                       {"replacement", kSpace},
                       {"prepend_scheme", prefix_space ? "first" : "never"},
                       {"split", false}};
    }
    if (prefix_space)
      decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  } else {
    normalizer = replace(" ", kSpace);
    pre_tokenizer = {{"type", "Split"},
                     {"pattern", {{"String", " "}}},
                     {"behavior", "MergedWithPrevious"},
                     {"invert", false}};
  }

  // Post-processor: BOS (and EOS) as LlamaTokenizerFast / GemmaTokenizerFast add them.
  const std::string default_bos = family == Family::kGemma ? "<bos>" : "<s>";
  const std::string default_eos = family == Family::kGemma ? "<eos>" : "</s>";
  std::optional<std::string> bos =
      config.contains("bos_token") ? config_token(config, "bos_token") : std::optional(default_bos);
  std::optional<std::string> eos =
      config.contains("eos_token") ? config_token(config, "eos_token") : std::optional(default_eos);
  if (!flag("add_bos_token", true) || (bos && !id_of(*bos))) bos.reset();
  if (!flag("add_eos_token", false) || (eos && !id_of(*eos))) eos.reset();
  const nlohmann::json post =
      template_processing(bos, bos ? *id_of(*bos) : 0, eos, eos ? *id_of(*eos) : 0);

  const nlohmann::json tokenizer = {
      {"version", "1.0"},         {"added_tokens", added_tokens},
      {"normalizer", normalizer}, {"pre_tokenizer", pre_tokenizer},
      {"post_processor", post},   {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}}};
  const nlohmann::json model_fields = {{"type", "BPE"},
                                       {"dropout", nullptr},
                                       {"unk_token", model.unk_piece},
                                       {"continuing_subword_prefix", nullptr},
                                       {"end_of_word_suffix", nullptr},
                                       {"fuse_unk", true},
                                       {"byte_fallback", true},
                                       {"ignore_merges", false}};
  std::string out = tokenizer.dump();
  out.pop_back();  // the closing brace: "model" follows
  out += ",\"model\":";
  out += model_fields.dump();
  out.pop_back();
  out += ",\"vocab\":{";
  bool first = true;
  for (size_t i = 0; i < scored.size(); ++i) {
    if (vocab.at(scored[i].first) != static_cast<int64_t>(i)) continue;
    if (!first) out.push_back(',');
    first = false;
    append_json_string(out, scored[i].first);
    out += fmt::format(":{}", i);
  }
  out += "},\"merges\":[";
  for (size_t i = 0; i < merges.size(); ++i) {
    if (i > 0) out.push_back(',');
    out.push_back('[');
    append_json_string(out, merges[i].first);
    out.push_back(',');
    append_json_string(out, merges[i].second);
    out.push_back(']');
  }
  out += "]}}";
  return out;
}

}  // namespace tessera::tokenizer
