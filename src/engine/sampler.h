// Turns one row of raw logits into the next token: logit bias, min_tokens, repetition /
// frequency / presence penalties, then greedy or temperature, top-k, top-p and min-p sampling
// with the sequence's own random stream (so a seeded request gives the same tokens whatever
// else is in the batch). Log-probabilities are those of the raw logits.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engine/sequence.h"

namespace tessera {

// log_softmax(logits)[token], its rank, and the top_k (token, logprob) pairs, best first.
TokenLogprobs compute_logprobs(std::span<const float> logits, int32_t token, int top_k);

class Sampler {
 public:
  // `eos_ids` are suppressed while fewer than min_tokens were generated.
  explicit Sampler(std::vector<int32_t> eos_ids) : eos_ids_(std::move(eos_ids)) {}

  // Chooses the next token of `seq` (which holds the prompt and output so far).
  int32_t sample(std::span<const float> logits, Sequence& seq) const;
  // Whether sample() would take the argmax of the raw logits (greedy, nothing to edit) and the
  // caller needs nothing else of them (no logprobs): then only the argmax has to be computed.
  bool plain_greedy(const Sequence& seq) const;

 private:
  std::vector<int32_t> eos_ids_;
};

// A uniform double in [0, 1) from 53 random bits.
inline double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace tessera
