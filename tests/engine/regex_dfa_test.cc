// The regex DFA against std::regex (ECMAScript, a full match) as an independent oracle on random
// strings, the liveness promise (every live state can still reach a match), UTF-8 classes, and
// the errors for what is not supported.
#include "engine/regex_dfa.h"

#include <gtest/gtest.h>

#include <random>
#include <regex>

#include "core/status.h"

namespace tessera {
namespace {

bool dfa_matches(const RegexDfa& d, const std::string& text) {
  int32_t s = d.start();
  for (unsigned char c : text) {
    s = d.next(s, c);
    if (s == RegexDfa::kDead) return false;
  }
  return d.accepting(s);
}

TEST(RegexDfa, FullMatchAgreesWithStdRegexOnRandomStrings) {
  const char* patterns[] = {"",
                            "a",
                            "abc",
                            "a*",
                            "a+b?",
                            "(ab|cd)*e",
                            "[a-c]{2,4}",
                            "[^abc]+",
                            "\\d{3}-\\d{4}",
                            "\\w+@\\w+\\.com",
                            "(a|b)*abb",
                            "x{0,2}y{2}",
                            "a{3,}",
                            "(?:ab)+|c",
                            "[\\d.]+",
                            "\\s*\\S+\\s*",
                            "(a*)*b",
                            ".a.",
                            "[a\\-z]+",
                            "(red|green|blue)( (red|green|blue))?",
                            "^[A-Z][a-z]*$",
                            "\\.\\*\\+",
                            "a|b|",
                            "(a|ab)(c|bcd)(d*)"};
  const std::string alphabet = "abcdexyz-.@ \t\n019ZR]+*";
  std::mt19937 rng(11);
  for (const char* p : patterns) {
    SCOPED_TRACE(p);
    auto dfa = RegexDfa::compile(p);
    const std::regex oracle(p, std::regex::ECMAScript);
    int matched = 0;
    for (int i = 0; i < 3000; ++i) {
      std::string s;
      const int len = static_cast<int>(rng() % 9);
      for (int k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
      // Half the strings from the pattern's own letters, so that matches are not rare.
      if (i % 2 == 0) {
        std::string own;
        for (char c : std::string(p))
          if (std::isalnum(static_cast<unsigned char>(c)) || c == ' ' || c == '-' || c == '.' ||
              c == '@')
            own += c;
        if (!own.empty()) {
          s.clear();
          for (int k = 0; k < len; ++k) s += own[rng() % own.size()];
        }
      }
      const bool want = std::regex_match(s, oracle);
      ASSERT_EQ(dfa_matches(*dfa, s), want) << "'" << s << "'";
      matched += want;
    }
    // Texts the DFA accepts, by random walks over its ASCII edges: the oracle must match them.
    for (int walk = 0; walk < 300; ++walk) {
      std::string text;
      int32_t st = dfa->start();
      bool done = false;
      for (int step = 0; step < 20 && !done; ++step) {
        if (dfa->accepting(st) && rng() % 3 == 0) break;
        std::vector<int> next;
        // Printable ASCII, tab and line feed: where ECMAScript and Python regexes agree ('.'
        // also refuses '\r' in ECMAScript, not in Python, whose meaning vLLM's backends take).
        for (int b = 0; b < 0x7f; ++b)
          if ((b >= 0x20 || b == '\t' || b == '\n') &&
              dfa->next(st, static_cast<unsigned char>(b)) != RegexDfa::kDead)
            next.push_back(b);
        if (next.empty()) {
          done = true;
          break;
        }
        const int b = next[rng() % next.size()];
        text += static_cast<char>(b);
        st = dfa->next(st, static_cast<unsigned char>(b));
      }
      if (!dfa->accepting(st)) continue;
      ASSERT_TRUE(std::regex_match(text, oracle)) << "'" << text << "'";
      ++matched;
    }
    // Every state reachable from the start is live: a match can still follow it.
    std::vector<char> reachable(dfa->num_states(), 0);
    std::vector<int32_t> todo = {dfa->start()};
    reachable[dfa->start()] = 1;
    while (!todo.empty()) {
      const int32_t x = todo.back();
      todo.pop_back();
      for (int b = 0; b < 256; ++b) {
        const int32_t y = dfa->next(x, static_cast<unsigned char>(b));
        if (y != RegexDfa::kDead && !reachable[y]) {
          reachable[y] = 1;
          todo.push_back(y);
        }
      }
    }
    for (int32_t st = 0; st < dfa->num_states(); ++st) {
      if (!reachable[st]) continue;
      std::vector<char> seen(dfa->num_states(), 0);
      std::vector<int32_t> stack = {st};
      bool reaches = false;
      while (!stack.empty() && !reaches) {
        const int32_t x = stack.back();
        stack.pop_back();
        reaches = dfa->accepting(x);
        for (int b = 0; b < 256 && !reaches; ++b) {
          const int32_t y = dfa->next(x, static_cast<unsigned char>(b));
          if (y != RegexDfa::kDead && !seen[y]) {
            seen[y] = 1;
            stack.push_back(y);
          }
        }
      }
      EXPECT_TRUE(reaches) << "state " << st;
    }
    EXPECT_GT(matched, 0);
  }
}

TEST(RegexDfa, Utf8ClassesAndDot) {
  auto range = RegexDfa::compile("[\xc3\xa0-\xc3\xbf]+");  // U+00E0..U+00FF
  EXPECT_TRUE(dfa_matches(*range, "\xc3\xa9\xc3\xbc"));    // éü
  EXPECT_FALSE(dfa_matches(*range, "\xc3\x80"));           // À
  EXPECT_FALSE(dfa_matches(*range, "e"));
  auto dot = RegexDfa::compile("a.b");
  EXPECT_TRUE(dfa_matches(*dot,
                          "a\xe2\x82\xac"
                          "b"));  // a€b: one code point of 3 bytes
  EXPECT_TRUE(dfa_matches(*dot,
                          "a\xf0\x9f\x98\x80"
                          "b"));  // an emoji: 4 bytes
  EXPECT_FALSE(dfa_matches(*dot, "a\nb"));
  EXPECT_FALSE(dfa_matches(*dot,
                           "a\xc3"
                           "b"));  // half a character
  EXPECT_FALSE(dfa_matches(*dot,
                           "a\xed\xa0\x80"
                           "b"));  // an encoded surrogate
  auto negated = RegexDfa::compile("[^a]");
  EXPECT_TRUE(dfa_matches(*negated, "\xe4\xb8\xad"));  // 中
  EXPECT_FALSE(dfa_matches(*negated, "a"));
  auto escaped = RegexDfa::compile("\\u00e9\\x41");
  EXPECT_TRUE(dfa_matches(*escaped,
                          "\xc3\xa9"
                          "A"));
  // Boundaries of the encoded lengths.
  auto wide = RegexDfa::compile("[\\u007f-\\u0800]");
  for (const char* in : {"\x7f", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80"})
    EXPECT_TRUE(dfa_matches(*wide, in)) << in;
  EXPECT_FALSE(dfa_matches(*wide, "\xe0\xa0\x81"));  // U+0801
}

TEST(RegexDfa, UnsupportedOrBrokenPatternsAreErrors) {
  for (const char* bad : {"(?=a)b", "(a)\\1", "a\\bc", "a{2,1}", "(ab", "[ab", "*a", "a)", "a^b",
                          "\\p{L}", "[b-a]", "a{5000}"}) {
    try {
      RegexDfa::compile(bad);
      ADD_FAILURE() << "compiled " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("regex"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace tessera
