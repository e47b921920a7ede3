#include "server/openai_server.h"

#include "engine/structured_output.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <map>
#include <random>

#include "core/logging.h"
#include "core/sys.h"
#include "server/api_error.h"
#include "server/beam_search.h"
#include "server/openai_protocol.h"
#include "server/reasoning_parser.h"
#include "server/tool_parser.h"

namespace tessera {

namespace {

using nlohmann::json;
using Clock = std::chrono::system_clock;

// Generated text may end in the middle of a character; never let that break a response.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message,
                const std::string& param = "") {
  send_json(res, status, error_json(status, message, param));
}

std::mt19937_64& id_rng() {
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   std::hash<std::thread::id>()(std::this_thread::get_id()));
  return rng;
}

std::string random_id(const char* prefix) {
  return fmt::format("{}{:016x}{:016x}", prefix, id_rng()(), id_rng()());
}

// Mistral's tool call ids: 9 letters and digits (its chat templates check the length).
std::string mistral_call_id() {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string id;
  for (int i = 0; i < 9; ++i) id += kChars[id_rng()() % (sizeof kChars - 1)];
  return id;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
}

json parse_body(const httplib::Request& req) {
  try {
    return json::parse(req.body);
  } catch (const json::exception& e) {
    throw ApiError(400, fmt::format("Invalid JSON in the request body: {}", e.what()));
  }
}

// One choice of a response as it accumulates.
struct Choice {
  int64_t index = 0;
  int64_t prompt_index = 0;
  std::shared_ptr<RequestStream> stream;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<TokenLogprobs> logprobs;
  std::vector<TokenLogprobs> prompt_logprobs;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;
  int64_t num_prompt_tokens = 0;
  int64_t num_cached_tokens = 0;
  bool started = false;       // streaming: the first chunk (chat: the role) went out
  std::string tool_call_id;   // a named tool_choice's call, once its first delta went out
  size_t content_sent = 0;    // streaming with a parser: bytes of content text sent
  size_t reasoning_sent = 0;  // streaming with a reasoning parser: bytes of reasoning sent
  size_t calls_sent = 0;      // streaming tool_choice "auto": tool calls sent
  bool tools_called = false;  // tool_choice "auto": the parser found calls in the text
  bool done = false;
  size_t text_offset = 0;  // completions logprobs: characters before the next token

  void absorb(RequestOutput& out) {
    text += out.new_text;
    token_ids.insert(token_ids.end(), out.new_token_ids.begin(), out.new_token_ids.end());
    logprobs.insert(logprobs.end(), out.new_logprobs.begin(), out.new_logprobs.end());
    if (!out.prompt_logprobs.empty()) prompt_logprobs = out.prompt_logprobs;
    num_prompt_tokens = out.num_prompt_tokens;
    num_cached_tokens = out.num_cached_tokens;
    if (out.finished) {
      finish_reason = out.finish_reason;
      stop_reason = out.stop_reason;
      done = true;
    }
  }
};

// Everything a response needs besides the choices.
struct ResponseContext {
  std::string id;         // the response's id: the client's request id when it gave one
  std::string engine_id;  // always unique: the engine's request ids derive from it
  std::string model;
  int64_t created = 0;
  bool chat = false;
  GenerateRequest request;
  std::vector<std::string> prompt_texts;  // for echo
  std::vector<std::vector<int32_t>> prompt_ids;
  const TextProcessor* text = nullptr;
  AsyncEngine* engine = nullptr;
  const ToolParser* tool_parser = nullptr;            // tool_choice "auto" with --tool-call-parser
  const ReasoningParser* reasoning_parser = nullptr;  // chat with --reasoning-parser
  std::string role = "assistant";                     // of chat answers
  std::vector<Choice> choices;

  std::string token_string(int32_t id) const {
    if (!text || request.return_tokens_as_token_ids) return fmt::format("token_id:{}", id);
    const int32_t ids[1] = {id};
    return text->decode(ids, false);
  }

  json stop_reason_json(const Choice& c) const {
    if (c.stop_reason.empty()) return nullptr;
    // A stop token id is reported as a number, a stop string as the string.
    const auto& ids = request.params.stop_token_ids;
    char* end = nullptr;
    const long id = std::strtol(c.stop_reason.c_str(), &end, 10);
    if (*end == '\0' && std::find(ids.begin(), ids.end(), id) != ids.end()) return id;
    return c.stop_reason;
  }

  json finish_reason_json(const Choice& c) const {
    if (c.finish_reason == FinishReason::kNone) return nullptr;
    // tool_choice "required" that ended its list reports the calls, as vLLM does.
    if (request.tools_required && c.finish_reason == FinishReason::kStop && !c.text.empty())
      return "tool_calls";
    if (c.tools_called) return "tool_calls";  // tool_choice "auto" that called, as in vLLM
    return finish_reason_name(c.finish_reason);
  }

  static json tool_call(std::string id, const std::string& name, const std::string& arguments) {
    return {{"id", std::move(id)},
            {"type", "function"},
            {"function", {{"name", name}, {"arguments", arguments}}}};
  }

  // tool_choice "required": the generated list of {"name", "parameters"} as tool calls (null
  // if the text is not a complete list, e.g. cut by max_tokens).
  static json required_tool_calls(const std::string& text) {
    // Ordered: the arguments keep the model's key order, as Python's dicts do.
    const nlohmann::ordered_json list = nlohmann::ordered_json::parse(text, nullptr, false);
    if (!list.is_array()) return nullptr;
    json calls = json::array();
    for (const auto& call : list) {
      if (!call.is_object() || !call.contains("name") || !call["name"].is_string()) return nullptr;
      const auto params = call.find("parameters");
      calls.push_back(tool_call(
          random_id("chatcmpl-tool-"), call["name"].get<std::string>(),
          python_json_dumps(params != call.end() ? *params : nlohmann::ordered_json::object())));
    }
    return calls;
  }

  // tool_choice "auto": the calls the parser found, as the API's tool_calls.
  json parsed_tool_calls(const ToolCallParse& p) const {
    json calls = json::array();
    for (const ParsedToolCall& call : p.calls)
      calls.push_back(
          tool_call(tool_parser->short_call_ids() ? mistral_call_id() : random_id("chatcmpl-tool-"),
                    call.name, call.arguments));
    return calls;
  }

  // Completions logprobs for `entries` (prompt positions first when echoing).
  json completion_logprobs(Choice& c, size_t from, bool with_prompt) {
    json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
         offsets = json::array();
    auto add = [&](int32_t id, const TokenLogprobs* lp) {
      const std::string s = token_string(id);
      tokens.push_back(s);
      offsets.push_back(c.text_offset);
      c.text_offset += s.size();
      if (!lp) {
        token_logprobs.push_back(nullptr);
        top.push_back(nullptr);
        return;
      }
      token_logprobs.push_back(lp->logprob);
      json t = json::object();
      t[token_string(lp->token)] = lp->logprob;
      for (const auto& [tid, v] : lp->top) t[token_string(tid)] = v;
      top.push_back(t);
    };
    if (with_prompt) {
      const auto& ids = prompt_ids[c.prompt_index];
      for (size_t i = 0; i < ids.size(); ++i) {
        const TokenLogprobs* lp =
            i > 0 && i - 1 < c.prompt_logprobs.size() ? &c.prompt_logprobs[i - 1] : nullptr;
        add(ids[i], lp);
      }
    }
    for (size_t i = from; i < c.logprobs.size(); ++i) add(c.logprobs[i].token, &c.logprobs[i]);
    return {{"text_offset", offsets},
            {"token_logprobs", token_logprobs},
            {"tokens", tokens},
            {"top_logprobs", top}};
  }

  json chat_logprob_entry(int32_t id, float logprob) const {
    const std::string s = token_string(id);
    json bytes = json::array();
    for (unsigned char ch : s) bytes.push_back(ch);
    return {{"token", s}, {"logprob", logprob}, {"bytes", bytes}};
  }

  json chat_logprobs(const Choice& c, size_t from) const {
    json content = json::array();
    for (size_t i = from; i < c.logprobs.size(); ++i) {
      const TokenLogprobs& lp = c.logprobs[i];
      json entry = chat_logprob_entry(lp.token, lp.logprob);
      json top = json::array();
      for (const auto& [tid, v] : lp.top) top.push_back(chat_logprob_entry(tid, v));
      entry["top_logprobs"] = top;
      content.push_back(entry);
    }
    return {{"content", content}};
  }

  json prompt_logprobs_json(const Choice& c) const {
    if (!request.params.prompt_logprobs) return nullptr;
    json list = json::array();
    list.push_back(nullptr);
    for (const TokenLogprobs& lp : c.prompt_logprobs) {
      json pos = json::object();
      pos[std::to_string(lp.token)] = {
          {"logprob", lp.logprob}, {"rank", lp.rank}, {"decoded_token", token_string(lp.token)}};
      int64_t rank = 1;
      for (const auto& [tid, v] : lp.top) {
        if (!pos.contains(std::to_string(tid)))
          pos[std::to_string(tid)] = {
              {"logprob", v}, {"rank", rank}, {"decoded_token", token_string(tid)}};
        ++rank;
      }
      list.push_back(pos);
    }
    return list;
  }

  json usage() const {
    int64_t prompt = 0, completion = 0, cached = 0;
    std::vector<bool> counted(prompt_ids.size(), false);
    for (const Choice& c : choices) {
      completion += static_cast<int64_t>(c.token_ids.size());
      if (!counted[c.prompt_index]) {
        counted[c.prompt_index] = true;
        prompt += static_cast<int64_t>(prompt_ids[c.prompt_index].size());
        cached += c.num_cached_tokens;
      }
    }
    return {{"prompt_tokens", prompt},
            {"total_tokens", prompt + completion},
            {"completion_tokens", completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
  }

  json envelope(const char* object) const {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}};
  }

  json full_response() {
    json out = envelope(chat ? "chat.completion" : "text_completion");
    json list = json::array();
    for (Choice& c : choices) {
      json choice = {{"index", c.index}};
      if (chat) {
        std::string content = c.text;
        if (request.echo) content = prompt_texts[c.prompt_index] + content;
        json calls = json::array();
        json content_json = content;
        json reasoning_json = nullptr;
        std::string answer = c.text;  // the text the tool parser reads
        if (reasoning_parser) {
          ReasoningSplit split = reasoning_parser->split(c.text);
          if (split.reasoning) reasoning_json = *split.reasoning;
          content_json = split.content ? json(*split.content) : json(nullptr);
          answer = split.content.value_or("");
        }
        if (tool_parser) {
          ToolCallParse p = tool_parser->parse(answer);
          if (p.called) {
            c.tools_called = true;
            calls = parsed_tool_calls(p);
            content_json = p.content ? json(*p.content) : json(nullptr);
          } else if (p.content && !p.content->empty()) {
            content_json = *p.content;
          }
        } else if (request.forced_tool) {
          calls.push_back(tool_call(random_id("chatcmpl-tool-"), *request.forced_tool, c.text));
          content_json = "";
        } else if (request.tools_required) {
          if (json parsed = required_tool_calls(c.text); !parsed.is_null()) {
            calls = std::move(parsed);
            content_json = "";
          }
        }
        choice["message"] = {{"role", role},
                             {"content", content_json},
                             {"reasoning_content", reasoning_json},
                             {"tool_calls", calls}};
        choice["logprobs"] = request.logprobs ? chat_logprobs(c, 0) : json();
      } else {
        choice["text"] = (request.echo ? prompt_texts[c.prompt_index] : "") + c.text;
        choice["logprobs"] = request.logprobs ? completion_logprobs(c, 0, request.echo) : json();
      }
      choice["finish_reason"] = finish_reason_json(c);
      choice["stop_reason"] = stop_reason_json(c);
      if (request.params.prompt_logprobs) choice["prompt_logprobs"] = prompt_logprobs_json(c);
      list.push_back(choice);
    }
    out["choices"] = list;
    out["usage"] = usage();
    return out;
  }

  // tool_choice "auto", streaming: text the parser says is content whatever follows goes out as
  // content; the rest waits. At the end the whole text is parsed: the calls not yet sent, or,
  // if there are none, the held-back text as content.
  void auto_tool_delta(Choice& c, const std::string& text, json& delta) {
    std::string content;
    json calls = json::array();
    // Calls complete before the end (hermes: each closed <tool_call>) go out at once, each whole
    // and numbered in order.
    auto send_from = [&](const ToolCallParse& p) {
      if (p.calls.size() <= c.calls_sent) return;
      ToolCallParse rest;
      rest.calls.assign(p.calls.begin() + static_cast<std::ptrdiff_t>(c.calls_sent), p.calls.end());
      json more = parsed_tool_calls(rest);
      for (size_t i = 0; i < more.size(); ++i) {
        more[i]["index"] = c.calls_sent + i;
        calls.push_back(std::move(more[i]));
      }
      c.calls_sent = p.calls.size();
      c.tools_called = true;
    };
    if (!c.done) {
      const size_t settled = std::max(c.content_sent, tool_parser->settled_content(text));
      content = text.substr(c.content_sent, settled - c.content_sent);
      c.content_sent = settled;
      send_from(tool_parser->completed_calls(text));
    } else {
      ToolCallParse p = tool_parser->parse(text);
      if (p.called) {
        const std::string before = p.content.value_or("");
        if (before.size() > c.content_sent) content = before.substr(c.content_sent);
        send_from(p);
      } else if (c.calls_sent == 0 && text.size() > c.content_sent) {
        content = text.substr(c.content_sent);
      }
      c.content_sent = text.size();
    }
    if (!content.empty()) delta["content"] = content;
    if (!calls.empty()) delta["tool_calls"] = std::move(calls);
  }

  // Streaming with a reasoning parser: what is settled of the reasoning goes out as
  // reasoning_content, and what is settled of the answer as content (through the tool parser
  // when there is one).
  void parsed_delta(Choice& c, json& delta) {
    std::string answer = c.text;
    if (reasoning_parser) {
      ReasoningParser::Progress p = reasoning_parser->progress(c.text, c.done);
      if (p.reasoning.size() > c.reasoning_sent) {
        delta["reasoning_content"] = p.reasoning.substr(c.reasoning_sent);
        c.reasoning_sent = p.reasoning.size();
      }
      answer = std::move(p.content);
    }
    if (tool_parser) {
      auto_tool_delta(c, answer, delta);
    } else if (answer.size() > c.content_sent) {
      delta["content"] = answer.substr(c.content_sent);
      c.content_sent = answer.size();
    }
  }

  // The chunk for one choice's new outputs (streaming).
  json chunk(Choice& c, const std::string& new_text, size_t logprobs_from, bool first) {
    json out = envelope(chat ? "chat.completion.chunk" : "text_completion");
    json choice = {{"index", c.index}};
    if (chat) {
      json delta = json::object();
      if (first) delta["role"] = role;
      if (tool_parser || reasoning_parser) {
        if (first)
          delta["content"] = new_text;
        else
          parsed_delta(c, delta);
      } else if (first || (!new_text.empty() && !request.forced_tool && !request.tools_required)) {
        delta["content"] = new_text;
      }
      if (request.forced_tool && !new_text.empty() && !first) {
        // The call's id, type and name come with its first arguments, then arguments only.
        json call = {{"index", 0}, {"function", {{"arguments", new_text}}}};
        if (c.tool_call_id.empty()) {
          c.tool_call_id = random_id("chatcmpl-tool-");
          call["id"] = c.tool_call_id;
          call["type"] = "function";
          call["function"]["name"] = *request.forced_tool;
        }
        delta["tool_calls"] = json::array({call});
      }
      if (request.tools_required && c.done) {
        // The list is only known once complete: every call in the last chunk.
        json calls = required_tool_calls(c.text);
        if (calls.is_null()) {
          delta["content"] = c.text;  // not a complete list: the text as it is
        } else {
          for (size_t i = 0; i < calls.size(); ++i) calls[i]["index"] = i;
          delta["tool_calls"] = calls;
        }
      }
      choice["delta"] = delta;
      choice["logprobs"] = request.logprobs && logprobs_from < c.logprobs.size()
                               ? chat_logprobs(c, logprobs_from)
                               : json();
    } else {
      choice["text"] = new_text;
      choice["logprobs"] =
          request.logprobs ? completion_logprobs(c, logprobs_from, first && request.echo) : json();
    }
    choice["finish_reason"] = finish_reason_json(c);
    choice["stop_reason"] = stop_reason_json(c);
    if (first && request.params.prompt_logprobs)
      choice["prompt_logprobs"] = prompt_logprobs_json(c);
    out["choices"] = json::array({choice});
    if (request.continuous_usage) out["usage"] = usage();
    return out;
  }

  void abort_all() {
    for (Choice& c : choices)
      if (!c.done) engine->abort(c.stream->request_id());
  }
};

std::string sse(const json& j) {
  return "data: " + dump(j) + "\n\n";
}

}  // namespace

namespace {
// The routes install_routes() adds, with their methods (HEAD goes with GET), for 405 answers.
std::string_view allowed_methods(const std::string& path) {
  static const std::pair<std::string_view, std::string_view> kRoutes[] = {
      {"/health", "GET, HEAD"},         {"/ping", "GET, HEAD, POST"}, {"/version", "GET, HEAD"},
      {"/metrics", "GET, HEAD"},        {"/v1/models", "GET, HEAD"},  {"/v1/completions", "POST"},
      {"/v1/chat/completions", "POST"}, {"/tokenize", "POST"},        {"/detokenize", "POST"},
      {"/load", "GET, HEAD"},           {"/invocations", "POST"}};
  for (const auto& [route, methods] : kRoutes)
    if (route == path) return methods;
  return {};
}
}  // namespace

namespace {

bool is_cors_preflight(const httplib::Request& req) {
  return req.method == "OPTIONS" && req.has_header("Origin") &&
         req.has_header("Access-Control-Request-Method");
}

}  // namespace

OpenAIServer::OpenAIServer(ServerOptions options) : options_(std::move(options)) {
  if (options_.served_model_names.empty()) options_.served_model_names = {options_.model_path};
  created_ = unix_now();
  http_ = std::make_unique<httplib::Server>();
  install_routes();
}

OpenAIServer::~OpenAIServer() {
  stop();
}

void OpenAIServer::start() {
  const int threads = options_.http_threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(options_.max_body_bytes);
  http_->set_keep_alive_max_count(100000);
  http_->set_read_timeout(600, 0);
  http_->set_write_timeout(600, 0);
  // The library listens with a backlog of 5, too few for hundreds of clients connecting at
  // once: remember the listening socket and raise its backlog after binding.
  auto listen_fd = std::make_shared<int>(-1);
  http_->set_socket_options([listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    *listen_fd = sock;
  });
  if (options_.port == 0) {
    bound_port_ = http_->bind_to_any_port(options_.host);
    if (bound_port_ < 0) fail("cannot listen on {}", options_.host);
  } else {
    if (!http_->bind_to_port(options_.host, options_.port))
      fail("cannot listen on {}:{} (in use, or not an address of this machine)", options_.host,
           options_.port);
    bound_port_ = options_.port;
  }
  if (*listen_fd >= 0) ::listen(*listen_fd, 4096);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  spdlog::info("listening on http://{}:{}", options_.host, bound_port_);
}

void OpenAIServer::set_ready(const ServingModel& model) {
  model_ = model;
  ready_ = true;
}

bool OpenAIServer::wait_responses_written(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (open_streams_ > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

void OpenAIServer::stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

const ServingModel& OpenAIServer::ready_model() const {
  if (!ready_) throw ApiError(503, "the model is still loading");
  return model_;
}

void OpenAIServer::install_routes() {
  httplib::Server& s = *http_;
  // CORS preflights are answered before anything else, as vLLM's CORSMiddleware does. The API
  // key guards /v1/* only and never an OPTIONS request (as in vLLM).
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (is_cors_preflight(req)) {
      const CorsPreflight answer =
          cors_preflight(options_.cors, req.get_header_value("Origin"),
                         req.get_header_value("Access-Control-Request-Method"),
                         req.get_header_value("Access-Control-Request-Headers"),
                         req.has_header("Access-Control-Request-Headers"));
      for (const auto& [name, value] : answer.headers) res.set_header(name, value);
      res.status = answer.status;
      res.set_content(answer.body, "text/plain; charset=utf-8");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (options_.api_key.empty() || req.method == "OPTIONS" || req.path.rfind("/v1/", 0) != 0)
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string expected = "Bearer " + options_.api_key;
    if (req.get_header_value("Authorization") == expected)
      return httplib::Server::HandlerResponse::Unhandled;
    send_json(res, 401,
              {{"error",
                {{"message", "Unauthorized: a valid API key is required"},
                 {"type", "AuthenticationError"},
                 {"param", nullptr},
                 {"code", 401}}}});
    return httplib::Server::HandlerResponse::Handled;
  });
  // Every other answer to a request from a page of another origin says whether the page may
  // read it (errors and streams included).
  s.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.request_id_headers) {
      const std::string id = req.get_header_value("X-Request-Id");
      res.set_header("X-Request-Id", id.empty() ? random_id("").substr(0, 32) : id);
    }
    if (!req.has_header("Origin") || is_cors_preflight(req)) return;
    for (const auto& [name, value] : cors_response_headers(
             options_.cors, req.get_header_value("Origin"), req.has_header("Cookie")))
      res.set_header(name, value);
  });
  // Errors httplib produces itself (unknown path, body too large) get OpenAI-shaped bodies. A
  // known path asked with another method is 405 with an Allow header, as vLLM answers.
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                              httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string_view allowed = allowed_methods(req.path);
    if (res.status == 404 && !allowed.empty()) {
      res.status = 405;
      res.set_header("Allow", std::string(allowed));
    }
    std::string message =
        res.status == 413 ? "the request body is too large"
        : res.status == 405
            ? fmt::format("Method Not Allowed: {} {} (allowed: {})", req.method, req.path, allowed)
        : res.status == 404 ? fmt::format("{} {} not found", req.method, req.path)
                            : fmt::format("HTTP {}", res.status);
    send_json(res, res.status, error_json(res.status, message));
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        try {
          std::rethrow_exception(ep);
        } catch (const ApiError& e) {
          send_json(res, e.status(), e.to_json());
        } catch (const Error& e) {
          send_error(res, status_for_error_kind(e.kind()), e.what());
        } catch (const std::exception& e) {
          spdlog::error("request failed: {}", e.what());
          send_error(res, 500, fmt::format("internal error: {}", e.what()));
        } catch (...) {
          send_error(res, 500, "internal error");
        }
      });

  // 503 while loading, after an engine fault, and once shutdown has begun (SIGTERM, including
  // the one mpirun sends when another rank has died): load balancers stop routing here.
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ok = ready_ && accepting_ && model_.engine->healthy();
    res.status = ok ? 200 : 503;
  });
  // /ping answers GET and POST, as vLLM's (SageMaker's health check posts).
  const auto ping = [this](const httplib::Request&, httplib::Response& res) {
    res.status = ready_ && accepting_ && model_.engine->healthy() ? 200 : 503;
  };
  s.Get("/ping", ping);
  s.Post("/ping", ping);
  // vLLM's /load: generation requests in progress with --enable-server-load-tracking, else 0.
  s.Get("/load", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"server_load", server_load_.load()}});
  });
  // SageMaker's entry point, as vLLM routes it: by the body's shape.
  s.Post("/invocations", [this](const httplib::Request& req, httplib::Response& res) {
    const json body = json::parse(req.body, nullptr, false);
    if (body.is_object() && body.contains("messages")) return handle_generate(req, res, true);
    if (body.is_object() && body.contains("prompt")) return handle_generate(req, res, false);
    throw ApiError(400,
                   "Cannot find suitable handler for request. Expected one of: a chat "
                   "completion request (messages) or a completion request (prompt)");
  });
  s.Get("/version", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"version", options_.version}});
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(ready_ && model_.metrics ? model_.metrics->serialize() : "",
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  s.Get("/v1/models",
        [this](const httplib::Request&, httplib::Response& res) { handle_models(res); });
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, false);
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, true);
  });
  s.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    handle_tokenize(req, res);
  });
  s.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    handle_detokenize(req, res);
  });
}

void OpenAIServer::handle_models(httplib::Response& res) {
  const ServingModel& m = ready_model();
  json data = json::array();
  for (const std::string& name : options_.served_model_names) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", created_},
                    {"owned_by", "tessera"},
                    {"root", options_.model_path},
                    {"parent", nullptr},
                    {"max_model_len", m.max_model_len}});
  }
  send_json(res, 200, {{"object", "list"}, {"data", data}});
}

namespace {

// vLLM's rule: a chat template sent with the request (`chat_template`, or inside
// `chat_template_kwargs`) runs only when the operator trusts request templates.
void check_request_chat_template(const json& body, bool trusted) {
  if (trusted || !body.is_object()) return;
  const auto kw = body.find("chat_template_kwargs");
  const bool in_kwargs = kw != body.end() && kw->is_object() && kw->contains("chat_template") &&
                         !(*kw)["chat_template"].is_null();
  const auto ct = body.find("chat_template");
  if ((ct != body.end() && !ct->is_null()) || in_kwargs)
    throw ApiError(400,
                   "Chat template is passed with request, but --trust-request-chat-template is not "
                   "set. Refused request with untrusted chat template.",
                   "chat_template");
}

}  // namespace

void OpenAIServer::handle_tokenize(const httplib::Request& req, httplib::Response& res) {
  const ServingModel& m = ready_model();
  if (!m.text) throw ApiError(400, "this model folder has no tokenizer.json");
  json body = parse_body(req);
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");
  std::vector<int32_t> ids;
  if (body.contains("messages")) {
    check_request_chat_template(body, options_.trust_request_chat_template);
    GenerateRequest r = parse_chat_request(body, m.defaults, m.max_logprobs);
    const std::string prompt = m.text->render_chat(r.chat_inputs);
    ids = m.text->encode(prompt, r.add_special_tokens);
  } else {
    auto it = body.find("prompt");
    if (it == body.end() || !it->is_string())
      throw ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt");
    bool add_special = true;
    if (auto a = body.find("add_special_tokens"); a != body.end()) {
      if (!a->is_boolean()) throw ApiError(400, "'add_special_tokens' must be a boolean");
      add_special = a->get<bool>();
    }
    ids = m.text->encode(it->get<std::string>(), add_special);
  }
  json strs = nullptr;
  if (body.value("return_token_strs", false)) {
    strs = json::array();
    for (int32_t id : ids) {
      const int32_t one[1] = {id};
      strs.push_back(m.text->decode(one, false));
    }
  }
  send_json(res, 200,
            {{"count", ids.size()},
             {"max_model_len", m.max_model_len},
             {"tokens", ids},
             {"token_strs", strs}});
}

void OpenAIServer::handle_detokenize(const httplib::Request& req, httplib::Response& res) {
  const ServingModel& m = ready_model();
  if (!m.text) throw ApiError(400, "this model folder has no tokenizer.json");
  json body = parse_body(req);
  if (!body.is_object() || !body.contains("tokens") || !body["tokens"].is_array())
    throw ApiError(400, "'tokens' (a list of token ids) is required", "tokens");
  std::vector<int32_t> ids;
  for (const json& t : body["tokens"]) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= m.vocab_size)
      throw ApiError(400, fmt::format("token id {} is outside the vocabulary", t.dump()), "tokens");
    ids.push_back(t.get<int32_t>());
  }
  send_json(res, 200, {{"prompt", m.text->decode(ids, false)}});
}

namespace {

// --enable-log-requests: what vLLM's request logger writes, the prompt and its ids cut to
// --max-log-len.
void log_request(const ServingModel& m, const std::string& request_id, const PromptInput& prompt,
                 const std::vector<int32_t>& ids, const SamplingParams& p) {
  const size_t cap = m.max_log_len < 0 ? SIZE_MAX : static_cast<size_t>(m.max_log_len);
  std::string text = prompt.text ? prompt.text->substr(0, std::min(cap, prompt.text->size())) : "";
  // Not inside a character.
  while (!text.empty() && prompt.text && text.size() < prompt.text->size() &&
         (static_cast<unsigned char>((*prompt.text)[text.size()]) & 0xC0) == 0x80)
    text.pop_back();
  const std::vector<int32_t> shown(ids.begin(), ids.begin() + std::min(cap, ids.size()));
  spdlog::info(
      "Received request {}: prompt: {}, params: SamplingParams(temperature={}, top_p={}, "
      "top_k={}, min_p={}, seed={}, max_tokens={}, min_tokens={}, stop={}, logprobs={}, "
      "priority={}), prompt_token_ids: [{}]",
      request_id,
      prompt.text ? json(text).dump(-1, ' ', false, json::error_handler_t::replace) : "None",
      p.temperature, p.top_p, p.top_k, p.min_p, p.seed ? std::to_string(*p.seed) : "None",
      p.max_tokens, p.min_tokens, json(p.stop).dump(-1, ' ', false, json::error_handler_t::replace),
      p.logprobs ? std::to_string(*p.logprobs) : "None", p.priority, fmt::join(shown, ", "));
}

// What beam search does not combine with is refused rather than ignored.
void check_beam_search(const ServingModel& m, const GenerateRequest& r) {
  const auto refuse = [](const char* what, const std::string& param) {
    throw ApiError(400, fmt::format("{} is not supported with use_beam_search", what), param);
  };
  if (r.json_schema || !r.choices.empty() || r.regex)
    refuse("structured output", r.structured_field);
  if (r.auto_tools) refuse("tool_choice \"auto\"", "tool_choice");
  if (!r.params.stop.empty()) refuse("stop", "stop");
  if (!r.params.stop_token_ids.empty()) refuse("stop_token_ids", "stop_token_ids");
  if (r.params.prompt_logprobs) refuse("prompt_logprobs", "prompt_logprobs");
  if (r.params.min_tokens > 0) refuse("min_tokens", "min_tokens");
  if (2 * r.n > m.max_logprobs)
    throw ApiError(400,
                   fmt::format("beam search with n = {} asks for {} logprobs a step, more than "
                               "--max-logprobs {}",
                               r.n, 2 * r.n, m.max_logprobs),
                   "n");
}

// The request's prompt `p` searched with n beams through the engine; each beam becomes a
// finished choice whose stream already holds its whole output.
void run_beam_search(const ServingModel& m, ResponseContext& ctx, size_t p,
                     const SamplingParams& params) {
  const GenerateRequest& r = ctx.request;
  BeamSearchParams bp;
  bp.beam_width = r.n;
  bp.max_tokens = params.max_tokens;
  bp.ignore_eos = params.ignore_eos;
  bp.length_penalty = r.length_penalty;
  bp.include_stop_str_in_output = params.include_stop_str_in_output;
  bp.max_model_len = m.max_model_len;
  // One token per beam and step with the top 2n log-probabilities; temperature, top-k and the
  // rest pick the sampled token, which joins the candidates (first, as in vLLM's dict).
  SamplingParams step = params;
  step.max_tokens = 1;
  step.ignore_eos = true;
  const int64_t width2 = 2 * r.n;  // candidates per beam and step
  step.logprobs = static_cast<int>(std::max<int64_t>(width2, r.logprobs.value_or(0)));
  int64_t step_index = 0;
  // Each expanded beam's step: what the response's logprobs are built from.
  std::map<std::vector<int32_t>, TokenLogprobs> steps;
  const BeamExpander expand = [&](const std::vector<std::vector<int32_t>>& beams) {
    std::vector<std::shared_ptr<RequestStream>> streams;
    try {
      for (size_t i = 0; i < beams.size(); ++i)
        streams.push_back(m.engine->submit(
            fmt::format("{}-{}-beam-{}-{}", ctx.engine_id, p, step_index, i), beams[i], step));
    } catch (const Error& e) {
      for (const auto& s : streams) m.engine->abort(s->request_id());
      throw ApiError(status_for_error_kind(e.kind()), e.what());
    }
    ++step_index;
    std::vector<BeamCandidates> out(beams.size());
    for (size_t i = 0; i < beams.size(); ++i) {
      while (!streams[i]->done()) {
        for (RequestOutput& o : streams[i]->wait(std::chrono::milliseconds(500))) {
          if (o.new_logprobs.empty()) continue;
          const TokenLogprobs& lp = o.new_logprobs.front();
          out[i].emplace_back(lp.token, lp.logprob);
          for (size_t t = 0; t < lp.top.size() && t < static_cast<size_t>(width2); ++t)
            if (lp.top[t].first != lp.token) out[i].emplace_back(lp.top[t]);
          if (r.logprobs) steps[beams[i]] = lp;
        }
        if (auto err = streams[i]->error()) {
          for (const auto& s : streams) m.engine->abort(s->request_id());
          throw ApiError(status_for_error_kind(err->kind()), err->what());
        }
      }
    }
    return out;
  };
  const std::vector<int32_t>& prompt = ctx.prompt_ids[p];
  const std::vector<Beam> beams = beam_search(prompt, bp, m.eos_token_ids, expand);
  for (size_t i = 0; i < beams.size(); ++i) {
    const Beam& b = beams[i];
    Choice c;
    c.index = static_cast<int64_t>(p) * r.n + static_cast<int64_t>(i);
    c.prompt_index = static_cast<int64_t>(p);
    RequestOutput o;
    o.request_id = fmt::format("{}-{}", ctx.engine_id, c.index);
    o.new_token_ids.assign(b.tokens.begin() + static_cast<std::ptrdiff_t>(prompt.size()),
                           b.tokens.end());
    // The text leaves a completing EOS out even when its id is kept.
    std::vector<int32_t> text_ids = o.new_token_ids;
    if (b.ended_by_eos && !text_ids.empty() && text_ids.back() == b.eos) text_ids.pop_back();
    if (m.text) o.new_text = m.text->decode(text_ids, params.skip_special_tokens);
    o.finished = true;
    o.finish_reason = b.ended_by_eos ? FinishReason::kStop : FinishReason::kLength;
    if (b.ended_by_eos) o.stop_reason = std::to_string(b.eos);
    o.num_prompt_tokens = static_cast<int64_t>(prompt.size());
    o.num_output_tokens = static_cast<int64_t>(o.new_token_ids.size());
    if (r.logprobs) {
      // Per output token: its log-probability and rank at its step, and the step's top k.
      std::vector<int32_t> prefix = prompt;
      for (int32_t token : o.new_token_ids) {
        const TokenLogprobs& at = steps.at(prefix);
        TokenLogprobs lp;
        lp.token = token;
        lp.logprob = at.logprob;
        lp.rank = at.rank;
        if (token != at.token) {
          const auto it = std::find_if(at.top.begin(), at.top.end(),
                                       [&](const auto& e) { return e.first == token; });
          lp.logprob = it->second;
          lp.rank = (it - at.top.begin()) + 1;
        }
        lp.top.assign(at.top.begin(),
                      at.top.begin() + std::min<size_t>(at.top.size(), *r.logprobs));
        o.new_logprobs.push_back(std::move(lp));
        prefix.push_back(token);
      }
    }
    c.stream = std::make_shared<RequestStream>(o.request_id);
    c.stream->push(std::move(o));
    ctx.choices.push_back(std::move(c));
  }
}

// Validates, tokenizes and submits one request: one engine request per choice.
// `request_id_header`: the request's X-Request-Id (empty: none).
std::shared_ptr<ResponseContext> start_generation(const ServingModel& m,
                                                  const std::vector<std::string>& names,
                                                  const json& body, bool chat,
                                                  const std::string& request_id_header = "") {
  auto ctx = std::make_shared<ResponseContext>();
  ctx->request = chat ? parse_chat_request(body, m.defaults, m.max_logprobs)
                      : parse_completion_request(body, m.defaults, m.max_logprobs);
  GenerateRequest& r = ctx->request;
  if (m.return_tokens_as_token_ids) r.return_tokens_as_token_ids = true;
  if (m.force_include_usage && r.stream) r.include_usage = r.continuous_usage = true;
  // vLLM's get_chat_request_role: --response-role when the prompt asks for an answer, else
  // the role of the message being continued.
  if (chat) {
    const auto& messages = r.chat_inputs.messages;
    ctx->role = r.chat_inputs.add_generation_prompt || messages.empty() ||
                        !messages.back().contains("role") || !messages.back()["role"].is_string()
                    ? m.response_role
                    : messages.back()["role"].get<std::string>();
  }
  if (r.model && std::find(names.begin(), names.end(), *r.model) == names.end())
    throw ApiError(404, fmt::format("The model `{}` does not exist.", *r.model), "model");
  if (r.params.priority != 0 && !m.priority_scheduling)
    throw ApiError(400,
                   fmt::format("Got priority {} but Priority scheduling is not enabled "
                               "(--scheduling-policy priority)",
                               r.params.priority),
                   "priority");
  ctx->chat = chat;
  ctx->model = r.model.value_or(names.front());
  // vLLM's rule: the X-Request-Id header, else the body's request_id, else a random id.
  const char* prefix = chat ? "chatcmpl-" : "cmpl-";
  ctx->engine_id = random_id(prefix);
  std::string client_id = request_id_header;
  if (client_id.empty() && body.contains("request_id")) {
    if (!body["request_id"].is_string())
      throw ApiError(400, "'request_id' must be a string", "request_id");
    client_id = body["request_id"].get<std::string>();
  }
  ctx->id = client_id.empty() ? ctx->engine_id : prefix + client_id;
  ctx->created = unix_now();
  ctx->text = m.text;
  ctx->engine = m.engine;
  if (chat && r.auto_tools) {
    if (!m.tool_parser)
      throw ApiError(400,
                     "\"auto\" tool choice requires --enable-auto-tool-choice and "
                     "--tool-call-parser to be set");
    ctx->tool_parser = m.tool_parser;
    // The parsers whose markers are special tokens read them in the text, as vLLM's do.
    if (m.tool_parser->keeps_special_tokens()) r.params.skip_special_tokens = false;
  }
  // Reasoning is split out of free answers (a forced tool call or list is all arguments).
  if (chat && m.reasoning_parser && !r.forced_tool && !r.tools_required &&
      m.reasoning_parser->applies(r.chat_inputs.kwargs))
    ctx->reasoning_parser = m.reasoning_parser;

  // Prompts to token ids.
  if (chat) {
    if (!m.text) throw ApiError(400, "this model folder has no tokenizer.json: chat needs one");
    std::string prompt;
    try {
      prompt = m.text->render_chat(r.chat_inputs);
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "messages");
    }
    r.prompts = {PromptInput{prompt, {}}};
  }
  if (!m.text && !r.params.stop.empty())
    throw ApiError(400, "stop strings need a tokenizer; this model folder has none", "stop");
  for (PromptInput& p : r.prompts) {
    if (p.text) {
      if (!m.text)
        throw ApiError(400, "this model folder has no tokenizer.json: send token ids", "prompt");
      p.ids = m.text->encode(*p.text, r.add_special_tokens);
      if (p.ids.empty()) throw ApiError(400, "the prompt is empty after tokenization", "prompt");
    }
    if (r.truncate_prompt_tokens) {
      const int64_t keep =
          *r.truncate_prompt_tokens < 0 ? m.max_model_len : *r.truncate_prompt_tokens;
      if (static_cast<int64_t>(p.ids.size()) > keep) {
        p.ids.erase(p.ids.begin(), p.ids.end() - keep);
        p.text.reset();  // the echoed prompt is the truncated one
      }
    }
    for (int32_t id : p.ids)
      if (id >= m.vocab_size)
        throw ApiError(
            400, fmt::format("token id {} is outside the vocabulary (size {})", id, m.vocab_size),
            "prompt");
    const int64_t len = static_cast<int64_t>(p.ids.size());
    if (len >= m.max_model_len)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your "
                                 "request has {} input tokens. Please reduce the length of the "
                                 "input messages.",
                                 m.max_model_len, len),
                     chat ? "messages" : "prompt");
    if (r.max_tokens_set && len + r.params.max_tokens > m.max_model_len)
      throw ApiError(
          400,
          fmt::format("This model's maximum context length is {} tokens. However, you "
                      "requested {} tokens ({} in the messages, {} in the completion). "
                      "Please reduce the length of the messages or completion.",
                      m.max_model_len, len + r.params.max_tokens, len, r.params.max_tokens),
          chat ? "max_tokens" : "max_tokens");
    ctx->prompt_ids.push_back(p.ids);
    ctx->prompt_texts.push_back(p.text ? *p.text : (m.text ? m.text->decode(p.ids, false) : ""));
  }
  try {
    r.params.validate(m.vocab_size);
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  if (r.params.min_tokens > r.params.max_tokens && r.max_tokens_set)
    throw ApiError(400, "min_tokens must be at most max_tokens", "min_tokens");
  if (r.json_schema || !r.choices.empty() || r.regex) {
    if (!m.text)
      throw ApiError(400, "structured output needs the model's tokenizer (tokenizer.json)",
                     r.structured_field);
    try {
      r.params.grammar = r.json_schema ? Grammar::from_json_schema(*r.json_schema, !r.compact_json)
                         : r.regex     ? Grammar::regex(*r.regex)
                                       : Grammar::choice(r.choices);
    } catch (const Error& e) {
      throw ApiError(400, e.what(), r.structured_field);
    }
    r.params.grammar_vocab = m.text->token_vocabulary(m.eos_token_ids);
  }

  if (r.use_beam_search) check_beam_search(m, r);

  // One engine request per choice (beam search: one per beam and step, run here).
  for (size_t p = 0; p < ctx->prompt_ids.size(); ++p) {
    SamplingParams params = r.params;
    const int64_t len = static_cast<int64_t>(ctx->prompt_ids[p].size());
    // vLLM's get_max_tokens: the request's, else (chat) generation_config's max_new_tokens,
    // else what the context leaves; never past the context or the override's cap.
    if (!r.max_tokens_set && chat)
      params.max_tokens = m.default_max_tokens.value_or(m.max_model_len - len);
    params.max_tokens = std::min(params.max_tokens, m.max_model_len - len);
    if (m.max_tokens_cap) params.max_tokens = std::min(params.max_tokens, *m.max_tokens_cap);
    if (r.use_beam_search) {
      run_beam_search(m, *ctx, p, params);
      continue;
    }
    auto group = std::make_shared<ChoiceGroup>(r.n);
    for (int64_t i = 0; i < r.n; ++i) {
      Choice c;
      c.index = static_cast<int64_t>(p) * r.n + i;
      c.prompt_index = static_cast<int64_t>(p);
      SamplingParams choice_params = params;
      // Distinct seeds so that n > 1 seeded choices differ yet reproduce.
      if (choice_params.seed) *choice_params.seed += static_cast<uint64_t>(i);
      const std::string request_id = fmt::format("{}-{}", ctx->engine_id, c.index);
      if (m.log_requests)
        log_request(m, request_id, r.prompts[p], ctx->prompt_ids[p], choice_params);
      try {
        c.stream = m.engine->submit(request_id, ctx->prompt_ids[p], choice_params, group);
      } catch (const Error& e) {
        ctx->abort_all();
        throw ApiError(status_for_error_kind(e.kind()), e.what());
      }
      ctx->choices.push_back(std::move(c));
    }
  }

  return ctx;
}

void collect(ResponseContext& ctx) {
  for (Choice& c : ctx.choices) {
    while (!c.done) {
      for (RequestOutput& out : c.stream->wait(std::chrono::milliseconds(500))) c.absorb(out);
      if (auto err = c.stream->error()) {
        ctx.abort_all();
        throw ApiError(status_for_error_kind(err->kind()), err->what());
      }
    }
  }
}

}  // namespace

json run_request_blocking(const ServingModel& model, const std::vector<std::string>& names,
                          const json& body, bool chat) {
  if (body.is_object() && body.contains("stream") && body["stream"] == true)
    throw ApiError(400, "stream is not available in batch requests", "stream");
  std::shared_ptr<ResponseContext> ctx = start_generation(model, names, body, chat);
  collect(*ctx);
  return ctx->full_response();
}

void OpenAIServer::handle_generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const ServingModel& m = ready_model();
  if (!accepting_) throw ApiError(503, "the server is shutting down");
  // Counted until the response is complete: here for a whole answer (or an error), in the
  // stream's release for a stream.
  struct LoadGuard {
    std::atomic<int64_t>* load;
    ~LoadGuard() {
      if (load) --*load;
    }
  } load{options_.track_server_load ? &server_load_ : nullptr};
  if (load.load) ++server_load_;
  const json body = parse_body(req);
  if (chat) check_request_chat_template(body, options_.trust_request_chat_template);
  std::shared_ptr<ResponseContext> ctx = start_generation(
      m, options_.served_model_names, body, chat, req.get_header_value("X-Request-Id"));
  const GenerateRequest& r = ctx->request;
  if (!r.stream) {
    collect(*ctx);
    send_json(res, 200, ctx->full_response());
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  ++open_streams_;
  const bool tracked = load.load != nullptr;
  if (tracked) ++server_load_;  // the stream's own count; the guard's ends with this function
  res.set_chunked_content_provider(
      "text/event-stream",
      [ctx](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        // Writes the chunks for what a choice's stream produced; false when the client is gone.
        auto emit = [&](Choice& c, std::vector<RequestOutput>& outs) {
          for (RequestOutput& out : outs) {
            const size_t lp_from = c.logprobs.size();
            const bool first = !c.started;
            c.absorb(out);
            c.started = true;
            std::string text = out.new_text;
            if (first && ctx->request.echo) text = ctx->prompt_texts[c.prompt_index] + text;
            // A chunk per engine step that produced tokens, even when they add no text yet (a
            // special token, half a character), as vLLM does: clients time tokens by chunks.
            if (text.empty() && out.new_token_ids.empty() && out.new_logprobs.empty() &&
                !out.finished && !first)
              continue;
            if (!write(sse(ctx->chunk(c, text, lp_from, first)))) return false;
          }
          if (auto err = c.stream->error(); err && !c.done) {
            c.done = true;
            return write(sse(error_json(status_for_error_kind(err->kind()), err->what())));
          }
          return true;
        };
        if (ctx->chat) {
          for (Choice& c : ctx->choices) {
            if (c.started) continue;
            c.started = true;
            if (!write(sse(ctx->chunk(c, "", 0, true)))) return false;
          }
        }
        bool any = false;
        for (Choice& c : ctx->choices) {
          if (c.done) continue;
          std::vector<RequestOutput> outs = c.stream->wait(std::chrono::milliseconds(0));
          any |= !outs.empty();
          if (!emit(c, outs)) return false;
        }
        Choice* pending = nullptr;
        for (Choice& c : ctx->choices)
          if (!c.done) {
            pending = &c;
            break;
          }
        if (pending) {
          if (!any) {
            // Nothing new anywhere: block briefly on one unfinished choice; the provider is
            // called again at once, so the others are polled too.
            std::vector<RequestOutput> outs = pending->stream->wait(std::chrono::milliseconds(20));
            if (!emit(*pending, outs)) return false;
          }
          return true;
        }
        if (ctx->request.include_usage) {
          json usage = ctx->envelope(ctx->chat ? "chat.completion.chunk" : "text_completion");
          usage["choices"] = json::array();
          usage["usage"] = ctx->usage();
          if (!write(sse(usage))) return false;
        }
        write("data: [DONE]\n\n");
        sink.done();
        return true;
      },
      [ctx, this, tracked](bool success) {
        // The client went away (or the write failed): free the blocks now.
        if (!success) ctx->abort_all();
        if (tracked) --server_load_;
        --open_streams_;  // httplib calls this once the response is written (or abandoned)
      });
}

}  // namespace tessera
