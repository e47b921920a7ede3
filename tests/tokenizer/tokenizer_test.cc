// Unit tests of the tokenizer components with small hand-written tokenizer.json snippets, error
// reporting, invalid UTF-8, the built-in tokenizer and concurrent encoding.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "core/status.h"
#include "test_util.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

using nlohmann::json;
using Ids = std::vector<int32_t>;

// A BPE tokenizer.json over `tokens` (ids in order) with `merges`; `extra` is merged in.
std::string make_json(const std::vector<std::string>& tokens, const json& merges,
                      const json& extra = json::object(),
                      const json& model_extra = json::object()) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  json model = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  if (model_extra.is_object()) model.update(model_extra);
  json j = {{"model", model}};
  if (extra.is_object()) j.update(extra);
  return j.dump();
}

std::vector<std::string> pre_tokenize(const json& config, const std::string& text) {
  Pieces pieces(text, true);
  parse_pre_tokenizer(config)->pre_tokenize(pieces);
  std::vector<std::string> out;
  for (const Pieces::Span& span : pieces.spans) out.emplace_back(pieces.view(span));
  return out;
}

std::string normalize(const json& config, const std::string& text) {
  return parse_normalizer(config)->normalize(text);
}

std::string decode_tokens(const json& config, std::vector<std::string> tokens) {
  DecodeContext context;
  parse_decoder(config)->decode_chain(tokens, context);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// --- BPE model --------------------------------------------------------------------------------

TEST(Bpe, MergesAsStringsOrPairsAgree) {
  const std::vector<std::string> vocab = {"a", "b", "c", "ab", "bc", "abc"};
  auto as_strings = Tokenizer::from_json(make_json(vocab, json::array({"a b", "ab c"})));
  auto as_pairs = Tokenizer::from_json(
      make_json(vocab, json::array({json::array({"a", "b"}), json::array({"ab", "c"})})));
  EXPECT_EQ(as_strings->encode("abc"), (Ids{5}));
  EXPECT_EQ(as_pairs->encode("abc"), (Ids{5}));
  EXPECT_EQ(as_pairs->encode("abcab"), (Ids{5, 3}));
}

TEST(Bpe, LowestRankMergesFirst) {
  const std::vector<std::string> vocab = {"a", "b", "c", "ab", "bc"};
  // "b c" ranks before "a b": abc -> a + bc.
  EXPECT_EQ(Tokenizer::from_json(make_json(vocab, json::array({"b c", "a b"})))->encode("abc"),
            (Ids{0, 4}));
  EXPECT_EQ(Tokenizer::from_json(make_json(vocab, json::array({"a b", "b c"})))->encode("abc"),
            (Ids{3, 2}));
  // Long repeated words stay correct (and fast): "aaaa..." with "a a" and "aa aa".
  auto t = Tokenizer::from_json(make_json({"a", "aa", "aaaa"}, json::array({"a a", "aa aa"})));
  EXPECT_EQ(t->encode(std::string(10, 'a')), (Ids{2, 2, 1}));
  EXPECT_EQ(t->encode(std::string(100000, 'a')).size(), 25000u);
}

TEST(Bpe, IgnoreMergesTakesWholeWordFromVocab) {
  // "abc" is in the vocab but no merge path reaches it.
  const std::vector<std::string> vocab = {"a", "b", "c", "ab", "abc"};
  EXPECT_EQ(Tokenizer::from_json(make_json(vocab, json::array({"a b"})))->encode("abc"),
            (Ids{3, 2}));
  EXPECT_EQ(
      Tokenizer::from_json(make_json(vocab, json::array({"a b"}), {}, {{"ignore_merges", true}}))
          ->encode("abc"),
      (Ids{4}));
}

TEST(Bpe, ByteFallbackAndDecode) {
  std::vector<std::string> vocab = {"<unk>", "a"};
  for (int b = 0; b < 256; ++b) vocab.push_back(fmt::format("<0x{:02X}>", b));
  const json decoder = {{"type", "Sequence"},
                        {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  auto t = Tokenizer::from_json(make_json(vocab, json::array(), {{"decoder", decoder}},
                                          {{"byte_fallback", true}, {"unk_token", "<unk>"}}));
  // "é" = C3 A9 -> <0xC3> <0xA9>.
  const Ids ids = t->encode("aé");
  EXPECT_EQ(ids, (Ids{1, 2 + 0xC3, 2 + 0xA9}));
  EXPECT_EQ(t->decode(ids), "aé");
  // A lone continuation byte decodes to U+FFFD; token_bytes (what structured outputs match)
  // keeps the byte.
  EXPECT_EQ(t->decode(Ids{2 + 0xA9}), "\xEF\xBF\xBD");
  EXPECT_EQ(t->token_bytes(2 + 0xA9), "\xA9");
  EXPECT_EQ(t->token_bytes(2 + 0xC3) + t->token_bytes(2 + 0xA9), "\xC3\xA9");
  EXPECT_EQ(t->token_bytes(1), "a");
}

TEST(Bpe, UnknownTokensAndFuseUnk) {
  const std::vector<std::string> vocab = {"<unk>", "a"};
  auto plain = Tokenizer::from_json(make_json(vocab, json::array(), {}, {{"unk_token", "<unk>"}}));
  EXPECT_EQ(plain->encode("axya"), (Ids{1, 0, 0, 1}));
  auto fused = Tokenizer::from_json(
      make_json(vocab, json::array(), {}, {{"unk_token", "<unk>"}, {"fuse_unk", true}}));
  EXPECT_EQ(fused->encode("axya"), (Ids{1, 0, 1}));
  // Without an unk_token unknown characters are dropped, as in Hugging Face.
  EXPECT_EQ(Tokenizer::from_json(make_json(vocab, json::array()))->encode("axya"), (Ids{1, 1}));
}

TEST(Bpe, ContinuingSubwordPrefixAndSuffix) {
  const std::vector<std::string> vocab = {"a", "##b", "a##b", "ab", "b</w>", "ab</w>"};
  auto t = Tokenizer::from_json(make_json({"a", "##b", "ab"}, json::array({"a ##b"}), {},
                                          {{"continuing_subword_prefix", "##"}}));
  EXPECT_EQ(t->encode("ab"), (Ids{2}));
  auto s = Tokenizer::from_json(make_json({"a", "b</w>", "ab</w>"}, json::array({"a b</w>"}), {},
                                          {{"end_of_word_suffix", "</w>"}}));
  EXPECT_EQ(s->encode("ab"), (Ids{2}));
}

// --- Normalizers ------------------------------------------------------------------------------

TEST(Normalizer, UnicodeForms) {
  const std::string nfd = "e\xCC\x81";  // e + combining acute
  EXPECT_EQ(normalize({{"type", "NFC"}}, nfd), "\xC3\xA9");
  EXPECT_EQ(normalize({{"type", "NFD"}}, "\xC3\xA9"), nfd);
  EXPECT_EQ(normalize({{"type", "NFKC"}}, "\xEF\xAC\x81"), "fi");  // ligature fi
  EXPECT_EQ(normalize({{"type", "NFC"}}, "\xEF\xAC\x81"), "\xEF\xAC\x81");
}

TEST(Normalizer, ReplacePrependLowercaseSequence) {
  EXPECT_EQ(
      normalize({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}}, "a b  c"),
      "a_b__c");
  EXPECT_EQ(normalize({{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}},
                      "a \t\n b"),
            "a b");
  EXPECT_EQ(normalize({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}}, "hi"), "\xE2\x96\x81hi");
  EXPECT_EQ(normalize({{"type", "Prepend"}, {"prepend", "x"}}, ""), "");
  EXPECT_EQ(normalize({{"type", "Lowercase"}}, "HeLLo ÀÉ"), "hello àé");
  const json seq = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}};
  EXPECT_EQ(normalize(seq, "a b"),
            "\xE2\x96\x81"
            "a\xE2\x96\x81"
            "b");
}

// --- Pre-tokenizers ---------------------------------------------------------------------------

TEST(PreTokenizer, SplitBehaviors) {
  const auto split = [](const std::string& behavior, bool invert = false) {
    return pre_tokenize({{"type", "Split"},
                         {"pattern", {{"String", "-"}}},
                         {"behavior", behavior},
                         {"invert", invert}},
                        "a-b--c-");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Isolated"), (V{"a", "-", "b", "-", "-", "c", "-"}));
  EXPECT_EQ(split("Removed"), (V{"a", "b", "c"}));
  EXPECT_EQ(split("MergedWithPrevious"), (V{"a-", "b-", "-", "c-"}));
  EXPECT_EQ(split("MergedWithNext"), (V{"a", "-b", "-", "-c", "-"}));
  EXPECT_EQ(split("Contiguous"), (V{"a", "-", "b", "--", "c", "-"}));
  EXPECT_EQ(split("Removed", true), (V{"-", "-", "-", "-"}));  // each match is its own span
}

TEST(PreTokenizer, SplitRegexLlama3) {
  const json split = {{"type", "Split"},
                      {"pattern",
                       {{"Regex",
                         "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                         "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                      {"behavior", "Isolated"},
                      {"invert", false}};
  EXPECT_EQ(pre_tokenize(split, "I'M 12345 ok!!  x"),
            (std::vector<std::string>{"I", "'M", " ", "123", "45", " ok", "!!", " ", " x"}));
  // U+0085 (NEL) is whitespace for Hugging Face's regex engine (Oniguruma), so for us too.
  EXPECT_EQ(pre_tokenize(split,
                         "a\xC2\x85\xC2\x85"
                         "b")
                .size(),
            3u);
}

TEST(PreTokenizer, ByteLevel) {
  // Space is byte-level U+0120 "Ġ".
  EXPECT_EQ(pre_tokenize({{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}},
                         "hi you"),
            (std::vector<std::string>{"\xC4\xA0hi", "\xC4\xA0you"}));
  EXPECT_EQ(pre_tokenize({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}},
                         "hi you"),
            (std::vector<std::string>{"hi\xC4\xA0you"}));
}

TEST(PreTokenizer, Digits) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", true}}, "a12b"),
            (V{"a", "1", "2", "b"}));
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", false}}, "a12b3"),
            (V{"a", "12", "b", "3"}));
}

TEST(PreTokenizer, Metaspace) {
  using V = std::vector<std::string>;
  const std::string m = "\xE2\x96\x81";
  const auto meta = [](const std::string& scheme, bool split) {
    return json{{"type", "Metaspace"},
                {"replacement", "\xE2\x96\x81"},
                {"prepend_scheme", scheme},
                {"split", split}};
  };
  EXPECT_EQ(pre_tokenize(meta("always", true), "hi you"), (V{m + "hi", m + "you"}));
  EXPECT_EQ(pre_tokenize(meta("never", true), "hi you"), (V{"hi", m + "you"}));
  EXPECT_EQ(pre_tokenize(meta("always", false), "hi you"), (V{m + "hi" + m + "you"}));
  // "first": only at the start of the input, not after an added token.
  Pieces pieces("a", false);
  parse_pre_tokenizer(meta("first", true))->pre_tokenize(pieces);
  ASSERT_EQ(pieces.spans.size(), 1u);
  EXPECT_EQ(pieces.view(pieces.spans[0]), "a");
  EXPECT_EQ(pre_tokenize(meta("first", true), "a"), (V{m + "a"}));
}

// --- Added tokens -----------------------------------------------------------------------------

std::unique_ptr<Tokenizer> with_added(const json& added, const json& extra = json::object()) {
  json e = extra;
  e["added_tokens"] = added;
  return Tokenizer::from_json(make_json({"a", "b", " ", "c"}, json::array(), e));
}

json added_token(int id, const std::string& content, json flags = json::object()) {
  json t = {{"id", id}, {"content", content}, {"special", true}, {"normalized", false}};
  t.update(flags);
  return t;
}

TEST(AddedTokens, LongestMatchFirst) {
  auto t = with_added(json::array({added_token(10, "<x>"), added_token(11, "<x><y>")}));
  EXPECT_EQ(t->encode("a<x><y>b<x>"), (Ids{0, 11, 1, 10}));
  EXPECT_EQ(t->vocab_size(), 12);
  EXPECT_TRUE(t->is_special(10));
  EXPECT_FALSE(t->is_special(0));
}

TEST(AddedTokens, LstripRstrip) {
  auto t = with_added(json::array({added_token(10, "<m>", {{"lstrip", true}, {"rstrip", true}})}));
  EXPECT_EQ(t->encode("a  <m>  b"), (Ids{0, 10, 1}));
  auto plain = with_added(json::array({added_token(10, "<m>")}));
  EXPECT_EQ(plain->encode("a <m> b"), (Ids{0, 2, 10, 2, 1}));
}

TEST(AddedTokens, SingleWord) {
  auto t = with_added(json::array({added_token(10, "ab", {{"single_word", true}})}));
  EXPECT_EQ(t->encode("ab"), (Ids{10}));
  EXPECT_EQ(t->encode("c ab c"), (Ids{3, 2, 10, 2, 3}));
  EXPECT_EQ(t->encode("cab"), (Ids{3, 0, 1}));  // inside a word: not matched
}

TEST(AddedTokens, NormalizedTokensMatchNormalizedText) {
  const json lowercase = {{"type", "Lowercase"}};
  // normalized=true: "<M>" is lowercased to "<m>" and matched after normalization.
  auto t =
      with_added(json::array({added_token(10, "<M>", {{"normalized", true}, {"special", false}})}),
                 {{"normalizer", lowercase}});
  EXPECT_EQ(t->encode("A<M>b"), (Ids{0, 10, 1}));
  EXPECT_EQ(t->encode("a<m>b"), (Ids{0, 10, 1}));
  // normalized=false: matched in the raw text only.
  auto raw = with_added(json::array({added_token(10, "<M>")}), {{"normalizer", lowercase}});
  EXPECT_EQ(raw->encode("a<M>b"), (Ids{0, 10, 1}));
  EXPECT_EQ(raw->decode(raw->encode("a<M>b"), false), "a <M> b");  // no decoder: joined by spaces
}

// --- Decoders ---------------------------------------------------------------------------------

TEST(Decoder, Components) {
  const std::string m = "\xE2\x96\x81";
  EXPECT_EQ(decode_tokens({{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}},
                          {m + "hi", m + "you"}),
            "hi you");
  EXPECT_EQ(decode_tokens({{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "never"}},
                          {m + "hi"}),
            " hi");
  EXPECT_EQ(
      decode_tokens({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 1}}, {"  a  "}),
      " a ");
  EXPECT_EQ(decode_tokens({{"type", "Replace"}, {"pattern", {{"String", m}}}, {"content", " "}},
                          {m + "a", m + "b"}),
            " a b");
  EXPECT_EQ(decode_tokens({{"type", "ByteFallback"}}, {"<0xE2>", "<0x82>", "<0xAC>", "x"}),
            "\xE2\x82\xAC"
            "x");
  EXPECT_EQ(decode_tokens({{"type", "ByteLevel"}}, {"\xC4\xA0hi", "<|x|>"}), " hi<|x|>");
  EXPECT_EQ(decode_tokens({{"type", "Fuse"}}, {"a", "b"}), "ab");
}

// A Mistral-like (SentencePiece-style) tokenizer: streaming must keep the spaces that the
// decoders strip only at the very start of the text.
TEST(Decoder, StreamingKeepsSpacesWithStripDecoders) {
  const std::string m = "\xE2\x96\x81";
  const std::vector<std::string> vocab = {
      "<unk>", "<s>", m, "h", "i", "y", "o", "u", m + "h", m + "hi", m + "y", m + "yo", m + "you"};
  const json extra = {
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", m}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", m}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", m}}}, {"content", " "}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"added_tokens", json::array({added_token(1, "<s>")})},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}}};
  auto t = Tokenizer::from_json(
      make_json(vocab, json::array({m + " h", m + "h i", m + " y", m + "y o", m + "yo u"}), extra,
                {{"unk_token", "<unk>"}}));
  const Ids ids = t->encode("hi you hi");
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(t->decode(ids), "hi you hi");
  for (const bool skip : {true, false}) {
    IncrementalDecoder stream(*t, skip);
    std::string joined;
    for (const int32_t id : ids) joined += stream.add(id);
    joined += stream.flush();
    EXPECT_EQ(joined, t->decode(ids, skip));
  }
}

// --- Post-processing and tokenizer_config.json -------------------------------------------------

const json kBosTemplate = {
    {"type", "TemplateProcessing"},
    {"single",
     {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
      {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
    {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {4}}, {"tokens", {"<s>"}}}}}}};

TEST(PostProcessor, TemplateAddsBosUnlessDisabled) {
  auto t = with_added(json::array({added_token(4, "<s>"), added_token(5, "</s>")}),
                      {{"post_processor", kBosTemplate}});
  EXPECT_EQ(t->encode("ab"), (Ids{4, 0, 1}));
  EXPECT_EQ(t->encode("ab", false), (Ids{0, 1}));
  EXPECT_EQ(t->decode(Ids{4, 0, 1}), "a b");
  EXPECT_EQ(t->decode(Ids{4, 0, 1}, false), "<s> a b");
}

TEST(Config, AddBosAndEosTokenFollowTransformers) {
  const json added = json::array({added_token(4, "<s>"), added_token(5, "</s>")});
  json tokenizer = json::parse(make_json({"a", "b", " ", "c"}, json::array()));
  tokenizer["added_tokens"] = added;
  // No post-processor: add_bos_token/add_eos_token add them.
  const std::string config = R"({"bos_token": {"content": "<s>", "lstrip": false},
      "eos_token": "</s>", "add_bos_token": true, "add_eos_token": true})";
  auto t = Tokenizer::from_json(tokenizer.dump(), config);
  EXPECT_EQ(t->encode("a"), (Ids{4, 0, 5}));
  EXPECT_EQ(t->encode("a", false), (Ids{0}));
  EXPECT_EQ(t->bos_token_id(), 4);
  EXPECT_EQ(t->eos_token_id(), 5);
  // A template that adds BOS, with add_bos_token false: BOS is not added.
  tokenizer["post_processor"] = kBosTemplate;
  auto no_bos =
      Tokenizer::from_json(tokenizer.dump(), R"({"bos_token": "<s>", "add_bos_token": false})");
  EXPECT_EQ(no_bos->encode("a"), (Ids{0}));
  // Already added by the template: not twice.
  auto once =
      Tokenizer::from_json(tokenizer.dump(), R"({"bos_token": "<s>", "add_bos_token": true})");
  EXPECT_EQ(once->encode("a"), (Ids{4, 0}));
}

TEST(Config, FieldsAndChatTemplate) {
  const std::string tokenizer = make_json({"a"}, json::array());
  auto t = Tokenizer::from_json(tokenizer, R"({"pad_token": null, "unk_token": "a",
      "chat_template": [{"name": "default", "template": "{{ x }}"}],
      "model_max_length": 1000000000000000019884624838656})");
  EXPECT_EQ(t->config().unk_token, "a");
  EXPECT_FALSE(t->config().pad_token.has_value());
  EXPECT_TRUE(t->config().chat_template.is_array());
  EXPECT_EQ(t->config().chat_template[0]["template"], "{{ x }}");
  EXPECT_EQ(t->config().model_max_length, std::numeric_limits<int64_t>::max());
  auto no_config = Tokenizer::from_json(tokenizer);
  EXPECT_TRUE(no_config->config().chat_template.is_null());
  EXPECT_FALSE(no_config->bos_token_id().has_value());
  EXPECT_EQ(t->id_to_token(0), "a");
  EXPECT_FALSE(t->id_to_token(1).has_value());
  EXPECT_EQ(t->token_to_id("a"), 0);
  EXPECT_FALSE(t->token_to_id("zz").has_value());
}

// --- Errors -----------------------------------------------------------------------------------

TEST(Errors, NameTheProblem) {
  EXPECT_NE(error_of([] { Tokenizer::from_json("{not json"); }).find("tokenizer.json: malformed"),
            std::string::npos);
  EXPECT_NE(error_of([] { Tokenizer::from_json("{}"); }).find("model"), std::string::npos);
  const std::string wordpiece =
      error_of([] { Tokenizer::from_json(R"({"model": {"type": "WordPiece", "vocab": {}}})"); });
  EXPECT_NE(wordpiece.find("WordPiece"), std::string::npos) << wordpiece;
  EXPECT_NE(wordpiece.find("supported: BPE"), std::string::npos) << wordpiece;
  EXPECT_NE(error_of([] {
              Tokenizer::from_json(
                  make_json({"a"}, json::array(), {{"normalizer", {{"type", "Precompiled"}}}}));
            }).find("unsupported normalizer type \"Precompiled\""),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Tokenizer::from_json(
                  make_json({"a"}, json::array(), {{"pre_tokenizer", {{"type", "Bert"}}}}));
            }).find("unsupported pre_tokenizer type \"Bert\""),
            std::string::npos);
  EXPECT_NE(
      error_of([] {
        Tokenizer::from_json(make_json({"a"}, json::array(), {{"decoder", {{"type", "CTC"}}}}));
      }).find("unsupported decoder type \"CTC\""),
      std::string::npos);
  EXPECT_NE(error_of([] {
              Tokenizer::from_json(make_json({"a"}, json::array({"a b"})));
            }).find("token \"b\" is not in the vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Tokenizer::from_json(make_json({"a"}, json::array({"a"})));
            }).find("merges[0]"),
            std::string::npos);
  EXPECT_NE(
      error_of([] {
        Tokenizer::from_json(make_json(
            {"a"}, json::array(),
            {{"pre_tokenizer",
              {{"type", "Split"}, {"pattern", {{"Regex", "(("}}}, {"behavior", "Isolated"}}}}));
      }).find("invalid regex"),
      std::string::npos);
  EXPECT_NE(error_of([] {
              Tokenizer::from_json(make_json({"a"}, json::array()), "[1]");
            }).find("tokenizer_config.json"),
            std::string::npos);
}

// model.vocab and model.merges are read by our own JSON reader (json_reader.h); nlohmann, which
// reads the rest, is the reference for what the text means.
TEST(JsonReader, VocabAndMergesDecodeAsNlohmannDoes) {
  // Escapes of every kind, a surrogate pair, raw UTF-8, a repeated key (the last one wins),
  // unusual spacing and a merge written both ways.
  const std::string text = R"({"version": "1.0", "model": { "type" : "BPE",
    "vocab": {"a": 0, "b": 1, "ab": 2, "\u00e9": 3, "\ud83d\ude00": 4, "\"q\"": 5, "a\\b": 6,
              "\n": 7, "\/": 8, "\t\r\b\f": 9, "é\u00e9": 10, "b": 11, "abb": 12,
              "x" :13 , "\u0041": 14},
    "merges": ["a b", ["ab", "b"], ["é", "\u00e9"]], "ignore_merges": false},
    "added_tokens": [], "extra": [[[{"k": [1, -2.5e3, true, false, null, "s\u0000"]}]]]})";
  const json reference = json::parse(text);
  auto t = Tokenizer::from_json(text);
  int64_t max_id = 0;
  for (const auto& [token, id] : reference["model"]["vocab"].items()) {
    EXPECT_EQ(t->token_to_id(token), id.get<int32_t>()) << token;
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
  }
  EXPECT_EQ(t->vocab_size(), max_id + 1);
  EXPECT_FALSE(t->id_to_token(1).has_value());  // "b" moved to 11
  EXPECT_EQ(t->id_to_token(4), "\xF0\x9F\x98\x80");
  // The merges took: "abb" is one token, "éé" too.
  EXPECT_EQ(t->encode("abb", false), (Ids{12}));
  EXPECT_EQ(t->encode("\xC3\xA9\xC3\xA9", false), (Ids{10}));
}

TEST(JsonReader, RejectsWhatNlohmannRejects) {
  // Each is put where a vocabulary entry, a merge or the top level goes.
  const std::vector<std::string> bad_vocab = {
      R"("\ud800": 0)", R"("\udc00": 0)",      R"("\x41": 0)", "\"a\x01\": 0",
      "\"\xC3\": 0",    "\"\xED\xA0\x80\": 0", R"("a": 0,)",   R"("a" 0)",
      R"("a": 01)",     R"("a": -)",           R"("a)",        R"(a: 0)",
      R"("\u12G4": 0)"};
  for (const std::string& entry : bad_vocab) {
    const std::string text =
        R"({"model": {"type": "BPE", "vocab": {)" + entry + R"(}, "merges": []}})";
    EXPECT_THROW(json::parse(text), json::exception) << entry;
    EXPECT_NE(error_of([&] { Tokenizer::from_json(text); }).find("tokenizer.json"),
              std::string::npos)
        << entry;
  }
  const std::vector<std::string> bad_merges = {R"(["a b",])", R"([["a", "b"],,])", R"(["a b"] x)",
                                               R"([["a" "b"]])"};
  for (const std::string& merges : bad_merges) {
    const std::string text =
        R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": )" + merges +
        "}}";
    EXPECT_THROW(json::parse(text), json::exception) << merges;
    EXPECT_THROW(Tokenizer::from_json(text), Error) << merges;
  }
  const std::string good = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  EXPECT_NO_THROW(Tokenizer::from_json(good));
  for (const std::string& text : {good + " x", good + "}", good.substr(0, good.size() - 1)}) {
    EXPECT_THROW(json::parse(text), json::exception) << text;
    EXPECT_THROW(Tokenizer::from_json(text), Error) << text;
  }
  // A bad vocabulary or merge list under a key that repeats (the last one is used).
  for (const std::string& text : std::vector<std::string>{
           R"({"model": {"vocab": {"a": 0,}, "vocab": {"a": 0}, "type": "BPE", "merges": []}})",
           R"({"model": {"merges": [}, "type": "BPE", "vocab": {"a": 0}, "merges": []}})",
           R"({"model": {"vocab": {"a" 0}}, "model": )" + good.substr(10)}) {
    EXPECT_THROW(json::parse(text), json::exception) << text;
    EXPECT_THROW(Tokenizer::from_json(text), Error) << text;
  }
  EXPECT_NE(error_of([&] { Tokenizer::from_json("[" + good + "]"); }).find("must be an object"),
            std::string::npos);
  // A fractional id is valid JSON but no token id.
  EXPECT_NE(
      error_of([] {
        Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 1.5}, "merges": []}})");
      }).find("not an integer"),
      std::string::npos);
  // Deep nesting elsewhere in the file is skipped without recursion.
  const std::string deep = R"({"extra": )" + std::string(20000, '[') + std::string(20000, ']') +
                           R"(, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  EXPECT_NO_THROW(Tokenizer::from_json(deep));
}

TEST(Errors, MissingFiles) {
  const auto dir = std::filesystem::temp_directory_path() / "tessera_tokenizer_missing";
  std::filesystem::create_directories(dir);
  std::filesystem::remove(dir / "tokenizer.json");
  try {
    Tokenizer::load(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "Unigram"}})";
  const std::string message = error_of([&] { Tokenizer::load(dir); });
  EXPECT_NE(message.find((dir / "tokenizer.json").string()), std::string::npos) << message;
  EXPECT_NE(message.find("Unigram"), std::string::npos) << message;
}

// --- Invalid UTF-8 ----------------------------------------------------------------------------

TEST(InvalidUtf8, ReplacedLikeFromUtf8Lossy) {
  EXPECT_EQ(utf8_lossy("a\xFF"
                       "b"),
            "a\xEF\xBF\xBD"
            "b");
  // A truncated sequence is one maximal subpart: one U+FFFD.
  EXPECT_EQ(utf8_lossy("\xE2\x82"
                       "x"),
            "\xEF\xBF\xBD"
            "x");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_FALSE(utf8_valid("\xC0\x80"));
  EXPECT_TRUE(utf8_valid("\xF0\x9F\x98\x80"));
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) {
    std::string s;
    utf8_append(s, byte_to_char(static_cast<unsigned char>(b)));
    vocab.push_back(s);
  }
  auto t = Tokenizer::from_json(
      make_json(vocab, json::array(),
                {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
                 {"decoder", {{"type", "ByteLevel"}}}}));
  EXPECT_EQ(t->encode("a\xFF"
                      "b\xE2\x82"),
            t->encode("a\xEF\xBF\xBD"
                      "b\xEF\xBF\xBD"));
  EXPECT_EQ(t->decode(t->encode("x\xC3")), "x\xEF\xBF\xBD");
}

// --- Built-in tokenizer -----------------------------------------------------------------------

class Builtin : public ::testing::TestWithParam<int64_t> {};

TEST_P(Builtin, RoundTripsAndIsDeterministic) {
  const int64_t vocab_size = GetParam();
  const auto base = std::filesystem::temp_directory_path() /
                    ("tessera_builtin_tokenizer_" + std::to_string(::getpid()));
  write_builtin_tokenizer(base / "a", vocab_size);
  write_builtin_tokenizer(base / "b", vocab_size);
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    std::ifstream a(base / "a" / name), b(base / "b" / name);
    std::stringstream sa, sb;
    sa << a.rdbuf();
    sb << b.rdbuf();
    EXPECT_EQ(sa.str(), sb.str()) << name << " differs between two writes";
  }
  auto t = Tokenizer::load(base / "a");
  EXPECT_EQ(t->vocab_size(), vocab_size);
  EXPECT_EQ(t->bos_token_id(), vocab_size - 5);
  EXPECT_EQ(t->eos_token_id(), vocab_size - 1);
  EXPECT_EQ(t->token_to_id("<|start_header_id|>"), vocab_size - 3);
  for (int64_t id = 0; id < vocab_size; ++id) ASSERT_TRUE(t->id_to_token(static_cast<int32_t>(id)));
  for (const std::string text :
       {"Hello, world! How are you today?", "def f(x):\n    return x + 1\n", "naïve café 日本 😀",
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", ""}) {
    const Ids ids = t->encode(text);
    EXPECT_EQ(ids.front(), vocab_size - 5);
    for (const int32_t id : ids) EXPECT_LT(id, vocab_size);
    EXPECT_EQ(t->decode(ids, false), "<|begin_of_text|>" + text);
  }
  // Every id below the specials decodes to visible text even when special tokens are skipped,
  // so that a random-weight model's output is never empty.
  for (int32_t id = 256; id < vocab_size - 5; ++id)
    ASSERT_FALSE(t->decode(std::vector<int32_t>{id}, true).empty()) << id;
  // The merges are real: common English takes fewer tokens than bytes.
  EXPECT_EQ(t->encode(" the the the", false).size(), 3u);
  const auto& chat = t->config().chat_template;
  ASSERT_TRUE(chat.is_string());
  EXPECT_NE(chat.get<std::string>().find("<|start_header_id|>"), std::string::npos);
  std::filesystem::remove_all(base);
}

INSTANTIATE_TEST_SUITE_P(VocabSizes, Builtin, ::testing::Values(512, 4096, 32000));

TEST(BuiltinErrors, TooSmall) {
  EXPECT_NE(error_of([] { write_builtin_tokenizer("/nonexistent", 100); }).find("vocab_size"),
            std::string::npos);
}

// --- Concurrency ------------------------------------------------------------------------------

TEST(Concurrency, FourThreadsEncodeIdentically) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("tessera_builtin_concurrency_" + std::to_string(::getpid()));
  write_builtin_tokenizer(dir, 4096);
  auto t = Tokenizer::load(dir);
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) {
    texts.push_back(fmt::format("word{} the value {} is {}; déjà vu {} 😀 {}", i % 37, i, i * i,
                                std::string(i % 5, ' '), i % 11));
  }
  std::vector<Ids> expected;
  for (const auto& text : texts) expected.push_back(t->encode(text));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          const size_t j = (i * 7 + k * 13 + round) % texts.size();
          if (t->encode(texts[j]) != expected[j]) ++mismatches[k];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera::tokenizer

namespace tessera::tokenizer {
namespace {

// vocab.json + merges.txt without tokenizer.json: a byte-level BPE with tokenizer_config.json's
// special tokens, and a malformed merges line named by file and line.
TEST(SlowBpeFiles, BuildAByteLevelBpe) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("tessera_slow_bpe_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  // "\u0120" is the byte-level form of a space.
  std::ofstream(dir / "vocab.json")
      << R"({"h": 0, "e": 1, "l": 2, "o": 3, "\u0120": 4, "he": 5, "ll": 6, "hell": 7, "hello": 8,
            "\u0120h": 9, "<|endoftext|>": 10, "<pad>": 11})";
  std::ofstream(dir / "merges.txt") << "#version: 0.2\nh e\nl l\nhe ll\nhell o\n\u0120 h\n";
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"eos_token": "<|endoftext|>", "pad_token": {"content": "<pad>", "special": true}})";
  EXPECT_TRUE(has_tokenizer(dir));
  auto tok = Tokenizer::load(dir);
  // " hello" is one pre-token; "h e" outranks "\u0120 h", so the space stays apart.
  EXPECT_EQ(tok->encode("hello hello", false), (std::vector<int32_t>{8, 4, 8}));
  EXPECT_EQ(tok->encode("hello<|endoftext|><pad>", false), (std::vector<int32_t>{8, 10, 11}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{8, 4, 8, 10}, true), "hello hello");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{9, 1, 6, 3}, true), " hello");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{8, 10}, false), "hello<|endoftext|>");

  // OPT's tokenizer_config.json sets add_bos_token (its BOS is "</s>"): BOS leads the ids.
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"add_bos_token": true, "bos_token": "<pad>", "eos_token": "<|endoftext|>"})";
  EXPECT_EQ(Tokenizer::load(dir)->encode("hello", true), (std::vector<int32_t>{11, 8}));
  EXPECT_EQ(Tokenizer::load(dir)->encode("hello", false), (std::vector<int32_t>{8}));

  std::ofstream(dir / "merges.txt") << "#version: 0.2\nh e\nl l x\n";
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "a bad merges line was accepted";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("merges.txt:3: expected two tokens separated by one space"),
        std::string::npos)
        << e.what();
  }
  std::filesystem::remove(dir / "merges.txt");
  EXPECT_FALSE(has_tokenizer(dir));
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "a folder without a tokenizer loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab.json + merges.txt"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera::tokenizer
