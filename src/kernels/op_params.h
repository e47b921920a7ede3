// Plain parameters of the backend ops, in a header of their own with no includes of the rest of
// core, so that the CUDA kernels (compiled by nvcc) can take them as they are.
#pragma once

#include <cstdint>

namespace tessera {

enum class Activation { kSilu, kGeluTanh, kGelu, kRelu };

struct AttentionParams {
  int num_heads = 0;     // query heads on this rank
  int num_kv_heads = 0;  // key/value heads on this rank
  int head_dim = 0;
  float scale = 1.0f;          // multiplies q.k
  float softcap = 0.0f;        // > 0: scores = softcap * tanh(scores / softcap)
  int32_t sliding_window = 0;  // > 0: a query at position p sees keys at p - window < pos <= p
};

}  // namespace tessera
