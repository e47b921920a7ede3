// tessera run-batch: the OpenAI batch file format through the same engine as the server
// (continuous batching: every line is in flight at once). A malformed line yields an error line
// for its custom_id and the run goes on.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/logging.h"
#include "core/status.h"
#include "core/sys.h"
#include "distributed/world.h"
#include "server/api_error.h"
#include "server/loaded_model.h"
#include "server/openai_server.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

struct RunBatchOptions {
  EngineFlags engine;
  std::string input, output;
  std::vector<std::string> served_model_names;
  std::string chat_template;
  int concurrency = 0;
};

std::string random_hex() {
  static std::mt19937_64 rng(std::random_device{}());
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

json error_line(const json& custom_id, int status, const std::string& message) {
  return {
      {"id", "batch_req_" + random_hex()},
      {"custom_id", custom_id},
      {"response",
       {{"status_code", status}, {"request_id", nullptr}, {"body", error_json(status, message)}}},
      {"error", {{"code", error_type_for_status(status)}, {"message", message}}}};
}

// One input line to one output line; never throws.
json process_line(const std::string& line, const ServingModel& model,
                  const std::vector<std::string>& names) {
  json in = json::parse(line, nullptr, false);
  if (in.is_discarded() || !in.is_object())
    return error_line(nullptr, 400, "the line is not a JSON object");
  json custom_id = in.contains("custom_id") ? in["custom_id"] : json();
  try {
    if (!custom_id.is_string()) throw ApiError(400, "'custom_id' (a string) is required");
    const std::string method = in.value("method", "POST");
    if (method != "POST") throw ApiError(400, "'method' must be POST");
    if (!in.contains("url") || !in["url"].is_string())
      throw ApiError(400, "'url' must be /v1/chat/completions or /v1/completions");
    const std::string url = in["url"];
    bool chat;
    if (url == "/v1/chat/completions")
      chat = true;
    else if (url == "/v1/completions")
      chat = false;
    else
      throw ApiError(400, fmt::format("url {} is not supported (/v1/chat/completions, "
                                      "/v1/completions)",
                                      url));
    if (!in.contains("body") || !in["body"].is_object())
      throw ApiError(400, "'body' must be a JSON object");
    json body = in["body"];
    if (!body.contains("model")) body["model"] = names.front();
    json response = run_request_blocking(model, names, body, chat);
    const std::string request_id = response.value("id", "");
    return {{"id", "batch_req_" + random_hex()},
            {"custom_id", custom_id},
            {"response", {{"status_code", 200}, {"request_id", request_id}, {"body", response}}},
            {"error", nullptr}};
  } catch (const ApiError& e) {
    return error_line(custom_id, e.status(), e.what());
  } catch (const Error& e) {
    return error_line(custom_id, status_for_error_kind(e.kind()), e.what());
  } catch (const std::exception& e) {
    return error_line(custom_id, 500, e.what());
  }
}

void run_batch(const RunBatchOptions& o) {
  EngineArgs args = to_engine_args(o.engine);
  if (launcher_rank() > 0) {
    // Another rank of a tp/pp job: only rank 0 reads and writes the files.
    EngineInstance::create(args);
    return;
  }
  std::vector<std::string> lines;
  {
    std::ifstream in(o.input);
    if (!in) fail(ErrorKind::kNotFound, "cannot read the batch file {}", o.input);
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  }
  std::FILE* out = o.output == "-" ? stdout : std::fopen(o.output.c_str(), "w");
  if (!out) fail("cannot write {}", o.output);
  std::vector<std::string> names = o.served_model_names;
  if (names.empty()) names = {o.engine.model};
  std::unique_ptr<LoadedModel> loaded = LoadedModel::load(args, names.front(), o.chat_template);
  const ServingModel model = loaded->serving();

  // Every line in flight at once (up to --concurrency threads); output in input order.
  std::vector<std::string> results(lines.size());
  std::atomic<size_t> next{0}, done{0};
  const int workers = static_cast<int>(std::min<size_t>(
      lines.size(), o.concurrency > 0 ? o.concurrency : std::max<int64_t>(args.max_num_seqs, 1)));
  const bool tty = isatty(fileno(stderr));
  std::mutex progress_mu;
  const double start = now_seconds();
  auto progress = [&](bool final) {
    std::lock_guard lock(progress_mu);
    const size_t d = done;
    const int width = 30;
    const int filled = lines.empty() ? width : static_cast<int>(width * d / lines.size());
    std::fprintf(stderr, "\rrun-batch [%s%s] %zu/%zu %.1fs%s", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), d, lines.size(), now_seconds() - start,
                 final ? "\n" : "");
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      for (size_t i; (i = next++) < lines.size();) {
        results[i] = process_line(lines[i], model, names)
                         .dump(-1, ' ', false, json::error_handler_t::replace);
        ++done;
        if (tty) progress(false);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (tty) progress(true);
  size_t failed = 0;
  for (const std::string& r : results) {
    std::fprintf(out, "%s\n", r.c_str());
    failed += r.find("\"error\":null") == std::string::npos;
  }
  if (out != stdout) std::fclose(out);
  spdlog::info("run-batch: {} requests, {} failed, {:.1f} s", lines.size(), failed,
               now_seconds() - start);
}

}  // namespace

void add_run_batch_command(CLI::App& app) {
  auto o = std::make_shared<RunBatchOptions>();
  CLI::App* cmd =
      app.add_subcommand("run-batch", "Run an OpenAI batch file (JSONL) through the engine");
  add_engine_flags(cmd, o->engine);
  cmd->add_option("-i,--input-file", o->input, "Input JSONL")->required();
  cmd->add_option("-o,--output-file", o->output, "Output JSONL (- for stdout)")->required();
  cmd->add_option("--served-model-name", o->served_model_names, "Model id(s) requests may name");
  cmd->add_option("--chat-template", o->chat_template, "Chat template file or inline Jinja");
  cmd->add_option("--concurrency", o->concurrency,
                  "Requests in flight at once (default: --max-num-seqs)");
  cmd->callback([o] { run_batch(*o); });
}

}  // namespace tessera::cli
