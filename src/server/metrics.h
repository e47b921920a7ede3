// The vLLM Prometheus metrics (../shared/vllm-interface.md): the same names, types, buckets and
// `model_name` label, so existing autoscalers and dashboards work unchanged. Built on
// prometheus-cpp; /metrics serializes the registry in the text exposition format.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <string>

#include "engine/llm_engine.h"

namespace tessera {

struct CacheConfigInfo {
  int block_size = 16;
  int64_t num_gpu_blocks = 0;
  double gpu_memory_utilization = 0.9;
  bool enable_prefix_caching = true;
  std::string cache_dtype = "auto";
};

class EngineMetrics {
 public:
  EngineMetrics(const std::string& model_name, int64_t max_model_len, const CacheConfigInfo& cache);

  // Gauges and counters from the engine's totals after a step.
  void update(const EngineStats& stats);
  // One finished engine request (its last output carries the timestamps) and the max_tokens
  // it ran with.
  void observe_finished(const RequestOutput& output, int64_t max_tokens);
  // An API request's prompt with its n choices, once every choice has finished: n and the
  // most tokens one choice generated (vLLM's request_params_n and
  // request_max_num_generation_tokens).
  void observe_choices_finished(int64_t n, int64_t max_generation_tokens);
  void observe_first_token(double seconds);
  void observe_inter_token(double seconds);
  void count_finish(FinishReason reason);

  // The Prometheus text exposition of every metric.
  std::string serialize() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_usage_;
  prometheus::Gauge* gpu_cache_usage_;  // the older name dashboards still query
  prometheus::Counter* prefix_queries_;
  prometheus::Counter* prefix_hits_;
  prometheus::Counter* preemptions_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  std::map<FinishReason, prometheus::Counter*> success_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* tpot_;  // older name of itl
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_;
  prometheus::Histogram* prefill_;
  prometheus::Histogram* decode_;
  prometheus::Histogram* inference_;
  prometheus::Histogram* request_prompt_tokens_;
  prometheus::Histogram* request_generation_tokens_;
  prometheus::Histogram* iteration_tokens_;
  prometheus::Histogram* request_params_n_;
  prometheus::Histogram* request_params_max_tokens_;
  prometheus::Histogram* request_max_num_generation_tokens_;
  prometheus::Counter* spec_drafts_;
  prometheus::Counter* spec_draft_tokens_;
  prometheus::Counter* spec_accepted_tokens_;
  prometheus::Family<prometheus::Counter>* spec_accepted_per_pos_;
  std::vector<prometheus::Counter*> spec_accepted_per_pos_series_;
  prometheus::Labels labels_;
  EngineStats last_;  // totals already added to the counters
};

// vLLM's 1-2-5 buckets up to `max`: 1, 2, 5, 10, 20, 50, ... <= max.
std::vector<double> one_two_five_buckets(int64_t max);

}  // namespace tessera
