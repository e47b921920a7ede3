// Chat templates: content-format detection (vLLM's rules), conversation preparation, the
// special tokens, template selection (transformers' rules), the template context and the error
// paths. The real templates are compared with Python Jinja2 in chat_template_oracle_test.cc.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <fstream>

#include "core/status.h"

namespace tessera::tokenizer {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

ContentFormat format(const std::string& src) {
  return detect_content_format(src);
}

TEST(ContentFormat, LoopOverMessageContentIsOpenAI) {
  EXPECT_EQ(format("{% for m in messages %}{{ m.content }}{% endfor %}"), ContentFormat::kString);
  EXPECT_EQ(format("{% for m in messages %}{% for p in m['content'] %}{{ p.text }}{% endfor %}"
                   "{% endfor %}"),
            ContentFormat::kOpenAI);
  EXPECT_EQ(format("{%- for m in messages -%}{%- for p in m.content -%}{%- endfor -%}"
                   "{%- endfor -%}"),
            ContentFormat::kOpenAI);
  // Through assigned variables, slices, filters, tests and parentheses.
  EXPECT_EQ(format("{% set loop_messages = messages[1:] %}{% set ms = loop_messages|list %}"
                   "{% for message in ms if message.role != 'x' %}"
                   "{% for item in (message['content'] | selectattr('type', 'equalto', 'text')) %}"
                   "{% endfor %}{% endfor %}"),
            ContentFormat::kOpenAI);
  EXPECT_EQ(format("{% for m in messages[::-1] %}{% for p in m.content[1:] %}{% endfor %}"
                   "{% endfor %}"),
            ContentFormat::kOpenAI);
}

TEST(ContentFormat, LoopOverAVariableNamedContentIsOpenAI) {
  // Newer vLLM: templates that hand the content to a macro loop over `content`.
  EXPECT_EQ(format("{% macro render(content) %}{% for item in content %}{{ item.text }}"
                   "{% endfor %}{% endmacro %}{% for m in messages %}{{ render(m.content) }}"
                   "{% endfor %}"),
            ContentFormat::kOpenAI);
  EXPECT_EQ(format("{% for item in content | list %}{% endfor %}"), ContentFormat::kString);
}

TEST(ContentFormat, WhatVllmDoesNotCountStaysString) {
  // A loop over some other object's content.
  EXPECT_EQ(format("{% for m in messages %}{% endfor %}{% for p in other.content %}{% endfor %}"),
            ContentFormat::kString);
  // A conditional breaks the chain of assignments (vLLM looks for plain accesses only).
  EXPECT_EQ(format("{% set ms = messages if true else [] %}{% for m in ms %}"
                   "{% for p in m.content %}{% endfor %}{% endfor %}"),
            ContentFormat::kString);
  // Arithmetic on the iterable, a method call, a negated test.
  EXPECT_EQ(format("{% for m in messages + [] %}{% for p in m.content %}{% endfor %}{% endfor %}"),
            ContentFormat::kString);
  EXPECT_EQ(format("{% for m in messages %}{% for p in m.content.split() %}{% endfor %}"
                   "{% endfor %}"),
            ContentFormat::kString);
  // A tuple target where vLLM asserts a name: its default.
  EXPECT_EQ(format("{% for m in messages %}{% for a, b in m.content %}{% endfor %}{% endfor %}"),
            ContentFormat::kString);
  // Statements inside comments, strings, expressions and raw blocks are not statements.
  EXPECT_EQ(format("{# {% for p in message.content %} #}{% for message in messages %}"
                   "{{ '{% for p in message.content %}' }}{% endfor %}"
                   "{% raw %}{% for p in message.content %}{% endraw %}"),
            ContentFormat::kString);
}

TEST(ContentFormat, SurvivesAnyInput) {
  // Templates may come from requests: deep nesting and unterminated tags must not hurt.
  const std::string deep = std::string(200000, '(') + "messages" + std::string(200000, ')');
  EXPECT_EQ(format("{% for m in " + deep + " %}{% for p in m.content %}"), ContentFormat::kString);
  for (const char* src : {"{%", "{% for", "{% for m in messages %}{% for p in m.content", "{{ '",
                          "{% set = %}", "{% for in %}", "{% raw %}", "{#", "{% 'unterminated %}",
                          "{% for m in messages[ %}{% for p in m.content %}{% endfor %}"})
    EXPECT_EQ(format(src), ContentFormat::kString) << src;
}

TEST(PrepareMessages, StringFormatJoinsTextPartsWithNewlines) {
  const Json in = Json::parse(R"([
    {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""},
                                   "b", {"type": "input_text", "text": "c"}, {"type": "text"}]},
    {"role": "user", "content": null, "name": "ada", "extra": 1},
    {"role": "assistant"},
    {"role": "tool", "content": "r", "tool_call_id": "t1"}])");
  const Json out = prepare_messages(in, ContentFormat::kString);
  EXPECT_EQ(out[0], Json::parse(R"({"role": "system", "content": "a\nb\nc"})"));
  EXPECT_EQ(out[1], Json::parse(R"({"role": "user", "content": "", "name": "ada"})"));
  EXPECT_EQ(out[2], Json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_EQ(out[3], Json::parse(R"({"role": "tool", "content": "r", "tool_call_id": "t1"})"));
}

TEST(PrepareMessages, OpenAIFormatKeepsAListOfTextParts) {
  const Json in = Json::parse(R"([
    {"role": "user", "content": "hi"},
    {"role": "user", "content": [{"type": "text", "text": "x", "cache": 1}, "", "y",
                                 {"type": "text"}]},
    {"role": "user"},
    {"role": "tool", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}]},
    {"role": "tool", "content": "r"}])");
  const Json out = prepare_messages(in, ContentFormat::kOpenAI);
  EXPECT_EQ(out[0]["content"], Json::parse(R"([{"type": "text", "text": "hi"}])"));
  EXPECT_EQ(out[1]["content"], Json::parse(R"([{"type": "text", "text": "x"},
      {"type": "text", "text": ""}, {"type": "text", "text": "y"}])"));
  EXPECT_EQ(out[2]["content"], Json::array());
  // Tool results made of text parts become one string.
  EXPECT_EQ(out[3]["content"], "a\n");
  EXPECT_EQ(out[4]["content"], "r");
}

TEST(PrepareMessages, ToolCallsAndReasoning) {
  const Json in = Json::parse(R"([{"role": "assistant", "content": null, "reasoning": "why",
    "tool_calls": [
    {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": [2]}"}},
    {"id": "2", "type": "function", "function": {"name": "g", "arguments": ""}},
    {"id": "3", "type": "function", "function": {"name": "h", "arguments": {"k": "v"}}},
    {"id": "4", "type": "function", "function": {"name": "i"}},
    {"id": "5", "type": "function", "function": {"name": "j", "arguments": "{oops"}}]},
    {"role": "assistant", "content": "x", "tool_calls": [], "reasoning_content": "old name"}])");
  const Json out = prepare_messages(in, ContentFormat::kString);
  const Json& calls = out[0]["tool_calls"];
  EXPECT_EQ(calls[0]["function"]["arguments"].dump(), R"({"b":1,"a":[2]})");
  EXPECT_EQ(calls[1]["function"]["arguments"], Json::object());
  EXPECT_EQ(calls[2]["function"]["arguments"], Json::parse(R"({"k": "v"})"));
  EXPECT_EQ(calls[3]["function"]["arguments"], Json::object());
  EXPECT_EQ(calls[4]["function"]["arguments"], Json::object());  // not JSON: {} as in vLLM
  EXPECT_EQ(calls[0]["id"], "1");
  EXPECT_EQ(out[0]["reasoning"], "why");
  EXPECT_EQ(out[0]["reasoning_content"], "why");
  EXPECT_FALSE(out[1].contains("tool_calls"));  // an empty list is dropped
  EXPECT_EQ(out[1]["reasoning_content"], "old name");
}

TEST(PrepareMessages, BadInputIsAClearError) {
  auto prep = [](const char* text) {
    return error_of([&] { prepare_messages(Json::parse(text), ContentFormat::kString); });
  };
  EXPECT_NE(
      prep(R"([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}])")
          .find("messages[0].content[0]: content parts of type 'image_url' are not "
                "supported: this model takes text only"),
      std::string::npos);
  EXPECT_NE(prep(R"([{"role": "user", "content": [{"type": "weird"}]}])")
                .find("unsupported content part type 'weird'"),
            std::string::npos);
  EXPECT_NE(prep(R"([{"role": "user", "content": [{"text": "no type"}]}])").find("no 'type'"),
            std::string::npos);
  EXPECT_NE(prep(R"([{"content": "x"}])").find("messages[0] needs a string 'role'"),
            std::string::npos);
  EXPECT_NE(prep(R"([{"role": "user", "content": 5}])").find("messages[0].content"),
            std::string::npos);
  EXPECT_NE(prep(R"([{"role": "assistant", "tool_calls": [{"id": "x"}]}])").find("'function'"),
            std::string::npos);
  EXPECT_NE(prep(R"({"role": "user"})").find("must be a list"), std::string::npos);
}

TEST(PrepareTools, DumpedAsVllmsRequestModel) {
  const Json out = prepare_tools(Json::parse(
      R"([{"function": {"strict": true, "name": "f"}, "x": 1},
          {"type": "function", "function": {"name": "g", "parameters": {"type": "object"},
                                            "description": "d"}}])"));
  EXPECT_EQ(out[0].dump(),
            R"({"type":"function","function":{"name":"f","description":null,"parameters":null,)"
            R"("strict":true},"x":1})");
  EXPECT_EQ(out[1].dump(), R"({"type":"function","function":{"name":"g","description":"d",)"
                           R"("parameters":{"type":"object"}}})");
  EXPECT_TRUE(prepare_tools(nullptr).is_null());
  EXPECT_NE(
      error_of([] { prepare_tools(Json::parse(R"([{"type": "code"}])")); }).find("tools[0].type"),
      std::string::npos);
  EXPECT_NE(error_of([] { prepare_tools(Json::parse(R"([{"function": {}}])")); }).find("'name'"),
            std::string::npos);
}

TEST(SpecialTokens, AsTransformersMapsThem) {
  const nlohmann::json config = nlohmann::json::parse(R"({
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
    "eos_token": "</s>", "unk_token": null, "pad_token": "", "mask_token": "<mask>",
    "additional_special_tokens": ["<a>", {"content": "<b>"}],
    "extra_special_tokens": {"image_token": "<img>"}})");
  const Json m = special_tokens_map(config, nlohmann::json::parse(R"({"mask_token": "<M>"})"));
  EXPECT_EQ(m.dump(), R"({"bos_token":"<s>","eos_token":"</s>","mask_token":"<M>",)"
                      R"("additional_special_tokens":["<a>","<b>"],"image_token":"<img>"})");
  EXPECT_EQ(special_tokens_map(nullptr), Json::object());
}

const Json kUser = Json::parse(R"([{"role": "user", "content": "hi"}])");

ChatInputs user_inputs(bool gen = true) {
  ChatInputs in;
  in.messages = kUser;
  in.add_generation_prompt = gen;
  return in;
}

TEST(ChatTemplate, ContextHasTransformersVariables) {
  ChatTemplate t(
      "{{ bos_token }}|{{ tools is defined }}|{{ tools is none }}|{{ documents is none }}|"
      "{{ add_generation_prompt }}|{{ enable_thinking }}|{{ messages[0].content }}|{{ eos_token }}",
      Json::parse(R"({"bos_token": "<s>", "eos_token": "</s>"})"));
  ChatInputs in = user_inputs();
  in.kwargs = Json::parse(R"({"enable_thinking": false, "eos_token": "<E>"})");
  EXPECT_EQ(t.render(in), "<s>|True|True|True|True|False|hi|<E>");
  // chat_template_kwargs may set apply_chat_template's own arguments.
  in.kwargs = Json::parse(R"({"add_generation_prompt": false, "enable_thinking": 1})");
  EXPECT_EQ(t.render(in), "<s>|True|True|True|False|1|hi|</s>");
  in.kwargs = Json::parse(R"({"tokenize": true})");
  EXPECT_NE(error_of([&] { t.render(in); }).find("may not set 'tokenize'"), std::string::npos);
}

TEST(ChatTemplate, ToolsReachTheTemplateAsVllmDumpsThem) {
  ChatTemplate t("{% for t in tools %}{{ t | tojson }}{% endfor %}", Json::object());
  ChatInputs in = user_inputs();
  in.tools = Json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(t.render(in), R"({"type": "function", "function": {"name": "f", "description": null, )"
                          R"("parameters": null}})");
}

TEST(ChatTemplate, ContinueFinalMessageCutsAfterTheLastMessage) {
  const Json msgs = Json::parse(
      R"([{"role": "user", "content": "Write"}, {"role": "assistant", "content": "Once upon "}])");
  ChatInputs in;
  in.messages = msgs;
  in.continue_final_message = true;
  // A template that keeps the text as is: cut exactly there, the trailing space kept.
  ChatTemplate keep("{% for m in messages %}[{{ m.content }}]{% endfor %}", Json::object());
  EXPECT_EQ(keep.render(in), "[Write][Once upon ");
  // A template that trims: cut and strip.
  ChatTemplate trim("{% for m in messages %}<{{ m.content | trim }}>{% endfor %}", Json::object());
  EXPECT_EQ(trim.render(in), "<Write><Once upon");
  // List content (openai format): the last text part is continued.
  ChatTemplate parts(
      "{% for m in messages %}{% for p in m.content %}({{ p.text }}){% endfor %}"
      "{% endfor %}",
      Json::object());
  EXPECT_EQ(parts.render(in), "(Write)(Once upon ");
  // A template that drops the message's text cannot be continued.
  ChatTemplate drop("{% for m in messages %}{{ m.role }}{% endfor %}", Json::object());
  EXPECT_NE(error_of([&] { drop.render(in); }).find("does not appear"), std::string::npos);
  in.add_generation_prompt = true;
  EXPECT_NE(error_of([&] { keep.render(in); }).find("not compatible"), std::string::npos);
}

TEST(ChatTemplate, TemplateErrorsKeepTheirMessage) {
  ChatTemplate t(
      "{% if messages[0].role != 'system' %}{{ raise_exception('System message first, please') }}"
      "{% endif %}",
      Json::object());
  EXPECT_EQ(error_of([&] { t.render(user_inputs()); }), "System message first, please");
  EXPECT_NE(error_of([] { ChatTemplate("{% for x in %}", Json::object()); }), "");
}

fs::path temp_model_dir(const std::string& name) {
  const fs::path dir =
      fs::path(::testing::TempDir()) / ("tessera_chat_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

TEST(ChatTemplates, SelectsAsTransformersDoes) {
  const Json named = Json::parse(R"([{"name": "default", "template": "D"},
                                     {"name": "tool_use", "template": "T"},
                                     {"name": "rag", "template": "R"}])");
  ChatTemplates t(named, Json::object());
  EXPECT_EQ(t.render(user_inputs()), "D");
  ChatInputs with_tools = user_inputs();
  with_tools.tools = Json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(t.render(with_tools), "T");
  EXPECT_EQ(t.render(user_inputs(), "rag"), "R");                        // a name
  EXPECT_EQ(t.render(user_inputs(), "inline {{ 1 + 1 }}"), "inline 2");  // Jinja
  ChatInputs via_kwargs = user_inputs();
  via_kwargs.kwargs = Json::parse(R"({"chat_template": "K"})");
  EXPECT_EQ(t.render(via_kwargs), "K");

  ChatTemplates no_default(Json::parse(R"([{"name": "a", "template": "A"},
                                           {"name": "b", "template": "B"}])"),
                           Json::object());
  EXPECT_NE(error_of([&] { no_default.render(user_inputs()); }).find("(a, b)"), std::string::npos);
  ChatTemplates single(Json("S {{ messages | length }}"), Json::object());
  EXPECT_EQ(single.render(with_tools), "S 1");
  EXPECT_EQ(single.render(user_inputs(), "rag"), "rag");  // no names: the text is the template
  ChatTemplates none(nullptr, Json::object());
  EXPECT_NE(error_of([&] { none.render(user_inputs()); }).find("--chat-template"),
            std::string::npos);
  EXPECT_NE(error_of([] { ChatTemplates(Json::parse(R"([{"name": "x"}])"), Json::object()); }), "");
  EXPECT_NE(error_of([] { ChatTemplates(Json("{% if %}"), Json::object()); }).find("default"),
            std::string::npos);
}

TEST(ChatTemplates, LoadsTheFolderLayouts) {
  const fs::path dir = temp_model_dir("layouts");
  write(dir / "tokenizer_config.json",
        R"({"bos_token": "<B>", "chat_template": "config {{ bos_token }}"})");
  EXPECT_EQ(ChatTemplates::load(dir, "").render(user_inputs()), "config <B>");
  // chat_template.jinja (the newer layout) wins over the config's entry.
  write(dir / "chat_template.jinja", "file {{ bos_token }}");
  EXPECT_EQ(ChatTemplates::load(dir, "").render(user_inputs()), "file <B>");
  write(dir / "additional_chat_templates/tool_use.jinja", "tools");
  ChatInputs with_tools = user_inputs();
  with_tools.tools = Json::array();
  const ChatTemplates both = ChatTemplates::load(dir, "");
  EXPECT_EQ(both.render(user_inputs()), "file <B>");
  EXPECT_EQ(both.render(with_tools), "tools");
  // --chat-template: a file, or inline Jinja; it wins over the folder's templates.
  write(dir / "override.jinja", "override {{ messages[0].content }}");
  EXPECT_EQ(ChatTemplates::load(dir, (dir / "override.jinja").string()).render(with_tools),
            "override hi");
  EXPECT_EQ(ChatTemplates::load(dir, "inline {{ 'x' }}").render(user_inputs()), "inline x");
  EXPECT_NE(error_of([&] {
              ChatTemplates::load(dir, "/no/such/template.jinja");
            }).find("looks like a file path"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ChatTemplates::load(dir, "{% for %}"); }).find("--chat-template"),
            std::string::npos);
  write(dir / "tokenizer_config.json", "{broken");
  EXPECT_NE(error_of([&] { ChatTemplates::load(dir, ""); }).find("not valid JSON"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::tokenizer
