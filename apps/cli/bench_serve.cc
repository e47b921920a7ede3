// tessera bench serve: a load generator for any OpenAI-compatible server (tessera, vLLM), like
// `vllm bench serve` with the random dataset: streaming completions with random token-id prompts
// (fixed lengths, or uniform in a range; optionally after a shared prefix), Poisson arrivals
// (or all at once), an optional concurrency cap; reports
// request and token throughput and TTFT / TPOT / ITL / end-to-end latency statistics.
#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "apps/cli/commands.h"
#include "core/status.h"
#include "core/sys.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

struct ServeBenchFlags {
  std::string base_url = "http://127.0.0.1:8000";
  std::string endpoint = "/v1/completions";
  std::string model;
  std::string api_key;
  int num_prompts = 100;
  std::string request_rate = "inf";
  int max_concurrency = 0;
  int random_input_len = 1024;
  int random_output_len = 128;
  double random_range_ratio = 0;  // lengths uniform in [len * (1 - r), len * (1 + r)]
  int random_prefix_len = 0;      // tokens shared by every prompt, before its own
  int vocab = 0;                  // ids are drawn from [100, vocab); 0: 32000
  bool ignore_eos = false;
  uint64_t seed = 0;
  bool json_out = false;
};

struct RequestResult {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  int64_t prompt_tokens = 0, output_tokens = 0;
  std::vector<double> itl;
};

struct Url {
  std::string scheme_host_port;
  std::string path_prefix;
};

Url split_url(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) fail("--base-url must look like http://host:port, got {}", url);
  const size_t path = url.find('/', scheme + 3);
  Url u;
  u.scheme_host_port = url.substr(0, path);
  u.path_prefix = path == std::string::npos ? "" : url.substr(path);
  while (!u.path_prefix.empty() && u.path_prefix.back() == '/') u.path_prefix.pop_back();
  return u;
}

struct BenchRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 0;
};

RequestResult run_one(const ServeBenchFlags& f, const Url& url, const std::string& model,
                      const BenchRequest& request) {
  RequestResult r;
  httplib::Client client(url.scheme_host_port);
  client.set_read_timeout(3600, 0);
  client.set_connection_timeout(30, 0);
  json body = {{"model", model},
               {"prompt", request.prompt},
               {"max_tokens", request.max_tokens},
               {"temperature", 0},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}},
               {"ignore_eos", f.ignore_eos}};
  httplib::Request req;
  req.method = "POST";
  req.path = url.path_prefix + f.endpoint;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  if (!f.api_key.empty()) req.set_header("Authorization", "Bearer " + f.api_key);
  std::string buffer;
  const double start = now_seconds();
  double last = 0;
  int64_t chunks = 0;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      event.erase(0, 6);
      if (event == "[DONE]") continue;
      json j = json::parse(event, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        r.error = j["error"].value("message", "error event");
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        r.prompt_tokens = j["usage"].value("prompt_tokens", 0);
        r.output_tokens = j["usage"].value("completion_tokens", 0);
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const double now = now_seconds();
      if (chunks == 0)
        r.ttft = now - start;
      else
        r.itl.push_back(now - last);
      last = now;
      ++chunks;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err;
  if (!client.send(req, res, err)) {
    r.error = "connection failed: " + httplib::to_string(err);
    return r;
  }
  if (res.status != 200) {
    // The body went to the content receiver.
    const std::string& body = res.body.empty() ? buffer : res.body;
    r.error = fmt::format("HTTP {}: {}", res.status, body.substr(0, 300));
    return r;
  }
  r.e2e = now_seconds() - start;
  r.ok = r.error.empty() && chunks > 0;
  if (r.ok && r.output_tokens == 0) r.output_tokens = chunks;
  return r;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

void run_serve_bench(const ServeBenchFlags& f) {
  if (f.num_prompts < 1) fail("--num-prompts must be at least 1");
  if (f.random_input_len < 1 || f.random_output_len < 1)
    fail("--random-input-len and --random-output-len must be at least 1");
  if (!(f.random_range_ratio >= 0 && f.random_range_ratio < 1))
    fail("--random-range-ratio must be in [0, 1), got {}", f.random_range_ratio);
  if (f.random_prefix_len < 0) fail("--random-prefix-len must not be negative");
  double rate = 0;
  if (f.request_rate != "inf") {
    char* end = nullptr;
    rate = std::strtod(f.request_rate.c_str(), &end);
    if (*end != '\0' || !(rate > 0)) fail("--request-rate must be a positive number or inf");
  }
  const Url url = split_url(f.base_url);
  std::string model = f.model;
  {
    httplib::Client client(url.scheme_host_port);
    httplib::Headers headers;
    if (!f.api_key.empty()) headers.emplace("Authorization", "Bearer " + f.api_key);
    auto res = client.Get(url.path_prefix + "/v1/models", headers);
    if (!res) fail(ErrorKind::kUnavailable, "cannot reach {}", f.base_url);
    if (res->status != 200) fail("GET /v1/models answered {}", res->status);
    if (model.empty()) model = json::parse(res->body)["data"][0]["id"];
  }
  const int vocab = f.vocab > 0 ? f.vocab : 32000;
  std::mt19937_64 rng(f.seed);
  std::uniform_int_distribution<int32_t> token(100, vocab - 1);
  // As vllm bench serve's random dataset: each length uniform in [len * (1 - r), len * (1 + r)]
  // (at least 1), the shared prefix before each prompt's own tokens.
  auto length = [&](int len) {
    const int lo = std::max(1, static_cast<int>(std::floor(len * (1 - f.random_range_ratio))));
    const int hi = std::max(lo, static_cast<int>(std::ceil(len * (1 + f.random_range_ratio))));
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  std::vector<int32_t> prefix(f.random_prefix_len);
  for (auto& t : prefix) t = token(rng);
  std::vector<BenchRequest> requests(f.num_prompts);
  for (auto& r : requests) {
    r.prompt = prefix;
    const int own = length(f.random_input_len);
    for (int i = 0; i < own; ++i) r.prompt.push_back(token(rng));
    r.max_tokens = length(f.random_output_len);
  }

  std::vector<RequestResult> results(f.num_prompts);
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  std::vector<std::thread> threads;
  std::exponential_distribution<double> gap(rate > 0 ? rate : 1.0);
  const double start = now_seconds();
  for (int i = 0; i < f.num_prompts; ++i) {
    if (f.max_concurrency > 0) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return in_flight < f.max_concurrency; });
    }
    {
      std::lock_guard lock(mu);
      ++in_flight;
    }
    threads.emplace_back([&, i] {
      results[i] = run_one(f, url, model, requests[i]);
      {
        std::lock_guard lock(mu);
        --in_flight;
      }
      cv.notify_all();
    });
    if (rate > 0) std::this_thread::sleep_for(std::chrono::duration<double>(gap(rng)));
  }
  for (auto& t : threads) t.join();
  const double duration = now_seconds() - start;

  std::vector<double> ttft, tpot, itl, e2e;
  int64_t ok = 0, input_tokens = 0, output_tokens = 0;
  std::string first_error;
  for (const RequestResult& r : results) {
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    ++ok;
    input_tokens += r.prompt_tokens;
    output_tokens += r.output_tokens;
    ttft.push_back(r.ttft * 1e3);
    e2e.push_back(r.e2e * 1e3);
    if (r.output_tokens > 1) tpot.push_back((r.e2e - r.ttft) / (r.output_tokens - 1) * 1e3);
    for (double x : r.itl) itl.push_back(x * 1e3);
  }
  json out = {{"model", model},
              {"num_prompts", f.num_prompts},
              {"request_rate", f.request_rate},
              {"max_concurrency", f.max_concurrency},
              {"random_input_len", f.random_input_len},
              {"random_output_len", f.random_output_len},
              {"random_range_ratio", f.random_range_ratio},
              {"random_prefix_len", f.random_prefix_len},
              {"completed", ok},
              {"failed", f.num_prompts - ok},
              {"duration_s", duration},
              {"total_input_tokens", input_tokens},
              {"total_output_tokens", output_tokens},
              {"request_throughput", ok / duration},
              {"output_throughput", output_tokens / duration},
              {"total_token_throughput", (input_tokens + output_tokens) / duration}};
  auto stats = [&](const char* name, const std::vector<double>& v) {
    out[fmt::format("mean_{}_ms", name)] = mean(v);
    out[fmt::format("median_{}_ms", name)] = percentile(v, 50);
    out[fmt::format("p99_{}_ms", name)] = percentile(v, 99);
  };
  stats("ttft", ttft);
  stats("tpot", tpot);
  stats("itl", itl);
  stats("e2el", e2e);
  if (!first_error.empty()) out["first_error"] = first_error;
  if (f.json_out) {
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("============ Serving Benchmark Result ============\n");
  std::printf("%-40s %d\n", "Successful requests:", static_cast<int>(ok));
  if (ok < f.num_prompts) std::printf("%-40s %s\n", "First error:", first_error.c_str());
  std::printf("%-40s %.2f\n", "Benchmark duration (s):", duration);
  std::printf("%-40s %lld\n", "Total input tokens:", static_cast<long long>(input_tokens));
  std::printf("%-40s %lld\n", "Total generated tokens:", static_cast<long long>(output_tokens));
  std::printf("%-40s %.2f\n", "Request throughput (req/s):", ok / duration);
  std::printf("%-40s %.2f\n", "Output token throughput (tok/s):", output_tokens / duration);
  std::printf("%-40s %.2f\n",
              "Total token throughput (tok/s):", (input_tokens + output_tokens) / duration);
  for (const char* name : {"ttft", "tpot", "itl", "e2el"}) {
    std::printf("%-40s %.2f\n", fmt::format("Mean {} (ms):", name).c_str(),
                out[fmt::format("mean_{}_ms", name)].get<double>());
    std::printf("%-40s %.2f\n", fmt::format("Median {} (ms):", name).c_str(),
                out[fmt::format("median_{}_ms", name)].get<double>());
    std::printf("%-40s %.2f\n", fmt::format("P99 {} (ms):", name).c_str(),
                out[fmt::format("p99_{}_ms", name)].get<double>());
  }
  std::printf("==================================================\n");
  if (ok == 0) fail(ErrorKind::kUnavailable, "no request succeeded: {}", first_error);
}

}  // namespace

void add_bench_serve_command(CLI::App& bench) {
  auto f = std::make_shared<ServeBenchFlags>();
  CLI::App* cmd = bench.add_subcommand("serve", "Load-test an OpenAI-compatible server");
  cmd->add_option("--base-url", f->base_url, "Server URL")->capture_default_str();
  cmd->add_option("--endpoint", f->endpoint, "Completions endpoint")->capture_default_str();
  cmd->add_option("--model", f->model, "Model id (default: the server's first)");
  cmd->add_option("--api-key", f->api_key, "Bearer token");
  cmd->add_option("--num-prompts", f->num_prompts, "Requests to send")->capture_default_str();
  cmd->add_option("--request-rate", f->request_rate, "Requests/s (Poisson) or inf")
      ->capture_default_str();
  cmd->add_option("--max-concurrency", f->max_concurrency,
                  "Requests in flight at most (0: no cap)");
  cmd->add_option("--random-input-len", f->random_input_len, "Prompt tokens")
      ->capture_default_str();
  cmd->add_option("--random-output-len", f->random_output_len, "Output tokens")
      ->capture_default_str();
  cmd->add_option("--random-range-ratio", f->random_range_ratio,
                  "Input and output lengths uniform in [len * (1 - r), len * (1 + r)], r in [0, 1)")
      ->capture_default_str();
  cmd->add_option("--random-prefix-len", f->random_prefix_len,
                  "Tokens of one random prefix put before every prompt")
      ->capture_default_str();
  cmd->add_option("--random-vocab", f->vocab, "Draw prompt ids below this (default 32000)");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "Always generate --random-output-len tokens");
  cmd->add_option("--seed", f->seed, "Prompt seed")->capture_default_str();
  cmd->add_flag("--json", f->json_out, "Print the results as JSON");
  cmd->callback([f] { run_serve_bench(*f); });
}

}  // namespace tessera::cli
