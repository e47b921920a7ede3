// Which builder makes which architecture.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/model_config.h"
#include "loader/weight_source.h"
#include "model/model.h"

namespace tessera {

std::unique_ptr<CausalLM> build_llama_family(ModelContext& ctx, WeightSource& weights,
                                             const ModelConfig& config);
std::unique_ptr<CausalLM> build_gpt2(ModelContext& ctx, WeightSource& weights,
                                     const ModelConfig& config);
std::unique_ptr<CausalLM> build_falcon(ModelContext& ctx, WeightSource& weights,
                                       const ModelConfig& config);

}  // namespace tessera

namespace tessera {

// Kinds of parameter, so that a generator can give each a sensible random initialisation.
// kLinearTransposed: a Conv1D weight stored [in, out] (GPT-2). kRouter: an MoE router or shared
// expert gate, a Linear weight that FP8 checkpoints keep in 16 bits.
enum class WeightRole { kEmbedding, kLinear, kLinearTransposed, kRouter, kLmHead, kNorm, kBias };

struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
  WeightRole role;
};

// Every tensor a checkpoint of this configuration holds, with Hugging Face names.
std::vector<WeightSpec> weight_specs(const ModelConfig& config);
std::vector<WeightSpec> gpt2_weight_specs(const ModelConfig& config);
std::vector<WeightSpec> falcon_weight_specs(const ModelConfig& config);

}  // namespace tessera
