#include "server/async_engine.h"

#include <algorithm>

#include "core/logging.h"
#include "core/sys.h"

namespace tessera {

void RequestStream::push(RequestOutput output) {
  {
    std::lock_guard lock(mu_);
    if (output.finished) finished_ = true;
    outputs_.push_back(std::move(output));
  }
  cv_.notify_all();
}

void RequestStream::fail(const Error& error) {
  {
    std::lock_guard lock(mu_);
    error_ = error;
    finished_ = true;
  }
  cv_.notify_all();
}

std::vector<RequestOutput> RequestStream::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !outputs_.empty() || finished_; });
  std::vector<RequestOutput> out(std::make_move_iterator(outputs_.begin()),
                                 std::make_move_iterator(outputs_.end()));
  outputs_.clear();
  return out;
}

bool RequestStream::done() const {
  std::lock_guard lock(mu_);
  return finished_ && outputs_.empty();
}

std::optional<Error> RequestStream::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

AsyncEngine::AsyncEngine(LLMEngine& engine, EngineMetrics* metrics, double heartbeat_s)
    : engine_(engine), metrics_(metrics), heartbeat_s_(heartbeat_s) {
  thread_ = std::thread([this] { loop(); });
}

AsyncEngine::~AsyncEngine() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<RequestStream> AsyncEngine::submit(const std::string& request_id,
                                                   std::vector<int32_t> prompt,
                                                   const SamplingParams& params,
                                                   std::shared_ptr<ChoiceGroup> group) {
  if (!healthy_) fail(ErrorKind::kInternal, "the engine has failed; restart the server");
  if (!accepting_) fail(ErrorKind::kUnavailable, "the server is shutting down");
  auto stream = std::make_shared<RequestStream>(request_id);
  {
    std::lock_guard lock(mu_);
    if (!group) group = std::make_shared<ChoiceGroup>(1);
    inbox_.push_back(Pending{request_id, std::move(prompt), params, stream, std::move(group)});
    ++unfinished_;
  }
  cv_.notify_all();
  return stream;
}

void AsyncEngine::abort(const std::string& request_id) {
  {
    std::lock_guard lock(mu_);
    aborts_.push_back(request_id);
  }
  cv_.notify_all();
}

bool AsyncEngine::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [&] { return unfinished_ == 0; });
}

EngineStats AsyncEngine::stats() const {
  std::lock_guard lock(stats_mu_);
  return stats_;
}

void AsyncEngine::loop() {
  bool busy = false;
  for (;;) {
    std::vector<Pending> admitted;
    std::vector<std::string> aborts;
    {
      std::unique_lock lock(mu_);
      const auto ready = [&] { return stop_ || busy || !inbox_.empty() || !aborts_.empty(); };
      if (!cv_.wait_for(lock, std::chrono::duration<double>(heartbeat_s_), ready)) {
        lock.unlock();
        if (healthy_) {
          try {
            engine_.heartbeat();
          } catch (const std::exception& e) {
            spdlog::error("heartbeat failed: {}", e.what());
            healthy_ = false;
          }
        }
        continue;
      }
      if (stop_) break;
      admitted.swap(inbox_);
      aborts.swap(aborts_);
    }
    for (Pending& p : admitted) {
      try {
        engine_.add_request(p.request_id, std::move(p.prompt), p.params);
        live_[p.request_id] = Live{p.stream, now_seconds(), 0, p.params.max_tokens, p.group};
      } catch (const Error& e) {
        p.stream->fail(e);
        --unfinished_;
      }
    }
    for (const std::string& id : aborts) engine_.abort_request(id);
    if (engine_.has_unfinished()) {
      try {
        std::vector<RequestOutput> outputs = engine_.step();
        // The counters first: a client that reads /metrics as soon as its response ends sees
        // its tokens counted.
        publish_stats();
        dispatch(outputs);
      } catch (const std::exception& e) {
        // A fault inside a step leaves the engine in an unknown state: fail everything and
        // report unhealthy so that the orchestrator restarts the server.
        spdlog::error("engine step failed: {}", e.what());
        healthy_ = false;
        fail_all(Error(std::string("engine failure: ") + e.what(), ErrorKind::kInternal));
      }
    }
    busy = healthy_ && engine_.has_unfinished();
    publish_stats();
    if (unfinished_ == 0) idle_cv_.notify_all();
  }
  fail_all(Error("the server is shutting down", ErrorKind::kUnavailable));
}

void AsyncEngine::publish_stats() {
  const EngineStats s = engine_.stats();
  {
    std::lock_guard lock(stats_mu_);
    stats_ = s;
  }
  if (metrics_) metrics_->update(s);
}

void AsyncEngine::dispatch(std::vector<RequestOutput>& outputs) {
  const double now = now_seconds();
  for (RequestOutput& out : outputs) {
    auto it = live_.find(out.request_id);
    if (it == live_.end()) continue;
    Live& live = it->second;
    if (metrics_ && !out.new_token_ids.empty()) {
      if (live.last_token_time == 0) {
        metrics_->observe_first_token(now - live.submit_time);
      } else {
        // One token per request per step: the gap between steps is the inter-token latency.
        const double gap = (now - live.last_token_time) / out.new_token_ids.size();
        for (size_t i = 0; i < out.new_token_ids.size(); ++i) metrics_->observe_inter_token(gap);
      }
      live.last_token_time = now;
    }
    const bool finished = out.finished;
    if (finished && metrics_) {
      metrics_->observe_finished(out, live.max_tokens);
      ChoiceGroup& g = *live.group;
      g.max_generation_tokens = std::max(g.max_generation_tokens, out.num_output_tokens);
      if (--g.remaining == 0) metrics_->observe_choices_finished(g.n, g.max_generation_tokens);
    }
    live.stream->push(std::move(out));
    if (finished) {
      live_.erase(it);
      --unfinished_;
    }
  }
}

void AsyncEngine::fail_all(const Error& error) {
  for (auto& [id, live] : live_) {
    live.stream->fail(error);
    --unfinished_;
  }
  live_.clear();
  std::lock_guard lock(mu_);
  for (Pending& p : inbox_) {
    p.stream->fail(error);
    --unfinished_;
  }
  inbox_.clear();
}

}  // namespace tessera
