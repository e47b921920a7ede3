// SentencePiece tokenizer.model files: the proto reader, and the conversion to tokenizer.json on
// small hand-made models whose merges and ids are worked out by hand below. The conversion of
// real vocabularies is checked against Hugging Face in tokenizer_oracle_test, and against the
// SentencePiece library itself in sentencepiece_oracle_test.
#include "tokenizer/sentencepiece.h"

#include <gtest/gtest.h>

#include <fstream>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace tessera::tokenizer {
namespace {

using nlohmann::json;
using Ids = std::vector<int32_t>;
using PieceType = SentencePieceModel::PieceType;

const std::string kSpace = "\xE2\x96\x81";  // U+2581

// <unk> <s> </s>, then normal pieces with scores that order their merges, a user-defined
// piece and the byte pieces of 'x' and 'y' (for byte fallback).
SentencePieceModel tiny_model() {
  SentencePieceModel m;
  m.model_type = SentencePieceModel::ModelType::kBpe;
  m.byte_fallback = true;
  m.pieces = {{"<unk>", 0, PieceType::kUnknown},
              {"<s>", 0, PieceType::kControl},
              {"</s>", 0, PieceType::kControl},
              {"<0x78>", 0, PieceType::kByte},           // 3: 'x'
              {"<0x79>", 0, PieceType::kByte},           // 4: 'y'
              {kSpace + "a", -1, PieceType::kNormal},    // 5
              {"bc", -2, PieceType::kNormal},            // 6
              {kSpace + "abc", -3, PieceType::kNormal},  // 7
              {kSpace + "ab", -4, PieceType::kNormal},   // 8
              {"abc", -5, PieceType::kNormal},           // 9
              {"<tool>", 0, PieceType::kUserDefined},    // 10
              {kSpace, -6, PieceType::kNormal},          // 11
              {"a", -7, PieceType::kNormal},             // 12
              {"b", -8, PieceType::kNormal},             // 13
              {"c", -9, PieceType::kNormal}};            // 14
  return m;
}

json converted(const SentencePieceModel& m, const json& config = json::object()) {
  return json::parse(sentencepiece_tokenizer_json(m, config));
}

std::unique_ptr<Tokenizer> tokenizer_of(const SentencePieceModel& m,
                                        const json& config = json::object()) {
  return Tokenizer::from_json(sentencepiece_tokenizer_json(m, config), config.dump());
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SentencePieceModelProto, RoundTripsThroughTheWireFormat) {
  SentencePieceModel m = tiny_model();
  m.unk_piece = "<unk>";
  m.normalizer_name = "identity";
  m.add_dummy_prefix = false;
  const SentencePieceModel back = parse_sentencepiece_model(serialize_sentencepiece_model(m));
  ASSERT_EQ(back.pieces.size(), m.pieces.size());
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    EXPECT_EQ(back.pieces[i].text, m.pieces[i].text);
    EXPECT_EQ(back.pieces[i].score, m.pieces[i].score);
    EXPECT_EQ(back.pieces[i].type, m.pieces[i].type);
  }
  EXPECT_EQ(back.model_type, SentencePieceModel::ModelType::kBpe);
  EXPECT_TRUE(back.byte_fallback);
  EXPECT_EQ(back.normalizer_name, "identity");
  EXPECT_FALSE(back.add_dummy_prefix);
}

TEST(SentencePieceModelProto, ReadsHandWrittenBytesWithTheProtoDefaults) {
  // pieces { piece: "a" } followed by an unknown field 9 (varint 300) that must be skipped;
  // no trainer or normalizer spec: Unigram, no byte fallback, dummy prefix on.
  const std::string bytes = std::string(
                                "\x0a\x03\x0a\x01"
                                "a",
                                5) +
                            "\x48\xac\x02";
  const SentencePieceModel m = parse_sentencepiece_model(bytes);
  ASSERT_EQ(m.pieces.size(), 1u);
  EXPECT_EQ(m.pieces[0].text, "a");
  EXPECT_EQ(m.pieces[0].score, 0.0f);
  EXPECT_EQ(m.pieces[0].type, PieceType::kNormal);
  EXPECT_EQ(m.model_type, SentencePieceModel::ModelType::kUnigram);
  EXPECT_FALSE(m.byte_fallback);
  EXPECT_TRUE(m.add_dummy_prefix);
  EXPECT_EQ(m.unk_piece, "<unk>");
}

TEST(SentencePieceModelProto, MalformedFilesAreNamedErrors) {
  const std::string good = serialize_sentencepiece_model(tiny_model());
  EXPECT_NE(error_of([&] {
              parse_sentencepiece_model(good.substr(0, good.size() - 3));
            }).find("truncated"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse_sentencepiece_model(""); }).find("no pieces"), std::string::npos);
  // Field 1 (pieces) as a varint instead of a message.
  EXPECT_NE(error_of([&] {
              parse_sentencepiece_model(std::string("\x08\x01", 2));
            }).find("ModelProto.pieces has wire type 0"),
            std::string::npos);
  // A group (wire type 3) is not part of the format.
  EXPECT_NE(
      error_of([&] { parse_sentencepiece_model(std::string("\x4b", 1)); }).find("wire type 3"),
      std::string::npos);
  // A piece that is not UTF-8.
  SentencePieceModel bad = tiny_model();
  bad.pieces[5].text = "\xFF";
  EXPECT_NE(error_of([&] {
              parse_sentencepiece_model(serialize_sentencepiece_model(bad));
            }).find("piece 5 is not valid UTF-8"),
            std::string::npos);
  // JSON, as someone might rename tokenizer.json to tokenizer.model.
  EXPECT_NE(error_of([&] { parse_sentencepiece_model("{\"model\": {}}"); }), "");
}

TEST(SentencePieceConversion, MergesFollowScoresThenHalfLengthsThenIds) {
  const json t = converted(tiny_model());
  // Pieces by score: "▁a"(-1) <- ▁+a; "bc"(-2) <- b+c; "▁abc"(-3) <- ▁ab+c, ▁a+bc, ▁+abc
  // (longest left half first); "▁ab"(-4) <- ▁a+b; "abc"(-5) <- a+bc.
  const json expected = json::array(
      {json::array({kSpace, "a"}), json::array({"b", "c"}), json::array({kSpace + "ab", "c"}),
       json::array({kSpace + "a", "bc"}), json::array({kSpace, "abc"}),
       json::array({kSpace + "a", "b"}), json::array({"a", "bc"})});
  EXPECT_EQ(t.at("model").at("merges"), expected);
  EXPECT_EQ(t.at("model").at("vocab").at(kSpace + "abc"), 7);
  EXPECT_EQ(t.at("model").at("unk_token"), "<unk>");
  EXPECT_TRUE(t.at("model").at("byte_fallback").get<bool>());
}

TEST(SentencePieceConversion, LlamaStyleEncodesAndDecodesLikeTheSlowTokenizer) {
  const auto tok = tokenizer_of(tiny_model());
  // "abc" -> "▁abc" (dummy prefix) -> ▁+a, b+c, ▁a+bc: one piece; BOS first by default.
  EXPECT_EQ(tok->encode("abc", true), (Ids{1, 7}));
  EXPECT_EQ(tok->encode("abc", false), (Ids{7}));
  // "ab abc" -> ▁ab (▁a+b) and ▁abc; 'x' and 'y' fall back to their bytes, 'z' to <unk>.
  EXPECT_EQ(tok->encode("ab abc", false), (Ids{8, 7}));
  EXPECT_EQ(tok->encode("xyz", false), (Ids{11, 3, 4, 0}));
  // Control pieces are special added tokens; user-defined pieces are added, not special.
  EXPECT_EQ(tok->encode("a<tool>a</s>", false), (Ids{5, 10, 5, 2}));
  EXPECT_TRUE(tok->is_special(2));
  EXPECT_FALSE(tok->is_special(10));
  EXPECT_EQ(tok->decode(Ids{1, 7, 8, 3, 4}, true), "abc abxy");
  EXPECT_EQ(tok->decode(Ids{1, 7, 2}, false), "<s> abc</s>");
}

TEST(SentencePieceConversion, TokenizerConfigFlagsChangeTheConversion) {
  // legacy: false puts the prefix on the first piece only (Metaspace, prepend_scheme first).
  const json non_legacy = {{"tokenizer_class", "LlamaTokenizerFast"}, {"legacy", false}};
  const json t = converted(tiny_model(), non_legacy);
  EXPECT_TRUE(t.at("normalizer").is_null());
  EXPECT_EQ(t.at("pre_tokenizer").at("type"), "Metaspace");
  EXPECT_EQ(t.at("pre_tokenizer").at("prepend_scheme"), "first");
  const auto tok = tokenizer_of(tiny_model(), non_legacy);
  EXPECT_EQ(tok->encode("a</s>a", false), (Ids{5, 2, 12}));
  EXPECT_EQ(tokenizer_of(tiny_model())->encode("a</s>a", false), (Ids{5, 2, 5}));
  // add_prefix_space: false drops the dummy prefix and its strip in the decoder.
  const auto bare = tokenizer_of(tiny_model(), {{"add_prefix_space", false}});
  EXPECT_EQ(bare->encode("abc", false), (Ids{9}));
  EXPECT_EQ(bare->decode(Ids{7}, true), " abc");
  // add_bos_token / add_eos_token.
  const auto eos = tokenizer_of(tiny_model(), {{"add_bos_token", false}, {"add_eos_token", true}});
  EXPECT_EQ(eos->encode("abc", true), (Ids{7, 2}));
  // added_tokens_decoder may flag a piece special and add tokens past the model's vocabulary.
  const json extra = {
      {"added_tokens_decoder",
       {{"10", {{"content", "<tool>"}, {"special", true}, {"normalized", false}}},
        {"15", {{"content", "<|im_end|>"}, {"special", true}, {"normalized", false}}}}}};
  const auto flagged = tokenizer_of(tiny_model(), extra);
  EXPECT_TRUE(flagged->is_special(10));
  EXPECT_EQ(flagged->encode("a<|im_end|>", false), (Ids{5, 15}));
  EXPECT_EQ(flagged->vocab_size(), 16);
}

TEST(SentencePieceConversion, GemmaStyleHasNoDummyPrefixAndNamesItsSpecialPieces) {
  SentencePieceModel m = tiny_model();
  m.pieces[0] = {"<pad>", 0, PieceType::kControl};
  m.pieces[1] = {"<eos>", 0, PieceType::kControl};
  m.pieces[2] = {"<bos>", 0, PieceType::kControl};
  m.pieces.push_back({"<unk>", 0, PieceType::kUnknown});                // 15
  m.pieces.push_back({"<start_of_turn>", 0, PieceType::kUserDefined});  // 16
  m.unk_piece = "<unk>";
  const json config = {{"tokenizer_class", "GemmaTokenizer"}};
  const json t = converted(m, config);
  EXPECT_EQ(t.at("normalizer").at("type"), "Replace");
  EXPECT_EQ(t.at("pre_tokenizer").at("behavior"), "MergedWithPrevious");
  const auto tok = tokenizer_of(m, config);
  EXPECT_EQ(tok->encode("abc abc", true), (Ids{2, 9, 7}));
  EXPECT_TRUE(tok->is_special(16));  // Gemma's turn markers are special
  EXPECT_FALSE(tok->is_special(10));
  EXPECT_EQ(tok->decode(Ids{2, 9, 7}, true), "abc abc");
}

TEST(SentencePieceConversion, UnsupportedModelsAreNamed) {
  SentencePieceModel unigram = tiny_model();
  unigram.model_type = SentencePieceModel::ModelType::kUnigram;
  const std::string e1 = error_of([&] { converted(unigram); });
  EXPECT_NE(e1.find("Unigram"), std::string::npos) << e1;
  EXPECT_NE(e1.find("tokenizer.json"), std::string::npos) << e1;
  const std::string e2 = error_of([&] {
    converted(tiny_model(), {{"tokenizer_class", "T5Tokenizer"}});
  });
  EXPECT_NE(e2.find("T5Tokenizer"), std::string::npos) << e2;
}

TEST(SentencePieceConversion, AFolderWithOnlyTokenizerModelLoads) {
  const auto dir = std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets/spm_tiny";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  EXPECT_FALSE(has_tokenizer(dir));
  std::ofstream(dir / "tokenizer.model", std::ios::binary)
      << serialize_sentencepiece_model(tiny_model());
  EXPECT_TRUE(has_tokenizer(dir));
  EXPECT_EQ(Tokenizer::load(dir)->encode("ab abc", true), (Ids{1, 8, 7}));
  std::ofstream(dir / "tokenizer.model", std::ios::binary) << "not a model";
  const std::string e = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(e.find("tokenizer.model"), std::string::npos) << e;
}

}  // namespace
}  // namespace tessera::tokenizer
