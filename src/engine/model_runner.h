// Runs one step's StepInputs through the model. The model runner is the only engine part that
// builds tensors: it turns the integer arrays into device tensors and the attention metadata.
#pragma once

#include <memory>

#include "engine/step_inputs.h"
#include "model/model.h"

namespace tessera {

class ModelExecutor {
 public:
  virtual ~ModelExecutor() = default;
  virtual const ModelConfig& config() const = 0;
  // Logits [logit_rows, vocab] f32 in host memory.
  virtual Tensor execute(const StepInputs& inputs) = 0;
};

// One rank's model and KV cache.
class ModelRunner : public ModelExecutor {
 public:
  ModelRunner(Backend& backend, CausalLM& model, KVCache& cache);
  const ModelConfig& config() const override { return model_.config(); }
  Tensor execute(const StepInputs& inputs) override;

 private:
  Tensor to_device(const std::vector<int32_t>& values, std::initializer_list<int64_t> shape);

  Backend& backend_;
  CausalLM& model_;
  KVCache& cache_;
};

}  // namespace tessera
