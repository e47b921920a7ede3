// How one sequence is sampled and when it stops (the OpenAI and vLLM request fields).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tessera {

struct GenerationConfig;
class Grammar;
class TokenVocabulary;

struct SamplingParams {
  double temperature = 1.0;         // < 1e-5 means greedy
  double top_p = 1.0;               // (0, 1]
  int64_t top_k = 0;                // 0 or -1: off
  double min_p = 0.0;               // [0, 1]
  double repetition_penalty = 1.0;  // > 0; applies to prompt and output tokens
  double presence_penalty = 0.0;    // [-2, 2]; output tokens
  double frequency_penalty = 0.0;   // [-2, 2]; output tokens
  std::map<int32_t, double> logit_bias;
  std::optional<uint64_t> seed;

  int64_t max_tokens = 16;
  int64_t min_tokens = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;

  std::optional<int> logprobs;         // top-k logprobs per generated token (0: only the chosen)
  std::optional<int> prompt_logprobs;  // same for prompt tokens

  // Scheduling priority under --scheduling-policy priority: lower values run first (vLLM's
  // request field `priority`). Not a sampling setting, but it travels with the request.
  int64_t priority = 0;
  // vLLM's cache_salt, hashed (0: none): the prefix cache shares blocks only between requests
  // with the same salt.
  uint64_t cache_salt = 0;

  // Structured output: only tokens the grammar allows are sampled, and the sequence stops when
  // its text is complete (engine/structured_output.h). Both set, or neither.
  std::shared_ptr<const Grammar> grammar;
  std::shared_ptr<const TokenVocabulary> grammar_vocab;

  bool greedy() const { return temperature < 1e-5; }
  // Throws tessera::Error (kInvalidArgument) naming the first bad field.
  void validate(int64_t vocab_size) const;
  // Fills fields the request left unset from generation_config.json (vLLM's defaults rule).
  static SamplingParams from_defaults(const GenerationConfig& generation);
};

}  // namespace tessera
