// The HTTP front end: vLLM's OpenAI-compatible API, /health, /version, /tokenize, /detokenize
// and /metrics, on cpp-httplib. Requests are validated here (400 with an OpenAI-shaped error),
// tokenized, fanned out into one engine request per choice and answered as JSON or as
// server-sent events while the AsyncEngine generates.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/sampling_params.h"
#include "server/async_engine.h"
#include "server/cors.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"
#include "server/reasoning_parser.h"
#include "server/text_processor.h"
#include "server/tool_parser.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace tessera {

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 8000;
  std::vector<std::string> served_model_names;  // the first one names the metrics
  std::string model_path;                       // shown as `root` in /v1/models
  std::string api_key;                          // empty: no key needed
  size_t max_body_bytes = 8u << 20;             // larger bodies get 413
  int http_threads = 512;  // one per open connection: streams hold theirs until done
  std::string version = "0.0.0";
  // vLLM's --trust-request-chat-template: without it a request's own chat template (Jinja
  // chosen by the client) is refused with 400.
  bool trust_request_chat_template = false;
  // --allowed-origins, --allowed-methods, --allowed-headers, --allow-credentials.
  CorsPolicy cors;
  // --enable-server-load-tracking: GET /load counts the generation requests being served.
  bool track_server_load = false;
  // --enable-request-id-headers: every response carries X-Request-Id (the request's, or new).
  bool request_id_headers = false;
};

// What the server needs from a loaded model.
struct ServingModel {
  AsyncEngine* engine = nullptr;
  EngineMetrics* metrics = nullptr;
  const TextProcessor* text = nullptr;  // null: token-id prompts only
  int64_t max_model_len = 0;
  int64_t vocab_size = 0;
  SamplingParams defaults;  // from generation_config.json
  // generation_config's max_new_tokens: max_tokens of a chat request that names none.
  std::optional<int64_t> default_max_tokens;
  // A cap on every request's max_tokens: max_new_tokens of --override-generation-config, or of
  // a --generation-config folder (vLLM's override_max_tokens).
  std::optional<int64_t> max_tokens_cap;
  std::vector<int32_t> eos_token_ids;  // the engine's (config and generation_config)
  // --enable-auto-tool-choice --tool-call-parser: parses tool_choice "auto" calls (null: off).
  const ToolParser* tool_parser = nullptr;
  // --reasoning-parser: splits <think>...</think> into reasoning_content (null: off).
  const ReasoningParser* reasoning_parser = nullptr;
  // --return-tokens-as-token-ids: logprobs name tokens "token_id:N" in every request.
  bool return_tokens_as_token_ids = false;
  // --enable-force-include-usage: every stream carries usage (per chunk and at the end).
  bool force_include_usage = false;
  // --response-role: the chat answer's role when the request adds the generation prompt.
  std::string response_role = "assistant";
  // --max-logprobs: the most logprobs / top_logprobs / prompt_logprobs asked for.
  int64_t max_logprobs = kMaxLogprobs;
  bool priority_scheduling = false;  // --scheduling-policy priority: requests' `priority` counts
  // --enable-log-requests: one INFO line per engine request (prompt, parameters, token ids),
  // prompt and ids cut to --max-log-len (-1: whole).
  bool log_requests = false;
  int64_t max_log_len = -1;
};

// Runs one non-streaming completions or chat request to the end (run-batch): the response body.
// Throws ApiError.
nlohmann::json run_request_blocking(const ServingModel& model,
                                    const std::vector<std::string>& served_model_names,
                                    const nlohmann::json& body, bool chat);

class OpenAIServer {
 public:
  explicit OpenAIServer(ServerOptions options);
  ~OpenAIServer();

  // Binds the port (throws tessera::Error when it cannot) and serves on a background thread.
  // Until set_ready(), /health and the API answer 503.
  void start();
  void set_ready(const ServingModel& model);
  // New generation requests get 503; running ones go on.
  void stop_accepting() { accepting_ = false; }
  // Waits (at most `timeout`) until every streamed response has been written to the end: the
  // engine finishing a request comes before its last events and [DONE] reach the socket.
  bool wait_responses_written(std::chrono::milliseconds timeout) const;
  // Closes the listener and joins the serving thread.
  void stop();
  int port() const { return bound_port_; }

 private:
  void install_routes();
  void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat);
  void handle_tokenize(const httplib::Request& req, httplib::Response& res);
  void handle_detokenize(const httplib::Request& req, httplib::Response& res);
  void handle_models(httplib::Response& res);
  const ServingModel& ready_model() const;  // throws ApiError(503) before set_ready

  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int bound_port_ = 0;
  std::atomic<bool> ready_{false};
  std::atomic<bool> accepting_{true};
  std::atomic<int64_t> open_streams_{0};  // streamed responses not yet fully written
  std::atomic<int64_t> server_load_{0};   // generation requests in progress (load tracking)
  ServingModel model_;
  int64_t created_ = 0;
};

}  // namespace tessera
