// Beam search for requests with `use_beam_search` (vLLM's OpenAI server, which runs it above the
// engine the same way): each step asks the engine for one token of every live beam with the top
// 2 x width log-probabilities, extends each beam by those candidates, and keeps the `width` best
// by vLLM's score cum_logprob / len(tokens)^length_penalty (prompt included, a final EOS not).
// A candidate that is EOS completes its beam. The prefix cache makes the repeated prompts cheap.
// The search itself is pure (candidates come from a callback), so it is testable without a model.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/sequence.h"

namespace tessera {

struct BeamSearchParams {
  int64_t beam_width = 1;  // the request's n
  int64_t max_tokens = 16;
  bool ignore_eos = false;
  double length_penalty = 1.0;
  bool include_stop_str_in_output = false;  // keep a completing EOS in the tokens
  int64_t max_model_len = 0;                // a beam this long stops (0: no limit)
};

struct Beam {
  std::vector<int32_t> tokens;  // prompt, then output
  double cum_logprob = 0;
  bool ended_by_eos = false;  // finish_reason "stop" (else "length")
  int32_t eos = -1;           // the EOS that ended it (its stop_reason)
};

// (token, logprob) candidates for the next token of one beam, best first.
using BeamCandidates = std::vector<std::pair<int32_t, double>>;
// Given the live beams' token sequences, their candidates (2 x width each), in order.
using BeamExpander =
    std::function<std::vector<BeamCandidates>(const std::vector<std::vector<int32_t>>& beams)>;

// vLLM's get_beam_search_score: the length counts the prompt, and not a last token that is EOS.
double beam_score(const Beam& beam, const std::vector<int32_t>& eos_ids, double length_penalty);

// The `beam_width` best beams, best first.
std::vector<Beam> beam_search(const std::vector<int32_t>& prompt, const BeamSearchParams& params,
                              const std::vector<int32_t>& eos_ids, const BeamExpander& expand);

}  // namespace tessera
