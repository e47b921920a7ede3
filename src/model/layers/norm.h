// Normalisation layers shared by the decoders. Their parameters are small: every rank holds
// them whole, in f32.
#pragma once

#include <string>

#include "config/model_config.h"
#include "kernels/backend.h"
#include "loader/weight_source.h"
#include "model/layers/context.h"
#include "model/layers/linear.h"

namespace tessera {

// LayerNorm with weight and bias (GPT-2, OPT, Falcon).
struct LayerNorm {
  Tensor weight, bias;  // f32 [hidden]
  float eps = 1e-5f;
  void forward(Backend& backend, const Tensor& x, const Tensor& out) const {
    backend.layer_norm(x, weight, bias, eps, out);
  }
};

// `name` without its ".weight" / ".bias" suffix.
inline LayerNorm load_layer_norm(ModelContext& ctx, WeightSource& w, const std::string& name,
                                 const ModelConfig& c) {
  return LayerNorm{load_f32_vector(ctx, w, name + ".weight", c.hidden_size),
                   load_f32_vector(ctx, w, name + ".bias", c.hidden_size),
                   static_cast<float>(c.layer_norm_eps)};
}

}  // namespace tessera
