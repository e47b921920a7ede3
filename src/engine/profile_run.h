// vLLM's profile run: before the KV cache is sized, run this rank's part of the model on dummy
// steps at the scheduler's limits and measure the most activation memory they hold at once. The
// KV cache budget then leaves that much free (engine_builder.cc), instead of trusting the
// model's estimate (CausalLM::activation_bytes), which does not see a backend's own buffers (the
// GPU's 16-bit copies of a matrix product's input, attention's partition scratch).
#pragma once

#include <cstdint>

#include "distributed/world_config.h"
#include "engine/step_inputs.h"
#include "model/model.h"

namespace tessera {

struct ProfileShape {
  int64_t max_num_batched_tokens = 2048;
  int64_t max_num_seqs = 256;
  int64_t max_model_len = 2048;
  int block_size = 16;
  DType kv_dtype = DType::kF32;
};

struct ActivationProfile {
  // The most bytes of tensors alive at once during the steps, beyond what was alive before
  // (weights) and the profile's own KV cache; -1 where the backend does not count.
  int64_t peak_bytes = -1;
  int64_t tokens = 0;       // of the larger step
  int64_t seqs = 0;         // sequences of the many-sequence step
  int64_t cache_bytes = 0;  // the profile's own KV cache, freed afterwards
  double seconds = 0;
};

// Two dummy steps, on a KV cache of their own that is freed afterwards (with the backend's
// cached blocks): min(max_num_seqs, tokens) sequences sharing max_num_batched_tokens tokens,
// each returning logits (the most logit rows), and one sequence of min(max_num_batched_tokens,
// max_model_len) tokens (the longest attention of a step). Every rank of a tensor-parallel group
// must call it together: the layers all-reduce. Buffers the model keeps between steps stay
// allocated, and are part of the peak.
ActivationProfile profile_activations(Backend& backend, CausalLM& model, const WorldConfig& world,
                                      const ProfileShape& shape);

// The steps themselves (for tests): `seqs` sequences of `tokens` tokens in all, first ones one
// longer, blocks numbered from 0 in order.
StepInputs dummy_step(int64_t tokens, int64_t seqs, int block_size, int64_t vocab_size);

}  // namespace tessera
