// tessera serve: the OpenAI-compatible server (`vllm serve` flags). The port opens at once and
// answers 503 while the model loads; SIGTERM (or Ctrl-C) stops accepting, lets in-flight
// requests finish (bounded by --shutdown-timeout) and exits 0.
#include <pthread.h>
#include <signal.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/logging.h"
#include "core/status.h"
#include "core/sys.h"
#include "distributed/world.h"
#include "server/loaded_model.h"
#include "server/openai_server.h"

namespace tessera::cli {

namespace {

struct ServeOptions {
  EngineFlags engine;
  std::string host = "0.0.0.0";
  int port = 8000;
  std::vector<std::string> served_model_names;
  std::string api_key;
  std::string chat_template;
  bool trust_request_chat_template = false;
  bool enable_auto_tool_choice = false;
  std::string tool_call_parser;
  std::string reasoning_parser;
  double shutdown_timeout = 30;
  std::string max_request_body = "8MiB";
  bool return_tokens_as_token_ids = false;
  bool enable_force_include_usage = false;
  std::string response_role = "assistant";
  std::string allowed_origins = "[\"*\"]";
  std::string allowed_methods = "[\"*\"]";
  std::string allowed_headers = "[\"*\"]";
  bool allow_credentials = false;
  bool enable_log_requests = false;
  int64_t max_log_len = -1;
  bool disable_log_stats = false;
  bool enable_server_load_tracking = false;
  bool enable_request_id_headers = false;
};

// Signals arrive on one waiting thread instead of interrupting arbitrary ones.
class ShutdownSignal {
 public:
  ShutdownSignal() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);  // before any thread starts: all inherit it
    std::thread([this] {
      int sig = 0;
      sigwait(&set_, &sig);
      spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      {
        std::lock_guard lock(mu_);
        requested_ = true;
      }
      cv_.notify_all();
    }).detach();
  }
  bool requested() {
    std::lock_guard lock(mu_);
    return requested_;
  }
  // True when shutdown was requested within `timeout`.
  bool wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return requested_; });
  }

 private:
  sigset_t set_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool requested_ = false;
};

void run_serve(ServeOptions& o) {
  if (o.port < 0 || o.port > 65535) fail("--port must be between 0 and 65535, got {}", o.port);
  if (o.shutdown_timeout < 0) fail("--shutdown-timeout must be non-negative");
  if (o.api_key.empty())
    if (const char* key = std::getenv("VLLM_API_KEY")) o.api_key = key;
  if (o.enable_auto_tool_choice && o.tool_call_parser.empty())
    fail("--enable-auto-tool-choice requires --tool-call-parser");
  std::unique_ptr<ToolParser> tool_parser;
  if (!o.tool_call_parser.empty()) tool_parser = ToolParser::create(o.tool_call_parser);
  std::unique_ptr<ReasoningParser> reasoning_parser;
  if (!o.reasoning_parser.empty()) reasoning_parser = ReasoningParser::create(o.reasoning_parser);
  CorsPolicy cors;
  cors.allowed_origins = parse_cors_list("--allowed-origins", o.allowed_origins);
  cors.allowed_methods = parse_cors_list("--allowed-methods", o.allowed_methods);
  cors.allowed_headers = parse_cors_list("--allowed-headers", o.allowed_headers);
  cors.allow_credentials = o.allow_credentials;
  EngineArgs args = to_engine_args(o.engine);  // validates flags before the port opens
  if (launcher_rank() > 0) {
    // Another rank of a tp/pp job: no port; it runs steps until rank 0 stops (never returns).
    // SIGTERM/SIGINT reach every rank through mpirun: rank 0 drains its requests and then stops
    // the others, so they must not die first.
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    EngineInstance::create(args);
    return;
  }

  ShutdownSignal signal;
  ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.served_model_names = o.served_model_names;
  if (so.served_model_names.empty()) so.served_model_names = {o.engine.model};
  so.model_path = args.model.string();
  so.api_key = o.api_key;
  so.max_body_bytes = static_cast<size_t>(parse_bytes(o.max_request_body, "--max-request-body"));
  so.version = TESSERA_VERSION;
  so.trust_request_chat_template = o.trust_request_chat_template;
  so.cors = cors;
  so.track_server_load = o.enable_server_load_tracking;
  so.request_id_headers = o.enable_request_id_headers;
  OpenAIServer server(so);
  server.start();

  std::unique_ptr<LoadedModel> loaded =
      LoadedModel::load(args, so.served_model_names.front(), o.chat_template);
  AsyncEngine& async = loaded->engine();
  ServingModel serving = loaded->serving();
  // As in vLLM, a parser without --enable-auto-tool-choice parses nothing ("auto" is a 400).
  if (o.enable_auto_tool_choice) serving.tool_parser = tool_parser.get();
  serving.reasoning_parser = reasoning_parser.get();
  serving.return_tokens_as_token_ids = o.return_tokens_as_token_ids;
  serving.force_include_usage = o.enable_force_include_usage;
  serving.response_role = o.response_role;
  serving.log_requests = o.enable_log_requests;
  serving.max_log_len = o.max_log_len;
  server.set_ready(serving);
  spdlog::info("ready: serving {} on http://{}:{}", fmt::join(so.served_model_names, ", "), so.host,
               server.port());

  // Periodic throughput log, like vLLM's.
  EngineStats last = async.stats();
  double last_time = now_seconds();
  while (!signal.wait_for(std::chrono::seconds(10))) {
    if (o.disable_log_stats) continue;
    const EngineStats s = async.stats();
    const double now = now_seconds();
    if (s.prompt_tokens != last.prompt_tokens || s.generation_tokens != last.generation_tokens ||
        s.num_running || s.num_waiting) {
      const double dt = std::max(now - last_time, 1e-9);
      spdlog::info(
          "Avg prompt throughput: {:.1f} tokens/s, Avg generation throughput: {:.1f} tokens/s, "
          "Running: {} reqs, Waiting: {} reqs, KV cache usage: {:.1f}%, Prefix cache hit rate: "
          "{:.1f}%",
          (s.prompt_tokens - last.prompt_tokens) / dt,
          (s.generation_tokens - last.generation_tokens) / dt, s.num_running, s.num_waiting,
          100 * s.kv_cache_usage,
          s.prefix_cache_queries ? 100.0 * s.prefix_cache_hits / s.prefix_cache_queries : 0.0);
    }
    last = s;
    last_time = now;
  }
  server.stop_accepting();
  async.stop_accepting();
  const int64_t in_flight = async.num_unfinished();
  if (in_flight > 0) {
    spdlog::info("waiting up to {:.0f} s for {} in-flight requests", o.shutdown_timeout, in_flight);
    if (!async.wait_idle(
            std::chrono::milliseconds(static_cast<int64_t>(o.shutdown_timeout * 1000))))
      spdlog::warn("{} requests still running at the shutdown timeout", async.num_unfinished());
  }
  // Let finished streams write their last events and [DONE] before the sockets close.
  server.wait_responses_written(std::chrono::seconds(2));
  server.stop();
  spdlog::info("shut down");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd =
      app.add_subcommand("serve", "Serve a model over the OpenAI API (like vllm serve)");
  add_engine_flags(cmd, o->engine, /*model_positional=*/true);
  cmd->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "Port (0: any free port)")->capture_default_str();
  cmd->add_option("--served-model-name", o->served_model_names,
                  "Model id(s) in the API (default: the --model value)");
  cmd->add_option("--api-key", o->api_key, "Bearer token required on /v1/* (env VLLM_API_KEY)");
  cmd->add_option("--chat-template", o->chat_template,
                  "Chat template file or inline Jinja (default: the tokenizer's)");
  cmd->add_flag("--trust-request-chat-template", o->trust_request_chat_template,
                "Let requests bring their own chat_template (refused with 400 otherwise)");
  cmd->add_flag("--enable-auto-tool-choice", o->enable_auto_tool_choice,
                "Parse tool calls out of the output for tool_choice \"auto\" (needs "
                "--tool-call-parser)");
  cmd->add_option("--tool-call-parser", o->tool_call_parser,
                  "hermes (Qwen, Hermes), llama3_json (Llama 3.1-3.3), mistral or pythonic (Llama "
                  "3.2, Llama 4)");
  cmd->add_option("--reasoning-parser", o->reasoning_parser,
                  "deepseek_r1 or qwen3: <think>...</think> goes to reasoning_content");
  cmd->add_option("--shutdown-timeout", o->shutdown_timeout,
                  "Seconds to let in-flight requests finish on SIGTERM")
      ->capture_default_str();
  cmd->add_option("--max-request-body", o->max_request_body, "Largest request body (413 beyond)")
      ->capture_default_str();
  cmd->add_flag("--return-tokens-as-token-ids", o->return_tokens_as_token_ids,
                "Logprobs name tokens \"token_id:N\" (as the request field does)");
  cmd->add_flag("--enable-force-include-usage", o->enable_force_include_usage,
                "Every stream carries usage, whatever stream_options says");
  cmd->add_option("--response-role", o->response_role,
                  "Role of the chat answer when the request adds the generation prompt")
      ->capture_default_str();
  cmd->add_option("--allowed-origins", o->allowed_origins,
                  "CORS: origins whose pages may call the API (JSON list)")
      ->capture_default_str();
  cmd->add_option("--allowed-methods", o->allowed_methods, "CORS: methods allowed (JSON list)")
      ->capture_default_str();
  cmd->add_option("--allowed-headers", o->allowed_headers,
                  "CORS: request headers allowed (JSON list)")
      ->capture_default_str();
  cmd->add_flag("--allow-credentials", o->allow_credentials,
                "CORS: let pages send cookies and credentials");
  cmd->add_flag("--enable-log-requests,!--no-enable-log-requests", o->enable_log_requests,
                "Log each request's prompt, parameters and token ids (INFO)");
  cmd->add_flag(std::string("--disable-log-requests"))
      ->description("Older vLLM spelling: requests are not logged (the default)");
  cmd->add_option("--max-log-len", o->max_log_len,
                  "Longest prompt (characters) and token id list a request log shows (-1: all)")
      ->capture_default_str();
  cmd->add_flag("--disable-log-stats", o->disable_log_stats,
                "No periodic throughput log (the /metrics endpoint stays)");
  cmd->add_flag("--enable-server-load-tracking", o->enable_server_load_tracking,
                "GET /load reports the generation requests in progress");
  cmd->add_flag("--enable-request-id-headers", o->enable_request_id_headers,
                "Responses carry X-Request-Id (the request's, or a new one)");
  // Flags the public recipes pass that change nothing here.
  auto noop = std::make_shared<std::string>();
  for (const char* flag :
       {"--trust-remote-code", "--enable-reasoning", "--disable-custom-all-reduce",
        "--enable-chunked-prefill", "--disable-frontend-multiprocessing",
        "--disable-uvicorn-access-log", "--disable-fastapi-docs", "--enable-prompt-tokens-details",
        "--async-scheduling"})
    cmd->add_flag(std::string(flag))->description("Accepted for vLLM compatibility; no effect");
  // (--revision and its kin name hub revisions: tessera reads local folders only.)
  for (const char* flag :
       {"--swap-space", "--uvicorn-log-level", "--tokenizer-mode", "--download-dir", "--revision",
        "--tokenizer-revision", "--code-revision", "--root-path", "--max-seq-len-to-capture",
        "--max-parallel-loading-workers", "--compilation-config"})
    cmd->add_option(flag, *noop, "Accepted for vLLM compatibility; no effect");
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace tessera::cli
