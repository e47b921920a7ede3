// A tokenizer.model trained by the SentencePiece library itself (spm_oracle.py, Debian's
// python3-sentencepiece), set up as Llama's: tessera's conversion of it encodes and decodes the
// corpus as the library does. Strings holding the text of a control piece (<s>, </s>, <unk>)
// are left out: the converted tokenizer matches them as special tokens, as transformers' does,
// while the library reads them as plain text.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>

#include "real_tokenizers.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

const std::filesystem::path kTests = std::filesystem::path(TESSERA_SOURCE_DIR) / "tests/tokenizer";

TEST(SentencePieceLibrary, ConvertedModelEncodesAndDecodesAsTheLibrary) {
  const auto corpus_path = kTests / "data/corpus.json";
  const auto script = kTests / "spm_oracle.py";
  const auto dir = std::filesystem::path(TESSERA_BINARY_DIR) / "tokenizer_assets/spm_trained";
  const auto oracle_path = dir / "oracle.json";
  const auto newest = std::max(std::filesystem::last_write_time(corpus_path),
                               std::filesystem::last_write_time(script));
  if (!std::filesystem::exists(oracle_path) ||
      std::filesystem::last_write_time(oracle_path) < newest) {
    const std::string command = "/usr/bin/python3 '" + script.string() + "' '" +
                                corpus_path.string() + "' '" + dir.string() + "'";
    if (std::system(command.c_str()) != 0)
      GTEST_SKIP() << "the SentencePiece oracle did not run (needs Debian's "
                      "python3-sentencepiece at /usr/bin/python3)";
  }
  const auto corpus = nlohmann::json::parse(testing::read_text(corpus_path));
  const auto oracle = nlohmann::json::parse(testing::read_text(oracle_path));
  ASSERT_EQ(oracle.at("ids").size(), corpus.size());
  const auto tokenizer = Tokenizer::load(dir);
  int checked = 0, mismatches = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string text = corpus[i].get<std::string>();
    if (!utf8_valid(text) || text.find("<s>") != std::string::npos ||
        text.find("</s>") != std::string::npos || text.find("<unk>") != std::string::npos)
      continue;
    ++checked;
    const auto expected = oracle.at("ids")[i].get<std::vector<int32_t>>();
    const auto ids = tokenizer->encode(text, false);
    if (ids != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string " << i << " \"" << text.substr(0, 200) << "\": got "
                    << nlohmann::json(ids).dump().substr(0, 300) << " expected "
                    << nlohmann::json(expected).dump().substr(0, 300);
    }
    const std::string decoded = tokenizer->decode(expected, true);
    if (decoded != oracle.at("decode")[i].get<std::string>() && ++mismatches <= 10) {
      ADD_FAILURE() << "string " << i << " \"" << text.substr(0, 200) << "\" decodes to \""
                    << decoded.substr(0, 200) << "\"";
    }
    // BOS first, as LlamaTokenizerFast adds it.
    EXPECT_EQ(tokenizer->encode(text, true).front(), 1);
  }
  std::printf("[ checked  ] %d of %zu corpus strings\n", checked, corpus.size());
  EXPECT_GT(checked, 300);
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace tessera::tokenizer
