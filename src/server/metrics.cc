#include "server/metrics.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <sstream>

namespace tessera {

namespace {

using prometheus::Histogram;

const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                                  0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                                  20.0,  40.0,  80.0, 160., 640., 2560.};
const Histogram::BucketBoundaries kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                 0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                 7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kRequestBuckets = {0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,
                                                     5.0,  10.0, 15.0, 20.0,  30.,   40.0,  50.0,
                                                     60.0, 120., 240., 480.0, 960.0, 1920., 7680.};

// Tokens per engine step.
const Histogram::BucketBoundaries kIterationBuckets = {1,   8,    16,   32,   64,   128,  256,
                                                       512, 1024, 2048, 4096, 8192, 16384};
const Histogram::BucketBoundaries kNBuckets = {1, 2, 5, 10, 20};

}  // namespace

std::vector<double> one_two_five_buckets(int64_t max) {
  std::vector<double> buckets;
  for (int64_t scale = 1;; scale *= 10) {
    for (int64_t m : {1, 2, 5}) {
      if (m * scale > max) return buckets;
      buckets.push_back(static_cast<double>(m * scale));
    }
  }
}

EngineMetrics::EngineMetrics(const std::string& model_name, int64_t max_model_len,
                             const CacheConfigInfo& cache)
    : registry_(std::make_shared<prometheus::Registry>()) {
  const prometheus::Labels labels = {{"model_name", model_name}};
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels);
  };
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels);
  };
  auto histogram = [&](const char* name, const char* help,
                       const Histogram::BucketBoundaries& buckets) {
    return &prometheus::BuildHistogram()
                .Name(name)
                .Help(help)
                .Register(*registry_)
                .Add(labels, buckets);
  };
  running_ = gauge("vllm:num_requests_running", "Number of requests in model execution batches.");
  waiting_ = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.");
  kv_usage_ = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
  gpu_cache_usage_ =
      gauge("vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage (older name).");
  prefix_queries_ = counter("vllm:prefix_cache_queries_total",
                            "Prefix cache queries, in terms of number of queried tokens.");
  prefix_hits_ = counter("vllm:prefix_cache_hits_total",
                         "Prefix cache hits, in terms of number of cached tokens.");
  preemptions_ = counter("vllm:num_preemptions_total", "Cumulative number of preemptions.");
  prompt_tokens_ = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.");
  generation_tokens_ =
      counter("vllm:generation_tokens_total", "Number of generation tokens processed.");
  auto& success = prometheus::BuildCounter()
                      .Name("vllm:request_success_total")
                      .Help("Count of successfully processed requests.")
                      .Register(*registry_);
  for (FinishReason reason : {FinishReason::kStop, FinishReason::kLength, FinishReason::kAbort}) {
    prometheus::Labels with_reason = labels;
    with_reason["finished_reason"] = finish_reason_name(reason);
    success_[reason] = &success.Add(with_reason);
  }
  ttft_ = histogram("vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds.", kTtftBuckets);
  itl_ = histogram("vllm:inter_token_latency_seconds",
                   "Histogram of inter-token latency in seconds.", kItlBuckets);
  tpot_ = histogram("vllm:time_per_output_token_seconds",
                    "Histogram of time per output token in seconds (older name).", kItlBuckets);
  e2e_ = histogram("vllm:e2e_request_latency_seconds",
                   "Histogram of e2e request latency in seconds.", kRequestBuckets);
  queue_ = histogram("vllm:request_queue_time_seconds",
                     "Histogram of time spent in WAITING phase for request.", kRequestBuckets);
  prefill_ = histogram("vllm:request_prefill_time_seconds",
                       "Histogram of time spent in PREFILL phase for request.", kRequestBuckets);
  decode_ = histogram("vllm:request_decode_time_seconds",
                      "Histogram of time spent in DECODE phase for request.", kRequestBuckets);
  inference_ = histogram("vllm:request_inference_time_seconds",
                         "Histogram of time spent in RUNNING phase for request.", kRequestBuckets);
  const auto token_buckets = one_two_five_buckets(std::max<int64_t>(max_model_len, 1));
  request_prompt_tokens_ =
      histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets);
  request_generation_tokens_ = histogram("vllm:request_generation_tokens",
                                         "Number of generation tokens processed.", token_buckets);
  iteration_tokens_ =
      histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                kIterationBuckets);
  request_params_n_ =
      histogram("vllm:request_params_n", "Histogram of the n request parameter.", kNBuckets);
  request_params_max_tokens_ =
      histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                token_buckets);
  request_max_num_generation_tokens_ =
      histogram("vllm:request_max_num_generation_tokens",
                "Histogram of maximum number of requested generation tokens.", token_buckets);

  // Speculative decoding (vLLM's names; zero without --speculative-config).
  spec_drafts_ = counter("vllm:spec_decode_num_drafts_total", "Number of spec decoding drafts.");
  spec_draft_tokens_ =
      counter("vllm:spec_decode_num_draft_tokens_total", "Number of draft tokens.");
  spec_accepted_tokens_ =
      counter("vllm:spec_decode_num_accepted_tokens_total", "Number of accepted tokens.");
  spec_accepted_per_pos_ = &prometheus::BuildCounter()
                                .Name("vllm:spec_decode_num_accepted_tokens_per_pos_total")
                                .Help("Accepted tokens per draft position.")
                                .Register(*registry_);
  labels_ = labels;

  prometheus::Labels info = labels;
  info["block_size"] = std::to_string(cache.block_size);
  info["num_gpu_blocks"] = std::to_string(cache.num_gpu_blocks);
  info["num_cpu_blocks"] = "0";
  info["gpu_memory_utilization"] = fmt::format("{}", cache.gpu_memory_utilization);
  info["enable_prefix_caching"] = cache.enable_prefix_caching ? "True" : "False";
  info["cache_dtype"] = cache.cache_dtype;
  prometheus::BuildGauge()
      .Name("vllm:cache_config_info")
      .Help("Information of the LLMEngine CacheConfig.")
      .Register(*registry_)
      .Add(info)
      .Set(1);
}

void EngineMetrics::update(const EngineStats& s) {
  running_->Set(static_cast<double>(s.num_running));
  waiting_->Set(static_cast<double>(s.num_waiting));
  kv_usage_->Set(s.kv_cache_usage);
  gpu_cache_usage_->Set(s.kv_cache_usage);
  auto add = [](prometheus::Counter* c, int64_t now, int64_t before) {
    if (now > before) c->Increment(static_cast<double>(now - before));
  };
  add(prefix_queries_, s.prefix_cache_queries, last_.prefix_cache_queries);
  add(prefix_hits_, s.prefix_cache_hits, last_.prefix_cache_hits);
  add(preemptions_, s.num_preemptions, last_.num_preemptions);
  add(prompt_tokens_, s.prompt_tokens, last_.prompt_tokens);
  add(generation_tokens_, s.generation_tokens, last_.generation_tokens);
  add(spec_drafts_, s.spec_drafts, last_.spec_drafts);
  add(spec_draft_tokens_, s.spec_draft_tokens, last_.spec_draft_tokens);
  add(spec_accepted_tokens_, s.spec_accepted_tokens, last_.spec_accepted_tokens);
  for (size_t pos = 0; pos < s.spec_accepted_per_pos.size(); ++pos) {
    if (pos >= spec_accepted_per_pos_series_.size()) {
      prometheus::Labels l = labels_;
      l["position"] = std::to_string(pos);
      spec_accepted_per_pos_series_.push_back(&spec_accepted_per_pos_->Add(l));
    }
    add(spec_accepted_per_pos_series_[pos], s.spec_accepted_per_pos[pos],
        pos < last_.spec_accepted_per_pos.size() ? last_.spec_accepted_per_pos[pos] : 0);
  }
  // Called after every step (and again when idle): a step's tokens are the counters' growth.
  const int64_t step_tokens =
      (s.prompt_tokens - last_.prompt_tokens) + (s.generation_tokens - last_.generation_tokens);
  if (step_tokens > 0) iteration_tokens_->Observe(static_cast<double>(step_tokens));
  last_ = s;
}

void EngineMetrics::observe_first_token(double seconds) {
  ttft_->Observe(seconds);
}

void EngineMetrics::observe_inter_token(double seconds) {
  itl_->Observe(seconds);
  tpot_->Observe(seconds);
}

void EngineMetrics::count_finish(FinishReason reason) {
  auto it = success_.find(reason);
  if (it != success_.end()) it->second->Increment();
}

void EngineMetrics::observe_choices_finished(int64_t n, int64_t max_generation_tokens) {
  request_params_n_->Observe(static_cast<double>(n));
  request_max_num_generation_tokens_->Observe(static_cast<double>(max_generation_tokens));
}

void EngineMetrics::observe_finished(const RequestOutput& o, int64_t max_tokens) {
  count_finish(o.finish_reason);
  request_params_max_tokens_->Observe(static_cast<double>(max_tokens));
  if (o.finished_time <= 0) return;
  e2e_->Observe(o.finished_time - o.arrival_time);
  if (o.first_scheduled_time > 0) {
    queue_->Observe(o.first_scheduled_time - o.arrival_time);
    inference_->Observe(o.finished_time - o.first_scheduled_time);
    if (o.first_token_time > 0) {
      prefill_->Observe(o.first_token_time - o.first_scheduled_time);
      decode_->Observe(o.finished_time - o.first_token_time);
    }
  }
  request_prompt_tokens_->Observe(static_cast<double>(o.num_prompt_tokens));
  request_generation_tokens_->Observe(static_cast<double>(o.num_output_tokens));
}

std::string EngineMetrics::serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace tessera
