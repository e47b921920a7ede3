// The engine: requests in, tokens out. Each step() schedules a batch (continuous batching over
// the paged KV cache), runs the model once, samples the sequences that reached the end of their
// known tokens, checks stop conditions and reports what is new. Single-threaded: the server's
// AsyncEngine owns the thread that calls step().
#pragma once

#include <deque>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "engine/block_manager.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "engine/step_inputs.h"

namespace tessera {

struct EngineConfig {
  SchedulerConfig scheduler;
  int block_size = 16;
  int64_t num_blocks = 0;
  bool enable_prefix_caching = true;
  int64_t vocab_size = 0;
  // --max-logprobs, resolved (-1 became the vocabulary): the most logprobs or prompt_logprobs
  // a request may ask for.
  int64_t max_logprobs = 20;
  std::vector<int32_t> eos_token_ids;
  // Groups of sequences scheduled separately, each with at most one step in flight, so that
  // pp pipeline stages work on different groups' steps at once (vLLM's virtual engines).
  int virtual_engines = 1;
};

// What one step produced for one request.
struct RequestOutput {
  std::string request_id;
  std::vector<int32_t> new_token_ids;
  std::vector<TokenLogprobs> new_logprobs;  // when requested
  std::string new_text;                     // when the engine detokenizes
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;
  int64_t num_prompt_tokens = 0;
  int64_t num_output_tokens = 0;
  int64_t num_cached_tokens = 0;
  std::vector<TokenLogprobs> prompt_logprobs;  // on the first output, when requested
  // Set on the finishing output, for metrics.
  double arrival_time = 0, first_scheduled_time = 0, first_token_time = 0, finished_time = 0;
};

struct EngineStats {
  int64_t num_running = 0, num_waiting = 0;
  double kv_cache_usage = 0;
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
  int64_t num_preemptions = 0;
  int64_t prompt_tokens = 0, generation_tokens = 0;  // totals so far
  // Speculative decoding totals: steps with drafts, draft tokens, accepted ones, and accepted
  // ones by position in the draft.
  int64_t spec_drafts = 0, spec_draft_tokens = 0, spec_accepted_tokens = 0;
  std::vector<int64_t> spec_accepted_per_pos;
};

class LLMEngine {
 public:
  LLMEngine(const EngineConfig& config, ModelExecutor& executor,
            TextDecoderFactory text_decoders = {}, ThreadPool* pool = nullptr);
  // Completes the steps still in flight, so that no rank is left handing over logits.
  ~LLMEngine();

  // Queues a request. Throws tessera::Error (bad input) for an empty or over-long prompt, ids
  // outside the vocabulary, bad sampling parameters or a duplicate id.
  void add_request(const std::string& request_id, std::vector<int32_t> prompt,
                   const SamplingParams& params);
  // Stops a request and frees its blocks at once; it reports finish reason "abort" on the next
  // step. Unknown ids are ignored.
  void abort_request(const std::string& request_id);
  std::vector<RequestOutput> step();
  // See ModelExecutor::heartbeat: for the loop to call while idle.
  void heartbeat() { executor_.heartbeat(); }
  bool has_unfinished() const { return !sequences_.empty() || !in_flight_.empty(); }
  // vLLM's LLM.reset_prefix_cache(): forgets the cached blocks no request uses, so that later
  // requests recompute them (and reuse their memory first).
  void reset_prefix_cache() { blocks_.reset_prefix_cache(); }
  EngineStats stats() const;
  const EngineConfig& config() const { return config_; }

 private:
  void process_sample(Sequence& seq, std::span<const float> logits, double now);
  void check_stop(Sequence& seq, int32_t token);
  RequestOutput make_output(Sequence& seq, bool with_prompt_logprobs);

  EngineConfig config_;
  ModelExecutor& executor_;
  TextDecoderFactory text_decoders_;
  ThreadPool* pool_;
  BlockManager blocks_;
  // One scheduler per group (config.virtual_engines), sharing the block pool; a group's next
  // step is scheduled only when its previous one has completed.
  std::vector<std::unique_ptr<Scheduler>> schedulers_;
  struct InFlightStep {
    int group;
    SchedulerOutput sched;
    LogitPlan plan;
    bool greedy_only = false;  // the executor returns argmax ids (StepInputs::greedy_only)
  };
  std::deque<InFlightStep> in_flight_;  // submitted to the executor, oldest first
  Sampler sampler_;
  std::map<std::string, std::unique_ptr<Sequence>> sequences_;
  std::vector<std::unique_ptr<Sequence>> aborted_;  // reported on the next step
  // Aborted sequences that a step in flight still names: freed when nothing is in flight.
  std::vector<std::unique_ptr<Sequence>> graveyard_;
  int64_t next_arrival_ = 0;
  std::mt19937_64 seed_rng_;
  size_t max_stop_len_ = 0;
  int64_t prompt_tokens_total_ = 0, generation_tokens_total_ = 0;
  int64_t spec_drafts_total_ = 0, spec_draft_tokens_total_ = 0, spec_accepted_tokens_total_ = 0;
  std::vector<int64_t> spec_accepted_per_pos_;
};

}  // namespace tessera
