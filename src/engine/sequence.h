// One generated sequence (a request with n = 1; the server fans n > 1 out into several).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/sampling_params.h"
#include "engine/structured_output.h"

namespace tessera {

enum class SequenceStatus { kWaiting, kRunning, kFinished };
enum class FinishReason { kNone, kStop, kLength, kAbort };
const char* finish_reason_name(FinishReason reason);  // "stop", "length", "abort"

// Log-probabilities at one position: of the token chosen (or given, for prompts) and the top-k.
struct TokenLogprobs {
  int32_t token = 0;
  float logprob = 0;
  int64_t rank = 0;  // 1 = most likely
  std::vector<std::pair<int32_t, float>> top;
};

// Streams text for generated tokens: step() returns the newly complete text.
class TextDecoder {
 public:
  virtual ~TextDecoder() = default;
  virtual std::string step(int32_t token) = 0;
  virtual std::string finish() = 0;
};
using TextDecoderFactory = std::function<std::unique_ptr<TextDecoder>(bool skip_special_tokens)>;

struct Sequence {
  std::string request_id;
  int64_t arrival_index = 0;    // FCFS order
  int group = 0;                // the engine's scheduling group (virtual engine)
  std::vector<int32_t> tokens;  // prompt, then output
  int64_t num_prompt_tokens = 0;
  int64_t num_computed_tokens = 0;  // tokens whose K/V are in the cache
  // Tokens in steps still in flight (pipeline parallelism: a prompt's chunks may run in
  // consecutive steps at once; each stage writes a chunk's K/V before it runs the next step).
  int64_t num_inflight_tokens = 0;
  int64_t num_cached_prompt_tokens = 0;  // prefix-cache hit at first admission
  // Speculative decoding: proposed tokens at the end of `tokens`, run this step to be verified
  // (the engine takes them off again and keeps those the model agrees with).
  int64_t num_draft_tokens = 0;
  std::vector<int32_t> block_table;
  std::vector<uint64_t> block_hashes;
  SamplingParams params;
  std::unique_ptr<GrammarMatcher> grammar;  // where the output is in params.grammar
  std::mt19937_64 rng;
  SequenceStatus status = SequenceStatus::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;  // the stop string matched, or the stop token id as text
  int num_preemptions = 0;

  // Text (when the engine has a tokenizer).
  std::unique_ptr<TextDecoder> decoder;
  std::string text;          // decoded output so far (truncated at a stop string)
  size_t text_emitted = 0;   // bytes of `text` already reported
  std::string pending_text;  // decoded but held back: might be the start of a stop string

  std::vector<TokenLogprobs> logprobs;         // per output token, if requested
  std::vector<TokenLogprobs> prompt_logprobs;  // per prompt token from the second, if requested
  size_t logprobs_emitted = 0;
  size_t tokens_emitted = 0;

  // Timestamps (seconds, steady clock) for metrics.
  double arrival_time = 0, first_scheduled_time = 0, first_token_time = 0, last_token_time = 0;
  double finished_time = 0;
  std::vector<double> inter_token_latencies;

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  // Where the next chunk starts: after the computed tokens and those in flight.
  int64_t num_scheduled_tokens() const { return num_computed_tokens + num_inflight_tokens; }
  // Every known token is computed or in flight: the next one waits for a step's sample.
  bool awaiting_sample() const { return num_scheduled_tokens() >= num_tokens(); }
  int64_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  bool finished() const { return status == SequenceStatus::kFinished; }
};

}  // namespace tessera
