// Rotary position embedding: the inverse frequencies of the config's rope_theta and
// rope_scaling, and each step's cos/sin table [T, rotary_dim] built from the positions.
#pragma once

#include <algorithm>
#include <vector>

#include "config/model_config.h"
#include "kernels/backend.h"
#include "model/layers/scratch.h"

namespace tessera {

class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  RotaryEmbedding(Backend& backend, const ModelConfig& config) {
    std::vector<float> inv = rope_inv_freq(config, &attention_scaling_);
    Tensor host = Tensor::empty({static_cast<int64_t>(inv.size())}, DType::kF32);
    std::copy(inv.begin(), inv.end(), host.data<float>());
    inv_freq_ = backend.prepare_weight(host);
  }

  // Table [positions, 2 * rotary_dim / 2] for backend.rope(), in `scratch`.
  Tensor table(Backend& backend, const Tensor& positions, Scratch& scratch) const {
    Tensor t = scratch.get(backend, positions.numel(), 2 * inv_freq_.numel());
    backend.rope_table(positions, inv_freq_, attention_scaling_, t);
    return t;
  }
  // f32 values per token of the table, for activation estimates.
  int64_t table_width() const { return 2 * inv_freq_.numel(); }

 private:
  Tensor inv_freq_;  // f32 [rotary_dim / 2]
  float attention_scaling_ = 1.0f;
};

}  // namespace tessera
