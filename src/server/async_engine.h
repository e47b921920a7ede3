// Runs the engine on its own thread for many concurrent callers (the HTTP handlers): callers
// submit requests and read their outputs from a RequestStream; the engine thread admits new
// requests, applies aborts, steps while there is work and sleeps when there is none.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "engine/llm_engine.h"
#include "server/metrics.h"

namespace tessera {

// The outputs of one engine request, handed from the engine thread to one reader.
class RequestStream {
 public:
  explicit RequestStream(std::string request_id) : request_id_(std::move(request_id)) {}
  const std::string& request_id() const { return request_id_; }

  // Engine side.
  void push(RequestOutput output);
  void fail(const Error& error);

  // Reader side: waits up to `timeout` for outputs; returns what arrived (possibly nothing).
  // After the last output (finished) or an error, done() is true.
  std::vector<RequestOutput> wait(std::chrono::milliseconds timeout);
  bool done() const;
  std::optional<Error> error() const;

 private:
  std::string request_id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> outputs_;
  bool finished_ = false;
  std::optional<Error> error_;
};

// The n choices of one prompt of an API request, for the per-request metrics (n and the most
// tokens a choice generated, observed when the last choice finishes). After submit() only the
// engine thread touches it.
struct ChoiceGroup {
  explicit ChoiceGroup(int64_t n) : n(n), remaining(n) {}
  int64_t n;
  int64_t remaining;
  int64_t max_generation_tokens = 0;
};

class AsyncEngine {
 public:
  // `metrics` may be null.
  // While idle, the loop checks every `heartbeat_s` seconds that all ranks still answer, so a
  // dead or hung rank of an idle tp/pp server turns /health 503 instead of waiting for a request.
  AsyncEngine(LLMEngine& engine, EngineMetrics* metrics, double heartbeat_s = 5.0);
  ~AsyncEngine();

  // Queues a request; its outputs arrive on the returned stream. Errors found when the engine
  // admits it (bad parameters) arrive as the stream's error. Throws kUnavailable after
  // stop_accepting() or once the engine has failed.
  // `group`: the request's other choices of the same prompt (null: a group of one).
  std::shared_ptr<RequestStream> submit(const std::string& request_id, std::vector<int32_t> prompt,
                                        const SamplingParams& params,
                                        std::shared_ptr<ChoiceGroup> group = nullptr);
  // Frees the request's blocks on the next engine iteration; its stream ends with "abort".
  void abort(const std::string& request_id);

  void stop_accepting() { accepting_ = false; }
  bool accepting() const { return accepting_; }
  // False once a step threw: the engine is dead and /health answers 503.
  bool healthy() const { return healthy_; }
  // Requests submitted and not yet finished.
  int64_t num_unfinished() const { return unfinished_; }
  // Waits until every accepted request has finished, up to `timeout`. True when idle.
  bool wait_idle(std::chrono::milliseconds timeout);
  EngineStats stats() const;

 private:
  struct Pending {
    std::string request_id;
    std::vector<int32_t> prompt;
    SamplingParams params;
    std::shared_ptr<RequestStream> stream;
    std::shared_ptr<ChoiceGroup> group;
  };
  struct Live {
    std::shared_ptr<RequestStream> stream;
    double submit_time = 0;
    double last_token_time = 0;  // 0 until the first token
    int64_t max_tokens = 0;
    std::shared_ptr<ChoiceGroup> group;
  };
  void loop();
  // The engine's counters into stats() and the metrics.
  void publish_stats();
  void dispatch(std::vector<RequestOutput>& outputs);
  void fail_all(const Error& error);

  LLMEngine& engine_;
  EngineMetrics* metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::vector<Pending> inbox_;
  std::vector<std::string> aborts_;
  bool stop_ = false;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> healthy_{true};
  double heartbeat_s_;
  std::atomic<int64_t> unfinished_{0};
  std::map<std::string, Live> live_;  // engine thread only
  mutable std::mutex stats_mu_;
  EngineStats stats_;
  std::thread thread_;
};

}  // namespace tessera
