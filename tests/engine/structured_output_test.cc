#include "engine/structured_output.h"

#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/status.h"
#include "engine/sampler.h"
#include "engine/sequence.h"

namespace tessera {
namespace {

using nlohmann::json;

// A small vocabulary with single bytes and multi-byte pieces that cross JSON structure (as real
// BPE tokens do: '{"', '":', '","', ' true', digits runs, text runs, U+FFFD).
std::shared_ptr<const TokenVocabulary> test_vocab() {
  std::vector<std::string> texts = {"", ""};  // 0: eos, 1: a special (never allowed)
  for (int c = 0x20; c < 0x7f; ++c) texts.push_back(std::string(1, static_cast<char>(c)));
  for (const char* t :
       {"\n",   "\n  ", "  ",      "{\"",   "\":",         "\": ",         "\",",     "\", \"",
        "\"}",  "\"]",  "},",      "}]",    "[{",          "true",         " true",   "false",
        "null", "12",   "3.5",     "e+",    "-0",          "name",         "age",     "tags",
        "ok",   "\\n",  "\\u00e9", "\\",    "hello world", "\xEF\xBF\xBD", "ab\"",    "1,",
        "0}",   "yes",  "no",      "maybe", "red",         "green",        "\"red\"", "\"green"}) {
    texts.push_back(t);
  }
  return std::make_shared<const TokenVocabulary>(std::move(texts), std::vector<int32_t>{0});
}

bool accepts(const std::shared_ptr<const Grammar>& g, const std::string& text, bool complete) {
  GrammarMatcher m(g, test_vocab());
  if (!m.accept_text(text)) return false;
  return !complete || m.can_end();
}

const json kPerson = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
    "ok": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}
  },
  "required": ["name", "age"],
  "additionalProperties": false
})");

TEST(StructuredOutput, SchemaAcceptsValidAndRejectsInvalidTexts) {
  auto g = Grammar::from_json_schema(kPerson);
  EXPECT_TRUE(accepts(g, R"({"name":"Ann","age":31})", true));
  EXPECT_TRUE(accepts(g, "{\n  \"age\": -4,\n  \"name\": \"B\\u00e9\",\n  \"ok\": null\n}", true));
  EXPECT_TRUE(accepts(g, R"({"name":"x","age":0,"tags":["red","green"],"ok":true})", true));
  EXPECT_TRUE(accepts(g, R"({"name":"x","age":1)", false));  // a prefix, not complete
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1)", true));
  EXPECT_FALSE(accepts(g, R"({"name":"x"})", true));                       // age is required
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1,"zip":2})", false));      // no other keys
  EXPECT_FALSE(accepts(g, R"({"name":"x","name":"y","age":1})", false));   // no duplicates
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1.5})", false));            // integer
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":01})", false));             // JSON numbers
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1,})", false));             // trailing comma
  EXPECT_FALSE(accepts(g, R"({"name":"0123456789abc","age":1})", false));  // maxLength 12
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1,"tags":["blue"]})", false));
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1,"tags":["red","red","red","red"]})", false));
  EXPECT_FALSE(accepts(g, R"({"name":"x","age":1} )", false));       // nothing after the value
  EXPECT_FALSE(accepts(g, "{\"name\":\"a\nb\",\"age\":1}", false));  // raw control byte
  GrammarMatcher done(g, test_vocab());
  ASSERT_TRUE(done.accept_text(R"({"name":"x","age":1})"));
  EXPECT_TRUE(done.must_end());
}

TEST(StructuredOutput, JsonObjectRefsChoicesAndTopLevelNumbers) {
  auto any = Grammar::any_json_object();
  EXPECT_TRUE(accepts(any, R"({"a":[1,{"b":null}],"c":"\"q\""})", true));
  EXPECT_FALSE(accepts(any, "[1]", false));  // an object, not any value
  const json tree = json::parse(R"({
    "$defs": {"node": {"type": "object", "properties": {
      "v": {"type": "number"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
      "required": ["v"]}},
    "$ref": "#/$defs/node"})");
  auto t = Grammar::from_json_schema(tree);
  EXPECT_TRUE(accepts(t, R"({"v":1,"kids":[{"v":2.5e-3},{"v":-0,"kids":[]}]})", true));
  EXPECT_FALSE(accepts(t, R"({"v":1,"kids":[{"w":2}]})", false));
  auto num = Grammar::from_json_schema(json{{"type", "number"}});
  GrammarMatcher m(num, test_vocab());
  ASSERT_TRUE(m.accept_text("12"));
  EXPECT_TRUE(m.can_end());
  EXPECT_FALSE(m.must_end());  // more digits may follow
  auto choice = Grammar::choice({"yes", "no", "maybe"});
  EXPECT_TRUE(accepts(choice, "no", true));
  EXPECT_FALSE(accepts(choice, " no", false));  // raw text: no whitespace
  EXPECT_FALSE(accepts(choice, "nope", false));
  GrammarMatcher c(choice, test_vocab());
  ASSERT_TRUE(c.accept_text("yes"));
  EXPECT_TRUE(c.must_end());
}

// anyOf alternatives that begin alike (two object shapes, an enum beside a string) are read
// side by side until the text tells them apart.
TEST(StructuredOutput, AlternativesThatBeginAlike) {
  const json shapes = json::parse(R"({"anyOf":[
      {"type":"object","properties":{"kind":{"const":"circle"},"r":{"type":"number"}},
       "required":["kind","r"],"additionalProperties":false},
      {"type":"object","properties":{"kind":{"const":"box"},"w":{"type":"integer"},
       "h":{"type":"integer"}},"required":["kind","w","h"],"additionalProperties":false}]})");
  auto g = Grammar::from_json_schema(shapes);
  EXPECT_TRUE(accepts(g, R"({"kind":"circle","r":2.5})", true));
  EXPECT_TRUE(accepts(g, R"({"w":3,"kind":"box","h":4})", true));
  EXPECT_FALSE(accepts(g, R"({"kind":"circle","w":3})", false));  // keys of the other shape
  EXPECT_FALSE(accepts(g, R"({"kind":"box","w":3})", true));      // h missing
  EXPECT_FALSE(accepts(g, R"({"kind":"square")", false));
  auto mixed = Grammar::from_json_schema(
      json::parse(R"({"anyOf":[{"enum":["auto","none"]},{"type":"string","maxLength":3}]})"));
  EXPECT_TRUE(accepts(mixed, R"("auto")", true));
  EXPECT_TRUE(accepts(mixed, R"("ab")", true));
  EXPECT_FALSE(accepts(mixed, R"("abcd")", false));  // neither: not an enum value, too long
  GrammarMatcher m(mixed, test_vocab());
  ASSERT_TRUE(m.accept_text(R"("none")"));
  EXPECT_TRUE(m.must_end());
}

// The tokens the matcher's mask allows after `text`, checked against trying every token alone
// on a fresh matcher; a failure is reported through gtest and leaves the result empty.
std::vector<int32_t> checked_allowed(const std::shared_ptr<const Grammar>& g,
                                     const std::shared_ptr<const TokenVocabulary>& vocab,
                                     const GrammarMatcher& m, const std::string& text) {
  std::vector<char> allowed;
  m.fill_allowed(allowed);
  EXPECT_EQ(allowed.size(), static_cast<size_t>(vocab->size()));
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < vocab->size(); ++id) {
    GrammarMatcher probe(g, vocab);
    EXPECT_TRUE(probe.accept_text(text));
    const bool ok = probe.accept(id);
    if (static_cast<bool>(allowed[id]) != ok) {
      ADD_FAILURE() << "token '" << vocab->text(id) << "' (" << id << ") after '" << text
                    << "': mask " << static_cast<int>(allowed[id]) << ", alone " << ok;
      return {};
    }
    if (ok) ids.push_back(id);
  }
  return ids;
}

// guided_regex (raw text matched whole) and JSON Schema "pattern" (a string's unescaped content
// matched whole, through JSON escapes).
TEST(StructuredOutput, RegexAndStringPatterns) {
  auto answer = Grammar::regex("(yes|no), \\d{2}");
  EXPECT_TRUE(accepts(answer, "yes, 42", true));
  EXPECT_TRUE(accepts(answer, "yes, 4", false));
  EXPECT_FALSE(accepts(answer, "yes, 4", true));
  EXPECT_FALSE(accepts(answer, "maybe", false));
  EXPECT_FALSE(accepts(answer, " yes, 42", false));  // raw text: no whitespace of its own
  {
    GrammarMatcher m(answer, test_vocab());
    ASSERT_TRUE(m.accept_text("no, 12"));
    EXPECT_TRUE(m.must_end());
  }
  {
    GrammarMatcher m(Grammar::regex("\\d+"), test_vocab());
    ASSERT_TRUE(m.accept_text("12"));
    EXPECT_TRUE(m.can_end());
    EXPECT_FALSE(m.must_end());
  }
  auto phone = Grammar::from_json_schema(json::parse(R"({"type":"object","properties":{
      "phone":{"type":"string","pattern":"^\\d{3}-\\d{4}$"}},"required":["phone"]})"));
  EXPECT_TRUE(accepts(phone, R"({"phone": "555-1234"})", true));
  EXPECT_FALSE(accepts(phone, R"({"phone": "5551234"})", false));
  EXPECT_FALSE(accepts(phone, R"({"phone": "555-12345"})", false));
  auto escaped = Grammar::from_json_schema(json{{"type", "string"}, {"pattern", "a\\nb"}});
  EXPECT_TRUE(accepts(escaped, R"("a\nb")", true));  // the escape stands for a line feed
  EXPECT_FALSE(accepts(escaped, R"("anb")", false));
  auto unicode = Grammar::from_json_schema(json{{"type", "string"}, {"pattern", "A+\xc3\xa9"}});
  EXPECT_TRUE(accepts(unicode, "\"AA\xc3\xa9\"", true));
  // No \u escapes in a pattern string: their first digits could commit to a refused character.
  EXPECT_FALSE(accepts(unicode, "\"\\u0041\"", false));
  // An escape only where one of the short escapes' characters may come.
  auto letters = Grammar::from_json_schema(json{{"type", "string"}, {"pattern", "[a-z]+"}});
  EXPECT_FALSE(accepts(letters, "\"ab\\", false));
}

// The mask equals trying every token alone for regex grammars too (the string shortcut must
// not apply to a string with a pattern).
TEST(StructuredOutput, RegexMaskMatchesTryingEveryToken) {
  auto vocab = test_vocab();
  const std::shared_ptr<const Grammar> grammars[] = {
      Grammar::regex("(red|green)( \\d+)?\\.?"),
      Grammar::from_json_schema(json::parse(
          R"({"type":"object","properties":{"c":{"type":"string","pattern":"[a-z ]{1,8}"}},
              "required":["c"],"additionalProperties":false})"))};
  std::mt19937 rng(3);
  for (const auto& g : grammars) {
    for (int walk = 0; walk < 60; ++walk) {
      GrammarMatcher m(g, vocab);
      std::string text;
      for (int step = 0; step < 40 && !m.must_end(); ++step) {
        const std::vector<int32_t> ids = checked_allowed(g, vocab, m, text);
        ASSERT_FALSE(ids.empty()) << text;
        const int32_t pick = ids[rng() % ids.size()];
        if (pick == 0) break;
        ASSERT_TRUE(m.accept(pick));
        text += vocab->text(pick);
      }
    }
  }
}

// disable_any_whitespace: no whitespace between JSON tokens; inside strings it stays text.
TEST(StructuredOutput, CompactJsonHasNoWhitespaceBetweenTokens) {
  auto g = Grammar::from_json_schema(kPerson, /*any_whitespace=*/false);
  EXPECT_TRUE(accepts(g, R"({"name":"a b","age":3,"tags":["red"]})", true));
  EXPECT_FALSE(accepts(g, R"({"name": "a")", false));
  EXPECT_FALSE(accepts(g, R"( {)", false));
  EXPECT_FALSE(accepts(g, "{\n", false));
  EXPECT_TRUE(accepts(Grammar::from_json_schema(kPerson), R"({"name": "a")", false));
}

TEST(StructuredOutput, UnsupportedSchemasAreRequestErrors) {
  for (const char* bad : {R"({"type":"string","pattern":"(?=a)b"})", R"({"type":"date"})",
                          R"({"$ref":"#/nowhere"})", R"({"$ref":"http://x/schema"})", "false"}) {
    try {
      Grammar::from_json_schema(json::parse(bad));
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << bad;
      EXPECT_NE(std::string(e.what()).find("JSON schema"), std::string::npos) << e.what();
    }
  }
}

// Independent check of a finished text: nlohmann's parser, then the schema's rules by hand.
void expect_person(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << text;
  ASSERT_TRUE(j.is_object()) << text;
  ASSERT_TRUE(j.contains("name") && j["name"].is_string()) << text;
  ASSERT_TRUE(j.contains("age") && j["age"].is_number_integer()) << text;
  for (const auto& [k, v] : j.items()) {
    ASSERT_TRUE(k == "name" || k == "age" || k == "tags" || k == "ok") << text;
    if (k == "tags") {
      ASSERT_TRUE(v.is_array() && v.size() <= 3) << text;
      for (const auto& t : v) ASSERT_TRUE(t == "red" || t == "green") << text;
    }
    if (k == "ok") ASSERT_TRUE(v.is_boolean() || v.is_null()) << text;
  }
}

// The mask (a walk of the vocabulary in byte order, and the string shortcut) equals trying
// every token alone; and random walks through allowed tokens end in texts the schema accepts.
TEST(StructuredOutput, MaskMatchesTryingEveryTokenAndWalksEndValid) {
  auto vocab = test_vocab();
  auto g = Grammar::from_json_schema(kPerson);
  std::mt19937 rng(7);
  int finished = 0;
  for (int walk = 0; walk < 200; ++walk) {
    GrammarMatcher m(g, vocab);
    std::string text;
    for (int step = 0; step < 200 && !m.must_end(); ++step) {
      const std::vector<int32_t> ids = checked_allowed(g, vocab, m, text);
      ASSERT_FALSE(ids.empty()) << text;
      // Prefer closing tokens as the walk grows, so that most walks finish.
      int32_t pick = ids[rng() % ids.size()];
      if (step > 40) {
        for (int32_t id : ids)
          if (id == 0 || vocab->text(id).find_first_of("}]\"") != std::string::npos) pick = id;
      }
      if (pick == 0) break;  // end of sequence
      ASSERT_TRUE(m.accept(pick));
      text += vocab->text(pick);
    }
    if (m.can_end()) {
      ++finished;
      expect_person(text);
    }
  }
  EXPECT_GT(finished, 100);
}

// Tokens that hold part of a character (byte-level BPE splits "\u2581", U+2581, into bytes no
// single token completes): their bytes build the character in choices and regexes, and inside
// JSON strings only whole, valid UTF-8 may result (never a stray byte that would decode to
// U+FFFD, and never a quote or escape in the middle of a character).
TEST(StructuredOutput, PartialCharacterTokensBuildValidUtf8) {
  std::vector<std::string> texts = {"",         "a",    "b",    "\xE2",  "\x96", "\x81",
                                    "\xE2\x96", "\"",   "{\"",  "\":\"", "\"}",  "k",
                                    "\xC3",     "\xA9", "\xED", "\xA0",  "\xC0", "\xAF"};
  auto vocab = std::make_shared<const TokenVocabulary>(texts, std::vector<int32_t>{0});
  const auto feed = [&](const std::shared_ptr<const Grammar>& g, std::vector<int32_t> ids) {
    GrammarMatcher m(g, vocab);
    for (int32_t id : ids)
      if (!m.accept(id)) return -1;
    return m.can_end() ? 1 : 0;
  };
  // guided_choice "a\u2581b": byte by byte, or with a two-byte piece.
  auto choice =
      Grammar::choice({"a\xE2\x96\x81"
                       "b"});
  EXPECT_EQ(feed(choice, {1, 3, 4, 5, 2}), 1);
  EXPECT_EQ(feed(choice, {1, 6, 5, 2}), 1);
  EXPECT_EQ(feed(choice, {1, 3, 5}), -1);
  GrammarMatcher mid(choice, vocab);
  ASSERT_TRUE(mid.accept(1));
  std::vector<char> allowed;
  mid.fill_allowed(allowed);
  EXPECT_TRUE(allowed[3] && allowed[6]);  // the pieces that begin the character
  EXPECT_FALSE(allowed[4] || allowed[5] || allowed[2]);
  auto re = Grammar::regex("a\xE2\x96\x81+");
  EXPECT_EQ(feed(re, {1, 3, 4, 5, 6, 5}), 1);

  const json schema = json::parse(R"({"type":"object","properties":{"k":{"type":"string",
      "maxLength":2}},"required":["k"],"additionalProperties":false})");
  auto g = Grammar::from_json_schema(schema);
  const int32_t open = 8, kk = 11, colon = 9, close = 10, quote = 7;
  EXPECT_EQ(feed(g, {open, kk, colon, 12, 13, close}), 1);           // "é" from two pieces
  EXPECT_EQ(feed(g, {open, kk, colon, 3, 4, 5, 12, 13, close}), 1);  // two characters
  EXPECT_EQ(feed(g, {open, kk, colon, 3, 4, 5, 12, 13, 1}), -1);     // a third: maxLength 2
  EXPECT_EQ(feed(g, {open, kk, colon, 13}), -1);                     // a stray continuation byte
  EXPECT_EQ(feed(g, {open, kk, colon, 12, quote}), -1);              // a quote inside "é"
  EXPECT_EQ(feed(g, {open, kk, colon, 12, 1}), -1);                  // "a" inside "é"
  EXPECT_EQ(feed(g, {open, kk, colon, 14, 15}), -1);  // ED A0: a surrogate, not UTF-8
  EXPECT_EQ(feed(g, {open, kk, colon, 16, 17}), -1);  // C0 AF: an overlong "/"
  // The mask agrees: after a lead byte only continuation bytes (80-BF) may come.
  GrammarMatcher in_char(g, vocab);
  for (int32_t id : {open, kk, colon, 12}) ASSERT_TRUE(in_char.accept(id));
  in_char.fill_allowed(allowed);
  for (int32_t id = 0; id < vocab->size(); ++id)
    EXPECT_EQ(static_cast<bool>(allowed[id]),
              id == 4 || id == 5 || id == 13 || id == 15 || id == 17)
        << "token " << id;
}

// The sampler draws only allowed tokens; EOS once the text may end, unless EOS is ignored.
TEST(StructuredOutput, SamplerDrawsOnlyAllowedTokens) {
  auto vocab = test_vocab();
  auto g = Grammar::from_json_schema(json{{"type", "integer"}});
  for (bool ignore_eos : {false, true}) {
    Sequence seq;
    seq.params.temperature = 0;  // greedy: the best allowed token
    seq.params.ignore_eos = ignore_eos;
    seq.params.grammar = g;
    seq.params.grammar_vocab = vocab;
    seq.grammar = std::make_unique<GrammarMatcher>(g, vocab);
    ASSERT_TRUE(seq.grammar->accept_text("12"));
    std::vector<float> logits(static_cast<size_t>(vocab->size()), 0.0f);
    logits[0] = 5;  // EOS best
    int32_t letter_a = -1, digit_7 = -1;
    for (int32_t id = 0; id < vocab->size(); ++id) {
      if (vocab->text(id) == "a") letter_a = id;
      if (vocab->text(id) == "7") digit_7 = id;
    }
    logits[letter_a] = 4;  // never allowed in a number
    logits[digit_7] = 3;
    Sampler sampler({0});
    EXPECT_EQ(sampler.sample(logits, seq), ignore_eos ? digit_7 : 0);
  }
}

}  // namespace
}  // namespace tessera
