#include "engine/sampling_params.h"

#include <cmath>

#include "config/model_config.h"
#include "core/status.h"

namespace tessera {

void SamplingParams::validate(int64_t vocab_size) const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    fail("temperature must be non-negative, got {}", temperature);
  if (!(top_p > 0 && top_p <= 1)) fail("top_p must be in (0, 1], got {}", top_p);
  if (top_k < -1) fail("top_k must be -1 (disable), 0 (disable) or at least 1, got {}", top_k);
  if (!(min_p >= 0 && min_p <= 1)) fail("min_p must be in [0, 1], got {}", min_p);
  if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty))
    fail("repetition_penalty must be greater than zero, got {}", repetition_penalty);
  if (!(presence_penalty >= -2 && presence_penalty <= 2))
    fail("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    fail("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  if (max_tokens < 1) fail("max_tokens must be at least 1, got {}", max_tokens);
  if (min_tokens < 0) fail("min_tokens must be non-negative, got {}", min_tokens);
  TESSERA_CHECK(static_cast<bool>(grammar) == static_cast<bool>(grammar_vocab))
      << "a grammar needs its token vocabulary";
  if (min_tokens > max_tokens)
    fail("min_tokens must be less than or equal to max_tokens={}, got {}", max_tokens, min_tokens);
  for (const auto& s : stop)
    if (s.empty()) fail("stop strings must not be empty");
  for (int32_t id : stop_token_ids)
    if (id < 0 || id >= vocab_size) fail("stop_token_ids contains {}, outside the vocabulary", id);
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size)
      fail("logit_bias has token id {}, outside the vocabulary of {}", id, vocab_size);
    if (!(bias >= -100 && bias <= 100))
      fail("logit_bias values must be in [-100, 100], got {}", bias);
  }
  // The engine's --max-logprobs is checked by the engine (LLMEngine::add_request).
  if (logprobs && (*logprobs < 0 || *logprobs > vocab_size))
    fail("logprobs must be between 0 and the vocabulary size {}, got {}", vocab_size, *logprobs);
  if (prompt_logprobs && (*prompt_logprobs < 0 || *prompt_logprobs > vocab_size))
    fail("prompt_logprobs must be between 0 and the vocabulary size {}, got {}", vocab_size,
         *prompt_logprobs);
}

SamplingParams SamplingParams::from_defaults(const GenerationConfig& g) {
  SamplingParams p;
  if (g.temperature) p.temperature = *g.temperature;
  if (g.top_p) p.top_p = *g.top_p;
  if (g.top_k) p.top_k = *g.top_k;
  if (g.min_p) p.min_p = *g.min_p;
  if (g.repetition_penalty) p.repetition_penalty = *g.repetition_penalty;
  return p;
}

}  // namespace tessera
