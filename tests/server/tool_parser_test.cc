// The tool call parsers against the texts their model families write and what vLLM's parsers of
// the same names return for them (tools_called, content, name, arguments as json.dumps writes
// them), and the streaming rule: how much of a partial output is content whatever comes next.
#include "server/tool_parser.h"

#include <gtest/gtest.h>

#include "core/status.h"

namespace tessera {
namespace {

std::unique_ptr<ToolParser> parser(const std::string& name) {
  return ToolParser::create(name);
}

// Texts that are not calls come back whole as content, with no calls.
void expect_content_only(const ToolParser& p, std::initializer_list<std::string> texts) {
  for (const std::string& text : texts) {
    ToolCallParse bad = p.parse(text);
    EXPECT_FALSE(bad.called) << p.name() << ": " << text;
    EXPECT_EQ(bad.content, text) << p.name();
  }
}

TEST(ToolParser, UnknownNameListsTheKnownOnes) {
  try {
    parser("pythonic_v9");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek_v3, deepseek_v31, hermes, llama3_json, "
                                         "llama4_json, llama4_pythonic, mistral, pythonic"),
              std::string::npos)
        << e.what();
  }
}

TEST(ToolParser, Hermes) {
  auto p = parser("hermes");
  EXPECT_TRUE(p->keeps_special_tokens());
  ToolCallParse none = p->parse("The weather is fine.");
  EXPECT_FALSE(none.called);
  EXPECT_EQ(none.content, "The weather is fine.");

  // Arguments keep the model's key order, with Python's separators and raw UTF-8.
  ToolCallParse one = p->parse(
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Z\xc3\xbcrich\","
      "\"days\":[1,2],\"metric\":true}}\n</tool_call>");
  ASSERT_TRUE(one.called);
  EXPECT_FALSE(one.content.has_value());
  ASSERT_EQ(one.calls.size(), 1u);
  EXPECT_EQ(one.calls[0].name, "get_weather");
  EXPECT_EQ(one.calls[0].arguments,
            "{\"city\": \"Z\xc3\xbcrich\", \"days\": [1, 2], \"metric\": true}");

  // Text before the first call is content; a last call without its closing tag still counts.
  ToolCallParse two = p->parse(
      "Checking both. <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n"
      "<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": 1.5}}");
  ASSERT_TRUE(two.called);
  EXPECT_EQ(two.content, "Checking both. ");
  ASSERT_EQ(two.calls.size(), 2u);
  EXPECT_EQ(two.calls[1].name, "b");
  EXPECT_EQ(two.calls[1].arguments, "{\"x\": 1.5}");

  // Not JSON, or no arguments: no calls, the text as it is.
  expect_content_only(*p, {"<tool_call>{\"name\": \"a\", \"arguments\": </tool_call>",
                           "<tool_call>{\"name\": \"a\"}</tool_call>"});

  // Streaming: the closed calls, up to one that does not parse.
  EXPECT_EQ(p->completed_calls("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>"
                               "<tool_call>{\"name\": \"b\"")
                .calls.size(),
            1u);
  EXPECT_TRUE(p->completed_calls("<tool_call>{\"name\": \"a\", \"argu").calls.empty());
  EXPECT_TRUE(parser("llama3_json")
                  ->completed_calls("{\"name\": \"a\", \"parameters\": {}}")
                  .calls.empty());  // whole only at the end

  EXPECT_EQ(p->settled_content("Hello"), 5u);
  EXPECT_EQ(p->settled_content("Hello <tool"), 6u);  // "<tool" may become "<tool_call>"
  EXPECT_EQ(p->settled_content("Hello <tool_call>{\"na"), 6u);
  EXPECT_EQ(p->settled_content("a < b"), 5u);
  EXPECT_EQ(p->settled_content("a <"), 2u);
}

TEST(ToolParser, Llama3Json) {
  auto p = parser("llama3_json");
  EXPECT_FALSE(p->keeps_special_tokens());
  ToolCallParse one = p->parse("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}");
  ASSERT_TRUE(one.called);
  EXPECT_FALSE(one.content.has_value());
  ASSERT_EQ(one.calls.size(), 1u);
  EXPECT_EQ(one.calls[0].arguments, "{\"city\": \"Rome\"}");

  // After <|python_tag|>, several calls separated by "; "; "arguments" works as well.
  ToolCallParse two = p->parse(
      "<|python_tag|>{\"name\": \"a\", \"arguments\": {\"s\": \"x}\"}}; "
      "{\"name\": \"b\", \"parameters\": {}}");
  ASSERT_TRUE(two.called);
  ASSERT_EQ(two.calls.size(), 2u);
  EXPECT_EQ(two.calls[0].arguments, "{\"s\": \"x}\"}");  // a brace inside a string
  EXPECT_EQ(two.calls[1].name, "b");

  expect_content_only(*p, {"Sure: {\"name\": \"a\", \"parameters\": {}}", "{not json",
                           "{\"name\": \"a\", \"parameters\": {}} and more text"});

  EXPECT_EQ(p->settled_content(""), 0u);
  EXPECT_EQ(p->settled_content("{\"na"), 0u);
  EXPECT_EQ(p->settled_content("<|py"), 0u);
  EXPECT_EQ(p->settled_content("<a"), 2u);
  EXPECT_EQ(p->settled_content("Hi there"), 8u);
}

TEST(ToolParser, Mistral) {
  auto p = parser("mistral");
  EXPECT_TRUE(p->short_call_ids());
  ToolCallParse one =
      p->parse("[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]");
  ASSERT_TRUE(one.called);
  EXPECT_FALSE(one.content.has_value());
  ASSERT_EQ(one.calls.size(), 1u);
  EXPECT_EQ(one.calls[0].arguments, "{\"city\": \"Oslo\"}");

  // Trailing text: the widest [{...}] is taken; text before the marker is content.
  ToolCallParse tail = p->parse(
      "Let me see.[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", "
      "\"arguments\": {\"n\": 2}}] done");
  ASSERT_TRUE(tail.called);
  EXPECT_EQ(tail.content, "Let me see.");
  ASSERT_EQ(tail.calls.size(), 2u);
  EXPECT_EQ(tail.calls[1].arguments, "{\"n\": 2}");

  // An object instead of a list: no calls; the content is the text without the marker.
  ToolCallParse bad = p->parse("[TOOL_CALLS] {\"name\": \"a\", \"arguments\": {}} ");
  EXPECT_FALSE(bad.called);
  EXPECT_EQ(bad.content, "{\"name\": \"a\", \"arguments\": {}}");

  // Tokenizers v11 and later: [TOOL_CALLS]name[ARGS]{...} per call.
  ToolCallParse v11 = p->parse(
      "Checking.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]get_time[ARGS]{}");
  ASSERT_TRUE(v11.called);
  EXPECT_EQ(v11.content, "Checking.");
  ASSERT_EQ(v11.calls.size(), 2u);
  EXPECT_EQ(v11.calls[0].name, "get_weather");
  EXPECT_EQ(v11.calls[0].arguments, "{\"city\": \"Oslo\"}");
  EXPECT_EQ(v11.calls[1].name, "get_time");
  EXPECT_EQ(v11.calls[1].arguments, "{}");
  EXPECT_FALSE(p->parse("[TOOL_CALLS]get_weather[ARGS]{\"city\": ").called);

  EXPECT_EQ(p->settled_content("Hi [TOOL"), 3u);
  EXPECT_EQ(p->settled_content("Hi [TOOL_CALLS][{"), 3u);
  EXPECT_EQ(p->settled_content("Hi [x]"), 6u);
}

TEST(ToolParser, Pythonic) {
  auto p = parser("pythonic");
  ToolCallParse two = p->parse(
      "[get_weather(city='San Francisco', metric=True, days=[1, 2], opts={'lang': \"en\"}), "
      "get_time(zone=None, offset=-1.5)]");
  ASSERT_TRUE(two.called);
  EXPECT_FALSE(two.content.has_value());
  ASSERT_EQ(two.calls.size(), 2u);
  EXPECT_EQ(two.calls[0].name, "get_weather");
  EXPECT_EQ(two.calls[0].arguments,
            "{\"city\": \"San Francisco\", \"metric\": true, \"days\": [1, 2], \"opts\": "
            "{\"lang\": \"en\"}}");
  EXPECT_EQ(two.calls[1].arguments, "{\"zone\": null, \"offset\": -1.5}");
  // Llama 4's wrapping, escapes, no arguments.
  ToolCallParse wrapped =
      p->parse("<|python_start|>[say(text='it\\'s \\u00e9'), ping()]<|python_end|>");
  ASSERT_TRUE(wrapped.called);
  ASSERT_EQ(wrapped.calls.size(), 2u);
  EXPECT_EQ(wrapped.calls[0].arguments, "{\"text\": \"it's \xc3\xa9\"}");
  EXPECT_EQ(wrapped.calls[1].arguments, "{}");
  // Not a list of calls: the text as it is.
  expect_content_only(*p, {"The weather is fine.", "[1, 2, 3]", "[f(x=1)] and more", "[f(1)]",
                           "[os.f(x=1)]", "[f(x=g())]", "[f(x='open)]"});
  EXPECT_EQ(p->settled_content("[get_w"), 0u);
  EXPECT_EQ(p->settled_content("<|python"), 0u);
  EXPECT_EQ(p->settled_content("Sure"), 4u);
}

TEST(ToolParser, PythonJsonDumpsMatchesPython) {
  // json.dumps({"b": [1, {"c": None}], "a": "\u00e9\n", "f": 0.5}, ensure_ascii=False)
  const auto v = nlohmann::ordered_json::parse(
      "{\"b\": [1, {\"c\": null}], \"a\": \"\xc3\xa9\\n\", \"f\": 0.5}");
  EXPECT_EQ(python_json_dumps(v),
            "{\"b\": [1, {\"c\": null}], \"a\": \"\xc3\xa9\\n\", \"f\": 0.5}");
  EXPECT_EQ(python_json_dumps(nlohmann::ordered_json::object()), "{}");
  EXPECT_EQ(python_json_dumps(nlohmann::ordered_json::array()), "[]");
}

// DeepSeek's markers, as its tokenizer spells them.
const std::string kCallsBegin = "<\uff5ctool\u2581calls\u2581begin\uff5c>";
const std::string kCallsEnd = "<\uff5ctool\u2581calls\u2581end\uff5c>";
const std::string kCallBegin = "<\uff5ctool\u2581call\u2581begin\uff5c>";
const std::string kCallEnd = "<\uff5ctool\u2581call\u2581end\uff5c>";
const std::string kSep = "<\uff5ctool\u2581sep\uff5c>";

// DeepSeek-V3's format, as its chat template writes calls back: the arguments pass through as
// written (vLLM does not re-serialise them).
TEST(ToolParser, DeepSeekV3) {
  auto p = parser("deepseek_v3");
  EXPECT_FALSE(p->keeps_special_tokens());  // the markers are added tokens, not special ones
  const auto v3_call = [](const std::string& name, const std::string& args) {
    return kCallBegin + "function" + kSep + name + "\n```json\n" + args + "\n```" + kCallEnd;
  };
  const std::string two = "Let me check. " + kCallsBegin +
                          v3_call("get_weather", R"({"city":"Paris"})") + "\n" +
                          v3_call("get_time", "{\"tz\": \"CET\",\n \"fmt\": 24}") + kCallsEnd;
  ToolCallParse r = p->parse(two);
  ASSERT_TRUE(r.called);
  EXPECT_EQ(r.content, "Let me check. ");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(r.calls[0].arguments, R"({"city":"Paris"})");
  EXPECT_EQ(r.calls[1].name, "get_time");
  EXPECT_EQ(r.calls[1].arguments, "{\"tz\": \"CET\",\n \"fmt\": 24}");  // lines kept
  ToolCallParse alone = p->parse(kCallsBegin + v3_call("f", "{}") + kCallsEnd);
  ASSERT_TRUE(alone.called);
  EXPECT_FALSE(alone.content.has_value());
  // No calls marker, or no well-formed call after it: all content.
  expect_content_only(
      *p,
      {"plain text", kCallsBegin + kCallBegin + "function" + kSep + "f{}" + kCallEnd + kCallsEnd,
       kCallsBegin + "garbage"});
  // A malformed call does not hide the well-formed one after it.
  ToolCallParse mixed = p->parse(kCallsBegin + kCallBegin + "oops" + kCallEnd + "\n" +
                                 v3_call("g", "[1]") + kCallsEnd);
  ASSERT_EQ(mixed.calls.size(), 1u);
  EXPECT_EQ(mixed.calls[0].name, "g");

  // Streaming: content up to the marker (or what may become it); calls once closed.
  EXPECT_EQ(p->settled_content("Hello <\uff5ctool"), 6u);
  EXPECT_EQ(p->settled_content(two), std::string("Let me check. ").size());
  const std::string partial = "x" + kCallsBegin + v3_call("a", "{}") + kCallBegin + "function" +
                              kSep + "b\n```json\n{\"k\":";
  ToolCallParse done = p->completed_calls(partial);
  ASSERT_EQ(done.calls.size(), 1u);
  EXPECT_EQ(done.calls[0].name, "a");
  EXPECT_EQ(p->completed_calls(two).calls.size(), 2u);
}

TEST(ToolParser, DeepSeekV31) {
  auto p = parser("deepseek_v31");
  const std::string text = "Sure." + kCallsBegin + kCallBegin + "search" + kSep +
                           R"({"q": "vllm"})" + kCallEnd + kCallBegin + "open" + kSep +
                           R"({"id": 3})" + kCallEnd + kCallsEnd;
  ToolCallParse r = p->parse(text);
  ASSERT_TRUE(r.called);
  EXPECT_EQ(r.content, "Sure.");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "search");
  EXPECT_EQ(r.calls[0].arguments, R"({"q": "vllm"})");
  EXPECT_EQ(r.calls[1].name, "open");
  EXPECT_EQ(r.calls[1].arguments, R"({"id": 3})");
  expect_content_only(*p, {"no calls", kCallsBegin + kCallBegin + "nosep" + kCallEnd});
  EXPECT_EQ(p->completed_calls(kCallsBegin + kCallBegin + "a" + kSep + "{").calls.size(), 0u);
}

// vLLM's Llama 4 names for the formats Llama 4 shares.
TEST(ToolParser, Llama4Aliases) {
  EXPECT_EQ(parser("llama4_json")->parse(R"({"name": "f", "parameters": {"a": 1}})").calls.size(),
            1u);
  ToolCallParse py = parser("llama4_pythonic")->parse("<|python_start|>[f(a=1)]<|python_end|>");
  ASSERT_EQ(py.calls.size(), 1u);
  EXPECT_EQ(py.calls[0].arguments, "{\"a\": 1}");
}

}  // namespace
}  // namespace tessera
