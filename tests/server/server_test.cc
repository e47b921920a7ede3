// The HTTP server in-process on a tiny model, through a real HTTP client: the endpoints, bad
// input, batch invariance under concurrency, preemption and prefix caching, disconnects.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <fstream>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "model/model_test_util.h"
#include "server/loaded_model.h"
#include "server/openai_server.h"
#include "server/sse.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

namespace tessera {
namespace {

using nlohmann::json;

// Bytes as token ids (byte + 3; ids 0-2 are specials): enough text handling to test the HTTP
// layer without a real tokenizer.
class ByteTextProcessor : public TextProcessor {
 public:
  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    std::vector<int32_t> ids;
    if (add_special) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(c + 3);
    return ids;
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string s;
    for (int32_t id : ids) s += piece(id);
    return s;
  }
  std::string render_chat(const ChatRenderInputs& in) const override {
    std::string s;
    for (const auto& m : in.messages) {
      if (m["role"] == "bad") throw Error("roles must alternate user/assistant");
      s += m["role"].get<std::string>() + ": " + m.value("content", "") + "\n";
    }
    if (in.add_generation_prompt) s += "assistant:";
    return s;
  }
  TextDecoderFactory decoder_factory() const override {
    return [](bool) {
      struct D : TextDecoder {
        std::string step(int32_t t) override { return piece(t); }
        std::string finish() override { return ""; }
      };
      return std::make_unique<D>();
    };
  }
  std::optional<int32_t> eos_token_id() const override { return 2; }
  std::shared_ptr<const TokenVocabulary> token_vocabulary(
      const std::vector<int32_t>& eos_ids) const override {
    std::vector<std::string> texts;
    for (int32_t id = 0; id < 259; ++id) texts.push_back(piece(id));
    return std::make_shared<const TokenVocabulary>(std::move(texts), eos_ids);
  }
  // Printable ASCII for every id so that text is never empty or invalid UTF-8.
  static std::string piece(int32_t id) {
    if (id < 3) return "";
    return std::string(1, static_cast<char>('!' + (id - 3) % 90));
  }
};

// The model folder's own tokenizer and chat template (or `chat_template`, as --chat-template)
// instead of the byte fake.
struct RealText {
  std::string chat_template;
  bool trust_request_chat_template = true;  // --trust-request-chat-template
};

struct ServerFixture {
  ServerFixture(int64_t blocks, const std::string& api_key = "", int64_t max_num_seqs = 256,
                int http_threads = 128, std::optional<RealText> real_text = std::nullopt,
                CorsPolicy cors = {}, int64_t max_logprobs = 20,
                const std::function<void(ServerOptions&)>& configure = nullptr) {
    static std::filesystem::path dir = testing::make_tiny("llama", DType::kF32, 11);
    EngineArgs args;
    args.model = dir;
    args.threads = 2;
    args.num_gpu_blocks_override = blocks;
    args.max_model_len = 256;
    args.max_num_seqs = max_num_seqs;
    args.kv_cache_dtype = DType::kF32;
    args.max_logprobs = max_logprobs;
    model = real_text ? LoadedModel::load(args, "tiny", real_text->chat_template)
                      : LoadedModel::load(args, "tiny", "", std::make_unique<ByteTextProcessor>());
    ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.served_model_names = {"tiny"};
    so.api_key = api_key;
    so.model_path = dir.string();
    so.http_threads = http_threads;
    so.trust_request_chat_template = real_text && real_text->trust_request_chat_template;
    so.cors = std::move(cors);
    if (configure) configure(so);
    server = std::make_unique<OpenAIServer>(so);
    server->start();
    server->set_ready(model->serving());
  }
  // --enable-auto-tool-choice --tool-call-parser NAME (empty: off again).
  void set_tool_parser(const std::string& name) {
    tool_parser = name.empty() ? nullptr : ToolParser::create(name);
    publish_parsers();
  }
  // --reasoning-parser NAME (empty: off again).
  void set_reasoning_parser(const std::string& name) {
    reasoning_parser = name.empty() ? nullptr : ReasoningParser::create(name);
    publish_parsers();
  }
  void publish_parsers() {
    ServingModel serving = model->serving();
    serving.tool_parser = tool_parser.get();
    serving.reasoning_parser = reasoning_parser.get();
    server->set_ready(serving);
  }
  ~ServerFixture() {
    server->stop();
    server.reset();
    model.reset();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(300, 0);
    return c;
  }
  std::pair<int, json> post(const std::string& path, const std::string& body,
                            const httplib::Headers& headers = {}) const {
    auto res = client().Post(path, headers, body, "application/json");
    if (!res) return {0, json{{"client_error", httplib::to_string(res.error())}}};
    json j = res->body.empty() ? json() : json::parse(res->body, nullptr, false);
    return {res->status, j};
  }
  std::string metrics() const { return client().Get("/metrics")->body; }
  double metric(const std::string& name) const {
    std::smatch m;
    const std::string text = metrics();
    std::regex re("\n" + std::regex_replace(name, std::regex(":"), ":") +
                  "\\{[^}]*\\} ([0-9.e+-]+)");
    if (!std::regex_search(text, m, re)) return -1;
    return std::stod(m[1]);
  }

  std::unique_ptr<LoadedModel> model;
  std::unique_ptr<OpenAIServer> server;
  std::unique_ptr<ToolParser> tool_parser;
  std::unique_ptr<ReasoningParser> reasoning_parser;
};

std::vector<int32_t> prompt_ids(int n, uint64_t seed) {
  return testing::test_ids(n, 4096, seed);
}

TEST(ServerTest, HealthModelsVersionAndUnknownRoutes) {
  ServerFixture f(256);
  auto c = f.client();
  EXPECT_EQ(c.Get("/health")->status, 200);
  auto models = json::parse(c.Get("/v1/models")->body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["max_model_len"], 256);
  EXPECT_TRUE(json::parse(c.Get("/version")->body).contains("version"));
  auto missing = c.Get("/v1/nothing");
  EXPECT_EQ(missing->status, 404);
  EXPECT_TRUE(json::parse(missing->body)["error"].contains("message"));
  // A known path with the wrong method: 405 and the methods it takes.
  auto wrong_method = c.Get("/v1/chat/completions");
  EXPECT_EQ(wrong_method->status, 405);
  EXPECT_EQ(wrong_method->get_header_value("Allow"), "POST");
  EXPECT_EQ(json::parse(wrong_method->body)["error"]["code"], 405);
  auto delete_models = c.Delete("/v1/models");
  EXPECT_EQ(delete_models->status, 405);
  EXPECT_EQ(delete_models->get_header_value("Allow"), "GET, HEAD");
  EXPECT_EQ(c.Post("/ping", "", "application/json")->status, 200);
  EXPECT_EQ(c.Head("/health")->status, 200);
}

TEST(ServerTest, CompletionAndChatShapes) {
  ServerFixture f(256);
  auto [status, j] = f.post("/v1/completions",
                            R"({"model":"tiny","prompt":"hello","max_tokens":5,"temperature":0,
                                "n":2,"logprobs":2,"echo":true})");
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["object"], "text_completion");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], j["choices"][1]["text"]);                  // greedy: identical
  EXPECT_EQ(j["choices"][0]["text"].get<std::string>().substr(0, 5), "hello");  // echo
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 6);  // BOS + 5 bytes
  EXPECT_EQ(j["usage"]["completion_tokens"], 10);
  EXPECT_TRUE(j["usage"]["prompt_tokens_details"].contains("cached_tokens"));
  // echo + logprobs: the prompt positions come first, the first without a logprob.
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"].size(), 11u);
  EXPECT_TRUE(j["choices"][0]["logprobs"]["token_logprobs"][0].is_null());

  auto [cs, chat] = f.post("/v1/chat/completions",
                           R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,
                               "logprobs":true,"top_logprobs":3,"seed":5})");
  ASSERT_EQ(cs, 200) << chat.dump();
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"].get<std::string>().size(), 4u);
  EXPECT_EQ(chat["choices"][0]["logprobs"]["content"].size(), 4u);
  EXPECT_EQ(chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 3u);
  // Same seed, same output.
  auto [cs2, chat2] = f.post("/v1/chat/completions",
                             R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,
                                 "logprobs":true,"top_logprobs":3,"seed":5})");
  EXPECT_EQ(chat2["choices"][0]["message"]["content"], chat["choices"][0]["message"]["content"]);
}

// max_tokens as vLLM's get_max_tokens decides it: generation_config's max_new_tokens for a chat
// request that names none (completions keep OpenAI's 16), and the override's cap on all.
TEST(ServerTest, GenerationConfigMaxNewTokensSetsChatDefaultsAndTheCapLimitsAll) {
  ServerFixture f(256);
  ServingModel serving = f.model->serving();
  serving.default_max_tokens = 7;
  f.server->set_ready(serving);
  const auto completion_tokens = [&](const std::string& path, const std::string& body) {
    auto [status, j] = f.post(path, body);
    EXPECT_EQ(status, 200) << j.dump();
    return j["usage"]["completion_tokens"].get<int>();
  };
  const std::string chat = R"({"messages":[{"role":"user","content":"hi"}],"ignore_eos":true)";
  const std::string prompt = R"({"prompt":"hi","ignore_eos":true)";
  EXPECT_EQ(completion_tokens("/v1/chat/completions", chat + "}"), 7);
  EXPECT_EQ(completion_tokens("/v1/chat/completions", chat + R"(,"max_tokens":9})"), 9);
  EXPECT_EQ(completion_tokens("/v1/completions", prompt + "}"), 16);
  serving.max_tokens_cap = 5;
  f.server->set_ready(serving);
  EXPECT_EQ(completion_tokens("/v1/chat/completions", chat + R"(,"max_tokens":9})"), 5);
  EXPECT_EQ(completion_tokens("/v1/completions", prompt + "}"), 5);
}

TEST(ServerTest, StopStringsAndStopTokens) {
  ServerFixture f(256);
  auto [s0, free_run] =
      f.post("/v1/completions", R"({"prompt":"abc","max_tokens":12,"temperature":0})");
  ASSERT_EQ(s0, 200);
  const std::string text = free_run["choices"][0]["text"];
  ASSERT_EQ(text.size(), 12u);
  const std::string stop = text.substr(5, 2);
  json body = {{"prompt", "abc"}, {"max_tokens", 12}, {"temperature", 0}, {"stop", {stop}}};
  auto [s1, stopped] = f.post("/v1/completions", body.dump());
  ASSERT_EQ(s1, 200);
  EXPECT_EQ(stopped["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(stopped["choices"][0]["stop_reason"], stop);
}

// truncate_prompt_tokens keeps the last k prompt tokens: the request then answers exactly as
// the shortened prompt does.
TEST(ServerTest, TruncatePromptTokensKeepsTheLastTokens) {
  ServerFixture f(256);
  auto [s1, cut] = f.post("/v1/completions",
                          R"({"prompt":[10,11,12,13,14],"max_tokens":6,"temperature":0,
                              "truncate_prompt_tokens":2,"logprobs":1})");
  ASSERT_EQ(s1, 200) << cut.dump();
  auto [s2, shortp] = f.post("/v1/completions",
                             R"({"prompt":[13,14],"max_tokens":6,"temperature":0,"logprobs":1})");
  ASSERT_EQ(s2, 200) << shortp.dump();
  EXPECT_EQ(cut["usage"]["prompt_tokens"], 2);
  EXPECT_EQ(cut["choices"][0]["text"], shortp["choices"][0]["text"]);
  EXPECT_EQ(cut["choices"][0]["logprobs"]["token_logprobs"],
            shortp["choices"][0]["logprobs"]["token_logprobs"]);
  // Longer than the prompt: nothing is cut. Zero or below -1: 400.
  auto [s3, whole] = f.post("/v1/completions",
                            R"({"prompt":[10,11,12],"max_tokens":2,"truncate_prompt_tokens":50})");
  ASSERT_EQ(s3, 200);
  EXPECT_EQ(whole["usage"]["prompt_tokens"], 3);
  for (const char* bad : {"0", "-2", "\"x\""}) {
    auto [s4, err] = f.post(
        "/v1/completions", std::string(R"({"prompt":[1,2],"truncate_prompt_tokens":)") + bad + "}");
    EXPECT_EQ(s4, 400) << bad;
    EXPECT_EQ(err["error"]["param"], "truncate_prompt_tokens") << err.dump();
  }
}

TEST(ServerTest, StreamingWithUsage) {
  ServerFixture f(256);
  auto c = f.client();
  std::string body;
  auto res = c.Post("/v1/chat/completions",
                    R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":6,
                        "temperature":0,"stream":true,"stream_options":{"include_usage":true}})",
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  std::vector<json> events;
  std::string content;
  size_t pos = 0;
  bool done = false;
  while ((pos = res->body.find("data: ", pos)) != std::string::npos) {
    const size_t end = res->body.find("\n\n", pos);
    const std::string data = res->body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    events.push_back(json::parse(data));
  }
  ASSERT_TRUE(done);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["choices"][0]["delta"]["role"], "assistant");
  for (const json& e : events)
    if (!e["choices"].empty() && e["choices"][0]["delta"].contains("content"))
      content += e["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_EQ(content.size(), 6u);
  EXPECT_TRUE(events.back()["choices"].empty());
  EXPECT_EQ(events.back()["usage"]["completion_tokens"], 6);
}

// The events of an SSE body, [DONE] left out (and required).
std::vector<json> sse_events(const std::string& body) {
  std::vector<json> events;
  bool done = false;
  for (size_t pos = 0; (pos = body.find("data: ", pos)) != std::string::npos;) {
    const size_t end = body.find("\n\n", pos);
    const std::string data = body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") {
      done = true;
    } else {
      events.push_back(json::parse(data));
    }
  }
  EXPECT_TRUE(done);
  return events;
}

// --enable-force-include-usage, --return-tokens-as-token-ids and --response-role.
TEST(ServerTest, ServerWideResponseFlags) {
  ServerFixture f(256);
  ServingModel serving = f.model->serving();
  serving.force_include_usage = true;
  serving.return_tokens_as_token_ids = true;
  serving.response_role = "bot";
  f.server->set_ready(serving);
  // Usage on every chunk and in a last chunk, though the request asks for none.
  auto res = f.client().Post("/v1/completions",
                             R"({"prompt":"hi","max_tokens":3,"stream":true,"logprobs":1})",
                             "application/json");
  ASSERT_TRUE(res);
  const std::vector<json> events = sse_events(res->body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_TRUE(events.back()["choices"].empty());
  EXPECT_EQ(events.back()["usage"]["completion_tokens"], 3);
  EXPECT_TRUE(events.front().contains("usage")) << events.front().dump();
  // Token names in logprobs.
  const std::string token = events.front()["choices"][0]["logprobs"]["tokens"][0];
  EXPECT_EQ(token.rfind("token_id:", 0), 0u) << token;
  // The answer's role; a continued message keeps its own.
  auto [s1, chat] = f.post("/v1/chat/completions",
                           R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})");
  ASSERT_EQ(s1, 200) << chat.dump();
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "bot");
  // Under fcfs (the default) a priority is refused, as vLLM does.
  auto [sp, prio] = f.post("/v1/completions", R"({"prompt":"hi","max_tokens":1,"priority":1})");
  EXPECT_EQ(sp, 400);
  EXPECT_EQ(prio["error"]["param"], "priority") << prio.dump();
  EXPECT_EQ(f.post("/v1/completions", R"({"prompt":"hi","max_tokens":1,"priority":0})").first, 200);
  auto [s2, cont] = f.post("/v1/chat/completions",
                           R"({"messages":[{"role":"user","content":"hi"},
                                           {"role":"assistant","content":"Sure"}],
                               "continue_final_message":true,"max_tokens":2})");
  ASSERT_EQ(s2, 200) << cont.dump();
  EXPECT_EQ(cont["choices"][0]["message"]["role"], "assistant");
}

// --max-logprobs: the limit on logprobs, top_logprobs and prompt_logprobs; -1 lifts it to the
// vocabulary.
TEST(ServerTest, MaxLogprobsLimitsEveryLogprobsField) {
  ServerFixture f(256);
  auto over_default = f.post("/v1/completions", R"({"prompt":"hi","max_tokens":1,"logprobs":21})");
  EXPECT_EQ(over_default.first, 400);
  ServingModel serving = f.model->serving();
  serving.max_logprobs = 2;
  f.server->set_ready(serving);
  struct Case {
    const char* path;
    const char* body;
    const char* param;
  };
  for (const Case& c : {
           Case{"/v1/completions", R"({"prompt":"hi","max_tokens":1,"logprobs":3})", "logprobs"},
           Case{"/v1/completions", R"({"prompt":"hi","max_tokens":1,"prompt_logprobs":3})",
                "prompt_logprobs"},
           Case{"/v1/chat/completions",
                R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":1,
                    "logprobs":true,"top_logprobs":3})",
                "top_logprobs"},
       }) {
    auto [status, body] = f.post(c.path, c.body);
    EXPECT_EQ(status, 400) << c.body;
    EXPECT_EQ(body["error"]["param"], c.param) << body.dump();
    EXPECT_NE(body["error"]["message"].get<std::string>().find("[0, 2]"), std::string::npos)
        << body.dump();
  }
  // (Greedy: a sampled token outside the top 2 would be listed as a third.)
  auto [ok, two] =
      f.post("/v1/completions", R"({"prompt":"hi","max_tokens":1,"logprobs":2,"temperature":0})");
  ASSERT_EQ(ok, 200) << two.dump();
  EXPECT_EQ(two["choices"][0]["logprobs"]["top_logprobs"][0].size(), 2u);
  ServerFixture unlimited(256, "", 256, 128, std::nullopt, {}, /*max_logprobs=*/-1);
  EXPECT_EQ(unlimited.model->serving().max_logprobs, unlimited.model->serving().vocab_size);
  auto [wide, many] = unlimited.post("/v1/completions",
                                     R"({"prompt":"hi","max_tokens":1,"logprobs":40,"temperature":0,
                                 "return_tokens_as_token_ids":true})");  // keys unique
  ASSERT_EQ(wide, 200) << many.dump();
  EXPECT_EQ(many["choices"][0]["logprobs"]["top_logprobs"][0].size(), 40u);
  EXPECT_EQ(unlimited.post("/v1/completions", R"({"prompt":"hi","max_tokens":1,"logprobs":100000})")
                .first,
            400);  // beyond the vocabulary
}

TEST(ServerTest, BadInputGetsOpenAIErrorsAndServerKeepsServing) {
  ServerFixture f(256, "secret");
  const httplib::Headers auth = {{"Authorization", "Bearer secret"}};
  struct Case {
    std::string body;
    int status;
    std::string contains;
  };
  const std::vector<Case> cases = {
      {"{not json", 400, "Invalid JSON"},
      {R"({"prompt":"hi","temperature":"hot"})", 400, "temperature"},
      {R"({"prompt":"hi","max_tokens":-1})", 400, "max_tokens"},
      {R"({"prompt":"hi","temperature":-0.5})", 400, "temperature"},
      {R"({"prompt":"hi","top_p":0})", 400, "top_p"},
      {R"({"prompt":"hi","n":"two"})", 400, "n"},
      {R"({"prompt":"hi","stop":[1]})", 400, "stop"},
      {R"({"prompt":[]})", 400, "prompt"},
      {R"({"prompt":[99999]})", 400, "vocabulary"},
      {R"({"max_tokens":3})", 400, "prompt"},
      {R"({"model":"gpt-4","prompt":"hi"})", 404, "does not exist"},
      {json({{"prompt", std::string(300, 'x')}}).dump(), 400, "maximum context length is 256"},
      {R"({"prompt":"hi","max_tokens":300})", 400, "maximum context length is 256"},
  };
  for (const Case& c : cases) {
    auto [status, j] = f.post("/v1/completions", c.body, auth);
    EXPECT_EQ(status, c.status) << c.body;
    ASSERT_TRUE(j.contains("error")) << c.body << " -> " << j.dump();
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.contains), std::string::npos)
        << j.dump();
    EXPECT_EQ(j["error"]["code"], c.status);
  }
  auto [cs, chat] = f.post("/v1/chat/completions", R"({"messages":[{"role":"bad"}]})", auth);
  EXPECT_EQ(cs, 400);
  EXPECT_NE(chat["error"]["message"].get<std::string>().find("alternate"), std::string::npos);
  auto [ms, missing] = f.post("/v1/chat/completions", R"({"messages":"hi"})", auth);
  EXPECT_EQ(ms, 400);
  // Wrong or missing API key.
  EXPECT_EQ(f.post("/v1/completions", R"({"prompt":"hi"})").first, 401);
  EXPECT_EQ(
      f.post("/v1/completions", R"({"prompt":"hi"})", {{"Authorization", "Bearer wrong"}}).first,
      401);
  EXPECT_EQ(f.client().Get("/health")->status, 200);  // no key needed outside /v1
  // A 10 MB body.
  auto [big, bj] = f.post("/v1/completions", std::string(10'000'000, ' '), auth);
  EXPECT_EQ(big, 413);
  EXPECT_TRUE(bj.contains("error"));
  // Still serving.
  auto [ok, good] = f.post("/v1/completions", R"({"prompt":"hi","max_tokens":2})", auth);
  EXPECT_EQ(ok, 200) << good.dump();
}

// CORS as vLLM's CORSMiddleware answers it: preflights before the API key, headers on every
// answer to a request with an Origin (streams and errors too), a list of origins enforced.
TEST(ServerTest, CorsPreflightsAndResponseHeaders) {
  const httplib::Headers preflight = {{"Origin", "https://app.example"},
                                      {"Access-Control-Request-Method", "POST"},
                                      {"Access-Control-Request-Headers", "authorization, x-trace"}};
  {
    ServerFixture f(256, "secret");  // the defaults: every origin, method and header
    auto c = f.client();
    auto pre = c.Options("/v1/chat/completions", preflight);
    ASSERT_TRUE(pre);
    EXPECT_EQ(pre->status, 200);  // no API key on a preflight: browsers never send one there
    EXPECT_EQ(pre->body, "OK");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "*");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Methods"),
              "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Headers"), "authorization, x-trace");
    EXPECT_EQ(pre->get_header_value("Access-Control-Max-Age"), "600");
    EXPECT_FALSE(pre->has_header("Access-Control-Allow-Credentials"));

    const httplib::Headers from_page = {{"Origin", "https://app.example"},
                                        {"Authorization", "Bearer secret"}};
    auto ok = c.Post("/v1/completions", from_page, R"({"prompt":"hi","max_tokens":2})",
                     "application/json");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200);
    EXPECT_EQ(ok->get_header_value("Access-Control-Allow-Origin"), "*");
    EXPECT_EQ(ok->get_header_value_count("Access-Control-Allow-Origin"), 1u);
    auto stream = c.Post("/v1/completions", from_page,
                         R"({"prompt":"hi","max_tokens":2,"stream":true})", "application/json");
    ASSERT_TRUE(stream);
    EXPECT_EQ(stream->status, 200);
    EXPECT_NE(stream->body.find("[DONE]"), std::string::npos);
    EXPECT_EQ(stream->get_header_value("Access-Control-Allow-Origin"), "*");
    // A page may read the errors too.
    auto unauthorized = c.Post("/v1/completions", {{"Origin", "https://app.example"}},
                               R"({"prompt":"hi"})", "application/json");
    EXPECT_EQ(unauthorized->status, 401);
    EXPECT_EQ(unauthorized->get_header_value("Access-Control-Allow-Origin"), "*");
    auto missing = c.Get("/nothing", {{"Origin", "https://app.example"}});
    EXPECT_EQ(missing->status, 404);
    EXPECT_EQ(missing->get_header_value("Access-Control-Allow-Origin"), "*");
    // With a cookie, "*" is not enough: the origin is named.
    auto cookie = c.Get("/health", {{"Origin", "https://app.example"}, {"Cookie", "a=b"}});
    EXPECT_EQ(cookie->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
    EXPECT_EQ(cookie->get_header_value("Vary"), "Origin");
    // No Origin: no CORS headers at all, and OPTIONS without a preflight's headers is no
    // preflight.
    EXPECT_FALSE(c.Get("/health")->has_header("Access-Control-Allow-Origin"));
    auto plain_options = c.Options("/v1/models");
    ASSERT_TRUE(plain_options);
    EXPECT_NE(plain_options->status, 200);
    EXPECT_FALSE(plain_options->has_header("Access-Control-Allow-Methods"));
  }
  {
    CorsPolicy only_app;
    only_app.allowed_origins = {"https://app.example"};
    only_app.allowed_methods = {"GET", "POST"};
    only_app.allowed_headers = {"Authorization"};
    only_app.allow_credentials = true;
    ServerFixture f(256, "", 256, 128, std::nullopt, only_app);
    auto c = f.client();
    auto pre = c.Options("/v1/chat/completions",
                         {{"Origin", "https://app.example"},
                          {"Access-Control-Request-Method", "POST"},
                          {"Access-Control-Request-Headers", "Authorization, Content-Type"}});
    EXPECT_EQ(pre->status, 200) << pre->body;
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
    EXPECT_EQ(pre->get_header_value("Vary"), "Origin");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Methods"), "GET, POST");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Headers"),
              "accept, accept-language, authorization, content-language, content-type");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Credentials"), "true");
    auto other = c.Options("/v1/chat/completions", {{"Origin", "https://evil.example"},
                                                    {"Access-Control-Request-Method", "DELETE"},
                                                    {"Access-Control-Request-Headers", "x-trace"}});
    EXPECT_EQ(other->status, 400);
    EXPECT_EQ(other->body, "Disallowed CORS origin, method, headers");
    EXPECT_FALSE(other->has_header("Access-Control-Allow-Origin"));
    auto allowed = c.Get("/v1/models", {{"Origin", "https://app.example"}});
    EXPECT_EQ(allowed->status, 200);
    EXPECT_EQ(allowed->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
    EXPECT_EQ(allowed->get_header_value("Access-Control-Allow-Credentials"), "true");
    // Another origin still gets its answer, but without the header the browser hides it.
    auto denied = c.Get("/v1/models", {{"Origin", "https://evil.example"}});
    EXPECT_EQ(denied->status, 200);
    EXPECT_FALSE(denied->has_header("Access-Control-Allow-Origin"));
  }
}

// vLLM's /load (--enable-server-load-tracking), /invocations (SageMaker: routed by the body) and
// the request log (--enable-log-requests, --max-log-len).
TEST(ServerTest, LoadInvocationsAndRequestLog) {
  ServerFixture f(256, "", 256, 128, std::nullopt, {}, 20,
                  [](ServerOptions& so) { so.track_server_load = true; });
  auto c = f.client();
  EXPECT_EQ(json::parse(c.Get("/load")->body)["server_load"], 0);
  // A request holds the count while it runs: one stream of many tokens, polled meanwhile.
  std::atomic<bool> done{false};
  std::thread stream([&] {
    f.post("/v1/completions",
           R"({"prompt":"hi","max_tokens":200,"ignore_eos":true,"n":8,"stream":true})");
    done = true;
  });
  int64_t seen = 0;
  while (!done) {
    seen = std::max<int64_t>(seen, json::parse(f.client().Get("/load")->body)["server_load"]);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stream.join();
  EXPECT_EQ(seen, 1);
  // The stream's count ends when the server has finished writing it, just after the client
  // read its end.
  int64_t after = 1;
  for (int i = 0; i < 200 && after != 0; ++i) {
    after = json::parse(c.Get("/load")->body)["server_load"];
    if (after != 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(after, 0);

  auto [cs, completion] = f.post("/invocations", R"({"prompt":"hi","max_tokens":2})");
  EXPECT_EQ(cs, 200);
  EXPECT_EQ(completion["object"], "text_completion");
  auto [hs, chat] =
      f.post("/invocations", R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})");
  EXPECT_EQ(hs, 200);
  EXPECT_EQ(chat["object"], "chat.completion");
  auto [bs, bad] = f.post("/invocations", R"({"input":"hi"})");
  EXPECT_EQ(bs, 400);
  EXPECT_NE(bad["error"]["message"].get<std::string>().find("suitable handler"), std::string::npos);
  EXPECT_EQ(json::parse(c.Get("/load")->body)["server_load"], 0);  // errors are not left counted

  // The request log, cut to --max-log-len.
  std::ostringstream log;
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  ServingModel serving = f.model->serving();
  serving.log_requests = true;
  serving.max_log_len = 4;
  f.server->set_ready(serving);
  auto [ls, logged] = f.post("/v1/completions", R"({"prompt":"abcdefgh","max_tokens":2,"seed":5})");
  spdlog::set_default_logger(previous);
  EXPECT_EQ(ls, 200);
  const std::string line = log.str();
  EXPECT_NE(
      line.find("Received request " + logged["id"].get<std::string>() + "-0: prompt: \"abcd\","),
      std::string::npos)
      << line;
  EXPECT_NE(line.find("seed=5, max_tokens=2"), std::string::npos) << line;
  // Four ids of the prompt's nine (BOS + eight bytes, each byte + 3).
  EXPECT_NE(line.find("prompt_token_ids: [1, 100, 101, 102]"), std::string::npos) << line;
}

// use_beam_search through the engine: width 1 is greedy decoding, n beams come back as n
// choices (whole or streamed alike), and what beam search cannot combine with is a 400.
TEST(ServerTest, BeamSearchThroughTheEngine) {
  ServerFixture f(256);
  auto [gs, greedy] = f.post(
      "/v1/completions", R"({"prompt":"beams","max_tokens":6,"temperature":0,"ignore_eos":true})");
  ASSERT_EQ(gs, 200) << greedy.dump();
  auto [bs, one] = f.post("/v1/completions",
                          R"({"prompt":"beams","max_tokens":6,"n":1,"use_beam_search":true,
                              "ignore_eos":true})");
  ASSERT_EQ(bs, 200) << one.dump();
  EXPECT_EQ(one["choices"][0]["text"], greedy["choices"][0]["text"]);
  EXPECT_EQ(one["choices"][0]["finish_reason"], "length");

  const std::string body = R"({"prompt":"beams","max_tokens":5,"n":3,"use_beam_search":true,
                               "ignore_eos":true,"length_penalty":0.5)";
  auto [ts, three] = f.post("/v1/completions", body + "}");
  ASSERT_EQ(ts, 200) << three.dump();
  ASSERT_EQ(three["choices"].size(), 3u);
  std::set<std::string> texts;
  for (const json& c : three["choices"]) texts.insert(c["text"].get<std::string>());
  EXPECT_EQ(texts.size(), 3u) << three.dump();  // three different beams
  EXPECT_EQ(three["usage"]["completion_tokens"], 15);
  auto res = f.client().Post("/v1/completions", body + R"(,"stream":true})", "application/json");
  ASSERT_TRUE(res && res->status == 200);
  std::map<int64_t, std::string> streamed;
  for (const json& e : sse_events(res->body))
    for (const json& c : e["choices"]) streamed[c["index"]] += c["text"].get<std::string>();
  ASSERT_EQ(streamed.size(), 3u);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(streamed[i], three["choices"][i]["text"]);

  // Logprobs: width 1 gives greedy decoding's, and beams come best first by vLLM's score
  // (cumulative logprob / (prompt + output tokens)^length_penalty).
  auto [gl, greedy_lp] =
      f.post("/v1/completions", R"({"prompt":"beams","max_tokens":6,"temperature":0,
                                    "ignore_eos":true,"logprobs":2})");
  ASSERT_EQ(gl, 200) << greedy_lp.dump();
  auto [bl, beam_lp] = f.post("/v1/completions", R"({"prompt":"beams","max_tokens":6,"n":1,
      "use_beam_search":true,"ignore_eos":true,"logprobs":2})");
  ASSERT_EQ(bl, 200) << beam_lp.dump();
  EXPECT_EQ(beam_lp["choices"][0]["logprobs"], greedy_lp["choices"][0]["logprobs"]);
  auto [sl, scored] = f.post("/v1/completions", R"({"prompt":"beams","max_tokens":5,"n":3,
      "use_beam_search":true,"ignore_eos":true,"logprobs":1,"length_penalty":0.5})");
  ASSERT_EQ(sl, 200) << scored.dump();
  const int64_t prompt_len = scored["usage"]["prompt_tokens"];
  double previous = 1e300;
  for (const json& c : scored["choices"]) {
    const json& lp = c["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), 5u);
    double cum = 0;
    for (const json& x : lp["token_logprobs"]) cum += x.get<double>();
    const double score = cum / std::pow(static_cast<double>(prompt_len + 5), 0.5);
    EXPECT_LE(score, previous + 1e-6) << scored.dump();
    previous = score;
  }

  for (const char* bad : {R"("stop":"x")", R"("n":11)", R"("guided_choice":["a","b"])"}) {
    auto [status, j] = f.post(
        "/v1/completions", std::string(R"({"prompt":"beams","use_beam_search":true,)") + bad + "}");
    EXPECT_EQ(status, 400) << bad << " " << j.dump();
  }
}

// Request ids as vLLM takes them (X-Request-Id, else the body's request_id) and
// --enable-request-id-headers; the engine's ids stay unique, so clients may reuse theirs.
TEST(ServerTest, ClientRequestIds) {
  ServerFixture f(256, "", 256, 128, std::nullopt, {}, 20,
                  [](ServerOptions& so) { so.request_id_headers = true; });
  auto c = f.client();
  auto with_header = c.Post("/v1/completions", {{"X-Request-Id", "trace-42"}},
                            R"({"prompt":"hi","max_tokens":2})", "application/json");
  ASSERT_TRUE(with_header && with_header->status == 200);
  EXPECT_EQ(json::parse(with_header->body)["id"], "cmpl-trace-42");
  EXPECT_EQ(with_header->get_header_value("X-Request-Id"), "trace-42");
  auto [bs, body_id] = f.post("/v1/chat/completions",
                              R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2,
                                  "request_id":"job-7"})");
  ASSERT_EQ(bs, 200) << body_id.dump();
  EXPECT_EQ(body_id["id"], "chatcmpl-job-7");
  auto plain = c.Get("/health");
  const std::string generated = plain->get_header_value("X-Request-Id");
  EXPECT_EQ(generated.size(), 32u);
  EXPECT_EQ(generated.find_first_not_of("0123456789abcdef"), std::string::npos);
  // The same id on concurrent requests: both are served.
  std::vector<std::future<int>> same;
  for (int i = 0; i < 4; ++i)
    same.push_back(std::async(std::launch::async, [&] {
      auto r = f.client().Post("/v1/completions", {{"X-Request-Id", "dup"}},
                               R"({"prompt":"hi","max_tokens":8,"ignore_eos":true})",
                               "application/json");
      return r ? r->status : 0;
    }));
  for (auto& s : same) EXPECT_EQ(s.get(), 200);
  EXPECT_EQ(f.post("/v1/completions", R"({"prompt":"hi","request_id":5})").first, 400);
}

// The model folder's text processor: tokenizer, streaming decoder and EOS from the folder.
TEST(TextProcessorTest, LoadsTheFoldersTokenizer) {
  const std::filesystem::path dir = testing::make_tiny("llama", DType::kF32, 12);
  std::unique_ptr<TextProcessor> text = load_text_processor(dir, "");
  ASSERT_TRUE(text);
  const std::string sample = "Grüße, world! 42 ✓ <|eot_id|> tail";
  const std::vector<int32_t> ids = text->encode(sample, true);
  EXPECT_EQ(text->decode(ids, true), sample.substr(0, sample.find("<|eot_id|>")) + " tail");
  EXPECT_EQ(text->decode(ids, false), "<|begin_of_text|>" + sample);
  for (bool skip : {true, false}) {
    std::unique_ptr<TextDecoder> d = text->decoder_factory()(skip);
    std::string streamed;
    for (int32_t id : ids) streamed += d->step(id);
    streamed += d->finish();
    EXPECT_EQ(streamed, text->decode(ids, skip));
  }
  EXPECT_EQ(text->eos_token_id(), text->encode("<|eot_id|>", false).at(0));
  // No tokenizer.json: token ids only; a chat template then makes no sense.
  std::filesystem::remove(dir / "tokenizer.json");
  EXPECT_EQ(load_text_processor(dir, ""), nullptr);
  EXPECT_THROW(load_text_processor(dir, "{{ x }}"), Error);
  std::filesystem::remove_all(dir);
}

// Chat through the model folder's own tokenizer and Llama-3-style template (the built-in one
// make-model writes): the prompt the template defines, tokenized without extra BOS.
TEST(ServerTest, ChatThroughTheModelsTemplate) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const std::string messages =
      R"([{"role":"system","content":"Be brief. "},{"role":"user","content":[)"
      R"({"type":"text","text":"Hello"},{"type":"text","text":"there"}]}])";
  // The template trims each message and the text parts are joined with a newline (vLLM).
  const std::string expected =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHello\nthere<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  auto [ts, tok] =
      f.post("/tokenize", R"({"messages":)" + messages + R"(,"return_token_strs":true})");
  ASSERT_EQ(ts, 200) << tok.dump();
  auto [ps, plain] =
      f.post("/tokenize", json({{"prompt", expected}, {"add_special_tokens", false}}).dump());
  ASSERT_EQ(ps, 200) << plain.dump();
  EXPECT_EQ(tok["tokens"], plain["tokens"]);
  EXPECT_EQ(tok["count"], plain["tokens"].size());
  std::string joined;
  for (const json& s : tok["token_strs"]) joined += s.get<std::string>();
  EXPECT_EQ(joined, expected);
  auto [ds, detok] = f.post("/detokenize", json({{"tokens", tok["tokens"]}}).dump());
  ASSERT_EQ(ds, 200);
  EXPECT_EQ(detok["prompt"], expected);
  // Without the generation prompt.
  auto [ns, nogen] =
      f.post("/tokenize", R"({"add_generation_prompt":false,"messages":)" + messages + "}");
  ASSERT_EQ(ns, 200);
  ASSERT_LT(nogen["tokens"].size(), tok["tokens"].size());
  for (size_t i = 0; i < nogen["tokens"].size(); ++i)
    EXPECT_EQ(nogen["tokens"][i], tok["tokens"][i]);

  auto [cs, chat] =
      f.post("/v1/chat/completions",
             R"({"max_tokens":5,"temperature":0,"ignore_eos":true,"messages":)" + messages + "}");
  ASSERT_EQ(cs, 200) << chat.dump();
  EXPECT_EQ(chat["usage"]["prompt_tokens"], tok["count"]);
  EXPECT_EQ(chat["usage"]["completion_tokens"], 5);
  EXPECT_TRUE(chat["choices"][0]["message"]["content"].is_string());
  // The same prompt as a completion gives the same greedy text.
  auto [ks, completion] = f.post(
      "/v1/completions",
      json({{"prompt", tok["tokens"]}, {"max_tokens", 5}, {"temperature", 0}, {"ignore_eos", true}})
          .dump());
  ASSERT_EQ(ks, 200);
  EXPECT_EQ(completion["choices"][0]["text"], chat["choices"][0]["message"]["content"]);
}

// Structured outputs through the real tokenizer: sampled (seeded) texts parse as JSON and keep
// to the schema, the sequence stops when the text is complete, and bad schemas are 400s.
TEST(ServerTest, StructuredOutputsFollowTheSchema) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const json schema = json::parse(R"({"type":"object","properties":{
      "name":{"type":"string","maxLength":8},"n":{"type":"integer"},
      "color":{"enum":["red","green"]},"ok":{"type":["boolean","null"]}},
      "required":["name","n","color","ok"],"additionalProperties":false})");
  for (int seed = 0; seed < 6; ++seed) {
    json body = {{"messages", {{{"role", "user"}, {"content", "A person, as JSON."}}}},
                 {"max_tokens", 200},
                 {"temperature", 1.0},
                 {"seed", seed},
                 {"response_format",
                  {{"type", "json_schema"}, {"json_schema", {{"name", "p"}, {"schema", schema}}}}}};
    auto [status, j] = f.post("/v1/chat/completions", body.dump());
    ASSERT_EQ(status, 200) << j.dump();
    ASSERT_EQ(j["choices"][0]["finish_reason"], "stop") << j.dump();
    const std::string content = j["choices"][0]["message"]["content"];
    const json v = json::parse(content, nullptr, false);
    ASSERT_TRUE(v.is_object()) << content;
    EXPECT_EQ(v.size(), 4u) << content;
    // maxLength counts code points (a byte no token completed decodes to U+FFFD, one).
    ASSERT_TRUE(v["name"].is_string()) << content;
    const std::string name = v["name"];
    EXPECT_LE(std::count_if(name.begin(), name.end(), [](char c) { return (c & 0xC0) != 0x80; }), 8)
        << v.dump();
    EXPECT_TRUE(v["n"].is_number_integer()) << content;
    EXPECT_TRUE(v["color"] == "red" || v["color"] == "green") << content;
    EXPECT_TRUE(v["ok"].is_boolean() || v["ok"].is_null()) << content;
  }
  // guided_choice on completions: exactly one of the texts, then stop.
  for (int seed = 0; seed < 4; ++seed) {
    json body = {{"prompt", "The answer is"},
                 {"max_tokens", 20},
                 {"temperature", 1.0},
                 {"seed", seed},
                 {"guided_choice", {"yes", "no", "not sure"}}};
    auto [status, j] = f.post("/v1/completions", body.dump());
    ASSERT_EQ(status, 200) << j.dump();
    const std::string text = j["choices"][0]["text"];
    EXPECT_TRUE(text == "yes" || text == "no" || text == "not sure") << text;
    EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  }
  // json_object, greedy: the text so far is always an object's prefix; when it stops, it parses.
  auto [os, obj] =
      f.post("/v1/chat/completions",
             R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":200,"temperature":0,
          "response_format":{"type":"json_object"}})");
  ASSERT_EQ(os, 200) << obj.dump();
  const std::string text = obj["choices"][0]["message"]["content"];
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.find_first_not_of(" \n\t\r"), text.find('{')) << text;
  if (obj["choices"][0]["finish_reason"] == "stop")
    EXPECT_TRUE(json::parse(text, nullptr, false).is_object()) << text;
  // Unsupported or malformed: 400 naming the field; the server keeps serving.
  for (
      const char* bad :
      {R"x({"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"string","pattern":"(?=a)"}}}})x",
       R"({"response_format":{"type":"yaml"}})", R"({"guided_json":"{not json"})",
       R"({"guided_regex":"(a"})", R"({"guided_grammar":"root ::= x"})", R"({"guided_choice":[]})",
       R"({"guided_regex":"a","guided_choice":["a"]})",
       R"({"guided_choice":["a"],"response_format":{"type":"json_object"}})"}) {
    json body = json::parse(bad);
    body["messages"] = json::parse(R"([{"role":"user","content":"hi"}])");
    auto [status, j] = f.post("/v1/chat/completions", body.dump());
    EXPECT_EQ(status, 400) << bad << " " << j.dump();
    EXPECT_TRUE(j["error"]["param"].is_string()) << j.dump();
  }
  auto [ok, after] = f.post("/v1/chat/completions",
                            R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})");
  EXPECT_EQ(ok, 200);
}

// guided_regex, structured_outputs.regex and a schema's "pattern": every output of this random
// model matches (checked by std::regex), and ends with "stop" once nothing may follow.
TEST(ServerTest, RegexOutputsMatch) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const std::string date = "(19|20)\\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])";
  const std::regex date_re(date);
  for (int seed = 0; seed < 4; ++seed) {
    for (const char* field : {"guided_regex", "structured_outputs"}) {
      json body = {{"messages", {{{"role", "user"}, {"content", "A date?"}}}},
                   {"max_tokens", 40},
                   {"temperature", 1.0},
                   {"seed", seed}};
      if (std::string(field) == "guided_regex")
        body["guided_regex"] = date;
      else
        body["structured_outputs"] = {{"regex", date}};
      auto [s, r] = f.post("/v1/chat/completions", body.dump());
      ASSERT_EQ(s, 200) << r.dump();
      const std::string text = r["choices"][0]["message"]["content"];
      EXPECT_TRUE(std::regex_match(text, date_re)) << field << ": " << text;
      EXPECT_EQ(r["choices"][0]["finish_reason"], "stop") << text;
    }
    json schema = json::parse(R"({"type":"object","properties":{"id":{"type":"string",
        "pattern":"^[A-Z]{2}-\\d{3}$"}},"required":["id"],"additionalProperties":false})");
    json body = {
        {"messages", {{{"role", "user"}, {"content", "An id?"}}}},
        {"max_tokens", 60},
        {"temperature", 1.0},
        {"seed", seed},
        {"response_format",
         {{"type", "json_schema"}, {"json_schema", {{"name", "id"}, {"schema", schema}}}}}};
    auto [s, r] = f.post("/v1/chat/completions", body.dump());
    ASSERT_EQ(s, 200) << r.dump();
    const std::string text = r["choices"][0]["message"]["content"];
    if (r["choices"][0]["finish_reason"] != "stop") continue;  // max_tokens inside whitespace
    const json parsed = json::parse(text, nullptr, false);
    ASSERT_TRUE(parsed.is_object()) << text;
    EXPECT_TRUE(std::regex_match(parsed["id"].get<std::string>(), std::regex("[A-Z]{2}-\\d{3}")))
        << text;
  }
}

// structured_outputs.disable_any_whitespace: the JSON comes without whitespace between tokens.
TEST(ServerTest, DisableAnyWhitespaceGivesCompactJson) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const json schema = json::parse(R"({"type":"object","properties":{"a":{"type":"integer"},
      "b":{"type":"array","items":{"type":"boolean"},"maxItems":3}},"required":["a","b"],
      "additionalProperties":false})");
  int complete = 0;
  for (int seed = 0; seed < 6; ++seed) {
    json body = {{"messages", {{{"role", "user"}, {"content", "JSON please"}}}},
                 {"max_tokens", 60},
                 {"temperature", 1.0},
                 {"seed", seed},
                 {"structured_outputs", {{"json", schema}, {"disable_any_whitespace", true}}}};
    auto [s, r] = f.post("/v1/chat/completions", body.dump());
    ASSERT_EQ(s, 200) << r.dump();
    const std::string text = r["choices"][0]["message"]["content"];
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
      if (in_string) {
        if (text[i] == '\\')
          ++i;
        else if (text[i] == '"')
          in_string = false;
      } else if (text[i] == '"') {
        in_string = true;
      } else {
        EXPECT_FALSE(text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r')
            << text;
      }
    }
    if (r["choices"][0]["finish_reason"] == "stop") {
      ++complete;
      EXPECT_TRUE(json::parse(text, nullptr, false).is_object()) << text;
    }
  }
  EXPECT_GT(complete, 0);
}

// --reasoning-parser: <think>...</think> comes back as reasoning_content, whole and streamed,
// and a tool call after it is still parsed (the tool parser reads the content).
TEST(ServerTest, ReasoningParserSplitsThinking) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const std::string answer = "<think>\nIs 2 < 3? Yes.\n</think>\n\nYes: 2 < 3.";
  auto ask = [&](bool stream, const json& extra = json::object()) {
    json body = {{"messages", {{{"role", "user"}, {"content", "Is 2 < 3?"}}}},
                 {"max_tokens", 80},
                 {"guided_choice", {answer}},
                 {"stream", stream}};
    body.update(extra);
    return f.client().Post("/v1/chat/completions", body.dump(), "application/json");
  };
  for (const std::string parser : {"deepseek_r1", "qwen3"}) {
    SCOPED_TRACE(parser);
    f.set_reasoning_parser(parser);
    auto res = ask(false);
    ASSERT_TRUE(res && res->status == 200);
    const json r = json::parse(res->body);
    ASSERT_TRUE(r.contains("choices")) << res->body;
    EXPECT_EQ(r["choices"][0]["message"]["reasoning_content"], "\nIs 2 < 3? Yes.\n");
    EXPECT_EQ(r["choices"][0]["message"]["content"], "\n\nYes: 2 < 3.");
    EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
    res = ask(true);
    ASSERT_TRUE(res && res->status == 200);
    std::string reasoning, content;
    for (const json& chunk : testing::sse_chunks(res->body)) {
      const json& delta = chunk["choices"][0]["delta"];
      if (delta.contains("reasoning_content"))
        reasoning += delta["reasoning_content"].get<std::string>();
      if (delta.contains("content")) content += delta["content"].get<std::string>();
    }
    EXPECT_EQ(reasoning, "\nIs 2 < 3? Yes.\n");
    EXPECT_EQ(content, "\n\nYes: 2 < 3.");
  }
  // deepseek_v3 splits only when the request turns DeepSeek-V3.1's thinking on.
  f.set_reasoning_parser("deepseek_v3");
  for (const bool thinking : {false, true}) {
    auto res = ask(false, {{"chat_template_kwargs", {{"thinking", thinking}}}});
    ASSERT_TRUE(res && res->status == 200);
    const json whole = json::parse(res->body);
    const json& m = whole["choices"][0]["message"];
    EXPECT_EQ(m["content"], thinking ? "\n\nYes: 2 < 3." : answer);
    EXPECT_EQ(m["reasoning_content"], thinking ? json("\nIs 2 < 3? Yes.\n") : json());
  }
  // Off again: the text as it is.
  f.set_reasoning_parser("");
  auto res = ask(false);
  ASSERT_TRUE(res && res->status == 200);
  EXPECT_EQ(json::parse(res->body)["choices"][0]["message"]["content"], answer);
  EXPECT_TRUE(json::parse(res->body)["choices"][0]["message"]["reasoning_content"].is_null());

  // Thinking, then a hermes tool call.
  f.set_reasoning_parser("qwen3");
  f.set_tool_parser("hermes");
  const std::string call =
      "<think>I need the weather.</think>\n<tool_call>\n{\"name\": \"get_weather\", "
      "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
  const json tools = json::parse(R"([{"type":"function","function":{"name":"get_weather",
    "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])");
  for (bool stream : {false, true}) {
    res = ask(stream, {{"guided_choice", {call}}, {"tools", tools}, {"max_tokens", 200}});
    ASSERT_TRUE(res && res->status == 200) << (res ? res->body : "");
    std::string reasoning, content, arguments, finish;
    if (!stream) {
      const json whole = json::parse(res->body);
      const json& m = whole["choices"][0];
      ASSERT_EQ(m["message"]["tool_calls"].size(), 1u) << res->body;
      reasoning = m["message"]["reasoning_content"];
      content = m["message"]["content"].is_null() ? "" : m["message"]["content"];
      arguments = m["message"]["tool_calls"][0]["function"]["arguments"];
      finish = m["finish_reason"];
    } else {
      for (const json& chunk : testing::sse_chunks(res->body)) {
        const json& ch = chunk["choices"][0];
        const json& delta = ch["delta"];
        if (delta.contains("reasoning_content"))
          reasoning += delta["reasoning_content"].get<std::string>();
        if (delta.contains("content")) content += delta["content"].get<std::string>();
        if (delta.contains("tool_calls"))
          arguments += delta["tool_calls"][0]["function"]["arguments"].get<std::string>();
        if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
      }
    }
    EXPECT_EQ(reasoning, "I need the weather.") << stream;
    EXPECT_EQ(content, "\n") << stream;
    EXPECT_EQ(arguments, "{\"city\": \"Paris\"}") << stream;
    EXPECT_EQ(finish, "tool_calls") << stream;
  }
}

// tool_choice "required" and a named function: the output is built from the tools' parameter
// schemas and comes back as tool_calls, whole or streamed, as vLLM returns them.
// A stop token is not part of the text, even with skip_special_tokens false, unless
// include_stop_str_in_output asks for it (vLLM's detokenizer leaves it out).
TEST(ServerTest, StopTokenTextStaysOutOfTheOutput) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const int32_t eos = f.model->serving().eos_token_ids.at(0);
  auto ask = [&](bool include) {
    json b = {{"prompt", "a"},
              {"max_tokens", 5},
              {"logit_bias", {{std::to_string(eos), 100}}},
              {"skip_special_tokens", false},
              {"include_stop_str_in_output", include}};
    auto [s, r] = f.post("/v1/completions", b.dump());
    EXPECT_EQ(s, 200) << r.dump();
    EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
    EXPECT_EQ(r["usage"]["completion_tokens"], 1);
    return r["choices"][0]["text"].get<std::string>();
  };
  EXPECT_EQ(ask(false), "");
  EXPECT_FALSE(ask(true).empty());  // the EOS token's own text
}

// tool_choice "auto": a 400 unless the server parses tool calls, as in vLLM; with a parser, the
// calls in the output come back as tool_calls (whole and streamed). guided_choice makes this
// random model write exactly the text each parser reads.
TEST(ServerTest, AutoToolChoiceParsesToolCalls) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const json tools = json::parse(R"([{"type":"function","function":{"name":"get_weather",
    "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])");
  auto body = [&](const json& extra) {
    json b = {{"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}},
              {"tools", tools},
              {"max_tokens", 120}};
    b.update(extra);
    return b.dump();
  };
  for (const json& choice : {json(nullptr), json("auto")}) {
    json extra = json::object();
    if (!choice.is_null()) extra["tool_choice"] = choice;
    auto [st, err] = f.post("/v1/chat/completions", body(extra));
    EXPECT_EQ(st, 400) << err.dump();
    EXPECT_NE(err["error"]["message"].get<std::string>().find("--enable-auto-tool-choice"),
              std::string::npos);
  }
  auto [ns, none] = f.post("/v1/chat/completions", body({{"tool_choice", "none"}}));
  EXPECT_EQ(ns, 200) << none.dump();

  struct Case {
    std::string parser, text;
    json content;  // expected message content
    std::string arguments;
  };
  const Case cases[] = {
      {"hermes",
       "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
       "{\"city\":\"Paris\",\"unit\":\"c\"}}\n</tool_call>",
       "Let me check.", "{\"city\": \"Paris\", \"unit\": \"c\"}"},
      {"llama3_json", "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}", nullptr,
       "{\"city\": \"Rome\"}"},
      {"mistral", "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]",
       nullptr, "{\"city\": \"Oslo\"}"},
      {"pythonic", "[get_weather(city='Lima')]", nullptr, "{\"city\": \"Lima\"}"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.parser);
    f.set_tool_parser(c.parser);
    const json forced = {{"guided_choice", {c.text}}};
    auto [s, r] = f.post("/v1/chat/completions", body(forced));
    ASSERT_EQ(s, 200) << r.dump();
    const json& choice = r["choices"][0];
    EXPECT_EQ(choice["finish_reason"], "tool_calls");
    EXPECT_EQ(choice["message"]["content"], c.content);
    ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
    const json& call = choice["message"]["tool_calls"][0];
    EXPECT_EQ(call["type"], "function");
    EXPECT_EQ(call["function"]["name"], "get_weather");
    EXPECT_EQ(call["function"]["arguments"], c.arguments);
    const std::string id = call["id"];
    if (c.parser == "mistral")
      EXPECT_EQ(id.size(), 9u) << id;
    else
      EXPECT_EQ(id.rfind("chatcmpl-tool-", 0), 0u) << id;

    // Streamed: content deltas never carry the call's text; the call comes whole, once.
    json streamed = forced;
    streamed["stream"] = true;
    auto res = f.client().Post("/v1/chat/completions", body(streamed), "application/json");
    ASSERT_TRUE(res && res->status == 200);
    std::string content, finish;
    json calls = json::array();
    for (const json& chunk : testing::sse_chunks(res->body)) {
      const json& ch = chunk["choices"][0];
      if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
      if (ch["delta"].contains("tool_calls"))
        for (const json& tc : ch["delta"]["tool_calls"]) calls.push_back(tc);
      if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
    }
    EXPECT_EQ(content, c.content.is_null() ? "" : c.content.get<std::string>());
    EXPECT_EQ(finish, "tool_calls");
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0]["index"], 0);
    EXPECT_EQ(calls[0]["function"]["name"], "get_weather");
    EXPECT_EQ(calls[0]["function"]["arguments"], c.arguments);
  }

  // Two hermes calls, streamed: the first goes out as soon as it closes, before the last chunk.
  f.set_tool_parser("hermes");
  {
    const std::string two =
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
        "\"Rome\"}}\n</tool_call>";
    auto res =
        f.client().Post("/v1/chat/completions",
                        body({{"guided_choice", {two}}, {"stream", true}, {"max_tokens", 200}}),
                        "application/json");
    ASSERT_TRUE(res && res->status == 200);
    const std::vector<json> chunks = testing::sse_chunks(res->body);
    std::vector<std::pair<size_t, json>> calls;  // (chunk number, call)
    for (size_t i = 0; i < chunks.size(); ++i)
      if (chunks[i]["choices"][0]["delta"].contains("tool_calls"))
        for (const json& tc : chunks[i]["choices"][0]["delta"]["tool_calls"])
          calls.push_back({i, tc});
    ASSERT_EQ(calls.size(), 2u);
    EXPECT_EQ(calls[0].second["index"], 0);
    EXPECT_EQ(calls[1].second["index"], 1);
    EXPECT_EQ(calls[0].second["function"]["arguments"], "{\"city\": \"Paris\"}");
    EXPECT_EQ(calls[1].second["function"]["arguments"], "{\"city\": \"Rome\"}");
    EXPECT_LT(calls[0].first, calls[1].first);
    EXPECT_NE(calls[0].second["id"], calls[1].second["id"]);
    EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "tool_calls");
  }

  // Free text with a parser: content only; and a streamed "<" that turns out to be text.
  f.set_tool_parser("hermes");
  auto [ps, plain] = f.post("/v1/chat/completions", body({{"guided_choice", {"It is a < b."}}}));
  ASSERT_EQ(ps, 200);
  EXPECT_EQ(plain["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(plain["choices"][0]["message"]["content"], "It is a < b.");
  EXPECT_TRUE(plain["choices"][0]["message"]["tool_calls"].empty());
  auto res = f.client().Post("/v1/chat/completions",
                             body({{"guided_choice", {"It is a < b."}}, {"stream", true}}),
                             "application/json");
  ASSERT_TRUE(res && res->status == 200);
  std::string content;
  for (const json& chunk : testing::sse_chunks(res->body)) {
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
    EXPECT_FALSE(delta.contains("tool_calls"));
  }
  EXPECT_EQ(content, "It is a < b.");
}

TEST(ServerTest, ToolChoiceRequiredAndNamed) {
  ServerFixture f(256, "", 256, 128, RealText{});
  const json tools = json::parse(R"([
    {"type":"function","function":{"name":"get_weather","parameters":{"type":"object",
      "properties":{"city":{"type":"string","maxLength":6},"unit":{"enum":["c","f"]}},
      "required":["city","unit"],"additionalProperties":false}}},
    {"type":"function","function":{"name":"get_time","parameters":{"type":"object",
      "properties":{"zone":{"enum":["utc","local"]}},"required":["zone"]}}}])");
  // A random model seldom closes a list it may extend: a bias on the token "]" (which the
  // grammar still only admits where a list may end) makes most "required" lists end.
  auto [ts, close] = f.post("/tokenize", R"({"prompt":"]","add_special_tokens":false})");
  ASSERT_EQ(ts, 200);
  ASSERT_EQ(close["tokens"].size(), 1u);
  const json bias = {{std::to_string(close["tokens"][0].get<int>()), 8}};
  auto body = [&](const json& choice, int seed, bool stream) {
    return json{{"messages", {{{"role", "user"}, {"content", "weather?"}}}},
                {"tools", tools},
                {"tool_choice", choice},
                {"max_tokens", 220},
                {"temperature", 1.0},
                {"seed", seed},
                {"logit_bias", bias},
                {"stream", stream}}
        .dump();
  };
  const json named = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  int required_closed = 0;
  for (int seed = 0; seed < 6; ++seed) {
    auto [status, j] = f.post("/v1/chat/completions", body(named, seed, false));
    ASSERT_EQ(status, 200) << j.dump();
    const json& msg = j["choices"][0]["message"];
    EXPECT_EQ(msg["content"], "");
    ASSERT_EQ(msg["tool_calls"].size(), 1u) << j.dump();
    EXPECT_EQ(msg["tool_calls"][0]["type"], "function");
    EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "get_weather");
    EXPECT_EQ(msg["tool_calls"][0]["id"].get<std::string>().rfind("chatcmpl-tool-", 0), 0u);
    const json args = json::parse(msg["tool_calls"][0]["function"]["arguments"].get<std::string>(),
                                  nullptr, false);
    ASSERT_TRUE(args.is_object()) << j.dump();
    EXPECT_TRUE(args["unit"] == "c" || args["unit"] == "f") << args.dump();
    EXPECT_TRUE(args["city"].is_string()) << args.dump();
    EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");

    // A random model may keep adding calls to the list until max_tokens; then the text comes
    // back as it is. Lists it closes are checked call by call.
    auto [rs, req] = f.post("/v1/chat/completions", body("required", seed, false));
    ASSERT_EQ(rs, 200) << req.dump();
    if (req["choices"][0]["finish_reason"] == "length") {
      EXPECT_TRUE(req["choices"][0]["message"]["tool_calls"].empty());
      continue;
    }
    ++required_closed;
    ASSERT_EQ(req["choices"][0]["finish_reason"], "tool_calls") << req.dump();
    EXPECT_EQ(req["choices"][0]["message"]["content"], "");
    const json& calls = req["choices"][0]["message"]["tool_calls"];
    ASSERT_GE(calls.size(), 1u) << req.dump();
    for (const json& call : calls) {
      const std::string name = call["function"]["name"];
      const json a = json::parse(call["function"]["arguments"].get<std::string>(), nullptr, false);
      ASSERT_TRUE(a.is_object()) << req.dump();
      if (name == "get_time") {
        EXPECT_TRUE(a["zone"] == "utc" || a["zone"] == "local") << a.dump();
      } else {
        EXPECT_EQ(name, "get_weather");
        EXPECT_TRUE(a["unit"] == "c" || a["unit"] == "f") << a.dump();
      }
    }
  }
  EXPECT_GE(required_closed, 2);
  // Streamed: the named call's arguments arrive as deltas that join to the whole call's.
  auto [ws, whole] = f.post("/v1/chat/completions", body(named, 5, false));
  ASSERT_EQ(ws, 200);
  auto res = f.client().Post("/v1/chat/completions", body(named, 5, true), "application/json");
  ASSERT_TRUE(res && res->status == 200);
  std::string joined, name;
  for (size_t at = 0; (at = res->body.find("data: {", at)) != std::string::npos;) {
    const size_t end = res->body.find("\n\n", at);
    const json chunk = json::parse(res->body.substr(at + 6, end - at - 6));
    at = end;
    const json& delta = chunk["choices"][0]["delta"];
    if (!delta.contains("tool_calls")) continue;
    const json& fn = delta["tool_calls"][0]["function"];
    if (fn.contains("name")) name = fn["name"];
    joined += fn["arguments"].get<std::string>();
  }
  EXPECT_EQ(name, "get_weather");
  EXPECT_EQ(joined, whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]);
  // Bad choices are 400s.
  for (const json& bad :
       {json("sometimes"), json{{"type", "function"}, {"function", {{"name", "nope"}}}}}) {
    auto [bs, b] = f.post("/v1/chat/completions", body(bad, 0, false));
    EXPECT_EQ(bs, 400) << b.dump();
    EXPECT_EQ(b["error"]["param"], "tool_choice");
  }
  auto [ns, no_tools] = f.post(
      "/v1/chat/completions",
      R"({"messages":[{"role":"user","content":"hi"}],"tool_choice":"required","max_tokens":2})");
  EXPECT_EQ(ns, 400) << no_tools.dump();
}

// A template's own error (Gemma-style role check) and bad conversations are the client's
// fault: 400 with the message, on every endpoint that renders, and the server keeps serving.
TEST(ServerTest, TemplateErrorsAre400) {
  const std::string alternate =
      "Conversation roles must alternate user/assistant/user/assistant/...";
  ServerFixture f(256, "", 256, 128,
                  RealText{"{% for m in messages %}{% if (m['role'] == 'user') != "
                           "(loop.index0 % 2 == 0) %}{{ raise_exception('" +
                           alternate +
                           "') }}{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
                           "{% endfor %}"});
  const std::string twice =
      R"({"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"max_tokens":2)";
  for (const char* path : {"/v1/chat/completions", "/tokenize"}) {
    auto [status, j] = f.post(path, twice + "}");
    EXPECT_EQ(status, 400) << path << " " << j.dump();
    EXPECT_EQ(j["error"]["message"], alternate) << path;
    EXPECT_EQ(j["error"]["code"], 400);
  }
  auto [ss, streamed] = f.post("/v1/chat/completions", twice + R"(,"stream":true})");
  EXPECT_EQ(ss, 400) << streamed.dump();
  EXPECT_EQ(streamed["error"]["message"], alternate);
  struct Case {
    std::string body;
    std::string contains;
  };
  const std::vector<Case> cases = {
      {R"({"messages":[{"role":"user","content":"a"}],"chat_template":"{% for %}"})", "template"},
      {R"({"messages":[{"role":"user","content":"a"}],"chat_template_kwargs":{"tokenize":true}})",
       "tokenize"},
      {R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,
          "tool_calls":[{"id":"1","type":"function"}]}]})",
       "'function'"},
      {R"({"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{}}]})",
       "'name'"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}]})",
       "content parts of type 'image_url' are not supported: this model takes text only"},
  };
  for (const Case& c : cases) {
    auto [status, j] = f.post("/v1/chat/completions", c.body);
    EXPECT_EQ(status, 400) << c.body << " -> " << j.dump();
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.contains), std::string::npos)
        << j.dump();
  }
  auto [ok, good] = f.post("/v1/chat/completions",
                           R"({"messages":[{"role":"user","content":"a"}],"max_tokens":2})");
  EXPECT_EQ(ok, 200) << good.dump();
  // A per-request template renders (vLLM accepts chat_template in the body).
  auto [rs, rendered] = f.post("/tokenize", R"({"messages":[{"role":"user","content":"a"}],
      "chat_template":"{{ messages[0].content }}{{ eos_token }}"})");
  ASSERT_EQ(rs, 200) << rendered.dump();
  auto [ps, plain] = f.post("/tokenize", R"({"prompt":"a<|eot_id|>","add_special_tokens":false})");
  EXPECT_EQ(rendered["tokens"], plain["tokens"]);
}

// Without --trust-request-chat-template a request's own template is refused, as vLLM 0.11 does;
// the model's template still serves.
TEST(ServerTest, RequestChatTemplatesNeedTrust) {
  ServerFixture f(256, "", 256, 128, RealText{"", false});
  const std::string refused =
      "Chat template is passed with request, but --trust-request-chat-template is not set. "
      "Refused request with untrusted chat template.";
  for (const auto& [path, body] : std::vector<std::pair<std::string, std::string>>{
           {"/v1/chat/completions",
            R"({"messages":[{"role":"user","content":"a"}],"chat_template":"{{ 1 }}"})"},
           {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"a"}],
              "chat_template_kwargs":{"chat_template":"{{ 1 }}"}})"},
           {"/tokenize", R"({"messages":[{"role":"user","content":"a"}],"chat_template":"x"})"}}) {
    auto [status, j] = f.post(path, body);
    EXPECT_EQ(status, 400) << path << " " << j.dump();
    EXPECT_EQ(j["error"]["message"], refused) << j.dump();
  }
  auto [ok, good] = f.post("/v1/chat/completions",
                           R"({"messages":[{"role":"user","content":"a"}],"max_tokens":2})");
  EXPECT_EQ(ok, 200) << good.dump();
  auto [tok, tokens] = f.post("/tokenize", R"({"messages":[{"role":"user","content":"a"}]})");
  EXPECT_EQ(tok, 200) << tokens.dump();
}

struct Greedy {
  std::vector<std::string> tokens;
  std::vector<double> logprobs;
  bool operator==(const Greedy&) const = default;
};

Greedy run_greedy(const ServerFixture& f, const std::vector<int32_t>& prompt, int max_tokens) {
  json body = {{"prompt", prompt},
               {"max_tokens", max_tokens},
               {"temperature", 0},
               {"logprobs", 1},
               {"ignore_eos", true}};
  auto [status, j] = f.post("/v1/completions", body.dump());
  EXPECT_EQ(status, 200) << j.dump();
  Greedy g;
  if (status != 200) return g;
  for (const json& t : j["choices"][0]["logprobs"]["tokens"]) g.tokens.push_back(t);
  for (const json& v : j["choices"][0]["logprobs"]["token_logprobs"]) g.logprobs.push_back(v);
  return g;
}

// 64 concurrent requests of different lengths == the same requests one at a time, bit for bit.
void check_concurrent_matches_alone(ServerFixture& f,
                                    const std::vector<std::vector<int32_t>>& prompts,
                                    int max_tokens) {
  std::vector<Greedy> alone;
  for (const auto& p : prompts) alone.push_back(run_greedy(f, p, max_tokens));
  std::vector<std::future<Greedy>> futures;
  for (const auto& p : prompts)
    futures.push_back(std::async(std::launch::async,
                                 [&f, &p, max_tokens] { return run_greedy(f, p, max_tokens); }));
  for (size_t i = 0; i < prompts.size(); ++i) {
    Greedy together = futures[i].get();
    EXPECT_EQ(together.tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(together.logprobs, alone[i].logprobs) << "request " << i;
  }
}

TEST(ServerTest, ConcurrentRequestsMatchSequentialOnes) {
  ServerFixture f(2048);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 64; ++i) prompts.push_back(prompt_ids(3 + (i * 7) % 60, i));
  check_concurrent_matches_alone(f, prompts, 8);
  EXPECT_EQ(f.metric("vllm:num_preemptions_total"), 0);
}

TEST(ServerTest, PreemptionKeepsOutputsIdentical) {
  // 24 blocks of 16 tokens: 16 requests growing to ~70 tokens cannot all fit.
  ServerFixture f(24);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 16; ++i) prompts.push_back(prompt_ids(20 + i * 3, 100 + i));
  check_concurrent_matches_alone(f, prompts, 40);
  EXPECT_GT(f.metric("vllm:num_preemptions_total"), 0);
}

TEST(ServerTest, SharedPrefixesHitThePrefixCache) {
  ServerFixture f(512);
  const std::vector<int32_t> shared = prompt_ids(48, 999);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 16; ++i) {
    std::vector<int32_t> p = shared;
    for (int32_t t : prompt_ids(1 + i, 500 + i)) p.push_back(t);
    prompts.push_back(p);
  }
  check_concurrent_matches_alone(f, prompts, 6);
  EXPECT_GT(f.metric("vllm:prefix_cache_hits_total"), 0);
  EXPECT_GT(f.metric("vllm:prefix_cache_queries_total"), f.metric("vllm:prefix_cache_hits_total"));
}

// cache_salt keeps tenants' prefixes apart: the same prompt hits the cache only under the same
// salt (or with none, only after an unsalted one).
TEST(ServerTest, CacheSaltSeparatesPrefixCaches) {
  ServerFixture f(512);
  const json prompt = prompt_ids(64, 4242);
  const auto cached = [&](const json& extra) {
    json body = {{"prompt", prompt}, {"max_tokens", 1}};
    body.update(extra);
    auto [status, j] = f.post("/v1/completions", body.dump());
    EXPECT_EQ(status, 200) << j.dump();
    return j["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>();
  };
  EXPECT_EQ(cached({{"cache_salt", "tenant-a"}}), 0);
  EXPECT_EQ(cached({{"cache_salt", "tenant-b"}}), 0);
  EXPECT_EQ(cached(json::object()), 0);
  EXPECT_EQ(cached({{"cache_salt", "tenant-a"}}), 48);  // 3 full blocks of 16 (one token left)
  EXPECT_EQ(cached(json::object()), 48);
  for (const char* bad : {R"("")", "7"}) {
    auto [status, j] =
        f.post("/v1/completions", std::string(R"({"prompt":"hi","cache_salt":)") + bad + "}");
    EXPECT_EQ(status, 400) << j.dump();
    EXPECT_EQ(j["error"]["param"], "cache_salt");
  }
}

TEST(ServerTest, DisconnectMidStreamFreesBlocks) {
  ServerFixture f(512);
  {
    auto c = f.client();
    int chunks = 0;
    json body = {
        {"prompt", prompt_ids(40, 3)}, {"max_tokens", 200}, {"stream", true}, {"ignore_eos", true}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    // Hang up after a few chunks.
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
    httplib::Response res;
    httplib::Error error;
    c.send(req, res, error);
    EXPECT_GE(chunks, 3);
  }
  double usage = 1;
  for (int i = 0; i < 200 && usage != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    usage = f.metric("vllm:kv_cache_usage_perc");
  }
  EXPECT_EQ(usage, 0);
  EXPECT_EQ(f.metric("vllm:num_requests_running"), 0);
  EXPECT_GE(f.metrics().find("finished_reason=\"abort\",model_name=\"tiny\"} 1"), 0u);
}

TEST(ServerTest, Holds256ConcurrentStreams) {
  ServerFixture f(4096, "", 256, 300);
  std::atomic<int> completed{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 256; ++i) {
    clients.emplace_back([&, i] {
      json body = {{"prompt", prompt_ids(4 + i % 13, i)},
                   {"max_tokens", 6},
                   {"stream", true},
                   {"ignore_eos", true}};
      auto res = f.client().Post("/v1/completions", body.dump(), "application/json");
      if (res && res->status == 200 && res->body.find("data: [DONE]") != std::string::npos)
        ++completed;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(completed.load(), 256);
  // /health stayed answerable and the engine is idle again.
  EXPECT_EQ(f.client().Get("/health")->status, 200);
  EXPECT_EQ(f.metric("vllm:num_requests_running"), 0);
}

TEST(ServerTest, MetricsHaveEveryVllmName) {
  ServerFixture f(256);
  f.post("/v1/completions", R"({"prompt":"hello","max_tokens":3})");
  const std::string text = f.metrics();
  for (const char* name : {"vllm:num_requests_running",
                           "vllm:num_requests_waiting",
                           "vllm:kv_cache_usage_perc",
                           "vllm:gpu_cache_usage_perc",
                           "vllm:prefix_cache_queries_total",
                           "vllm:prefix_cache_hits_total",
                           "vllm:num_preemptions_total",
                           "vllm:prompt_tokens_total",
                           "vllm:generation_tokens_total",
                           "vllm:request_success_total",
                           "vllm:time_to_first_token_seconds_bucket",
                           "vllm:inter_token_latency_seconds_bucket",
                           "vllm:time_per_output_token_seconds_bucket",
                           "vllm:e2e_request_latency_seconds_bucket",
                           "vllm:request_queue_time_seconds_bucket",
                           "vllm:request_prefill_time_seconds_bucket",
                           "vllm:request_decode_time_seconds_bucket",
                           "vllm:request_inference_time_seconds_bucket",
                           "vllm:request_prompt_tokens_bucket",
                           "vllm:request_generation_tokens_bucket",
                           "vllm:iteration_tokens_total_bucket",
                           "vllm:request_params_n_bucket",
                           "vllm:request_params_max_tokens_bucket",
                           "vllm:request_max_num_generation_tokens_bucket",
                           "vllm:spec_decode_num_drafts_total",
                           "vllm:spec_decode_num_draft_tokens_total",
                           "vllm:spec_decode_num_accepted_tokens_total",
                           "vllm:cache_config_info"})
    EXPECT_NE(text.find(std::string(name) + "{"), std::string::npos) << name;
  EXPECT_NE(text.find("model_name=\"tiny\""), std::string::npos);
  EXPECT_NE(text.find("vllm:time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"2560\"}"),
            std::string::npos);
  EXPECT_EQ(f.metric("vllm:generation_tokens_total"), 3);
  // The per-request histograms: n and the longest choice per prompt, max_tokens per choice,
  // and the tokens of every step adding up to the token counters.
  auto [status, two] =
      f.post("/v1/completions", R"({"prompt":"hi","max_tokens":4,"n":2,"ignore_eos":true})");
  ASSERT_EQ(status, 200) << two.dump();
  EXPECT_EQ(f.metric("vllm:request_params_n_count"), 2);
  EXPECT_EQ(f.metric("vllm:request_params_n_sum"), 1 + 2);
  EXPECT_EQ(f.metric("vllm:request_params_max_tokens_count"), 3);
  EXPECT_EQ(f.metric("vllm:request_params_max_tokens_sum"), 3 + 4 + 4);
  EXPECT_EQ(f.metric("vllm:request_max_num_generation_tokens_count"), 2);
  EXPECT_EQ(f.metric("vllm:request_max_num_generation_tokens_sum"), 3 + 4);
  EXPECT_EQ(f.metric("vllm:iteration_tokens_total_sum"),
            f.metric("vllm:prompt_tokens_total") + f.metric("vllm:generation_tokens_total"));
  EXPECT_GE(f.metric("vllm:iteration_tokens_total_count"), 4);  // at least one step per token
  // promtool, when tests/server/fetch_promtool.sh could fetch it.
  std::string promtool;
  if (const char* env = std::getenv("TESSERA_PROMTOOL"))
    promtool = env;
  else if (const char* home = std::getenv("HOME"))
    promtool = std::string(home) + "/.cache/tessera/promtool/usr/bin/promtool";
  if (!std::filesystem::exists(promtool) && std::system("command -v promtool >/dev/null") == 0)
    promtool = "promtool";
  else if (!std::filesystem::exists(promtool))
    GTEST_SKIP() << "promtool not available: run tests/server/fetch_promtool.sh";
  const auto path = testing::temp_dir("metrics") / "metrics.txt";
  std::ofstream(path) << text;
  const std::string cmd = promtool + " check metrics < " + path.string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = pclose(p);
  // Debian's promtool flags every name with ':' (vLLM's too), and vLLM's histogram named
  // iteration_tokens_total for its suffix; nothing else may appear.
  std::string other;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty() && line.find("metric names should not contain ':'") == std::string::npos &&
        line.find("vllm:iteration_tokens_total") == std::string::npos)
      other += line + "\n";
  EXPECT_EQ(other, "") << out;
  EXPECT_TRUE(WEXITSTATUS(rc) == 0 || WEXITSTATUS(rc) == 3) << out;
}

}  // namespace
}  // namespace tessera
