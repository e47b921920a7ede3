// The reasoning parsers against what vLLM's parsers of the same names return, and their
// streaming: what is settled only grows, and once the output is done it adds up to the split.
#include "server/reasoning_parser.h"

#include <gtest/gtest.h>

#include "core/status.h"

namespace tessera {
namespace {

using Split = ReasoningSplit;

void expect_split(const ReasoningParser& p, const std::string& text,
                  std::optional<std::string> reasoning, std::optional<std::string> content) {
  const Split s = p.split(text);
  EXPECT_EQ(s.reasoning, reasoning) << p.name() << ": " << text;
  EXPECT_EQ(s.content, content) << p.name() << ": " << text;
}

TEST(ReasoningParser, DeepSeekR1) {
  auto p = ReasoningParser::create("deepseek_r1");
  expect_split(*p, "<think>\nstep 1\n</think>\n\nThe answer is 4.", "\nstep 1\n",
               "\n\nThe answer is 4.");
  // The template wrote <think>: the output starts inside it.
  expect_split(*p, "step 1</think>Four.", "step 1", "Four.");
  // No end: all reasoning (cut by max_tokens, say).
  expect_split(*p, "still thinking", "still thinking", std::nullopt);
  expect_split(*p, "<think>done</think>", "done", std::nullopt);
}

// DeepSeek-V3.1: thinking is a chat_template_kwargs switch; on, the split is deepseek_r1's.
TEST(ReasoningParser, DeepSeekV3FollowsTheThinkingSwitch) {
  auto p = ReasoningParser::create("deepseek_v3");
  using ojson = nlohmann::ordered_json;
  EXPECT_FALSE(p->applies(ojson::object()));
  EXPECT_FALSE(p->applies(ojson{{"thinking", false}}));
  EXPECT_FALSE(p->applies(ojson{{"thinking", nullptr}}));
  EXPECT_FALSE(p->applies(ojson{{"thinking", 0}}));
  EXPECT_FALSE(p->applies(ojson{{"thinking", ""}}));
  EXPECT_FALSE(p->applies(ojson{{"enable_thinking", true}}));  // Qwen's name, not DeepSeek's
  EXPECT_TRUE(p->applies(ojson{{"thinking", true}}));
  EXPECT_TRUE(p->applies(ojson{{"thinking", 1}}));
  EXPECT_TRUE(p->applies(ojson{{"thinking", "yes"}}));
  expect_split(*p, "step 1</think>Four.", "step 1", "Four.");
  EXPECT_TRUE(ReasoningParser::create("deepseek_r1")->applies(ojson::object()));
}

TEST(ReasoningParser, Qwen3) {
  auto p = ReasoningParser::create("qwen3");
  expect_split(*p, "<think>\nhmm\n</think>\n\nFour.", "\nhmm\n", "\n\nFour.");
  // Thinking off (enable_thinking false): no tags, all content; one tag alone is content too.
  expect_split(*p, "Four.", std::nullopt, "Four.");
  expect_split(*p, "<think>unfinished", std::nullopt, "<think>unfinished");
  expect_split(*p, "<think></think>Four.", "", "Four.");
}

TEST(ReasoningParser, StreamingOnlyGrowsAndEndsAtTheSplit) {
  const std::pair<std::string, std::string> cases[] = {
      {"deepseek_r1", "<think>\nLet me see: 2 < 3.\n</think>\n\nYes, 2 < 3."},
      {"deepseek_r1", "plan </thi then </think>answer"},
      {"qwen3", "<think>\nA </ B\n</think>\n\nDone."},
      {"qwen3", "No thinking here, <thin or not."},
  };
  for (const auto& [name, text] : cases) {
    auto p = ReasoningParser::create(name);
    std::string reasoning, content;
    for (size_t n = 0; n <= text.size(); ++n) {
      const auto prog = p->progress(text.substr(0, n), false);
      ASSERT_EQ(prog.reasoning.compare(0, reasoning.size(), reasoning), 0) << name << " " << n;
      ASSERT_EQ(prog.content.compare(0, content.size(), content), 0) << name << " " << n;
      ASSERT_GE(prog.reasoning.size(), reasoning.size());
      ASSERT_GE(prog.content.size(), content.size());
      // (A piece of a tag sent early would break the prefix checks once the tag completes.)
      reasoning = prog.reasoning;
      content = prog.content;
    }
    const auto done = p->progress(text, true);
    const Split split = p->split(text);
    EXPECT_EQ(done.reasoning, split.reasoning.value_or("")) << name << ": " << text;
    EXPECT_EQ(done.content, split.content.value_or("")) << name << ": " << text;
  }
}

TEST(ReasoningParser, UnknownNameListsTheKnownOnes) {
  try {
    ReasoningParser::create("granite9");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek_r1, deepseek_v3, qwen3"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tessera
