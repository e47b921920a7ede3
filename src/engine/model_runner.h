// Runs one step's StepInputs through the model. The model runner is the only engine part that
// builds tensors: it turns the integer arrays into device tensors and the attention metadata.
// With pipeline stages it also moves hidden states from stage to stage: a step's sequences are
// split into pp micro-batches so that stage s works on micro-batch i + 1 while stage s + 1 works
// on micro-batch i, and the last stage sends the logits to the driver (world rank 0).
#pragma once

#include <memory>

#include "distributed/communicator.h"
#include "distributed/world_config.h"
#include "engine/step_inputs.h"
#include "model/model.h"

namespace tessera {

class ModelExecutor {
 public:
  virtual ~ModelExecutor() = default;
  virtual const ModelConfig& config() const = 0;
  // Logits [logit_rows, vocab] f32 in host memory (on ranks other than the driver: an empty
  // tensor).
  virtual Tensor execute(const StepInputs& inputs) = 0;
  // Checks that every rank still answers, for an idle server (steps find a dead or hung rank
  // themselves); throws DistributedError otherwise. Nothing to check with one rank.
  virtual void heartbeat() {}
};

// The communicators a pipeline-parallel runner needs.
struct PipelineLinks {
  WorldConfig world_config;
  Communicator* world = nullptr;  // to send logits to the driver
  Communicator* pp = nullptr;     // this rank's pipeline group (group rank = stage)
};

// One rank's model and KV cache.
class ModelRunner : public ModelExecutor {
 public:
  ModelRunner(Backend& backend, CausalLM& model, KVCache& cache, PipelineLinks links = {});
  const ModelConfig& config() const override { return model_.config(); }
  Tensor execute(const StepInputs& inputs) override;

 private:
  Tensor to_device(const std::vector<int32_t>& values, std::initializer_list<int64_t> shape);
  ForwardBatch make_batch(const StepInputs& in);
  Tensor execute_pipelined(const StepInputs& in);

  Backend& backend_;
  CausalLM& model_;
  KVCache& cache_;
  PipelineLinks links_;
};

// A step's sequences cut into `parts` contiguous groups (fewer when there are fewer sequences).
// `logit_index[k]` lists, for micro-batch k, the positions in in.logit_rows its logit rows
// come from, in order.
struct MicroBatches {
  std::vector<StepInputs> parts;
  std::vector<std::vector<int32_t>> logit_index;
};
MicroBatches split_micro_batches(const StepInputs& in, int parts);

}  // namespace tessera
